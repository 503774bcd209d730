"""The stale-policy guard's logic without vLLM: a stand-in for vLLM's fused, repacked linear layers."""

import types

import torch
from torch import nn

from sapo.rollout.vllm_fingerprint import (
    FingerprintRecorder,
    assemble,
    mismatched,
    read_engine_samples,
    read_plan,
    sampled_columns,
)


class RepackedLinear(nn.Module):
    """Like vLLM's CPU linear layers: the parameter is empty, the weight lives in a packed copy that only
    the layer's ``quant_method.apply`` reads; ``output_partition_sizes`` are the fused parts' rows."""

    def __init__(self, parts: list[torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)
        self.packed = torch.cat(parts)  # [sum(out), in]
        self.output_partition_sizes = [p.shape[0] for p in parts]
        self.input_size_per_partition = parts[0].shape[1]
        self.params_dtype = torch.float32
        self.quant_method = types.SimpleNamespace(apply=lambda layer, x: x @ layer.packed.T)


def _stand_in(q, k, v, norm):
    attn = nn.Module()
    attn.qkv_proj = RepackedLinear([q, k, v])
    attn.q_norm = nn.Module()
    attn.q_norm.weight = nn.Parameter(norm.clone())
    model = nn.Module()
    model.self_attn = attn
    model.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    return types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "self_attn.q_proj.weight": torch.randn(8, 6, generator=g),
        "self_attn.k_proj.weight": torch.randn(4, 6, generator=g),
        "self_attn.v_proj.weight": torch.randn(4, 6, generator=g),
        "self_attn.q_norm.weight": torch.randn(6, generator=g),
    }


def _check(weights, worker):
    recorder = FingerprintRecorder(weights.items())
    assert [name for name, _ in recorder] == list(weights)  # passes the stream on unchanged
    engine = read_engine_samples(worker, read_plan(recorder.samples))
    return mismatched(recorder.samples, assemble(recorder.samples, [engine]), torch.float32)


def test_fused_parts_are_read_back_through_the_layer_kernel():
    w = _weights()
    worker = _stand_in(*(w[f"self_attn.{p}_proj.weight"] for p in "qkv"), w["self_attn.q_norm.weight"])
    assert _check(w, worker) == ([], [])


def test_a_change_to_one_fused_part_names_that_part_only():
    w = _weights()
    worker = _stand_in(*(w[f"self_attn.{p}_proj.weight"] for p in "qkv"), w["self_attn.q_norm.weight"])
    w["self_attn.k_proj.weight"] = w["self_attn.k_proj.weight"] + 1e-5  # the trainer moved on
    assert _check(w, worker) == (["self_attn.k_proj.weight"], [])


def test_unmapped_names_are_reported_unchecked_and_columns_are_stable():
    w = {**_weights(), "mlp.experts.0.up_proj.weight": torch.ones(3, 6)}
    worker = _stand_in(*(w[f"self_attn.{p}_proj.weight"] for p in "qkv"), w["self_attn.q_norm.weight"])
    assert _check(w, worker) == ([], ["mlp.experts.0.up_proj.weight"])
    assert sampled_columns("a.weight", 100) == sampled_columns("a.weight", 100)
    assert len(set(sampled_columns("a.weight", 100))) == 2 and sampled_columns("x", 1) == [0]


def test_bfloat16_engine_compares_after_rounding_the_trainer_values():
    trainer = {"w": ([0], torch.tensor([[1.0001], [2.0]]))}
    rounded = trainer["w"][1].to(torch.bfloat16).float()
    everywhere = torch.ones(2, 1, dtype=torch.bool)
    assert mismatched(trainer, {"w": (rounded, everywhere)}, torch.bfloat16) == ([], [])
    assert mismatched(trainer, {"w": (rounded + 0.02, everywhere)}, torch.bfloat16) == (["w"], [])


# --- tensor parallelism: stand-ins shaped as vLLM's sharded layers, one per rank of a TP group of 2


def _sharded(parts, rank, *, column=False, row=False, kv_replicas=None):
    layer = RepackedLinear(parts)
    layer.tp_rank, layer.tp_size = rank, 2
    if column:
        layer.gather_output = False  # ColumnParallelLinear's attribute
    if row:
        layer.input_is_parallel = True  # RowParallelLinear's
    if kv_replicas is not None:
        layer.num_kv_head_replicas = kv_replicas  # QKVParallelLinear's
    return layer


