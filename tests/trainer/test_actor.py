"""The actor update against an independent reference: plain autograd on full logits.

On a fully on-policy mini-batch (r = 1) SAPO's gradient is the plain policy gradient (SAPO.md), so one
update with SGD(lr=1) and no clipping must move every parameter by exactly

    -d/dtheta [ -(1/S) sum_i (1/|o_i|) sum_t A_i log pi(o_it) ]     (seq-mean-token-mean)

computed here from ``model(input_ids).logits`` without any of the trainer's code. The same must hold
whatever the micro-batch size, because micro-batch losses are normalised by the mini-batch's counts.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from sapo.batch import Batch
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.trainer.actor import ActorUpdateSettings, PolicyLossSettings, needs_old_log_prob, update_actor
from sapo.trainer.ppo_update import UpdateSchedule
from sapo.trainer.rollout_step import compute_log_probs

SPEC = TinyModelSpec(
    arch="qwen3",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("actor"), SPEC, chars="0123456789+=")


def schedule(**changes) -> UpdateSchedule:
    """One epoch over one unshuffled mini-batch of 4, unclipped, micro-batches of 4 unless changed."""
    numbers = dict(
        ppo_epochs=1, mini_batch_size=4, micro_batch_size=4, max_token_len=None, shuffle=False,
        grad_clip=0.0, loss_scale_factor=8,
    )  # fmt: skip
    return UpdateSchedule(**{**numbers, **changes})


def sapo_loss() -> PolicyLossSettings:
    return PolicyLossSettings(
        loss_mode="sapo", loss_agg_mode="seq-mean-token-mean", loss_kwargs={"tau_pos": 1.0, "tau_neg": 1.05},
        use_kl_loss=False, kl_loss_coef=0.0, kl_loss_type="low_var_kl", entropy_coeff=0.0, temperature=1.0,
    )  # fmt: skip


def make_batch(vocab: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    prompt_lengths, response_lengths = [3, 5, 4, 2], [4, 1, 3, 2]
    P, R = max(prompt_lengths), max(response_lengths)
    ids = torch.zeros(4, P + R, dtype=torch.long)
    attention = torch.zeros(4, P + R, dtype=torch.long)
    response_mask = torch.zeros(4, R)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        ids[i, P - p : P + r] = torch.randint(4, vocab, (p + r,), generator=g)
        attention[i, P - p : P + r] = 1
        response_mask[i, :r] = 1
    advantages = torch.tensor([1.5, -0.5, 0.7, -1.2])[:, None] * response_mask
    return Batch(
        input_ids=ids,
        attention_mask=attention,
        response_mask=response_mask,
        group_index=torch.tensor([0, 0, 1, 1]),
        truncated=torch.zeros(4, dtype=torch.bool),
        advantages=advantages,
    )


def reference_gradient(model, batch: Batch) -> dict[str, torch.Tensor]:
    """-grad of the seq-mean-token-mean policy-gradient surrogate, from full logits."""
    model = copy.deepcopy(model)
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions
    ).logits
    R = batch.response_length
    log_probs = torch.log_softmax(logits[:, -R - 1 : -1].float(), dim=-1)  # [B, R, V]
    token_lp = log_probs.gather(-1, batch.input_ids[:, -R:, None]).squeeze(-1)  # [B, R]
    per_seq = (batch.advantages * token_lp * batch.response_mask).sum(-1) / batch.response_mask.sum(-1)
    loss = -per_seq.mean()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# Real lengths (prompt + response) of make_batch's rows: 3+4=7, 5+1=6, 4+3=7, 2+2=4. A token budget of 13
# groups them, longest first, as [0] [2, 1] [3] (7 | 7+6=13 | 4); a budget of 5 leaves rows 0-2 (longer
# than 5) alone and row 3 alone too: four micro-batches of one sequence.
@pytest.mark.parametrize(
    ("micro_batch_size", "max_token_len"), [(4, None), (3, None), (1, None), (4, 13), (4, 5), (4, 1000)]
)
def test_on_policy_sapo_update_is_the_policy_gradient_for_any_micro_batching(
    model_dir, micro_batch_size, max_token_len
):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = make_batch(model.config.vocab_size)
    expected = reference_gradient(model, batch)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = ActorUpdateSettings(
        schedule=schedule(micro_batch_size=micro_batch_size, max_token_len=max_token_len),
        loss=sapo_loss(),
    )
    assert not needs_old_log_prob(batch.num_sequences, settings.schedule)
    metrics = update_actor(
        model, torch.optim.SGD(model.parameters(), lr=1.0), batch, settings, torch.Generator().manual_seed(0)
    )
    assert metrics["actor/sapo/gate_weight_mean"] == pytest.approx(1.0)  # r = 1 on-policy
    for name, p in model.named_parameters():
        step = before[name] - p.detach()  # SGD, lr 1: the gradient itself
        torch.testing.assert_close(step, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_old_log_prob_is_needed_once_the_batch_is_reused():
    one_pass = schedule(mini_batch_size=8)
    assert not needs_old_log_prob(8, one_pass)
    assert needs_old_log_prob(16, one_pass)  # two mini-batches: the second is off-policy
    assert needs_old_log_prob(8, schedule(mini_batch_size=8, ppo_epochs=2))  # a second epoch is off-policy


def test_dynamic_micro_batches_follow_the_token_budget():
    batch = make_batch(20)
    groups = [rows.tolist() for rows, _ in batch.micro_batches(4, max_tokens=13)]
    assert groups == [[0], [1, 2], [3]]  # 7 | 6 + 7 = 13 | 4 (see the comment above the update test)
    assert [rows.tolist() for rows, _ in batch.micro_batches(3)] == [[0, 1, 2], [3]]


@pytest.mark.parametrize(("micro_batch_size", "max_tokens"), [(1, None), (4, 13), (4, 5)])
def test_log_prob_recomputation_is_independent_of_micro_batching(model_dir, micro_batch_size, max_tokens):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = make_batch(model.config.vocab_size)
    whole = compute_log_probs(model, batch, 4, temperature=1.0)  # [4, R] in one pass
    split = compute_log_probs(model, batch, micro_batch_size, temperature=1.0, max_tokens=max_tokens)
    torch.testing.assert_close(split * batch.response_mask, whole * batch.response_mask, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("micro_batch_size", "max_token_len"), [(1, None), (3, None), (4, 13)])
def test_token_mean_metrics_do_not_depend_on_micro_batching(model_dir, micro_batch_size, max_token_len):
    """Off-policy (old log-probs shifted by a different amount per token): the token means of the ratio
    diagnostics, combined over micro-batches of unequal token counts, equal one pass over the mini-batch."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = make_batch(model.config.vocab_size)
    shift = torch.linspace(-0.4, 0.5, batch.response_mask.numel()).reshape(batch.response_mask.shape)
    batch.old_log_prob = compute_log_probs(model, batch, 4, temperature=1.0) + shift  # [4, R]
    settings = ActorUpdateSettings(schedule=schedule(), loss=sapo_loss())
    whole = update_actor(
        copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.0), batch, settings,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    settings = ActorUpdateSettings(
        schedule=schedule(micro_batch_size=micro_batch_size, max_token_len=max_token_len), loss=sapo_loss()
    )
    split = update_actor(
        copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.0), batch, settings,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    for key in (
        "actor/ratio_mean",
        "actor/ppo_kl",
        "actor/sapo/gate_weight_mean",
        "actor/sapo/soft_clip_frac",
    ):
        assert split[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    assert (split["actor/ratio_min"], split["actor/ratio_max"]) == pytest.approx(
        (whole["actor/ratio_min"], whole["actor/ratio_max"])
    )
