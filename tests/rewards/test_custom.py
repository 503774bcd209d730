import pickle

import pytest

from sapo.errors import RewardError
from sapo.rewards import default_compute_score, load_custom_reward_function

REWARD_FILE = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": float(solution_str.strip() == ground_truth), "source": data_source}


def length_bonus(data_source, solution_str, ground_truth, extra_info):
    return len(solution_str) * extra_info["scale"]
"""


def test_loaded_function_is_called_like_verl_calls_it(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    fn = load_custom_reward_function(str(path), "length_bonus")
    assert fn(data_source="d", solution_str="abcd", ground_truth="x", extra_info={"scale": 0.5}) == 2.0
    default = load_custom_reward_function(path, None)  # name unset: verl's default compute_score
    assert default("d", " 7 ", "7", None) == {"score": 1.0, "source": "d"}


def test_loaded_function_survives_pickling_by_reloading_its_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    clone = pickle.loads(pickle.dumps(load_custom_reward_function(path, "compute_score")))
    assert clone("d", "8", "7", None) == {"score": 0.0, "source": "d"}


def test_missing_file_missing_function_and_broken_file_are_clear_errors(tmp_path):
    with pytest.raises(RewardError, match="does not exist: set custom_reward_function.path"):
        load_custom_reward_function(tmp_path / "nope.py", "compute_score")
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    with pytest.raises(RewardError) as err:
        load_custom_reward_function(path, "score_fn")
    assert "defines no function 'score_fn'" in str(err.value)
    assert "compute_score, length_bonus" in str(err.value)  # what is there
    assert "custom_reward_function.name" in str(err.value)
    broken = tmp_path / "broken.py"
    broken.write_text("def compute_score(:\n")
    with pytest.raises(RewardError, match="importing custom reward file .*broken.py failed with SyntaxError"):
        load_custom_reward_function(broken)


def test_unknown_data_source_points_to_custom_functions():
    with pytest.raises(
        RewardError, match="no built-in scorer for data_source 'my/data'.*custom_reward_function"
    ):
        default_compute_score("my/data", "1", "1")


def test_builtin_tasks_dispatch_to_their_scorers():
    assert default_compute_score("sapo/arithmetic", "579", "579") == 1.0
    assert default_compute_score("sapo/arithmetic", "578", "579") == 0.0
    truth = {"target": 10, "numbers": [2, 5]}
    assert default_compute_score("sapo/countdown", "2*5", truth) == 1.0
    assert default_compute_score("sapo/countdown", "2+5", truth) == 0.0


def test_a_reward_file_that_exits_at_import_is_named(tmp_path):
    # found by tests/fuzz: SystemExit escaped the loader, so `sapo train` ended with status 3 and no message
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(RewardError, match=rf"importing custom reward file {path} failed with SystemExit: 3"):
        load_custom_reward_function(path)
