"""token_log_probs against the naive full-logits computation, in value and in gradient."""

import pytest
import torch

from sapo.errors import UserError
from sapo.models.loading import load_model_and_tokenizer
from sapo.models.logprobs import chunked_log_probs_from_hidden, position_ids_from_mask, token_log_probs
from sapo.models.tiny import TinyModelSpec, build_tiny_model

CHARS = "0123456789+=abcdefghij"  # vocab 4 specials + 22 = 26


def _spec(arch, tied):
    return TinyModelSpec(
        arch=arch,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=tied,
        moe_intermediate_size=16,
    )


def _batch(vocab, prompt_lens, response_lens, prompt_width=6, response_width=5, seed=0):
    """Left-padded prompts then right-padded responses, as the rollout engine returns them."""
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for p, r in zip(prompt_lens, response_lens):
        ids = torch.randint(4, vocab, (prompt_width + response_width,), generator=g)
        mask = torch.zeros(prompt_width + response_width, dtype=torch.long)
        mask[prompt_width - p : prompt_width + r] = 1
        ids[mask == 0] = 0  # pad id
        rows.append(ids)
        masks.append(mask)
    return torch.stack(rows), torch.stack(masks), response_width


def _naive(model, ids, mask, r, temperature):
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, -r - 1 : -1].float() / temperature  # [B, R, V]
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[:, -r:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _grads(model, logp, ent, mask_r, g):
    w1 = torch.randn(logp.shape, generator=g)
    w2 = torch.randn(logp.shape, generator=g)
    loss = ((logp * w1 + 0.1 * ent * w2) * mask_r).sum()
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "arch,tied", [(arch, tied) for arch in ("qwen3", "llama", "qwen3_moe") for tied in (True, False)]
)
def test_chunked_log_probs_match_naive_in_value_and_gradient(tmp_path, arch, tied):
    path = build_tiny_model(tmp_path / "m", _spec(arch, tied), chars=CHARS, seed=1)
    model, tok = load_model_and_tokenizer(path)
    model.eval()  # no dropout either way; MoE routing is deterministic
    ids, mask, r = _batch(len(tok), prompt_lens=[6, 3, 1], response_lens=[5, 2, 4])
    mask_r = mask[:, -r:].float()
    temperature = 0.7
    ref_lp, ref_ent = _naive(model, ids, mask, r, temperature)
    ref_grads = _grads(model, ref_lp, ref_ent, mask_r, torch.Generator().manual_seed(3))
    # chunk_size 4 < B*R = 15 tokens: several chunks, the last one partial.
    lp, ent = token_log_probs(
        model, ids, mask, r, temperature=temperature, compute_entropy=True, chunk_size=4
    )
    grads = _grads(model, lp, ent, mask_r, torch.Generator().manual_seed(3))
    assert lp.shape == ent.shape == (3, r) and lp.dtype == torch.float32
    torch.testing.assert_close(lp * mask_r, ref_lp * mask_r, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent * mask_r, ref_ent * mask_r, atol=1e-5, rtol=0)
    assert ref_grads.keys() == grads.keys()
    assert "lm_head.weight" in grads or tied
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=0, msg=name)
    # Log-probs are <= 0 and the entropy lies in [0, log V].
    assert (lp <= 0).all() and (ent >= 0).all() and (ent <= torch.log(torch.tensor(float(len(tok))))).all()


def test_helper_matches_hand_computed_two_token_vocab():
    # V = 2, H = 1, W = [[1], [-1]], h = 2, T = 2: z = [2, -2] / 2 = [1, -1]
    # log p = z - logsumexp(z) = [1 - log(e + 1/e), -1 - log(e + 1/e)]
    h = torch.tensor([[2.0]], requires_grad=True)
    w = torch.tensor([[1.0], [-1.0]])
    lp, ent = chunked_log_probs_from_hidden(h, w, torch.tensor([1]), temperature=2.0)
    lse = torch.log(torch.e + torch.exp(torch.tensor(-1.0)))
    torch.testing.assert_close(lp, torch.stack([-1 - lse]))
    p = torch.softmax(torch.tensor([1.0, -1.0]), 0)
    torch.testing.assert_close(ent, -(p * p.log()).sum().reshape(1))
    # d log p_1 / dh = (onehot_1 - p) . W / T = ((0 - p0) * 1 + (1 - p1) * -1) / 2 = -(p0 + 1 - p1) / 2
    lp.sum().backward()
    torch.testing.assert_close(h.grad, (-(p[0] + 1 - p[1]) / 2).reshape(1, 1))


def test_only_gradients_that_exist_are_used_when_entropy_is_not_needed(tmp_path):
    path = build_tiny_model(tmp_path / "m", _spec("qwen3", True), chars=CHARS)
    model, tok = load_model_and_tokenizer(path)
    ids, mask, r = _batch(len(tok), [4, 2], [3, 5])
    lp, ent = token_log_probs(model, ids, mask, r)
    assert ent is None
    lp.sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_bad_response_length_and_temperature_are_user_errors(tmp_path):
    path = build_tiny_model(tmp_path / "m", _spec("qwen3", True), chars=CHARS)
    model, tok = load_model_and_tokenizer(path)
    ids, mask, r = _batch(len(tok), [4], [3])
    with pytest.raises(UserError, match="response_length"):
        token_log_probs(model, ids, mask, ids.shape[1])
    with pytest.raises(UserError, match="temperature"):
        token_log_probs(model, ids, mask, r, temperature=0.0)


def test_bfloat16_model_gives_float32_log_probs_close_to_its_float32_twin(tmp_path):
    path = build_tiny_model(tmp_path / "m", _spec("qwen3", False), chars=CHARS)
    model32, tok = load_model_and_tokenizer(path)
    model16, _ = load_model_and_tokenizer(path, dtype="bfloat16")
    ids, mask, r = _batch(len(tok), [4, 2], [3, 5])
    lp32, ent32 = token_log_probs(model32, ids, mask, r, compute_entropy=True, chunk_size=3)
    lp16, ent16 = token_log_probs(model16, ids, mask, r, compute_entropy=True, chunk_size=3)
    assert lp16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: log-probs of a ~26-token vocabulary agree to a few hundredths.
    torch.testing.assert_close(lp16, lp32, atol=0.05, rtol=0)
    torch.testing.assert_close(ent16, ent32, atol=0.05, rtol=0)
    (lp16.sum() + ent16.sum()).backward()
    grad = model16.lm_head.weight.grad
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all() and grad.abs().sum() > 0
