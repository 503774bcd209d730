"""The CUDA paths a GPU user meets (marked gpu; skipped without CUDA): log-probs, the native model and
`sapo train` end to end on the GPU, in float32 and bfloat16, with a resume."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from sapo.cli import main
from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import position_ids_from_mask, token_log_probs
from sapo.models.tiny import TinyModelSpec, build_tiny_model

pytestmark = pytest.mark.gpu

SPEC = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    moe_intermediate_size=32,
)


def _batch(vocab, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # a short response
    ids[mask == 0] = 0
    return ids.to(device), mask.to(device)


@pytest.mark.parametrize("arch", ["qwen3", "llama", "qwen3_moe"])
def test_chunked_log_probs_match_naive_on_cuda(tmp_path, arch):
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 all the way, as on CPU
    model, tok = load_model_and_tokenizer(
        build_tiny_model(tmp_path / "m", TinyModelSpec(arch=arch, **SPEC)), device="cuda"
    )
    model.eval()
    ids, mask = _batch(len(tok), "cuda")
    r = 6
    lp, ent = token_log_probs(model, ids, mask, r, temperature=0.7, compute_entropy=True, chunk_size=5)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp_all = torch.log_softmax(logits[:, -r - 1 : -1].float() / 0.7, -1)  # [B, R, V]
    ref = logp_all.gather(-1, ids[:, -r:, None]).squeeze(-1)
    ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    m = mask[:, -r:].float()
    torch.testing.assert_close(lp * m, ref * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent * m, ref_ent * m, atol=1e-5, rtol=0)
    grads = torch.autograd.grad((lp * m).sum(), [p for p in model.parameters() if p.requires_grad])
    ref_grads = torch.autograd.grad((ref * m).sum(), [p for p in model.parameters() if p.requires_grad])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_native_model_matches_transformers_on_cuda(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    path = build_tiny_model(tmp_path / "m", TinyModelSpec(arch="qwen3", **SPEC))
    native, tok = load_model_and_tokenizer(path, device="cuda", impl="native")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda").eval()
    ids, mask = _batch(len(tok), "cuda")
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        ours = native(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    m = mask.bool()
    torch.testing.assert_close(ours[m], theirs[m], atol=1e-4, rtol=1e-4)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sapo_train_on_cuda_trains_checkpoints_and_resumes(tmp_path, overrides_for, tiny_qwen3, dtype):
    run_dir = tmp_path / "run"
    base = [*overrides_for(tiny_qwen3, run_dir), "trainer.device=cuda"]
    base.append(f"actor_rollout_ref.model.dtype={dtype}")
    assert main(["train", *base, "trainer.save_freq=1"]) == 0
    records = _records(run_dir)
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "critic/score/mean"):
            assert math.isfinite(record[key]), key
    saved = torch.load(run_dir / "global_step_2" / "model.pt", weights_only=True)
    assert {t.dtype for t in saved.values()} == {getattr(torch, dtype)}
    # Resume on the GPU: one more step from global_step_2, appended to the same metrics file.
    assert main(["train", *base, "trainer.total_training_steps=3", "trainer.resume_mode=auto"]) == 0
    assert [r["step"] for r in _records(run_dir)][-1] == 3


def test_builtin_default_run_on_cuda(tmp_path, monkeypatch):
    # The built-in task at a small size: the warm start (always on the CPU), then SAPO on the GPU.
    monkeypatch.setenv("SAPO_CACHE", str(tmp_path / "cache"))
    overrides = [
        f"trainer.default_local_dir={tmp_path / 'run'}",
        "trainer.device=cuda",
        "sapo.task.num_train=64",
        "sapo.task.num_val=16",
        "sapo.warm_start.max_steps=50",
        "trainer.total_training_steps=4",
        "trainer.logger=[]",
    ]
    assert main(["train", *overrides]) == 0
    records = _records(tmp_path / "run")
    assert records[-1]["step"] == 4 and "val-core/sapo/arithmetic/acc/mean@1" in records[-1]
