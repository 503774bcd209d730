"""SIGKILL `sapo train` at random moments, resume it until it finishes, compare with a run never killed.

    PYTHONPATH=src python3 benchmarks/kill_resume.py --trials 50 --processes 1,2 --seed 0

A trial starts a short run (a tiny random Qwen3, 6 steps, a checkpoint after every step, validation every 3
steps) and SIGKILLs it one to three times: either at a moment drawn over the measured length of an
uninterrupted run, or as soon as the n-th checkpoint's temporary directory appears (plus 0-20 ms), so that
some kills land inside a save. Each time it is restarted with ``trainer.resume_mode=auto``; the last attempt
runs to the end. Then everything the run left must equal the uninterrupted run's: every checkpoint's
weights, optimizer moments, scheduler, sampler and RNG states (bit for bit: CPU, one thread), the exported
weights, ``metrics.jsonl`` (every value but timings, one record per step) and ``val_generations.jsonl``.

Two-process trials run ``torchrun --standalone --nproc_per_node 2 -m sapo train ... trainer.n_gpus_per_node=2
trainer.device=cpu`` and SIGKILL one rank (drawn); torchrun must then stop the other rank and exit, and
the resumed run must equal an uninterrupted two-process run. The trials alternate over ``--processes``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sapo.models.tiny import TinyModelSpec, build_tiny_model
from sapo.run_dir import META_FILE, SHARDS_DIR, STEP_PREFIX, read_metrics

STEPS = 6
TIMING_PREFIXES = ("timing_s/", "perf/throughput", "perf/gen_tokens_per_s")
HANG_S = 120.0  # after a rank is killed, the job must be gone within this (a hang is a failure)
ATTEMPT_S = 300.0  # one attempt that is not killed must finish within this

# A reward that depends on the response text, so advantages (and updates) are not all zero.
REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (len(solution_str) % 3) / 2.0
"""


# ------------------------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Setup:
    """The files every trial shares: a tiny model, train/validation parquet files, a reward function."""

    root: Path
    model: str
    train_file: str
    val_file: str
    reward: str


