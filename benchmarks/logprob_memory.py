"""Peak memory and time of token log-probs + entropy, forward + backward: chunked vs naive full logits.

Setting (the issue's): vocabulary 151,936 and hidden 896 (Qwen2.5-0.5B's lm-head, tied embeddings),
8 sequences x 512 tokens (all response tokens after a 1-token prompt), temperature 0.9, float32 on CPU.
The backbone is a single Qwen3 layer (14 heads, 2 KV heads, head_dim 64, intermediate 4864): the
lm-head and the [8, 512, 151936] logits dominate memory, and one layer keeps the run short.

Variants, each in its own subprocess so their peaks do not mix:
- naive: ``model(...).logits`` then verl-style ``logits.div_(T)``, ``log_softmax(...).gather`` and the
  entropy ``logsumexp(z) - sum(softmax(z) * z)``; backward through autograd.
- chunked: `sapo.models.logprobs.token_log_probs(..., compute_entropy=True)` (default chunk size).

Memory: peak resident set size (``ru_maxrss``) of the child minus its RSS just before the timed
forward + backward (model, inputs and parameter gradients' storage excluded from the baseline only where
they exist beforehand; the ``.grad`` buffers allocated by backward are counted in both variants). The child
caps its address space (``--max-gib``) so a runaway variant fails instead of invoking the OOM killer.

    PYTHONPATH=src python3 benchmarks/logprob_memory.py [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

VOCAB, HIDDEN, BATCH, LENGTH, TEMPERATURE = 151_936, 896, 8, 512, 0.9


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _build_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4864,
        num_hidden_layers=1,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _naive(model, ids, mask):
    from sapo.models.logprobs import position_ids_from_mask

    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logits = logits[:, :-1]  # [B, L-1, V] predicts tokens 1..L-1
    logits.div_(TEMPERATURE)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # [B, L-1]
    return log_probs, entropy


def _chunked(model, ids, mask):
    from sapo.models.logprobs import token_log_probs

    return token_log_probs(model, ids, mask, LENGTH - 1, temperature=TEMPERATURE, compute_entropy=True)


def child(variant: str, batch: int, threads: int, max_gib: float) -> None:
    torch.set_num_threads(threads)
    limit = int(max_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    model = _build_model()
    ids = torch.randint(0, VOCAB, (batch, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    baseline = _rss_bytes()
    start = time.perf_counter()
    log_probs, entropy = (_naive if variant == "naive" else _chunked)(model, ids, mask)
    loss = -log_probs.mean() - 0.01 * entropy.mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))
    print(
        json.dumps(
            dict(
                variant=variant,
                batch=batch,
                seconds=elapsed,
                peak_gib=(peak - baseline) / 2**30,
                loss=float(loss),
                grad_norm=grad_norm,
            )
        )
    )


def _run_child(variant: str, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(batch)]
    cmd += ["--threads", str(args.threads), "--max-gib", str(args.max_gib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return dict(variant=variant, batch=batch, error=done.stderr.strip().splitlines()[-1][-120:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8], help="sequences of 512 tokens")
    parser.add_argument(
        "--naive-max-batch",
        type=int,
        default=4,
        help="largest batch the naive variant runs at (8 needs > 20 GiB; see the docs)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=18.0, help="address-space cap of each child")
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.batch, args.threads, args.max_gib)
        return
    print(f"vocab {VOCAB}, hidden {HIDDEN}, sequences x {LENGTH} tokens, threads {args.threads}")
    print("| run | sequences | variant | peak extra memory GiB | forward+backward s | loss | grad norm |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for run in range(1, args.repeats + 1):
        for batch in args.batches:
            variants = ("naive", "chunked") if batch <= args.naive_max_batch else ("chunked",)
            for variant in variants:
                result = results[run, batch, variant] = _run_child(variant, batch, args)
                if "error" in result:
                    print(f"| {run} | {batch} | {variant} | failed: {result['error']} | | | |")
                    continue
                print(
                    f"| {run} | {batch} | {variant} | {result['peak_gib']:.2f} | {result['seconds']:.1f} | "
                    f"{result['loss']:.6f} | {result['grad_norm']:.6f} |"
                )
    for (run, batch, variant), chunked in results.items():
        naive = results.get((run, batch, "naive"))
        if variant == "chunked" and naive and "error" not in naive and "error" not in chunked:
            memory = chunked["peak_gib"] / naive["peak_gib"]
            time_ratio = chunked["seconds"] / naive["seconds"]
            print(
                f"run {run}, {batch} x {LENGTH}: chunked/naive peak memory {memory:.1%}, "
                f"time {time_ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
