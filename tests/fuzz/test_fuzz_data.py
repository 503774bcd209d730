"""Dataset rows fuzzed through the loading path ``sapo train`` uses (``sapo.trainer.setup.build_dataset``:
``load_rows`` then ``RLDataset``): each row is a good row or a good row with one field broken, written as
parquet or jsonl. The load either succeeds (with every clean row kept) or raises a ``UserError`` naming
the file, the row and the field; raw bytes and broken lines are fuzzed too."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from sapo.config import load_config
from sapo.errors import UserError
from sapo.models.tiny import build_char_tokenizer
from sapo.trainer.setup import build_dataset

TOKENIZER = build_char_tokenizer()
FIELDS = ["data_source", "prompt", "ability", "reward_model", "reward_model.ground_truth", "extra_info"]
BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            " ",
            0,
            -1,
            1.5,
            math.nan,
            True,
            [],
            {},
            "text",
            [1, 2],
            [[]],
            ["hi"],
            [None],
            [{"role": "user"}],
            [{"content": "hi"}],
            [{"role": 1, "content": "hi"}],
            [{"role": "user", "content": 3}],
            [{"role": "user", "content": ""}],
            {"ground_truth": None},
            {"style": "rule"},
            {"a": {"b": [1]}},
            10**30,
        ]
    ),
    st.text(max_size=8),
    st.integers(),
)
MISSING = object()  # the field removed from the row


def good_row(i: int) -> dict:
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
        "extra_info": {"index": i},
    }


def broken(row: dict, field: str, value) -> dict:
    if field == "reward_model.ground_truth":
        inner = dict(row["reward_model"])
        if value is MISSING:
            del inner["ground_truth"]
        else:
            inner["ground_truth"] = value
        return {**row, "reward_model": inner}
    if value is MISSING:
        return {k: v for k, v in row.items() if k != field}
    return {**row, field: value}


def write(rows: list[dict], path) -> None:
    if path.suffix == ".parquet":
        try:
            pq.write_table(pa.Table.from_pylist(rows), path)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            reject()  # pyarrow cannot hold these values (one type per column, no empty structs): no such file
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


ROWS = st.lists(
    st.one_of(st.none(), st.tuples(st.sampled_from(FIELDS), st.one_of(st.just(MISSING), BAD_VALUES))),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300)
@given(
    changes=ROWS,
    suffix=st.sampled_from([".parquet", ".jsonl"]),
    on_bad_row=st.sampled_from(["error", "skip"]),
    max_prompt_length=st.sampled_from([4, 64]),
    truncation=st.sampled_from(["error", "left"]),
)
def test_rows_load_or_are_named(
    fuzz_cases, tmp_path_factory, changes, suffix, on_bad_row, max_prompt_length, truncation
):
    rows = [
        good_row(i) if change is None else broken(good_row(i), *change) for i, change in enumerate(changes)
    ]
    path = tmp_path_factory.mktemp("data") / f"train{suffix}"
    write(rows, path)
    fuzz_cases.tick("data: rows with one field broken")
    config = load_config(
        None,
        [
            f"data.on_bad_row={on_bad_row}",
            f"data.max_prompt_length={max_prompt_length}",
            f"data.truncation={truncation}",
        ],
    )
    try:
        dataset = build_dataset([str(path)], TOKENIZER, config, max_samples=-1)
    except UserError as err:
        message = str(err)
        assert str(path) in message or "data.max_prompt_length" in message, message
        if "bad row" in message:  # names a broken row's position and field
            named = [
                (f"row {i}" if suffix == ".parquet" else f"line {i + 1}", change[0].split(".")[0])
                for i, change in enumerate(changes)
                if change is not None
            ]
            assert any(where in message and field in message for where, field in named), (changes, message)
        return
    prompts = [dataset[j]["raw_prompt"] for j in range(len(dataset))]
    for i, change in enumerate(changes):  # every clean row is kept, in order with the others
        if change is None:
            assert good_row(i)["prompt"] in prompts, (i, changes)
    if on_bad_row == "error":
        assert len(dataset) == len(rows)


LINES = st.lists(
    st.one_of(
        st.just(json.dumps(good_row(0))),
        st.sampled_from(["{", "}", "[", "null", "NaN", "1", '"text"', "[]", "{}", "[" * 5000, "\ufeff{}"]),
        st.text(max_size=20),
    ),
    min_size=0,
    max_size=6,
)


@settings(max_examples=200)
@given(lines=LINES, junk=st.binary(max_size=12), at=st.integers(0, 6))
def test_jsonl_lines_and_bytes_load_or_are_named(fuzz_cases, tmp_path_factory, lines, junk, at):
    fuzz_cases.tick("data: jsonl lines and raw bytes")
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    encoded = [line.encode("utf-8") for line in lines]
    encoded.insert(min(at, len(encoded)), junk)
    path.write_bytes(b"\n".join(encoded))
    config = load_config(None, ["data.on_bad_row=error"])
    try:
        dataset = build_dataset([str(path)], TOKENIZER, config, max_samples=-1)
    except UserError as err:
        assert str(path) in str(err), str(err)
        return
    assert len(dataset) >= 1


@settings(max_examples=60)
@given(content=st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"PAR1", b"PAR1\x00\x00PAR1"])))
def test_a_file_that_is_not_parquet_is_named(fuzz_cases, tmp_path_factory, content):
    fuzz_cases.tick("data: parquet bytes")
    path = tmp_path_factory.mktemp("pq") / "train.parquet"
    path.write_bytes(content)
    try:
        build_dataset([str(path)], TOKENIZER, load_config(None, []), max_samples=-1)
    except UserError as err:
        assert str(path) in str(err), str(err)
    else:
        raise AssertionError(f"{content!r} loaded as a parquet dataset")


def test_missing_files_and_wrong_suffixes_are_named(fuzz_cases, tmp_path):
    config = load_config(None, [])
    for name in ("absent.parquet", "train.csv", "folder.jsonl"):
        fuzz_cases.tick("data: paths")
        path = tmp_path / name
        if name == "train.csv":
            path.write_text("a,b\n1,2\n")
        if name == "folder.jsonl":
            path.mkdir()
        try:
            build_dataset([str(path)], TOKENIZER, config, max_samples=-1)
        except UserError as err:
            assert str(path) in str(err)
        else:
            raise AssertionError(f"{name} loaded")