def _tp_worker(w, rank, embed_rows=5, padded_rows=6):
    """Rank ``rank``'s view: q split by rows, the one kv head replicated on both ranks, o and down split by
    input columns, the vocabulary split by rows (each shard padded), the norm whole."""
    q, k, v, o = (w[f"self_attn.{p}_proj.weight"] for p in "qkvo")
    attn = nn.Module()
    attn.qkv_proj = _sharded([q[4 * rank : 4 * rank + 4], k, v], rank, column=True, kv_replicas=2)
    attn.o_proj = _sharded([o[:, 4 * rank : 4 * rank + 4]], rank, row=True)
    attn.q_norm = nn.Module()
    attn.q_norm.weight = nn.Parameter(w["self_attn.q_norm.weight"].clone())
    embed = w["embed_tokens.weight"][embed_rows * rank : embed_rows * (rank + 1)]
    padding = torch.full((padded_rows - embed_rows, embed.shape[1]), 99.0)
    embedding = RepackedLinear([torch.cat([embed, padding])])
    embedding.tp_rank, embedding.tp_size = rank, 2
    start = embed_rows * rank
    embedding.shard_indices = types.SimpleNamespace(
        org_vocab_start_index=start, org_vocab_end_index=start + embed_rows
    )
    model = nn.Module()
    model.mlp = nn.Module()
    model.mlp.down_proj = _sharded([w["mlp.down_proj.weight"][:, 4 * rank : 4 * rank + 4]], rank, row=True)
    model.self_attn, model.embed_tokens = attn, embedding
    model.packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    return types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))


def _tp_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "self_attn.q_proj.weight": torch.randn(8, 6, generator=g),
        "self_attn.k_proj.weight": torch.randn(2, 6, generator=g),
        "self_attn.v_proj.weight": torch.randn(2, 6, generator=g),
        "self_attn.o_proj.weight": torch.randn(6, 8, generator=g),  # sampled input columns 2, 3
        "mlp.down_proj.weight": torch.randn(6, 8, generator=g),  # sampled input columns 0, 7
        "self_attn.q_norm.weight": torch.randn(6, generator=g),
        "embed_tokens.weight": torch.randn(10, 6, generator=g),
    }


def _tp_check(trainer_weights, engine_weights):
    recorder = FingerprintRecorder(trainer_weights.items())
    list(recorder)
    plan = read_plan(recorder.samples)
    pieces = [read_engine_samples(_tp_worker(engine_weights, rank), plan) for rank in (0, 1)]
    return mismatched(recorder.samples, assemble(recorder.samples, pieces), torch.float32), pieces


def test_tensor_parallel_slices_assemble_to_the_whole_sample():
    w = _tp_weights()
    (differ, unchecked), pieces = _tp_check(w, w)
    assert (differ, unchecked) == ([], [])
    q_rows = [pieces[r]["self_attn.q_proj.weight"][0].tolist() for r in (0, 1)]
    assert q_rows == [[0, 1, 2, 3], [4, 5, 6, 7]]  # each rank holds half of q's rows
    k_rows = [pieces[r]["self_attn.k_proj.weight"][0].tolist() for r in (0, 1)]
    assert k_rows == [[0, 1], [0, 1]]  # the single kv head is replicated
    o_pieces = [pieces[r]["self_attn.o_proj.weight"] for r in (0, 1)]
    assert o_pieces[0][1] == [0, 1] and o_pieces[1] is None  # o's sampled columns 2, 3 are rank 0's
    down_positions = [pieces[r]["mlp.down_proj.weight"][1] for r in (0, 1)]
    assert down_positions == [[0], [1]]  # down's sampled columns 0 and 7: one on each rank
    embed_rows = [pieces[r]["embed_tokens.weight"][0].tolist() for r in (0, 1)]
    assert embed_rows == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # the padding row is not compared


def test_tensor_parallel_change_held_by_one_rank_is_caught():
    for name, rows, cols in (
        ("self_attn.q_proj.weight", slice(4, 8), slice(None)),  # rank 1's half of q
        ("self_attn.v_proj.weight", slice(None), slice(None)),  # the replicated kv head
        ("mlp.down_proj.weight", slice(None), slice(4, 8)),  # rank 1's input columns of down
        ("self_attn.o_proj.weight", slice(None), slice(0, 4)),  # rank 0's input columns of o
        ("embed_tokens.weight", slice(5, 10), slice(None)),  # rank 1's vocabulary
    ):
        trainer = _tp_weights()
        trainer[name] = trainer[name].clone()
        trainer[name][rows, cols] += 1e-3  # the engine still holds the old values there
        assert _tp_check(trainer, _tp_weights())[0] == ([name], []), name


def test_tensor_parallel_piece_of_the_wrong_shape_is_a_mismatch():
    w = _tp_weights()
    engine = {**w, "self_attn.q_proj.weight": torch.randn(10, 6)}  # 5 rows per rank, the trainer has 4
    (differ, _), _ = _tp_check(w, engine)
    assert "self_attn.q_proj.weight" in differ
