import math
import subprocess
import sys

import pytest
import torch

from sapo.config import load_config
from sapo.errors import ConfigError
from sapo.optim import AdamW, build_scheduler, lr_factor, warmup_steps
from sapo.trainer.setup import build_optimizer_and_scheduler


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
    assert isinstance(opt, AdamW)
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


def _two_models(seed=0):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    b.load_state_dict(a.state_dict())
    return a, b


def _train(model, opt, steps, lrs, frozen_until=3):
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        x = torch.randn(8, 5, generator=gen)
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        if step < frozen_until:  # the last layer gets no gradient for a while: its step count lags
            for p in model[2].parameters():
                p.grad = None
        opt.step()


def test_adamw_equals_torch_adamw_step_for_step():
    # Reference: torch.optim.AdamW (single-tensor path on CPU), same hyper-parameters, changing lr,
    # a parameter group that skips its first steps (grad None), weight decay on.
    ours_model, ref_model = _two_models()
    kwargs = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    ours = AdamW(ours_model.parameters(), **kwargs)
    ref = torch.optim.AdamW(ref_model.parameters(), foreach=False, **kwargs)
    lrs = [0.01, 0.02, 0.005, 0.01, 0.03, 0.001, 0.01]
    _train(ours_model, ours, 7, lrs)
    _train(ref_model, ref, 7, lrs)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)  # the same operations in the same order: bit for bit
    assert ours.state[4]["step"] == 4 and ref.state[ref_model[2].weight]["step"] == 4


def test_adamw_state_round_trip_continues_identically():
    a, b = _two_models()
    opt_a = AdamW(a.parameters(), lr=0.01)
    _train(a, opt_a, 4, [0.01] * 4)
    b.load_state_dict(a.state_dict())
    opt_b = AdamW(b.parameters(), lr=0.5)  # lr comes back from the state
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.param_groups[0]["lr"] == 0.01
    _train(a, opt_a, 3, [0.01] * 3, frozen_until=0)
    _train(b, opt_b, 3, [0.01] * 3, frozen_until=0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_adamw_refuses_state_of_another_model():
    opt = AdamW(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    other = AdamW(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds 4 parameters .* this model has 2"):
        opt.load_state_dict(other.state_dict())


def test_a_training_step_never_imports_torch_dynamo():
    # torch.optim.Optimizer imports torch._dynamo (+~70 MiB resident) on construction; ours must not.
    code = (
        "import sys, torch\n"
        "from sapo.config import load_config\n"
        "from sapo.trainer.setup import build_optimizer_and_scheduler\n"
        "m = torch.nn.Linear(3, 1)\n"
        "opt, sched = build_optimizer_and_scheduler(m.parameters(), "
        "load_config(None, []).actor_rollout_ref.actor.optim, 10)\n"
        "m(torch.randn(2, 3)).sum().backward()\n"
        "torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0)\n"
        "opt.step(); sched.step(); opt.zero_grad()\n"
        "print(sorted(n for n in sys.modules if n.startswith('torch._dynamo')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
