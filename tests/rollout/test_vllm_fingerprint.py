"""The stale-policy guard's logic without vLLM: a stand-in for vLLM's fused, repacked linear layers."""

import types

import torch
from torch import nn

from sapo.rollout.vllm_fingerprint import (
    FingerprintRecorder,
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
    return mismatched(recorder.samples, engine, torch.float32)


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
    assert mismatched(trainer, {"w": rounded}, torch.bfloat16) == ([], [])
    assert mismatched(trainer, {"w": rounded + 0.02}, torch.bfloat16) == (["w"], [])
