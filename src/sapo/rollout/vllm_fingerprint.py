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
   linear layer is probed through its own kernel, ``quant_method.apply(layer, onehot(cols))`` =
   ``W[:, cols].T``, and the fused output is sliced back into its parts; other tensors (norms, the
   embedding) are read directly;
3. `mismatched` names the tensors whose samples differ beyond the engine dtype's rounding.

Tensors the worker cannot map (e.g. MoE expert weights, fused differently) are reported as unchecked;
a fingerprint that checks nothing is an error, never a pass.
"""

from __future__ import annotations

import zlib

import torch

COLUMNS_PER_TENSOR = 2


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


def _shard_rows(module, shard: int | None, total: int) -> slice:
    """The rows of shard ``shard`` in a fused output (q/k/v, gate/up); all rows for an unfused layer."""
    if shard is None:
        return slice(0, total)
    sizes = list(module.output_partition_sizes)
    start = sum(sizes[:shard])
    return slice(start, start + sizes[shard])


@torch.no_grad()
def _read_one(model, name: str, cols: list[int], rows: int) -> torch.Tensor | None:
    target = _packed_target(model, name)
    if target is None:
        return None
    module, shard, leaf = target
    is_linear = hasattr(module, "quant_method") and hasattr(module, "input_size_per_partition")
    param = getattr(module, leaf, None)
    if leaf == "weight" and is_linear and module.quant_method is not None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        dtype = getattr(module, "params_dtype", torch.float32)
        onehot = torch.zeros(len(cols), module.input_size_per_partition, dtype=dtype, device=device)
        onehot[torch.arange(len(cols)), torch.tensor(cols)] = 1
        out = module.quant_method.apply(module, onehot)  # [k, out_total] = W_fused[:, cols].T
        out = out[:, _shard_rows(module, shard, out.shape[-1])].T  # [out_shard, k]
        return out[:rows].float().cpu()  # the lm head's vocabulary may be padded to more rows
    if not isinstance(param, torch.Tensor) or param.numel() == 0:
        return None
    if param.dim() == 1:
        rows_of = _shard_rows(module, shard, param.shape[0]) if shard is not None else slice(None)
        return param[rows_of][cols].float().cpu()
    return param[:rows, cols].float().cpu()  # an embedding may be padded to more rows than the vocabulary


def read_engine_samples(worker, plan: dict) -> dict[str, torch.Tensor | None]:
    """Runs in vLLM's worker (``llm.collective_rpc(read_engine_samples, args=(plan,))``): the sampled
    columns of each planned tensor as the engine holds them; None for a name it cannot map."""
    model = worker.model_runner.model
    return {name: _read_one(model, name, cols, rows) for name, (cols, rows) in plan.items()}


def mismatched(trainer: dict, engine: dict, dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """``(names whose samples differ, names the engine could not be read for)``. Trainer values are
    rounded to the engine's ``dtype`` first; they then differ by at most a rounding step of it."""
    eps = torch.finfo(dtype).eps
    differ, unchecked = [], []
    for name, (_, expected) in trainer.items():
        got = engine.get(name)
        if got is None:
            unchecked.append(name)
            continue
        expected = expected.to(dtype).float()
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=2 * eps, atol=1e-30):
            differ.append(name)
    return differ, unchecked
