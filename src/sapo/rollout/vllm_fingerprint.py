"""The stale-policy guard of the vllm engine: sampled columns of every weight, read back from the engine.

A weight sync that silently did nothing (a renamed parameter, a backend that repacked weights into a copy
the sync never reached, a skipped call) leaves vLLM sampling from an old policy while the trainer's
numbers look plausible. So after each sync the engine's weights are compared with the trainer's on a few
sampled columns per tensor:

1. while the sync streams ``(name, tensor)`` pairs, `FingerprintRecorder` keeps ``W[:, cols]`` of each 2-D
   tensor and ``w[cols]`` of each 1-D one, ``cols`` = `sampled_columns` (a few per tensor, from a hash of
   the name): the stream is consumed once, and the sample is all that is kept (no second copy of the model);
2. `read_engine_samples` runs in vLLM's worker (``collective_rpc``) and reads the same entries back. The CPU
   backend repacks linear weights (the parameter is left empty) and vLLM fuses q/k/v and gate/up, so a
   linear layer (the embedding too) is probed through its own kernel, ``quant_method.apply(layer,
   onehot(cols))`` = ``W[:, cols].T``, and the fused output is sliced back into its parts; other tensors
   (norms) are read directly;
3. with tensor parallelism each rank of a TP group holds a slice: output rows of column-parallel layers
   (q/k/v, gate/up; kv heads replicated when there are fewer than ranks), input columns of row-parallel
   ones (o, down), vocabulary rows of the embedding. Each rank reads the entries it holds with their
   global positions, the engine gathers them over the group and `assemble` puts them together;
4. `mismatched` names the tensors whose samples differ beyond the engine dtype's rounding.

Tensors the worker cannot map (e.g. MoE expert weights, fused differently) are reported as unchecked;
a fingerprint that checks nothing is an error, never a pass.
"""

from __future__ import annotations

import zlib

import torch

COLUMNS_PER_TENSOR = 2

# One rank's share of a sample: (global rows, None for a 1-D tensor; positions in cols; values).
Piece = tuple[torch.Tensor | None, list[int], torch.Tensor]


def sampled_columns(name: str, width: int, count: int = COLUMNS_PER_TENSOR) -> list[int]:
    """``count`` distinct column indices in ``[0, width)``, fixed by the name (the same on every call)."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return sorted(torch.randperm(width, generator=generator)[: min(count, width)].tolist())


def sample_of(name: str, tensor: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """``(cols, W[:, cols])`` for a 2-D tensor, ``(cols, w[cols])`` for a 1-D one, on the CPU."""
    cols = sampled_columns(name, tensor.shape[-1])
    return cols, tensor.detach()[..., cols].to("cpu", copy=True)


class FingerprintRecorder:
    """Wraps a weight stream; records each tensor's sample as it passes (see the module docstring)."""

    def __init__(self, weights):
        self.weights = weights
        self.samples: dict[str, tuple[list[int], torch.Tensor]] = {}

    def __iter__(self):
        for name, tensor in self.weights:
            if tensor.dim() in (1, 2) and tensor.is_floating_point():
                self.samples[name] = sample_of(name, tensor)
            yield name, tensor


def read_plan(samples: dict) -> dict[str, tuple[list[int], int]]:
    """What the worker must read: ``name -> (cols, rows)`` (rows: the trainer tensor's first dim)."""
    return {name: (cols, sample.shape[0]) for name, (cols, sample) in samples.items()}


def _packed_target(model, name: str):
    """``(module, shard index or None, parameter leaf)`` of an HF name in vLLM's model, or None."""
    path, _, leaf = name.rpartition(".")
    parent, _, child = path.rpartition(".")
    packed = getattr(model, "packed_modules_mapping", {}) or {}
    for fused, parts in packed.items():
        if child in parts:
            try:
                return model.get_submodule(f"{parent}.{fused}"), parts.index(child), leaf
            except AttributeError:
                return None
    try:
        return model.get_submodule(path), None, leaf
    except AttributeError:
        return None


def _part_span(module, shard: int | None, local_total: int) -> tuple[slice, int]:
    """``(local rows, first global row)`` of one output part on this rank.

    ``shard`` is the part's index in a fused layer (q/k/v, gate/up), None for an unfused one. A
    column-parallel layer (``tp_size > 1``, output split) holds ``1/tp`` of each part: rank ``r`` has
    rows ``[r s, (r + 1) s)`` of a part of local size ``s``, except that QKV's k and v parts, when there
    are fewer kv heads than ranks, are replicated over ``num_kv_head_replicas`` ranks (vLLM's
    ``QKVParallelLinear.weight_loader``). Other layers hold the whole output.
    """
    sizes = list(getattr(module, "output_partition_sizes", None) or [local_total])
    part = 0 if shard is None else shard
    local = slice(sum(sizes[:part]), sum(sizes[: part + 1])) if shard is not None else slice(0, local_total)
    size = local.stop - local.start
    column_parallel = hasattr(module, "gather_output") and getattr(module, "tp_size", 1) > 1
    if not column_parallel:
        return local, 0
    group_rank = module.tp_rank
    if part > 0 and hasattr(module, "num_kv_head_replicas"):  # k, v of QKVParallelLinear
        group_rank //= module.num_kv_head_replicas
    return local, group_rank * size


def _input_span(module) -> tuple[int, int]:
    """``[start, stop)`` of the input columns this rank holds: a row-parallel layer (``input_is_parallel``)
    splits its input over the TP ranks; every other layer holds all of it."""
    size = module.input_size_per_partition
    rank = module.tp_rank if hasattr(module, "input_is_parallel") and getattr(module, "tp_size", 1) > 1 else 0
    return rank * size, (rank + 1) * size


