"""The non-finite guard (sapo.trainer.nonfinite): a NaN / Inf injected at each place it can arise skips the
update (parameters and AdamW state bit for bit unchanged), is counted and warned about, and
``trainer.max_nonfinite_steps`` such steps in a row stop the run with a checkpoint of the last good weights.

Injection is by wrapping the real function that produces the value (log-probs, values, advantages), a
forward hook that makes the update's logits NaN (the loss), and a gradient hook (the gradients)."""

import json
import math

import pytest
import torch

from sapo.config import load_config
from sapo.trainer import loop
from sapo.trainer.loop import train
from sapo.trainer.nonfinite import NonFiniteError
from sapo.trainer.run import start_run

# a reward of the response text, so advantages are not all zero and a clean step moves the weights
REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (len(solution_str) % 3) / 2.0
"""


@pytest.fixture
def run_overrides(overrides_for, tiny_qwen3, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD)

    def build(*extra, run_dir="run"):
        return overrides_for(tiny_qwen3, tmp_path / run_dir) + [
            f"custom_reward_function.path={reward}",
            "trainer.logger=[]",
            "trainer.val_before_train=false",
            "trainer.test_freq=0",
            "trainer.save_freq=0",
            *extra,
        ]

    return build


def _state(run):
    params = {k: v.clone() for k, v in run.policy.state_dict().items()}
    moments = {
        (id(p), k): v.clone() if torch.is_tensor(v) else v
        for p, s in run.optimizer.state.items()
        for k, v in s.items()
    }
    return params, moments


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
    )


def _poison(tensor):
    out = tensor.clone()
    out[0, 0] = float("nan")  # the first response's first token is always valid
    return out


def _wrap(monkeypatch, name, poison_if=lambda *args: True):
    real = getattr(loop, name)

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if poison_if(*args):
            return (_poison(out[0]), *out[1:]) if isinstance(out, tuple) else _poison(out)
        return out

    monkeypatch.setattr(loop, name, wrapped)


CASES = {
    "old_log_prob": ([], lambda mp, run: _wrap(mp, "compute_log_probs")),
    "ref_log_prob": (
        ["actor_rollout_ref.actor.use_kl_loss=true"],
        lambda mp, run: _wrap(mp, "compute_log_probs", lambda model, *a: model is run.reference),
    ),
    "rewards": (  # a NaN reference log-prob reaches the token rewards through the KL penalty
        ["algorithm.use_kl_in_reward=true"],
        lambda mp, run: _wrap(mp, "compute_log_probs", lambda model, *a: model is run.reference),
    ),
    "advantages": ([], lambda mp, run: _wrap(mp, "compute_advantages")),
    "values": (
        ["critic.enable=true", "algorithm.adv_estimator=gae", "critic.ppo_micro_batch_size_per_gpu=1"],
        lambda mp, run: _wrap(mp, "compute_values"),
    ),
}


@pytest.mark.parametrize("source", sorted(CASES))
def test_a_nan_in_the_batch_skips_the_update_and_names_its_source(source, run_overrides, monkeypatch, capsys):
    extra, inject = CASES[source]
    run = start_run(load_config(None, run_overrides(*extra, "trainer.total_training_steps=3")), quiet=True)
    try:
        loop.training_step(run)  # a clean step first, so AdamW has moments to keep
        before = _state(run)
        kl_before = None if run.kl_ctrl is None else run.kl_ctrl.value
        with monkeypatch.context() as mp:
            inject(mp, run)
            metrics = loop.training_step(run)
        after = _state(run)
        assert _same(before[0], after[0]) and _same(before[1], after[1])  # nothing moved
        assert kl_before is None or run.kl_ctrl.value == kl_before
        assert metrics["training/skipped_update"] == 1.0 and metrics["training/nonfinite_streak"] == 1.0
        assert metrics[f"training/nonfinite/{source}"] >= 1
        assert "actor/pg_loss" not in metrics  # no update ran
        assert f"step 2: non-finite values in {source}" in capsys.readouterr().err
        clean = loop.training_step(run)  # the next clean step trains and resets the streak
        assert clean["training/nonfinite_streak"] == 0.0 and clean["training/skipped_update"] == 0.0
        assert not _same(after[0], _state(run)[0])
    finally:
        run.close()


def _nan_in_training(module, inputs, output):
    """A forward hook on the final norm: NaN hidden states, so NaN logits and loss, in the update's passes
    (train mode); the log-prob passes (eval mode) are untouched."""
    if module.training:
        return output * float("nan")
    return output


@pytest.mark.parametrize("place", ["loss", "gradients"])
def test_a_nan_loss_or_gradient_skips_the_optimizer_step(place, run_overrides, capsys):
    run = start_run(load_config(None, run_overrides("trainer.total_training_steps=3")), quiet=True)
    try:
        loop.training_step(run)
        before = _state(run)
        if place == "loss":
            handle = run.policy.model.norm.register_forward_hook(_nan_in_training)
        else:
            weight = run.policy.model.layers[0].mlp.down_proj.weight
            handle = weight.register_hook(lambda grad: grad * float("inf"))
        metrics = loop.training_step(run)
        handle.remove()
        after = _state(run)
        assert _same(before[0], after[0]) and _same(before[1], after[1])
        assert metrics["actor/skipped_steps"] == 1.0 and not math.isfinite(metrics["actor/grad_norm"])
        assert (metrics["actor/nonfinite_losses"] > 0) == (place == "loss")
        assert metrics["training/nonfinite_streak"] == 1.0 and metrics["training/skipped_update"] == 0.0
        assert "step 2: non-finite values in actor loss or gradients" in capsys.readouterr().err
    finally:
        run.close()


def test_max_nonfinite_steps_in_a_row_stop_the_run_with_a_checkpoint(run_overrides, monkeypatch, tmp_path):
    _wrap(monkeypatch, "compute_advantages", lambda *a: True)
    overrides = run_overrides("trainer.total_training_steps=5", "trainer.max_nonfinite_steps=2")
    with pytest.raises(NonFiniteError, match="stopping at step 2: 2 steps in a row had non-finite") as err:
        train(load_config(None, overrides))
    checkpoint = tmp_path / "run" / "global_step_2"
    assert str(checkpoint) in str(err.value) and "trainer.max_nonfinite_steps" in str(err.value)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["training/nonfinite_streak"] for r in records] == [1.0, 2.0]
    # nothing was learned: the checkpoint holds the initial weights
    initial = start_run(load_config(None, run_overrides(run_dir="fresh")), quiet=True)
    saved = torch.load(checkpoint / "model.pt", weights_only=True)
    try:
        assert _same(initial.policy.state_dict(), saved)
    finally:
        initial.close()
    # the fix: resume without the fault; the saved streak continues and the first clean step resets it
    monkeypatch.undo()
    resumed = start_run(load_config(None, overrides), quiet=True)
    try:
        assert resumed.global_step == 2 and resumed.nonfinite.count == 2
        assert loop.training_step(resumed)["training/nonfinite_streak"] == 0.0
    finally:
        resumed.close()


def test_max_nonfinite_steps_must_be_positive_or_null():
    from sapo.config import validate
    from sapo.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.max_nonfinite_steps must be >= 1 or null"):
        validate(load_config(None, ["trainer.max_nonfinite_steps=0"]))
    validate(load_config(None, ["trainer.max_nonfinite_steps=null"]))