def prepare(root: Path) -> Setup:
    root.mkdir(parents=True, exist_ok=True)
    spec = TinyModelSpec(
        arch="qwen3",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    model = str(build_tiny_model(root / "model", spec))
    train_file, val_file = root / "train.parquet", root / "test.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(12, seed=0)), train_file)
    pq.write_table(pa.Table.from_pylist(_rows(4, seed=1)), val_file)
    reward = root / "reward.py"
    reward.write_text(REWARD)
    return Setup(root, model, str(train_file), str(val_file), str(reward))


def _rows(count: int, seed: int) -> list[dict]:
    """Prompts in verl's gsm8k layout."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append(
            {
                "data_source": "openai/gsm8k",
                "prompt": [{"role": "user", "content": f"{a}+{b}? End with #### answer."}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": "train", "index": i},
            }
        )
    return rows


def overrides(setup: Setup, run_dir: Path, processes: int) -> list[str]:
    """6 steps of 4 prompts x 2 responses (an epoch is 3 steps), 2 PPO epochs of 2 shuffled mini-batches,
    cosine schedule with warm-up, validation every 3 steps, a checkpoint after every step."""
    out = [
        f"actor_rollout_ref.model.path={setup.model}",
        f"data.train_files={setup.train_file}",
        f"data.val_files={setup.val_file}",
        f"custom_reward_function.path={setup.reward}",
        "data.train_batch_size=4",
        "data.max_prompt_length=64",
        "data.max_response_length=6",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.actor.ppo_epochs=2",
        "actor_rollout_ref.actor.shuffle=true",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=2",
        f"trainer.total_training_steps={STEPS}",
        "trainer.save_freq=1",
        "trainer.test_freq=3",
        "trainer.log_val_generations=2",
        "trainer.logger=[]",
        "trainer.resume_mode=auto",
        "trainer.device=cpu",
        "trainer.cpu_threads=1",
        f"trainer.default_local_dir={run_dir}",
    ]
    if processes > 1:
        out.append(f"trainer.n_gpus_per_node={processes}")
    return out


def command(setup: Setup, run_dir: Path, processes: int) -> list[str]:
    """One process: ``python -m sapo train``; several: the same under ``torchrun --standalone``."""
    train = ["-m", "sapo", "train", *overrides(setup, run_dir, processes)]
    if processes == 1:
        return [sys.executable, *train]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    return launcher + train


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + (os.pathsep + path if path else "")}


# ------------------------------------------------------------------------------------ one attempt
@dataclasses.dataclass
class Kill:
    """When to SIGKILL an attempt: ``at`` ``delay_s`` seconds after launch, or (``save``) ``delay_s`` after
    the temporary directory of this attempt's ``nth_save``-th checkpoint appears. ``rank``: which process
    of a multi-process run."""

    mode: str
    delay_s: float
    nth_save: int = 0
    rank: int = 0

    def label(self, processes: int) -> str:
        where = (
            f"{self.delay_s:.2f}s"
            if self.mode == "at"
            else f"save#{self.nth_save}+{self.delay_s * 1e3:.0f}ms"
        )
        return where + (f" r{self.rank}" if processes > 1 else "")


@dataclasses.dataclass
class Attempt:
    kill: Kill | None
    fired: bool  # the kill was sent (a run may finish before its moment)
    in_save: bool  # a checkpoint's temporary directory existed when it was sent
    returncode: int | None
    seconds: float
    stop_s: float  # from the kill to the end of the whole job (torchrun stopping the other ranks)
    log: Path


def _saves_seen(run_dir: Path, before: set[str]) -> tuple[set[int], bool]:
    """Steps whose checkpoint this attempt has started (a temporary directory, or a new step directory),
    and whether a temporary directory exists now."""
    steps, saving = set(), False
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return steps, saving
    for name in names:
        if name.startswith(f".tmp_{STEP_PREFIX}"):
            saving = True
            steps.add(int(name[len(f".tmp_{STEP_PREFIX}") :].split(".", 1)[0]))
        elif name.startswith(STEP_PREFIX) and name not in before and name[len(STEP_PREFIX) :].isdigit():
            steps.add(int(name[len(STEP_PREFIX) :]))
    return steps, saving


def _wait_for_moment(proc: subprocess.Popen, run_dir: Path, kill: Kill, start: float) -> bool:
    """Poll (every 0.5 ms) until the kill is due; False if the job ended first."""
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    started: set[int] = set()
    while proc.poll() is None:
        if kill.mode == "at" and time.monotonic() - start >= kill.delay_s:
            return True
        if kill.mode == "save":
            steps, _ = _saves_seen(run_dir, before)
            started |= steps
            if len(started) >= kill.nth_save:
                deadline = time.monotonic() + kill.delay_s
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.0002)
                return proc.poll() is None
        time.sleep(0.0005)
    return False


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the child of ``launcher`` (torchrun) whose environment says ``RANK=<rank>``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == launcher and f"\0RANK={rank}\0" in "\0" + Path(f"/proc/{entry}/environ").read_text():
                return int(entry)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _victim(proc: subprocess.Popen, processes: int, rank: int) -> int | None:
    """The process to kill: the run itself, or one rank (waiting for torchrun to start it)."""
    if processes == 1:
        return proc.pid
    while proc.poll() is None:
        pid = _rank_pid(proc.pid, rank)
        if pid is not None:
            return pid
        time.sleep(0.005)
    return None


def attempt(setup: Setup, run_dir: Path, processes: int, kill: Kill | None, log: Path) -> Attempt:
    """Start the run (resume_mode=auto), SIGKILL it (or one rank) when ``kill`` says, wait for the end."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command(setup, run_dir, processes),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,  # its own process group, so nothing outlives the attempt
        )
    fired = in_save = False
    killed_at = None
    try:
        if kill is not None and _wait_for_moment(proc, run_dir, kill, start):
            pid = _victim(proc, processes, kill.rank)
            if pid is not None:
                in_save = _saves_seen(run_dir, set())[1]
                try:
                    os.kill(pid, signal.SIGKILL)
                    fired, killed_at = True, time.monotonic()
                except ProcessLookupError:  # it ended between the check and the kill
                    pass
        returncode = proc.wait(timeout=HANG_S if fired else ATTEMPT_S)
    except subprocess.TimeoutExpired:
        returncode = None  # a hang: reported as a failure
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of this attempt's process group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    end = time.monotonic()
    stop_s = end - killed_at if killed_at is not None else 0.0
    return Attempt(kill, fired, in_save, returncode, end - start, stop_s, log)


