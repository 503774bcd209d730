"""Supervised warm-start of a tiny model on a built-in task, so that RL starts from a policy that is right
sometimes (reward neither always 0 nor always 1).

1. Build a tiny randomly initialised model with the task's character vocabulary
   (:func:`sapo.models.tiny.build_tiny_model`; default: Llama, hidden 128, 4 layers, 4 heads, ~1.05M
   parameters, the prototype of DESIGN.md).
2. Draw a pool of training problems and a disjoint dev set from the seed (:func:`generate_splits`). The
   seed's first 1000 problems are held out (the dev set is their start), so that the validation split of
   ``sapo data``/``generate_splits`` with the same seed and knobs (``test_size <= 1000``) holds no prompt
   the warm-start trained on.
3. Train on ``prompt + solution + EOS`` with the loss on the solution and EOS tokens only (AdamW).
4. Every ``check_every`` steps, decode the dev prompts greedily and stop as soon as exact-match accuracy
   reaches ``target_accuracy``, or at ``max_steps`` / ``max_seconds``. Supervised accuracy on addition
   jumps from a few percent to most answers within ~150 steps at a seed-dependent moment, so a fixed step
   count would be either too short or overshoot.
5. Save model + tokenizer + ``warm_start.json`` (parameters, achieved dev accuracy, steps, seconds) under
   ``cache_dir/<task>-<hash of the parameters>``; the next call with the same parameters returns that
   directory without training.

The step and time caps can stop training below the target; the achieved accuracy is recorded either way
(read it with :func:`warm_start_info`) and a warning is logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sapo.data.tasks import Task, generate_splits, get_task
from sapo.errors import DataError
from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.optim import AdamW
from sapo.run_dir import remove_orphans

log = logging.getLogger(__name__)
INFO_FILE = "warm_start.json"
FORMAT_VERSION = 2
HELD_OUT = 1000  # problems of the seed never trained on (see _train)

# The prototype's model (DESIGN.md): Llama, hidden 128, 4 layers, 4 heads.
DEFAULT_SPEC = TinyModelSpec(
    arch="llama",
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=128,
)


def warm_start(
    task_name: str,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    knobs: dict | None = None,
    spec: TinyModelSpec = DEFAULT_SPEC,
    target_accuracy: float = 0.2,
    check_every: int = 25,
    max_steps: int = 2000,
    max_seconds: float = 300.0,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    adam_beta2: float = 0.999,
    dev_size: int = 200,
    train_pool_size: int = 20000,
    num_threads: int | None = 1,
    announce: Callable[[str], None] | None = None,
) -> Path:
    """Return the directory of a tiny model fine-tuned on ``task_name`` until its greedy dev accuracy
    reaches ``target_accuracy`` (or a cap stops it); cached by every argument except ``cache_dir``.

    ``max_seconds`` is a safety cap: hitting it makes the result depend on the machine's speed, so the
    step cap and the target are what normally stop training. ``num_threads`` (torch intra-op threads while
    training; None leaves torch's setting) defaults to 1, which is robust on a shared, oversubscribed
    machine (two threads measured 13x slower per step than one there); ``sapo train`` passes None, i.e. the
    run's own ``trainer.cpu_threads``, since two threads on a quiet 2-core machine are ~1.6x faster. The
    thread count is not part of the cache key, and float results can differ in the last bits between
    thread counts, so a cached warm start is the one its first caller trained. ``announce`` (e.g.
    ``print``) is told what is about to happen, and then how it went, when the model is not cached yet.
    """
    task = get_task(task_name)
    params = {
        "format_version": FORMAT_VERSION,
        "task": task.name,
        "knobs": task.resolve_knobs(knobs),
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "target_accuracy": target_accuracy,
        "check_every": check_every,
        "max_steps": max_steps,
        "max_seconds": max_seconds,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "adam_beta2": adam_beta2,
        "dev_size": dev_size,
        "train_pool_size": train_pool_size,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = Path(cache_dir) / f"{task.name}-{key}"
    if not (out_dir / INFO_FILE).exists():
        if announce is not None:
            announce(
                f"warm start: fine-tuning the built-in tiny model on {task.name} until it answers "
                f"{target_accuracy:.0%} of {dev_size} held-out problems (at most {max_steps} steps or "
                f"{max_seconds:.0f} s; about 15 s on a quiet 2-core CPU); cached in {out_dir} for later runs"
            )
        _train_into(out_dir, task, params, num_threads)
        if announce is not None:
            info = warm_start_info(out_dir)
            announce(
                f"warm start: done in {info['seconds']:.0f} s, {info['steps']} steps, held-out accuracy "
                f"{info['dev_accuracy']:.3f}"
            )
    return out_dir


# a warm start trains in <cache>/.tmp_<host>_<pid>_<task>_*: another host sharing the cache has its own pids
TEMP_PREFIX = f".tmp_{socket.gethostname()}_"


def _train_into(out_dir: Path, task: Task, params: dict, num_threads: int | None) -> None:
    """Train in a temporary directory next to ``out_dir``, then rename it to ``out_dir``."""
    cache_dir = out_dir.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_orphans(cache_dir, TEMP_PREFIX)  # what a killed warm start on this host left
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}_{task.name}_", dir=cache_dir))
    previous_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        info = _train(task, params, tmp_dir)
        (tmp_dir / INFO_FILE).write_text(json.dumps({**params, **info}, indent=2))
        try:
            tmp_dir.rename(out_dir)  # atomic: a reader sees no directory or a complete one
        except OSError:  # another process finished the same warm-start first
            shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)


def warm_start_info(model_dir: str | Path) -> dict:
    """The parameters and results recorded by :func:`warm_start`: ``dev_accuracy``, ``steps``,
    ``seconds``, ``reached_target`` and every argument."""
    return json.loads((Path(model_dir) / INFO_FILE).read_text())


def _train(task: Task, params: dict, out_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seed = params["seed"]
    spec = TinyModelSpec(**params["spec"])
    build_tiny_model(out_dir, spec, chars=task.chars, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    train_rows, dev_rows = _problems(task, params)
    examples = [_encode_example(task, tokenizer, row) for row in train_rows]
    step, accuracy, elapsed = _fit(model, tokenizer, task, examples, dev_rows, params)
    reached = accuracy >= params["target_accuracy"]
    if not reached:
        log.warning(
            "warm-start of %s stopped at step %d (%.0f s) with dev accuracy %.3f below the target %.3f",
            task.name,
            step,
            elapsed,
            accuracy,
            params["target_accuracy"],
        )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"dev_accuracy": accuracy, "steps": step, "seconds": round(elapsed, 2), "reached_target": reached}


def _problems(task: Task, params: dict) -> tuple[list[dict], list[dict]]:
    """The training pool and the dev rows."""
    # Hold out the seed's first HELD_OUT problems (the test split of generate_splits / `sapo data` for any
    # test_size up to that) so that RL validation on the same seed never scores a prompt trained on here.
    train_rows, held_out = generate_splits(
        task,
        train_size=params["train_pool_size"],
        test_size=max(HELD_OUT, params["dev_size"]),
        seed=params["seed"],
        knobs=params["knobs"],
        allow_fewer=True,
    )
    dev_rows = held_out[: params["dev_size"]]
    if len(train_rows) < params["batch_size"]:
        raise DataError(
            f"task {task.name!r} with knobs {params['knobs']} has too few distinct problems for a warm-start "
            f"({len(train_rows)} beyond the {len(held_out)} held out): widen the knobs"
        )
    return train_rows, dev_rows


def _fit(model, tokenizer, task: Task, examples, dev_rows, params: dict) -> tuple[int, float, float]:
    """Supervised steps until the dev accuracy target or a cap; returns (steps, accuracy, seconds)."""
    seed = params["seed"]
    optimizer = AdamW(
        model.parameters(),
        lr=params["lr"],
        betas=(0.9, params["adam_beta2"]),
        weight_decay=params["weight_decay"],
    )
    rng = random.Random(seed)
    start = time.monotonic()
    step, accuracy = 0, 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while True:
            model.train()
            input_ids, labels, attention_mask = _collate(
                rng.sample(examples, params["batch_size"]), tokenizer
            )
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.monotonic() - start
            out_of_budget = step >= params["max_steps"] or elapsed >= params["max_seconds"]
            if step % params["check_every"] == 0 or out_of_budget:
                accuracy = dev_accuracy(model, tokenizer, task, dev_rows)
                log.info("warm-start %s step %d loss %.3f dev accuracy %.3f", task.name, step, loss, accuracy)
                if accuracy >= params["target_accuracy"] or out_of_budget:
                    return step, accuracy, elapsed


def _encode_example(task: Task, tokenizer, row: dict) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(row["prompt"][0]["content"], add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(task.solution(row), add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]


def _collate(examples, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` (-100 on prompt and padding) and ``attention_mask``."""
    length = max(len(p) + len(a) for p, a in examples)
    input_ids = torch.full((len(examples), length), tokenizer.pad_token_id)  # [B, T]
    labels = torch.full((len(examples), length), -100)  # [B, T]
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # [B, T]
    for i, (prompt, answer) in enumerate(examples):
        n = len(prompt) + len(answer)
        input_ids[i, :n] = torch.tensor(prompt + answer)
        labels[i, len(prompt) : n] = torch.tensor(answer)
        attention_mask[i, :n] = 1
    return input_ids, labels, attention_mask


@torch.no_grad()
def dev_accuracy(model, tokenizer, task: Task, rows: list[dict], batch_size: int = 200) -> float:
    """Greedy exact-match accuracy of ``model`` on ``rows`` under the task's scorer."""
    model.eval()
    max_new_tokens = max(len(task.solution(row)) for row in rows) + 1
    correct = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        for row, text in zip(chunk, greedy_decode(model, tokenizer, chunk, max_new_tokens)):
            correct += task.score(text, row["reward_model"]["ground_truth"]) == 1.0
    return correct / len(rows)


def greedy_decode(model, tokenizer, rows: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy completions of the rows' raw prompts (left-padded batch through ``generate``)."""
    prompts = [row["prompt"][0]["content"] for row in rows]
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    output = model.generate(
        **batch,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = output[:, batch["input_ids"].shape[1] :]  # [B, new]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
