"""Rows that no scorer can score are refused when the data is loaded, before any step."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import gsm8k_rows
from sapo.config import load_config
from sapo.errors import RewardError
from sapo.trainer.run import start_run


def _files(tmp_path, val_source):
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist(gsm8k_rows(4)), train)
    rows = gsm8k_rows(2, seed=1)
    rows[1]["data_source"] = val_source
    pq.write_table(pa.Table.from_pylist(rows), val)
    return train, val


def test_an_unknown_data_source_without_a_custom_reward_stops_at_data_load(
    overrides_for, tiny_qwen3, tmp_path
):
    train, val = _files(tmp_path, "my/data")
    overrides = overrides_for(tiny_qwen3, tmp_path / "run") + [
        f"data.train_files={train}",
        f"data.val_files={val}",
    ]
    with pytest.raises(RewardError) as err:
        start_run(load_config(None, overrides), quiet=True)
    message = str(err.value)
    assert "data.val_files has rows whose 'data_source' is 'my/data'" in message
    assert "openai/gsm8k" in message and "custom_reward_function.path=" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step ran
    # with a custom reward function any data source is the function's to score
    script = tmp_path / "score.py"
    script.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0\n"
    )
    run = start_run(load_config(None, [*overrides, f"custom_reward_function.path={script}"]), quiet=True)
    run.close()
