"""Multi-process scaling: seconds per step, tokens/s and peak RSS per process for 1 and 2 processes.

Model: a randomly initialised Qwen3 (hidden 512, intermediate 1408, 8 layers, 8 heads of 64, tied
~100-token character vocabulary), about 25M parameters, large enough that matrix multiplies, not Python,
dominate a step. Work per step: 64 prompts of the built-in arithmetic task x 4 responses of up to 64 tokens
(random weights rarely sample EOS, so nearly every response is full length), one mini-batch, micro-batches
of 64 sequences (so each of 2 processes runs two forwards and backwards per step, and 1 process four), SAPO,
float32 on CPU, ``trainer.cpu_threads=1`` in every process. The batch is that large because decoding a
small batch is bound by reading the weights from memory, not by arithmetic (at 8 rows a token costs 25 ms,
at 128 rows 103 ms, on this 2-core VM): each process reads its own replica, so a small per-process batch
measures the memory bus rather than the trainer. 1 process runs plainly;
2 processes run under ``torchrun --standalone`` with gloo and FSDP2, each generating and training on half
of the batch.

seconds/step is the median of ``timing_s/step`` over the steps after the first (which pays one-off
costs); tokens/s is prompt + response tokens of the whole batch per second. The goal (issue 11): 2
processes >= 1.7x one. Runs alternate 1, 2, 1, 2, ... so that machine load drifts hit both alike.

    PYTHONPATH=src python3 benchmarks/scaling.py [--steps 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = dict(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    head_dim=64,
)


PROMPTS, SAMPLES = 64, 4  # per step


def overrides(model: Path, run_dir: Path, steps: int) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_batch_size={PROMPTS}",
        "data.max_response_length=64",
        f"actor_rollout_ref.rollout.n={SAMPLES}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=0",
        "trainer.test_freq=0",
        "trainer.val_before_train=false",
        "trainer.export_hf=false",
        "trainer.logger=[]",
        "trainer.device=cpu",
        "trainer.cpu_threads=1",
        f"trainer.default_local_dir={run_dir}",
    ]


def worker(job: Path) -> None:
    """One process of a measured run: train, then write this rank's peak RSS next to the metrics."""
    from sapo.config import load_config
    from sapo.trainer.loop import train

    args = json.loads(job.read_text())
    summary = train(load_config(None, args))
    rank = int(os.environ.get("RANK", "0"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (summary.run_dir / f"rss_rank{rank}.json").write_text(json.dumps({"peak_rss_mib": peak_mib}))


def measure(nproc: int, model: Path, root: Path, steps: int, index: int) -> dict:
    run_dir = root / f"run_{nproc}_{index}"
    job = root / f"job_{nproc}_{index}.json"
    job.write_text(json.dumps(overrides(model, run_dir, steps)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "src")}
    script = [str(Path(__file__).resolve()), "--worker", str(job)]
    if nproc == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        command += script
    subprocess.run(command, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    rows = [r for r in rows if "timing_s/step" in r][1:]  # the first step pays one-off costs
    seconds = statistics.median(r["timing_s/step"] for r in rows)
    tokens = (
        statistics.median(r["response_length/mean"] + r["prompt_length/mean"] for r in rows)
        * PROMPTS
        * SAMPLES
    )
    rss = [json.loads((run_dir / f"rss_rank{r}.json").read_text())["peak_rss_mib"] for r in range(nproc)]
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker)

    import torch
    from safetensors.torch import load_file

    from sapo.models.tiny import TinyModelSpec, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        model = build_tiny_model(root / "model", TinyModelSpec(arch="qwen3", **SPEC))
        params = sum(t.numel() for t in load_file(str(model / "model.safetensors")).values())
        results: dict[int, list[dict]] = {1: [], 2: []}
        for index in range(args.repeats):
            for nproc in (1, 2):
                results[nproc].append(measure(nproc, model, root, args.steps, index))
    print(f"model: Qwen3 {params / 1e6:.1f}M parameters; {os.cpu_count()} CPU cores; 1 thread per process")
    print(f"{'processes':>9} | {'s/step':>7} | {'tokens/s':>8} | {'peak RSS / process (MiB)':>26} | speed-up")
    base = statistics.median(r["seconds"] for r in results[1])
    for nproc, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        tokens = statistics.median(r["tokens_per_s"] for r in runs)
        rss = " / ".join(f"{max(r['rss'][i] for r in runs):.0f}" for i in range(nproc))
        print(f"{nproc:>9} | {seconds:7.2f} | {tokens:8.0f} | {rss:>26} | {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
