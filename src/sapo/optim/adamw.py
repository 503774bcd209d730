"""AdamW (Loshchilov & Hutter, arXiv 1711.05101), written here so that a training process never imports
``torch._dynamo``.

Why not ``torch.optim.AdamW``: ``torch.optim.Optimizer.__init__`` is wrapped in ``torch._disable_dynamo``,
whose first call imports ``torch._dynamo`` and with it sympy and parts of inductor: about 70 MiB of resident
memory and a second of start-up in a process whose whole working set is a few hundred MiB on the built-in
task (docs/benchmarks.md). The update below is torch's default (non-amsgrad) AdamW, step for step; the
tests compare it with ``torch.optim.AdamW`` as the reference.

For each parameter ``p`` with gradient ``g`` at step ``t`` (1-indexed), learning rate ``lr``, betas
``(b1, b2)``, epsilon ``eps`` and decoupled weight decay ``wd``::

    p <- p (1 - lr wd)
    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Parameters whose ``grad`` is None are skipped and keep their step count, as torch does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    """AdamW over one parameter group, with ``param_groups``, ``state_dict`` and ``load_state_dict`` laid out
    as torch's (so the schedule, checkpoints and logging treat it like any optimizer)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        self.params = list(params)
        self.param_groups = [
            {"params": self.params, "lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        ]
        self.state: dict[int, dict] = {}  # parameter index -> {"step", "exp_avg", "exp_avg_sq"}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        by_step: dict[int, list[int]] = {}  # parameters sharing a step count share their bias corrections
        for index, p in enumerate(self.params):
            if p.grad is None:
                continue
            state = self.state.get(index)
            if state is None:
                zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                state = self.state[index] = {"step": 0, "exp_avg": zeros, "exp_avg_sq": zeros.clone()}
            state["step"] += 1
            by_step.setdefault(state["step"], []).append(index)
        for t, indices in by_step.items():
            params = [self.params[i] for i in indices]
            grads = [p.grad for p in params]
            exp_avgs = [self.state[i]["exp_avg"] for i in indices]
            exp_avg_sqs = [self.state[i]["exp_avg_sq"] for i in indices]
            if wd != 0:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            step_size = lr / (1.0 - beta1**t)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denoms, (1.0 - beta2**t) ** 0.5)  # as torch: ** 0.5, not math.sqrt
            torch._foreach_add_(denoms, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)

    def state_dict(self) -> dict:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(
                f"optimizer state holds {sum(len(g['params']) for g in groups)} parameters in {len(groups)} "
                f"group(s); this model has {len(self.params)} in 1"
            )
        for key, value in groups[0].items():
            if key != "params":
                self.param_groups[0][key] = tuple(value) if key == "betas" else value
        self.state = {}
        for index, saved in state_dict["state"].items():
            p = self.params[int(index)]
            self.state[int(index)] = {
                "step": int(saved["step"]),
                "exp_avg": saved["exp_avg"].to(device=p.device, dtype=p.dtype, copy=True),
                "exp_avg_sq": saved["exp_avg_sq"].to(device=p.device, dtype=p.dtype, copy=True),
            }
