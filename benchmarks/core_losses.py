"""Time and memory of forward + backward of every policy loss at 64 x 4096 response tokens.

    PYTHONPATH=src python3 benchmarks/core_losses.py [--rows 64] [--cols 4096] [--repeats 7] [--threads 1]
                                                     [--device cpu|cuda] [--dtype float32|bfloat16]

Inputs: ``old_log_prob``, ``log_prob`` (the leaf that receives the gradient), ``advantages`` (one GRPO-like
value per row) and a response mask with random lengths (on average 3/4 of the columns valid); each loss runs
with its default ``loss_agg_mode`` and default numbers, metrics included (they are part of every call).

Columns:
- ``median ms``: median wall time of ``loss, metrics = fn(...); loss.backward()`` over ``--repeats`` runs
  after one warm-up run;
- ``saved MiB``: bytes of the tensors autograd keeps for the backward pass (counted once per storage with
  ``torch.autograd.graph.saved_tensors_hooks``): the activation memory the loss adds between forward and
  backward, exact and independent of the allocator;
- ``peak MiB``: on CPU, growth of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) during the first forward + backward, measured in a fresh subprocess per loss;
  it includes the gradient, temporaries and allocator effects (approximate, +-1 MiB). On CUDA,
  ``torch.cuda.max_memory_allocated`` minus the memory held before the call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sapo.core.losses import POLICY_LOSSES, default_loss_agg_mode, get_policy_loss

MIB = 2**20


def make_inputs(rows: int, cols: int, device: str, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, cols, generator=gen) * 4  # [B, T]
    new = old + 0.1 * torch.randn(rows, cols, generator=gen)  # [B, T]
    adv = torch.randn(rows, 1, generator=gen).expand(rows, cols).contiguous()  # [B, T]
    lengths = torch.randint(cols // 2, cols + 1, (rows, 1), generator=gen)  # [B, 1]
    mask = torch.arange(cols).unsqueeze(0) < lengths  # [B, T]
    to = dict(device=device, dtype=dtype)
    return old.to(**to), new.to(**to).requires_grad_(True), adv.to(**to), mask.to(device)


def forward_backward(name: str, inputs) -> None:
    old, new, adv, mask = inputs
    loss, _ = get_policy_loss(name)(old, new, adv, mask, loss_agg_mode=default_loss_agg_mode(name, None))
    loss.backward()
    new.grad = None


def saved_bytes(name: str, inputs) -> int:
    """Bytes autograd saves for backward during the forward pass (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    old, new, adv, mask = inputs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = get_policy_loss(name)(old, new, adv, mask, loss_agg_mode=default_loss_agg_mode(name, None))
    loss.backward()
    new.grad = None
    return sum(storages.values())


def median_ms(name: str, inputs, repeats: int, device: str) -> float:
    forward_backward(name, inputs)  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward_backward(name, inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_growth_mib(name: str, inputs, device: str) -> float:
    """Peak memory growth of the first forward + backward (see module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward(name, inputs)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / MIB
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _proc_status_kib("VmRSS")
    forward_backward(name, inputs)
    return (_proc_status_kib("VmHWM") - before) / 1024


def measure_one(args) -> dict:
    """Everything for one loss; run in a fresh process so the peak-memory measurement starts clean."""
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.rows, args.cols, args.device, getattr(torch, args.dtype))
    peak = peak_growth_mib(args.one, inputs, args.device)
    return {
        "loss": args.one,
        "agg": default_loss_agg_mode(args.one, None),
        "ms": median_ms(args.one, inputs, args.repeats, args.device),
        "saved": saved_bytes(args.one, inputs) / MIB,
        "peak": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one loss, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    passthrough = [
        f"--{key}={getattr(args, key)}" for key in ("rows", "cols", "repeats", "threads", "device", "dtype")
    ]
    print(
        f"# {args.rows} x {args.cols} tokens, {args.dtype}, device {args.device}, {args.threads} thread(s), "
        f"torch {torch.__version__}; input tensors {4 * args.rows * args.cols * 4 / MIB:.0f} MiB in fp32"
    )
    print(f"| {'loss':<9} | {'loss_agg_mode':<20} | {'median ms':>9} | {'saved MiB':>9} | {'peak MiB':>8} |")
    print(f"|{'-' * 11}|{'-' * 22}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for name in sorted(POLICY_LOSSES):
        out = subprocess.run(
            [sys.executable, __file__, f"--one={name}", *passthrough],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        numbers = f"{row['ms']:>9.1f} | {row['saved']:>9.1f} | {row['peak']:>8.1f}"
        print(f"| {name:<9} | {row['agg']:<20} | {numbers} |")


if __name__ == "__main__":
    main()