# -------------------------------------------------------------------------------------- comparison
def _diff(got, want, where: str, out: list[str]) -> None:
    """Append to ``out`` where two loaded states differ (tensors bit for bit: dtype, shape, every value)."""
    if isinstance(want, torch.Tensor):
        same = (
            isinstance(got, torch.Tensor)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and torch.equal(got, want)
        )
        if not same:
            out.append(f"{where}: tensors differ")
    elif isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            out.append(f"{where}: keys differ")
            return
        for key in want:
            _diff(got[key], want[key], f"{where}.{key}", out)
    elif isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            out.append(f"{where}: lengths differ")
            return
        for i, (a, b) in enumerate(zip(got, want)):
            _diff(a, b, f"{where}[{i}]", out)
    elif got != want:
        out.append(f"{where}: {got!r} != {want!r}")


def checkpoint_state(path: Path) -> dict:
    """Everything a checkpoint holds, loaded: each ``*.pt`` file, the ``torch.distributed.checkpoint``
    shards of a multi-process save (gathered into one dict, no process group needed), and ``meta.json``
    without its time stamp."""
    state = {file.name: torch.load(file, weights_only=True) for file in sorted(path.glob("*.pt"))}
    if (path / SHARDS_DIR).is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(str(path / SHARDS_DIR), f"{tmp}/all.pt")
            state[SHARDS_DIR] = torch.load(f"{tmp}/all.pt", weights_only=True)
    meta = json.loads((path / META_FILE).read_text())
    meta.pop("saved_at", None)
    state[META_FILE] = meta
    return state


def _records(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in record.items() if not k.startswith(TIMING_PREFIXES)}
        for record in read_metrics(run_dir)
    ]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def compare_runs(got: Path, want: Path) -> list[str]:
    """What differs between run directory ``got`` (killed and resumed) and ``want`` (never stopped); empty
    when they agree."""
    problems: list[str] = []
    got_records, want_records = _records(got), _records(want)
    if [r["step"] for r in got_records] != [r["step"] for r in want_records]:
        problems.append(
            f"metrics steps {[r['step'] for r in got_records]} != {[r['step'] for r in want_records]}"
        )
    else:
        for a, b in zip(got_records, want_records):
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            if keys:
                problems.append(f"metrics step {b['step']}: {', '.join(keys[:4])} differ")
    if _lines(got / "val_generations.jsonl") != _lines(want / "val_generations.jsonl"):
        problems.append("val_generations.jsonl differs")
    names = lambda run: sorted(p.name for p in run.glob(f"{STEP_PREFIX}*"))  # noqa: E731
    if names(got) != names(want):
        problems.append(f"checkpoints {names(got)} != {names(want)}")
    for path in sorted(want.glob(f"{STEP_PREFIX}*")):
        if (got / path.name).is_dir():
            _diff(checkpoint_state(got / path.name), checkpoint_state(path), path.name, problems)
    from safetensors.torch import load_file

    exported = "hf_model/model.safetensors"
    if not (got / exported).is_file():
        problems.append(f"no {exported}")
    else:
        _diff(load_file(got / exported), load_file(want / exported), exported, problems)
    leftovers = sorted(p.name for p in got.glob(".tmp_*")) + sorted(p.name for p in got.glob(".old_*"))
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    return problems


# ---------------------------------------------------------------------------------------- a trial
@dataclasses.dataclass
class Reference:
    processes: int
    run_dir: Path
    seconds: float


@dataclasses.dataclass
class Trial:
    number: int
    processes: int
    attempts: list[Attempt]
    problems: list[str]

    @property
    def survived(self) -> bool:
        return not self.problems

    @property
    def kills(self) -> list[Attempt]:
        return [a for a in self.attempts if a.fired]


def reference_run(setup: Setup, processes: int) -> Reference:
    """The uninterrupted run trials are compared with; its length sets the range of kill moments."""
    run_dir = setup.root / f"reference_{processes}"
    shutil.rmtree(run_dir, ignore_errors=True)
    done = attempt(setup, run_dir, processes, None, setup.root / f"reference_{processes}.log")
    if done.returncode != 0:
        raise RuntimeError(
            f"the uninterrupted {processes}-process run failed:\n{done.log.read_text()[-4000:]}"
        )
    return Reference(processes, run_dir, done.seconds)


def plan_kills(rng: random.Random, reference: Reference) -> list[Kill]:
    """One to three kills, each at a moment drawn over 5-85% of the uninterrupted run's length (a later one
    often comes after the end, the machine's load varying), or just after the
    temporary directory of this attempt's 1st-3rd checkpoint appears (0 ms, or 0-20 ms after)."""
    kills = []
    for _ in range(rng.randint(1, 3)):
        rank = rng.randrange(reference.processes)
        if rng.random() < 0.5:
            kills.append(Kill("at", rng.uniform(0.05, 0.85) * reference.seconds, rank=rank))
        else:
            delay = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.02)
            kills.append(Kill("save", delay, nth_save=rng.randint(1, 3), rank=rank))
    return kills


