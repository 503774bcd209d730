import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sapo.data import load_rows, read_rows, write_rows
from sapo.errors import DataError


def good_row(i: int = 0) -> dict:
    return {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": f"What is {i}+1?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
        "extra_info": {"split": "train", "index": i},
    }


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)  # written directly with pyarrow, not write_rows
    return path


@pytest.fixture
def good_rows():
    return [good_row(i) for i in range(4)]


def strip_source(rows):
    return [{k: v for k, v in row.items() if k != "_source"} for row in rows]


def test_parquet_rows_load_with_their_source(tmp_path, good_rows):
    path = write_parquet(tmp_path / "train.parquet", good_rows)
    rows = load_rows(str(path))
    assert strip_source(rows) == good_rows
    assert rows[2]["_source"] == f"{path} row 2"


def test_jsonl_gives_the_same_rows_as_parquet(tmp_path, good_rows):
    write_parquet(tmp_path / "a.parquet", good_rows)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good_rows) + "\n")
    from_parquet = strip_source(load_rows(tmp_path / "a.parquet"))
    from_jsonl = load_rows(tmp_path / "a.jsonl")
    assert strip_source(from_jsonl) == from_parquet
    assert from_jsonl[0]["_source"] == f"{tmp_path / 'a.jsonl'} line 1"


def test_a_list_of_files_is_concatenated_in_order(tmp_path, good_rows):
    first = write_rows(good_rows[:1], tmp_path / "x.parquet")
    second = write_rows(good_rows[1:], tmp_path / "y.jsonl")
    assert strip_source(load_rows([first, str(second)])) == good_rows


def test_plain_string_prompts_and_absent_optional_fields_are_valid(tmp_path):
    row = {"data_source": "d", "prompt": "12+3=", "reward_model": {"ground_truth": 15}}
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    assert strip_source(load_rows(tmp_path / "r.jsonl")) == [row]


def with_change(key, value):
    row = good_row(0)
    if value is KeyError:
        row.pop(key)
    else:
        row[key] = value
    return row


BAD_ROWS = [
    (with_change("data_source", KeyError), "data_source", "is missing"),
    (with_change("data_source", 7), "data_source", "not a non-empty string"),
    (with_change("data_source", ""), "data_source", "not a non-empty string"),
    (with_change("prompt", KeyError), "prompt", "is missing"),
    (with_change("prompt", None), "prompt", "is null"),
    (with_change("prompt", []), "prompt", "is an empty list"),
    (with_change("prompt", "   "), "prompt", "is an empty string"),
    (with_change("prompt", {"role": "user"}), "prompt", "non-empty list of chat messages"),
    (with_change("prompt", [{"role": "user"}]), "prompt", "message 0 has no string 'content'"),
    (with_change("prompt", [{"content": "hi"}]), "prompt", "message 0 has no string 'role'"),
    (with_change("prompt", [{"role": "user", "content": " "}]), "prompt", "only empty messages"),
    (with_change("reward_model", KeyError), "reward_model", "is missing"),
    (with_change("reward_model", "42"), "reward_model", "not an object"),
    (with_change("reward_model", {"style": "rule"}), "reward_model.ground_truth", "is missing"),
    (with_change("ability", 3), "ability", "not a string"),
    (with_change("extra_info", "x"), "extra_info", "not an object"),
]


@pytest.mark.parametrize("bad, field, problem", BAD_ROWS)
def test_each_bad_row_is_reported_with_file_row_and_field(tmp_path, bad, field, problem):
    rows = [good_row(0), good_row(1), bad]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        load_rows(path)
    message = str(err.value)
    assert f"{path} line 3: field {field!r}" in message
    assert problem in message
    assert "on_bad_row='skip'" in message  # the fix

    loaded = read_rows(path, on_bad_row="skip")
    assert strip_source(loaded.rows) == [good_row(0), good_row(1)]
    assert [(b.location, b.field) for b in loaded.bad_rows] == [(f"{path} line 3", field)]


def test_bad_parquet_rows_are_numbered_from_zero(tmp_path):
    rows = [good_row(0), good_row(1), good_row(2)]
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.raises(DataError, match=r"t\.parquet row 1: field 'reward_model\.ground_truth'"):
        load_rows(path)
    assert len(load_rows(path, on_bad_row="skip")) == 2


def test_invalid_json_lines_are_bad_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good_row(0)) + "\n{not json\n")
    # the message says what is wrong with the line (it once said "'<row>' is a str", the parse error lost)
    with pytest.raises(DataError, match=r"t\.jsonl line 2: field '<line>' is not valid JSON \(Expecting"):
        load_rows(path)


def test_a_line_that_is_not_utf8_is_a_bad_row_not_a_crash(tmp_path):
    # found by tests/fuzz: this raised UnicodeDecodeError out of load_rows
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(good_row(0)).encode() + b"\n\xff\xfe{}\n" + json.dumps(good_row(1)).encode())
    with pytest.raises(DataError, match=r"t\.jsonl line 2: field '<line>' is not UTF-8 text \(byte 0"):
        load_rows(path)
    assert [r["prompt"] for r in load_rows(path, on_bad_row="skip")] == [
        good_row(0)["prompt"],
        good_row(1)["prompt"],
    ]


def test_a_deeply_nested_line_is_a_bad_row_not_a_recursion_error(tmp_path):
    # found by tests/fuzz: json.loads raised RecursionError out of load_rows
    path = tmp_path / "t.jsonl"
    path.write_text("[" * 100_000 + "\n" + json.dumps(good_row(0)) + "\n")
    with pytest.raises(
        DataError, match=r"t\.jsonl line 1: field '<line>' is not usable JSON \(nested too deeply"
    ):
        load_rows(path)


def test_many_bad_rows_are_listed_up_to_five_then_counted(tmp_path):
    rows = [with_change("data_source", KeyError) for _ in range(8)] + [good_row(0)]
    path = write_rows(rows, tmp_path / "t.jsonl")
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert str(err.value).startswith("8 bad row(s)")
    assert "... and 3 more" in str(err.value)
    assert len(read_rows(path, on_bad_row="skip").bad_rows) == 8


def test_file_level_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(tmp_path / "missing.parquet")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="use .parquet or .jsonl"):
        load_rows(tmp_path / "data.csv")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read .* as parquet"):
        load_rows(tmp_path / "broken.parquet")
    with pytest.raises(DataError, match="on_bad_row must be"):
        load_rows(tmp_path / "data.csv", on_bad_row="ignore")
    with pytest.raises(DataError, match="no data files"):
        load_rows([])


def test_a_file_with_only_bad_rows_is_an_error_even_when_skipping(tmp_path):
    path = write_rows([with_change("prompt", [])], tmp_path / "t.jsonl")
    with pytest.raises(DataError, match="no usable rows"):
        load_rows(path, on_bad_row="skip")


def test_a_custom_prompt_key_is_validated(tmp_path):
    row = good_row(0)
    row["question"] = row.pop("prompt")
    path = write_rows([row], tmp_path / "t.jsonl")
    assert load_rows(path, prompt_key="question")[0]["question"] == row["question"]
    with pytest.raises(DataError, match="field 'prompt' is missing"):
        load_rows(path)
