"""Optimizers and learning-rate schedules: sapo's own AdamW (torch's update, without importing
``torch._dynamo``) and verl's warmup + constant / cosine schedules. Plain arguments only, no config."""

from sapo.optim.adamw import AdamW
from sapo.optim.schedule import LRSchedule, build_adamw, build_scheduler, lr_factor, warmup_steps

__all__ = ["AdamW", "LRSchedule", "build_adamw", "build_scheduler", "lr_factor", "warmup_steps"]