def run_trial(setup: Setup, reference: Reference, number: int, seed: int) -> Trial:
    """Kill as planned (resuming after each kill), finish with an attempt that is not killed, compare."""
    rng = random.Random(f"{seed}-{number}")
    trial_dir = setup.root / f"trial_{number:03d}"
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    run_dir, attempts = trial_dir / "run", []
    for kill in [*plan_kills(rng, reference), None]:
        done = attempt(setup, run_dir, reference.processes, kill, trial_dir / f"attempt_{len(attempts)}.log")
        attempts.append(done)
        if done.returncode is None:
            return Trial(number, reference.processes, attempts, [f"attempt {len(attempts)} hung: {done.log}"])
        if not done.fired:
            break
    last = attempts[-1]
    if last.fired or last.returncode != 0:
        tail = last.log.read_text()[-600:].strip().replace("\n", " | ")
        return Trial(number, reference.processes, attempts, [f"last attempt exit {last.returncode}: {tail}"])
    problems = compare_runs(run_dir, reference.run_dir)
    if not problems:
        shutil.rmtree(trial_dir)  # a failing trial's files stay for a look
    return Trial(number, reference.processes, attempts, problems)


# ------------------------------------------------------------------------------------------ report
def table_row(trial: Trial) -> str:
    moments = ", ".join(
        a.kill.label(trial.processes) + ("" if a.fired else " (ended first)")
        for a in trial.attempts
        if a.kill is not None
    )
    inside = sum(a.in_save for a in trial.kills)
    stops = (
        ""
        if trial.processes == 1 or not trial.kills
        else f"; job gone {max(a.stop_s for a in trial.kills):.1f}s after"
    )
    result = "survived" if trial.survived else "FAILED: " + "; ".join(trial.problems[:3])
    return (
        f"| {trial.number} | {trial.processes} | {moments}{stops} | {inside} / {len(trial.kills)} | "
        f"{len(trial.attempts) - 1} | {result} |"
    )


TABLE_HEAD = (
    "| trial | processes | kill moments | kills inside a save | resumes | result |\n|---|---|---|---|---|---|"
)


def summary(trials: list[Trial]) -> str:
    killed = sum(bool(t.kills) for t in trials)
    survived = sum(t.survived for t in trials)
    lines = [f"survived {survived} / {len(trials)} trials ({killed} killed at least once)"]
    for processes in sorted({t.processes for t in trials}):
        group = [t for t in trials if t.processes == processes]
        kills = [a for t in group for a in t.kills]
        lines.append(
            f"  {processes} process(es): survived {sum(t.survived for t in group)} / {len(group)}, "
            f"{len(kills)} kills, {sum(a.in_save for a in kills)} inside a save"
        )
    return "\n".join(lines)


def run_trials(setup: Setup, processes: list[int], trials: int, seed: int, echo=print) -> list[Trial]:
    """``trials`` trials, trial i with ``processes[i % len(processes)]`` processes, each compared with an
    uninterrupted run of as many processes."""
    references = {}
    for count in sorted(set(processes)):
        references[count] = reference_run(setup, count)
        echo(f"uninterrupted {count}-process run: {references[count].seconds:.1f} s")
    echo(TABLE_HEAD)
    results = []
    for number in range(1, trials + 1):
        trial = run_trial(setup, references[processes[(number - 1) % len(processes)]], number, seed)
        echo(table_row(trial))
        results.append(trial)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--processes",
        default="1,2",
        help="process counts the trials cycle through: 1,2 (half each), 1,1,1,1,2 (one in five with 2)",
    )
    parser.add_argument(
        "--workdir", help="where the runs go (default: a temporary directory, removed if all survive)"
    )
    args = parser.parse_args()
    processes = [int(p) for p in args.processes.split(",")]
    if any(p < 1 for p in processes):
        parser.error("--processes: counts of 1 or more, separated by commas")
    start = time.monotonic()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kill_resume_"))
    trials = run_trials(prepare(root), processes, args.trials, args.seed, echo=lambda s: print(s, flush=True))
    print(summary(trials))
    print(f"wall time {time.monotonic() - start:.0f} s")
    if not all(t.survived for t in trials):
        print(f"the failing trials' runs and logs: {root}/trial_*")
    elif not args.workdir:
        shutil.rmtree(root)
    return 0 if all(t.survived for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