def _vocab_span(module, rows: int) -> tuple[int, int]:
    """``[start, stop)`` of the vocabulary rows a (vocab-parallel) embedding holds on this rank."""
    indices = getattr(module, "shard_indices", None)
    if indices is None:
        return 0, rows
    return indices.org_vocab_start_index, min(indices.org_vocab_end_index, rows)


def _positions(cols: list[int], start: int, stop: int) -> list[int]:
    return [i for i, c in enumerate(cols) if start <= c < stop]


def _read_linear(module, shard, cols: list[int], rows: int) -> Piece | None:
    """``W[:, cols]`` of a linear layer through its own kernel: ``apply(onehot(cols)) = W[:, cols].T``
    (the CPU backend keeps the weight only in a repacked copy), sliced to this rank's rows and columns."""
    start, stop = _input_span(module)
    held = _positions(cols, start, stop)
    if not held:
        return None
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    dtype = getattr(module, "params_dtype", torch.float32)
    onehot = torch.zeros(len(held), module.input_size_per_partition, dtype=dtype, device=device)
    onehot[torch.arange(len(held)), torch.tensor([cols[i] - start for i in held])] = 1
    out = module.quant_method.apply(module, onehot)  # [k, out_local] = W_local[:, cols].T
    local, first = _part_span(module, shard, out.shape[-1])
    values = out[:, local].T.float().cpu()  # [out_part, k]
    if hasattr(module, "shard_indices"):  # the embedding / lm head: this rank's vocabulary rows, unpadded
        first, stop = _vocab_span(module, rows)
        values = values[: max(0, stop - first)]
    global_rows = torch.arange(first, first + values.shape[0])
    keep = global_rows < rows  # the lm head's vocabulary may be padded to more rows
    return global_rows[keep], held, values[keep]


def _read_param(module, shard, param: torch.Tensor, cols: list[int], rows: int) -> Piece | None:
    if param.dim() == 1:  # a norm (whole), or a column-parallel bias (this rank's part)
        local, first = _part_span(module, shard, param.shape[0])
        held = _positions(cols, first, first + local.stop - local.start)
        part = param[local]
        return (None, held, part[[cols[i] - first for i in held]].float().cpu()) if held else None
    start, stop = _vocab_span(module, rows)  # an embedding: whole, or this rank's vocabulary rows
    if stop <= start:
        return None
    values = param[: stop - start, cols].float().cpu()  # may be padded to more rows than the vocabulary
    return torch.arange(start, stop), list(range(len(cols))), values


@torch.no_grad()
def _read_one(model, name: str, cols: list[int], rows: int) -> Piece | None:
    target = _packed_target(model, name)
    if target is None:
        return None
    module, shard, leaf = target
    is_linear = hasattr(module, "quant_method") and hasattr(module, "input_size_per_partition")
    if leaf == "weight" and is_linear and module.quant_method is not None:
        return _read_linear(module, shard, cols, rows)
    param = getattr(module, leaf, None)
    if not isinstance(param, torch.Tensor) or param.numel() == 0:
        return None
    return _read_param(module, shard, param, cols, rows)


def read_engine_samples(worker, plan: dict) -> dict[str, Piece | None]:
    """Runs in vLLM's worker (``llm.collective_rpc(read_engine_samples, args=(plan,))``): for each planned
    tensor, the piece of its sampled columns this rank holds, ``(global rows or None for a 1-D tensor,
    positions in cols, values)``; None for a name it cannot map or holds nothing of."""
    model = worker.model_runner.model
    return {name: _read_one(model, name, cols, rows) for name, (cols, rows) in plan.items()}


def assemble(trainer: dict, pieces: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
    """The engine's view of each sample from the pieces of every rank of a TP group (one dict per rank):
    ``name -> (values, covered)``, both shaped like the trainer's sample (``covered``: the entries some
    rank held), or None where no rank held any."""
    out: dict = {}
    for name, (_, expected) in trainer.items():
        values = torch.zeros(expected.shape, dtype=torch.float32)
        covered = torch.zeros(expected.shape, dtype=torch.bool)
        for rank_pieces in pieces:
            piece = rank_pieces.get(name)
            if piece is None:
                continue
            rows, held, got = piece
            index = (held,) if rows is None else (rows.unsqueeze(1), torch.tensor(held).unsqueeze(0))
            if got.shape != values[index].shape:  # the engine's tensor is not shaped like the trainer's
                values, covered = torch.full(expected.shape, float("nan")), torch.ones_like(covered)
                break
            values[index], covered[index] = got, True
        out[name] = (values, covered) if covered.any() else None
    return out


def mismatched(trainer: dict, engine: dict, dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """``(names whose samples differ, names the engine could not be read for)``; ``engine`` is
    `assemble`'s. Trainer values are rounded to the engine's ``dtype`` first; they then differ by at most
    a rounding step of it. Only the entries the engine covered are compared."""
    eps = torch.finfo(dtype).eps
    differ, unchecked = [], []
    for name, (_, expected) in trainer.items():
        got = engine.get(name)
        if got is None:
            unchecked.append(name)
            continue
        values, covered = got
        expected = expected.to(dtype).float()
        if values.shape != expected.shape or not torch.allclose(
            values[covered], expected[covered], rtol=2 * eps, atol=1e-30
        ):
            differ.append(name)
    return differ, unchecked
