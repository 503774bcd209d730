"""The critic runs the actor's update loop (sapo.trainer.ppo_update): its gradient is the full mini-batch's
clipped value loss whatever the micro-batching, grad_clip <= 0 means no clipping (not a zero gradient), and
the update does not warn."""

import copy
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from sapo.core.value_loss import clipped_value_loss
from sapo.models.tiny import build_tiny_model
from sapo.trainer.critic import CriticUpdateSettings, ValueModel, update_critic
from sapo.trainer.ppo_update import UpdateSchedule

from .test_actor import SPEC, make_batch


@pytest.fixture(scope="module")
def critic_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("critic"), SPEC, chars="0123456789+=")


def _critic(critic_dir) -> ValueModel:
    torch.manual_seed(0)
    critic = ValueModel(AutoModelForCausalLM.from_pretrained(critic_dir))
    torch.nn.init.normal_(critic.value_head.weight, std=0.5)  # away from V = 0, so clipping can act
    return critic


def _batch_with_values(vocab: int):
    batch = make_batch(vocab)
    g = torch.Generator().manual_seed(1)
    batch.values = torch.randn(batch.response_mask.shape, generator=g) * batch.response_mask  # [4, R]
    batch.returns = torch.randn(batch.response_mask.shape, generator=g) * batch.response_mask  # [4, R]
    return batch


def _reference_gradient(critic, batch, cliprange_value):
    """The gradient of one pass over the whole batch (token-mean), from an independent forward."""
    critic = copy.deepcopy(critic)
    values = critic(batch.input_ids, batch.attention_mask, batch.response_length)  # [4, R]
    loss, _ = clipped_value_loss(
        values, batch.values, batch.returns, batch.response_mask, cliprange_value=cliprange_value,
        loss_agg_mode="token-mean",
    )  # fmt: skip
    loss.backward()
    return {name: p.grad.clone() for name, p in critic.named_parameters()}


@pytest.mark.parametrize("micro_batch_size", [4, 3, 1])
def test_critic_gradient_is_the_mini_batch_gradient_and_grad_clip_zero_does_not_clip(
    critic_dir, micro_batch_size
):
    critic = _critic(critic_dir)
    batch = _batch_with_values(critic.backbone.get_input_embeddings().num_embeddings)
    expected = _reference_gradient(critic, batch, cliprange_value=0.2)
    before = {name: p.detach().clone() for name, p in critic.named_parameters()}
    schedule = UpdateSchedule(
        ppo_epochs=1, mini_batch_size=4, micro_batch_size=micro_batch_size, max_token_len=None,
        shuffle=False, grad_clip=0.0, loss_scale_factor=8,
    )  # fmt: skip
    settings = CriticUpdateSettings(schedule=schedule, cliprange_value=0.2, loss_agg_mode="token-mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. float() of a tensor that requires grad
        metrics = update_critic(
            critic, torch.optim.SGD(critic.parameters(), lr=1.0), batch, settings, torch.Generator()
        )
    assert metrics["critic/skipped_steps"] == 0.0 and metrics["critic/grad_norm"] > 0
    for name, p in critic.named_parameters():
        step = before[name] - p.detach()  # SGD, lr 1: the gradient itself, unclipped
        torch.testing.assert_close(step, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert 0.0 <= metrics["critic/vf_clipfrac"] <= 1.0


def test_clipped_value_loss_by_hand():
    # v = 2, old_v = 0, R = 1, clip 0.5: clipped v = 0.5; max((2-1)^2, (0.5-1)^2) / 2 = 0.5; clip inactive.
    # v = 0, old_v = 0.4, R = 1: clipped v = 0 (inside the range): both terms 1 -> 0.5; not clipped (equal).
    # v = -1, old_v = 0, R = 1: clipped v = -0.5; max(4, 2.25) / 2 = 2.
    values = torch.tensor([[2.0, 0.0, -1.0]])
    old = torch.tensor([[0.0, 0.4, 0.0]])
    returns = torch.ones(1, 3)
    loss, clip_frac = clipped_value_loss(
        values, old, returns, torch.ones(1, 3), cliprange_value=0.5, loss_agg_mode="token-mean"
    )
    assert loss.item() == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    assert clip_frac == 0.0
    # v = 0.1, old_v = 1.0, R = 0: clipped v = 0.5, (0.5)^2 > (0.1)^2, so the clipped term is used
    loss, clip_frac = clipped_value_loss(
        torch.tensor([[0.1]]), torch.tensor([[1.0]]), torch.zeros(1, 1), torch.ones(1, 1),
        cliprange_value=0.5, loss_agg_mode="token-mean",
    )  # fmt: skip
    assert loss.item() == pytest.approx(0.5 * 0.25) and clip_frac == 1.0
