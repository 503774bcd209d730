import re

from sapo.cli import main
from sapo.data import load_rows
from sapo.rewards import default_compute_score


def strip(rows):
    return [{k: v for k, v in r.items() if k != "_source"} for r in rows]


def test_sapo_data_arithmetic_writes_train_and_test_parquet(tmp_path, capsys):
    argv = [
        "data",
        "arithmetic",
        "--train-size",
        "40",
        "--test-size",
        "8",
        "--seed",
        "3",
        "--max-value",
        "99",
    ]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "wrote 40 rows" in capsys.readouterr().out
    train = load_rows(tmp_path / "a" / "train.parquet")
    test = load_rows(str(tmp_path / "a" / "test.parquet"))
    assert len(train) == 40 and len(test) == 8
    for row in train + test:
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", row["prompt"][0]["content"]).groups())
        assert a <= 99 and b <= 99
        truth = row["reward_model"]["ground_truth"]
        assert default_compute_score(row["data_source"], str(a + b), truth) == 1.0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0  # same seed and knobs: same files
    assert strip(load_rows(tmp_path / "b" / "train.parquet")) == strip(train)
    assert main([*argv[:-4], "--seed", "4", "--out", str(tmp_path / "c")]) == 0
    assert strip(load_rows(tmp_path / "c" / "train.parquet")) != strip(train)


def test_sapo_data_countdown_with_knobs(tmp_path):
    out = tmp_path / "cd"
    assert main(["data", "countdown", "--out", str(out), "--train-size", "30", "--test-size", "5",
                 "--num-numbers", "4", "--ops", "+-*"]) == 0  # fmt: skip
    rows = load_rows([out / "train.parquet", out / "test.parquet"])
    assert len(rows) == 35
    assert all(len(r["reward_model"]["ground_truth"]["numbers"]) == 4 for r in rows)
    assert all(r["data_source"] == "sapo/countdown" for r in rows)


def test_sapo_data_reports_bad_knobs_without_a_traceback(tmp_path, capsys):
    code = main(["data", "arithmetic", "--out", str(tmp_path), "--min-value", "9", "--max-value", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sapo data: error: arithmetic needs 0 <= min_value <= max_value (got 9, 1)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "train.parquet").exists()


def test_sapo_data_defaults_work_for_every_task(tmp_path, capsys):
    # The defaults (9600 train + 200 test rows, the task's default knobs) fit every task's problem space.
    for task in ("arithmetic", "countdown"):
        assert main(["data", task, "--out", str(tmp_path / task)]) == 0
        assert "wrote 9600 rows" in capsys.readouterr().out
        assert len(load_rows(tmp_path / task / "test.parquet")) == 200
