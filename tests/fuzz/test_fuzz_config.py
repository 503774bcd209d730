"""Config overrides fuzzed through the ``sapo config`` command (in-process ``sapo.cli.main``): every
input either passes, or exits 2 with a one-paragraph message naming the key or the value; nothing else
(an exception escaping ``main`` is a traceback the user would see)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sapo import cli
from sapo.config import all_keys, load_config, validate
from sapo.errors import ConfigError

KEYS = all_keys()
SECTIONS = sorted({key.split(".", 1)[0] for key in KEYS})

# Realistic bad (and good) values, as text on a command line.
NUMBERS = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([0, -1, 2**31, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
).map(str)
SPECIAL = st.sampled_from(
    [
        "",
        " ",
        "null",
        "None",
        "~",
        "true",
        "false",
        "nan",
        ".nan",
        "inf",
        "-inf",
        ".inf",
        "1e400",
        "1e-6",
        "[]",
        "[1, 2]",
        "[a, b]",
        "[0.9]",
        "{}",
        "{a: 1}",
        "[unclosed",
        "'quoted'",
        "${",
        "${nope}",
        "${oc.env:SAPO_FUZZ_UNSET}",
        "${oc.select:nope,3}",
        "${data.train_batch_size}",
        "sapoo",
        "AdamW",
        "console",
        "bf16",
        "auto",
        "-",
        "0x10",
        "007",
    ]
)
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = st.one_of(NUMBERS, SPECIAL, TEXT)


def run_config_command(*overrides: str) -> tuple[int, str]:
    """Exit status and stderr of ``sapo config OVERRIDES`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = cli.main(["config", *overrides])
    return status, err.getvalue()


def names_key(message: str, key: str) -> bool:
    """The message names ``key``: the dotted key, or its last part as a whole word (messages about
    two keys, e.g. a batch not divisible by ppo_mini_batch_size, name the second by its leaf)."""
    leaf = key.rpartition(".")[2]
    if key in message:
        return True
    return len(leaf) > 2 and re.search(rf"(?<![\w]){re.escape(leaf)}(?![\w])", message) is not None


def assert_exit_is_clean(status: int, stderr: str, key: str, value: str) -> None:
    assert status in (0, 2), (status, stderr)
    if status == 2:
        assert stderr.startswith("sapo config: error: "), stderr
        assert "Traceback" not in stderr
        assert names_key(stderr, key) or (value.strip() and value in stderr), (key, value, stderr)


@settings(max_examples=400)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_one_override_is_accepted_or_named(fuzz_cases, key, value):
    fuzz_cases.tick("config: key=value")
    status, stderr = run_config_command(f"{key}={value}")
    assert_exit_is_clean(status, stderr, key, value)


def typo(key: str, data) -> str:
    """A one-character slip in ``key``: a letter dropped, doubled, swapped with the next, or replaced."""
    i = data.draw(st.integers(0, len(key) - 1))
    kind = data.draw(st.sampled_from(["drop", "double", "swap", "replace"]))
    if kind == "drop":
        return key[:i] + key[i + 1 :]
    if kind == "double":
        return key[:i] + key[i] + key[i:]
    if kind == "swap" and i < len(key) - 1:
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    return key[:i] + data.draw(st.sampled_from("abcdeilnorstuz_.")) + key[i + 1 :]


@settings(max_examples=200)
@given(key=st.sampled_from(KEYS), data=st.data())
def test_a_misspelt_key_is_named(fuzz_cases, key, data):
    fuzz_cases.tick("config: misspelt key")
    wrong = typo(key, data)
    status, stderr = run_config_command(f"{wrong}=1")
    assert status in (0, 2), stderr
    if status == 2:
        assert wrong.strip() in stderr, stderr  # the key as typed (or, if it is a real key, its own error)


ROLLOUT = "actor_rollout_ref.rollout"
SAMPLING_KEYS = [
    f"{ROLLOUT}.{name}"
    for name in ("n", "temperature", "top_p", "top_k", "do_sample", "response_length")
    + tuple(f"val_kwargs.{k}" for k in ("n", "temperature", "top_p", "top_k", "do_sample"))
]
SAMPLING_VALUES = st.one_of(
    st.integers(-3, 9).map(str),
    st.sampled_from(["0.5", "1.0", "0", "nan", "inf", "-0.1", "1.5", "true", "false", "null"]),
)


@settings(max_examples=250)
@given(overrides=st.dictionaries(st.sampled_from(SAMPLING_KEYS), SAMPLING_VALUES, min_size=1, max_size=4))
def test_what_validate_accepts_the_rollout_accepts(fuzz_cases, overrides):
    """Sampling keys together (batch sizes fixed so the config is otherwise valid): whatever ``validate``
    accepts, the rollout's SamplingParams accept too, so no error is left for the first training step."""
    from sapo.trainer.settings import train_sampling, val_sampling

    fuzz_cases.tick("config: sampling keys together")
    batch = ["data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=8"]
    try:
        config = load_config(None, batch + [f"{k}={v}" for k, v in overrides.items()])
        validate(config)
    except ConfigError as err:
        assert any(names_key(str(err), key) for key in overrides), (overrides, str(err))
        return
    train_sampling(config)
    val_sampling(config)


def float_keys() -> list[str]:
    from sapo.config.keys import locate
    from sapo.config.schema import Config

    return [key for key in KEYS if locate(Config(), key)[2] in (float, float | None)]


NAN_SPELLINGS = st.sampled_from(["nan", "NaN", ".nan", "-nan", ".NaN", "${oc.env:SAPO_FUZZ_NAN}"])


@settings(max_examples=120)
@given(key=st.sampled_from(float_keys()), spelling=NAN_SPELLINGS)
def test_nan_is_never_accepted(fuzz_cases, key, spelling, monkeypatch_env_nan):
    """NaN fails no ``x > 0`` check, so only refusing it outright keeps it out of a run."""
    fuzz_cases.tick("config: NaN in a float key")
    status, stderr = run_config_command(f"{key}={spelling}")
    assert status == 2, (key, spelling)
    assert key in stderr and "nan" in stderr.lower(), stderr


SIZE_KEYS = [
    "data.train_batch_size",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    f"{ROLLOUT}.n",
    "data.max_prompt_length",
    "trainer.n_gpus_per_node",
]


@settings(max_examples=120)
@given(key=st.sampled_from(SIZE_KEYS), size=st.integers(2**40, 10**40))
def test_a_huge_size_is_answered(fuzz_cases, key, size):
    """A huge integer size gets its answer (accepted, or exit 2 naming it), not a loop over its range."""
    fuzz_cases.tick("config: huge size")
    status, stderr = run_config_command(f"{key}={size}")
    assert_exit_is_clean(status, stderr, key, str(size))


YAML_TEXTS = st.one_of(
    st.sampled_from(
        [
            "",
            "- a\n- b\n",
            "42\n",
            "data: [1, 2]\n",
            "data:\n  train_batch_size: [1]\n",
            "data: {\n",
            "trainer:\n  total_epochs: .nan\n",
            "actor_rollout_ref:\n  rollout:\n    n: -1\n",
            "\t\tbad: tab\n",
            "data:\n  train_batch_size: 8\n  train_batch_size: 9\n",
            "datta:\n  x: 1\n",
            "!!python/name:os.system\n",
        ]
    ),
    st.text(max_size=40),
)


@settings(max_examples=150)
@given(text=YAML_TEXTS)
def test_a_config_file_is_accepted_or_named(fuzz_cases, text, tmp_path_factory):
    fuzz_cases.tick("config: --config FILE")
    path = tmp_path_factory.mktemp("yaml") / "run.yaml"
    path.write_text(text, encoding="utf-8")
    status, stderr = run_config_command("--config", str(path))
    assert status in (0, 2), stderr
    if status == 2:
        # a problem of the file itself names the file; a problem of a key inside names the key
        assert str(path) in stderr or any(f"{section}." in stderr for section in SECTIONS), stderr


BAD_COMMAND_LINES = [
    ["config", "data.train_batch_size=10000000000000000000000000000001"],
    ["config", "actor_rollout_ref.actor.clip_ratio=nan"],
    ["config", "data.apply_chat_template_kwargs.note=[unclosed", "actor_rollout_ref.rollout.top_k=-7"],
    ["train", "actor_rollout_ref.rollout.temperature=inf"],
    ["train", "data.train_batch_sise=8"],
]


def test_the_cli_exits_2_without_a_traceback(fuzz_cases):
    """A handful of bad command lines in a real ``sapo`` process: status 2, one error, no traceback."""
    for argv in BAD_COMMAND_LINES:
        fuzz_cases.tick("config: sapo subprocess")
        done = subprocess.run(
            [sys.executable, "-m", "sapo", *argv], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith(f"sapo {argv[0]}: error: ") and "Traceback" not in done.stderr
        key = argv[-1].split("=")[0]
        assert key in done.stderr, (argv, done.stderr)
