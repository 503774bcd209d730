"""AdamW with linear warmup and a constant or cosine schedule, with verl's numbers and meanings.

The learning rate at training step ``s`` (0-indexed; the scheduler is stepped once per training step, after
all of that step's mini-batch updates, as verl steps its actor scheduler once per ``update_actor``) is
``lr x factor(s)`` with ``W`` warmup steps and ``T`` total steps:

    constant:  factor = s / W                    for s < W,   else 1
    cosine:    factor = m + (1 - m) s / W        for s < W,
               factor = max(m, m + (1 - m) (1 + cos(2 pi c p)) / 2),   p = (s - W) / max(1, T - W)

with ``m = min_lr_ratio`` and ``c = num_cycles`` (0.5: one half-wave from lr down to m x lr at s = T).
These are verl's ``get_constant_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``
(verl/utils/torch_functional.py semantics), except that constant with ``W = 0`` is 1 from the first step.
``W`` is ``lr_warmup_steps`` when it is >= 0, else ``int(lr_warmup_steps_ratio x T)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial

import torch

from sapo.errors import ConfigError
from sapo.optim.adamw import AdamW

SCHEDULES = ("constant", "cosine")


class LRSchedule:
    """Sets the optimizer's lr to ``base_lr x factor(step)``: ``factor(0)`` at construction, then the next
    step's value after each :meth:`step` (the behaviour of torch's ``LambdaLR``, which also records the
    base lr as ``initial_lr`` in each parameter group)."""

    def __init__(self, optimizer, factor: Callable[[int], float]):
        self.optimizer = optimizer
        self.factor = factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0  # torch's name for the number of steps taken
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = list(state_dict["base_lrs"])
        self._apply()


def warmup_steps(lr_warmup_steps: int | None, lr_warmup_steps_ratio: float, total_steps: int) -> int:
    """verl's rule: an explicit non-negative ``lr_warmup_steps`` wins, else ratio x total (floored)."""
    if lr_warmup_steps is not None and lr_warmup_steps >= 0:
        return int(lr_warmup_steps)
    return int(lr_warmup_steps_ratio * total_steps)


def lr_factor(
    step: int,
    *,
    warmup: int,
    total: int,
    schedule: str = "constant",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """Multiplier of the peak lr at 0-indexed training step ``step`` (formula in the module docstring)."""
    if schedule == "constant":
        return step / warmup if step < warmup else 1.0
    if schedule == "cosine":
        if step < warmup:
            return min_lr_ratio + (1.0 - min_lr_ratio) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        cosine = (1.0 + math.cos(2.0 * math.pi * num_cycles * progress)) / 2.0
        return max(min_lr_ratio, min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
    raise ConfigError(f"unknown lr_scheduler_type {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def build_adamw(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> AdamW:
    """AdamW (decoupled weight decay, Loshchilov & Hutter, arXiv 1711.05101) over the trainable parameters:
    :class:`sapo.optim.adamw.AdamW`, torch's update without importing ``torch._dynamo``."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters; check that it was not frozen")
    return AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def build_scheduler(
    optimizer: AdamW,
    *,
    total_steps: int,
    warmup: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> LRSchedule:
    """The optimizer's lr following :func:`lr_factor`, as torch's LambdaLR would set it; its state_dict goes
    into checkpoints."""
    if warmup > total_steps:
        raise ConfigError(
            f"lr warmup ({warmup} steps) is longer than training ({total_steps} steps); lower "
            "optim.lr_warmup_steps or optim.lr_warmup_steps_ratio"
        )
    lr_factor(0, warmup=warmup, total=total_steps, schedule=schedule)  # reject an unknown schedule now
    factor = partial(
        lr_factor,
        warmup=warmup,
        total=total_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
        num_cycles=num_cycles,
    )
    return LRSchedule(optimizer, factor)
