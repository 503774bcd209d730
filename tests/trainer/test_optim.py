import math

import pytest
import torch

from sapo.config import load_config
from sapo.errors import ConfigError
from sapo.trainer.optim import build_optimizer_and_scheduler, build_scheduler, lr_factor, warmup_steps


def lrs_over(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def make(*overrides, total=10):
    config = load_config(None, list(overrides))
    model = torch.nn.Linear(2, 1)
    return build_optimizer_and_scheduler(model.parameters(), config.actor_rollout_ref.actor.optim, total)


def test_warmup_rule():
    assert warmup_steps(-1, 0.1, 50) == 5  # int(0.1 x 50)
    assert warmup_steps(None, 0.25, 10) == 2  # int(2.5)
    assert warmup_steps(3, 0.5, 50) == 3  # explicit steps win over the ratio


def test_constant_with_warmup_by_hand():
    # lr 1e-3, W = 4: steps 0..3 give 0, 1/4, 2/4, 3/4 of lr, then lr
    _, sched = make(
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=4",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
    )
    assert lrs_over(sched, 6) == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_constant_without_warmup_is_flat_from_the_first_step():
    _, sched = make(
        "actor_rollout_ref.actor.optim.lr=1e-3", "actor_rollout_ref.actor.optim.lr_scheduler_type=constant"
    )
    assert lrs_over(sched, 3) == pytest.approx([1e-3] * 3)


def test_cosine_by_hand():
    # lr 1, W = 2, T = 6, m = 0.1, half-wave: warmup 0.1, 0.55; then p = (s - 2) / 4
    _, sched = make(
        "actor_rollout_ref.actor.optim.lr=1.0",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=2",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
        "actor_rollout_ref.actor.optim.min_lr_ratio=0.1",
        "actor_rollout_ref.actor.optim.weight_decay=0",
        total=6,
    )
    expected = [0.1, 0.1 + 0.9 * 0.5]
    for s in (2, 3, 4, 5, 6):
        p = (s - 2) / 4
        expected.append(0.1 + 0.9 * (1 + math.cos(math.pi * p)) / 2)  # 2 pi x 0.5 x p
    # p = 0 -> 1.0; p = 0.5 -> 0.1 + 0.45 = 0.55; p = 1 -> 0.1 (the floor)
    assert expected[2] == pytest.approx(1.0) and expected[4] == pytest.approx(0.55)
    assert expected[6] == pytest.approx(0.1)
    assert lrs_over(sched, 7) == pytest.approx(expected)


def test_cosine_ratio_warmup_from_config():
    # T = 20, ratio 0.1 -> W = 2 ; at s = 11: p = 9/18 = 0.5 -> factor 0.5 with m = 0
    assert lr_factor(11, warmup=2, total=20, schedule="cosine") == pytest.approx(0.5)
    _, sched = make(
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
        "actor_rollout_ref.actor.optim.lr=2.0",
        total=20,
    )
    assert lrs_over(sched, 12)[11] == pytest.approx(1.0)


def test_adamw_settings_from_config():
    opt, _ = make(
        "actor_rollout_ref.actor.optim.weight_decay=0.05", "actor_rollout_ref.actor.optim.betas=[0.8,0.9]"
    )
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert group["weight_decay"] == 0.05 and group["betas"] == (0.8, 0.9)


def test_scheduler_state_round_trip_continues_the_schedule():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup=5)
    lrs_over(sched, 3)
    state = sched.state_dict()
    opt2 = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    sched2 = build_scheduler(opt2, total_steps=10, warmup=5)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == pytest.approx([3 / 5])


def test_bad_schedule_inputs():
    opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    with pytest.raises(ConfigError, match="warmup .* longer than training"):
        build_scheduler(opt, total_steps=3, warmup=5)
    with pytest.raises(ConfigError, match="unknown lr_scheduler_type 'linear'"):
        build_scheduler(opt, total_steps=3, schedule="linear")
