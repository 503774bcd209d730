"""Generation throughput: sapo's `hf` and `vllm` rollout engines vs transformers' `model.generate`.

Same model (sapo.models.tiny defaults: Qwen3, hidden 256, intermediate 768, 4 layers, 4 heads, head_dim 64,
104-token character vocabulary), same prompts (8 prompts of ~25 tokens), same sampling (n=8 samples per
prompt, temperature 1, top-p 1, top-k off), 32 and 128 new tokens, float32 on CPU.

tokens/s counts generated response tokens (up to and including EOS) over wall time. The FLOP floor is
2 x parameters x generated tokens / the fp32 matmul rate measured in this run (2048 x 2048 x 2048).

With vLLM installed (`pip install -e ".[vllm]"`), the `vllm` engine runs beside them on the same prompts,
and a second table gives the seconds of one weight sync (`update_weights`: vLLM's reload plus the
stale-policy check, and the check alone) by model size.

    PYTHONPATH=src python3 benchmarks/rollout_throughput.py [--repeats 2] [--threads 1] [--profile]
                                                            [--no-vllm] [--sync-sizes 256 512 1024]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib.util
import pstats
import tempfile
import time

import torch

from sapo.models.loading import load_model_and_tokenizer
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.rollout.base import SamplingParams
from sapo.rollout.hf import HFRolloutEngine

PROMPTS = [  # 22-27 characters = tokens
    "Compute 123 + 456 = ?",
    "What is the capital of Peru?",
    "A haiku about autumn rain:",
    "Three primes above 10 are",
    "Solve 3x + 7 = 22 for x:",
    "A color starting with B:",
    "How many legs has a spider?",
    "Translate 'cat' to German:",
]


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def run_engine(engine, prompts, sampling):
    start = time.perf_counter()
    batch = engine.generate(prompts, sampling)
    return time.perf_counter() - start, int(batch.response_mask.sum())


def run_generate(model, tokenizer, prompts, sampling):
    eos = tokenizer.eos_token_id
    enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt", padding_side="left")
    torch.manual_seed(sampling.seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=sampling.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
    elapsed = time.perf_counter() - start
    response = out[:, enc["input_ids"].shape[1] :]  # [N, R]
    # Tokens up to and including the first EOS (generate pads finished rows with the pad token).
    is_eos = (response == eos).long()
    before_eos = (is_eos.cumsum(-1) - is_eos) == 0
    return elapsed, int(before_eos.sum())


def sync_spec(hidden: int) -> TinyModelSpec:
    """A Qwen3 of width ``hidden``: 8 layers, 4x MLP, head_dim 64."""
    return TinyModelSpec(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=8,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=256,
    )


def vllm_engine(model, tokenizer, **kwargs):
    from sapo.rollout import make_rollout_engine

    return make_rollout_engine("vllm", model, tokenizer, enforce_eager=True, max_model_len=256, **kwargs)


def sync_seconds(tmp: str, hidden: int, repeats: int) -> tuple[int, float, float]:
    """``(parameters, seconds per update_weights, seconds of its stale-policy check)``, best of repeats."""
    from sapo.rollout.weights import weight_stream

    model, tokenizer = load_model_and_tokenizer(build_tiny_model(f"{tmp}/s{hidden}", sync_spec(hidden)))
    engine = vllm_engine(model, tokenizer)
    sync, check = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        engine.update_weights(weight_stream(model))
        sync = min(sync, time.perf_counter() - start)
        start = time.perf_counter()
        engine.verify_weights(weight_stream(model))
        check = min(check, time.perf_counter() - start)
    engine.close()
    return sum(p.numel() for p in model.parameters()), sync, check


def print_sync_table(tmp: str, sizes: list[int], repeats: int) -> None:
    print("\n| hidden | params | weight sync s (reload + check) | of which check s |")
    print("|---|---|---|---|")
    for hidden in sizes:
        params, sync, check = sync_seconds(tmp, hidden, repeats)
        print(f"| {hidden} | {params / 1e6:.1f}M | {sync:.3f} | {check:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best is reported)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--profile", action="store_true", help="cProfile one 128-token run of each")
    parser.add_argument("--no-vllm", action="store_true", help="leave the vllm engine out")
    parser.add_argument("--sync-sizes", type=int, nargs="*", default=[256, 512, 1024], help="hidden sizes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP threads make small matmuls "
        "tens of times slower whenever another process holds a core)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_vllm = not args.no_vllm and importlib.util.find_spec("vllm") is not None
    with tempfile.TemporaryDirectory() as tmp:  # vLLM loads the model from its directory
        # transformers' model: the benchmark compares the engines with its generate
        model, tokenizer = load_model_and_tokenizer(build_tiny_model(f"{tmp}/m", TinyModelSpec()), impl="hf")
        model.eval()
        engine = HFRolloutEngine(model, tokenizer)
        methods = [("generate", run_generate, (model, tokenizer)), ("sapo hf", run_engine, (engine,))]
        if use_vllm:
            methods.append(("sapo vllm", run_engine, (vllm_engine(model, tokenizer),)))
        print_header(model, tokenizer, engine)
        print_throughput_table(methods, tokenizer, args)
        if use_vllm and args.sync_sizes:
            methods[-1][2][0].close()
            print_sync_table(tmp, args.sync_sizes, args.repeats)
        if args.profile:
            profile(methods)


def print_header(model, tokenizer, engine) -> None:
    params = sum(p.numel() for p in model.parameters())
    lengths = sorted(len(tokenizer(text)["input_ids"]) for text in PROMPTS)
    print(
        f"threads {torch.get_num_threads()}, params {params / 1e6:.2f}M, "
        f"fp32 matmul {measured_gflops():.0f} GFLOP/s, "
        f"prompt tokens {lengths[0]}-{lengths[-1]}, fast path {engine.uses_fast_path()}"
    )


def print_throughput_table(methods, tokenizer, args) -> None:
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    params = sum(p.numel() for p in methods[0][2][0].parameters())
    gflops = measured_gflops()
    warm = SamplingParams(n=2, max_new_tokens=4, seed=0)
    for _, fn, target in methods:
        fn(*target, prompts, warm)
    print("| new tokens | method | time s | tokens | tokens/s | FLOP floor s | % of floor | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for new_tokens in args.new_tokens:
        sampling = SamplingParams(n=8, temperature=1.0, max_new_tokens=new_tokens, seed=1)
        results = {}
        for name, fn, target in methods:
            runs = [fn(*target, prompts, sampling) for _ in range(args.repeats)]
            results[name] = min(runs, key=lambda r: r[0] / r[1])
        base = results["generate"][1] / results["generate"][0]
        for name, (elapsed, tokens) in results.items():
            floor = 2 * params * tokens / (gflops * 1e9)
            print(
                f"| {new_tokens} | {name} | {elapsed:.3f} | {tokens} | {tokens / elapsed:,.0f} | "
                f"{floor:.3f} | {100 * floor / elapsed:.0f}% | {tokens / elapsed / base:.2f}x |"
            )


@functools.cache
def measured_gflops() -> float:
    """The fp32 matmul rate, measured once per run."""
    return matmul_gflops()


def profile(methods) -> None:
    tokenizer = methods[0][2][1]
    prompts = [tokenizer(text)["input_ids"] for text in PROMPTS]
    sampling = SamplingParams(n=8, max_new_tokens=128, seed=1)
    for name, fn, target in methods:
        profiler = cProfile.Profile()
        profiler.runcall(fn, *target, prompts, sampling)
        print(f"\n--- cProfile: {name}, 128 new tokens (top 15 by own time) ---")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
