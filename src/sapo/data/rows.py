"""Read and validate rows in verl's dataset layout, from parquet or jsonl.

A row (one prompt)::

    data_source   str, non-empty        which scorer applies (see sapo.rewards.default_compute_score)
    prompt        list of {"role": str, "content": str} chat messages, or a plain string (a raw prompt)
    ability       str, optional
    reward_model  {"ground_truth": ..., "style": "rule"}; ground_truth must be present and not None
    extra_info    dict, optional        passed to the reward function

``prompt`` is ``data.prompt_key``. A bad row (missing field, wrong type, empty prompt) is reported with its
file, row number and field. ``on_bad_row="error"`` (default) raises :class:`DataError` listing them;
``"skip"`` drops them and logs how many. Row numbers count from 0 in parquet files and lines count from 1 in
jsonl files. Each returned row carries ``"_source"`` (``"FILE row N"``) for later error messages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sapo.errors import DataError

log = logging.getLogger(__name__)
MAX_LISTED = 5


@dataclass(frozen=True)
class BadRow:
    location: str  # "FILE row N" or "FILE line N"
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: field {self.field!r} {self.problem}"


@dataclass
class LoadedRows:
    rows: list[dict]
    bad_rows: list[BadRow]


def row_problem(row, prompt_key: str = "prompt") -> tuple[str, str] | None:
    """``(field, problem)`` for the first thing wrong with ``row``, or None when it is usable."""
    if not isinstance(row, dict):
        return "<row>", f"is a {type(row).__name__}, not an object"
    source = row.get("data_source")
    if not isinstance(source, str) or not source:
        return "data_source", _missing_or_type(row, "data_source", "a non-empty string")
    prompt_problem = _prompt_problem(row.get(prompt_key), prompt_key in row)
    if prompt_problem:
        return prompt_key, prompt_problem
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict):
        return "reward_model", _missing_or_type(row, "reward_model", "an object with a ground_truth")
    if reward_model.get("ground_truth") is None:
        return "reward_model.ground_truth", "is missing (every row needs the reference answer)"
    if row.get("ability") is not None and not isinstance(row["ability"], str):
        return "ability", f"is a {type(row['ability']).__name__}, not a string"
    if row.get("extra_info") is not None and not isinstance(row["extra_info"], dict):
        return "extra_info", f"is a {type(row['extra_info']).__name__}, not an object"
    return None


def _missing_or_type(row: dict, key: str, wanted: str) -> str:
    if row.get(key) is None:
        return f"is missing (must be {wanted})"
    return f"is {row[key]!r:.60}, not {wanted}"


def _prompt_problem(prompt, present: bool) -> str | None:
    if prompt is None:
        return "is missing" if not present else "is null"
    if isinstance(prompt, str):
        return None if prompt.strip() else "is an empty string"
    if not isinstance(prompt, list) or not prompt:
        return "must be a non-empty list of chat messages or a string" if prompt != [] else "is an empty list"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"message {i} has no string 'role'"
        if not isinstance(message.get("content"), str):
            return f"message {i} has no string 'content'"
    if not any(m["content"].strip() for m in prompt):
        return "has only empty messages"
    return None


def read_rows(
    paths: str | Path | list, *, prompt_key: str = "prompt", on_bad_row: str = "error"
) -> LoadedRows:
    """Rows of every file in ``paths`` (parquet or jsonl), validated; see the module docstring."""
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip' (got {on_bad_row!r})")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DataError(
            "no data files given: set data.train_files (and data.val_files) to parquet/jsonl paths"
        )
    rows, bad_rows = [], []
    for path in paths:
        for location, row in _read_file(Path(path)):
            problem = (
                ("<line>", row.problem) if isinstance(row, _Unreadable) else row_problem(row, prompt_key)
            )
            if problem:
                bad_rows.append(BadRow(location, *problem))
            else:
                rows.append({**row, "_source": location})
    if bad_rows and on_bad_row == "error":
        listed = "\n  ".join(str(b) for b in bad_rows[:MAX_LISTED])
        more = f"\n  ... and {len(bad_rows) - MAX_LISTED} more" if len(bad_rows) > MAX_LISTED else ""
        raise DataError(
            f"{len(bad_rows)} bad row(s):\n  {listed}{more}\nfix them, or load with "
            "on_bad_row='skip' to drop them (the count is reported)"
        )
    if bad_rows:
        log.warning("skipped %d bad row(s); first: %s", len(bad_rows), bad_rows[0])
    if not rows:
        raise DataError(f"no usable rows in {', '.join(map(str, paths))}")
    return LoadedRows(rows, bad_rows)


def load_rows(
    paths: str | Path | list, *, prompt_key: str = "prompt", on_bad_row: str = "error"
) -> list[dict]:
    """The usable rows of ``paths``; :func:`read_rows` also returns the skipped ones."""
    return read_rows(paths, prompt_key=prompt_key, on_bad_row=on_bad_row).rows


@dataclass(frozen=True)
class _Unreadable:
    """A jsonl line that holds no JSON value; ``problem`` says why (reported as a bad row)."""

    problem: str


def _parse_line(line: bytes):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return _Unreadable(
            f"is not UTF-8 text (byte {err.start} is {line[err.start : err.start + 1]!r}): "
            "save the file as UTF-8"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return _Unreadable(f"is not valid JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return _Unreadable("is not usable JSON (nested too deeply)")


def _read_file(path: Path):
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: check data.train_files / data.val_files")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            # ParquetFile, not read_table: read_table imports pyarrow.dataset and with it pandas (~40 MiB)
            table = pq.ParquetFile(path).read()
        except Exception as err:
            raise DataError(f"cannot read {path} as parquet ({err}): is it a parquet file?") from err
        for i, row in enumerate(table.to_pylist()):
            yield f"{path} row {i}", row
    elif suffix in (".jsonl", ".json"):
        with path.open("rb") as f:  # bytes: a line that is not UTF-8 is one bad row, not a crash
            for line_number, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{path} line {line_number}", _parse_line(line)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .parquet or .jsonl (one object per line)"
        )
