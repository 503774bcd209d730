import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sapo.data.tasks import generate_splits, get_task
from sapo.demo.warm_start import _collate, _encode_example, dev_accuracy, warm_start, warm_start_info
from sapo.errors import DataError

TINY_CAP = dict(
    max_steps=3, check_every=3, dev_size=16, train_pool_size=64, batch_size=8, target_accuracy=1.0
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("warm_start_cache")


def load(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tokenizer


def test_warm_start_saves_a_loadable_model_and_caches_it(cache_dir):
    model_dir = warm_start("arithmetic", cache_dir=cache_dir, seed=0, **TINY_CAP)
    info = warm_start_info(model_dir)
    assert info["steps"] == 3 and info["task"] == "arithmetic"
    assert info["reached_target"] is (info["dev_accuracy"] >= 1.0)
    assert info["knobs"] == {"min_value": 0, "max_value": 99, "ops": "+"}

    model, tokenizer = load(model_dir)
    assert len(tokenizer) == 4 + len("0123456789+-*=")  # the 18-token vocabulary
    assert model.config.model_type == "llama" and model.config.hidden_size == 128
    # the recorded accuracy is the saved model's accuracy on the same dev rows
    _, dev_rows = generate_splits(get_task("arithmetic"), train_size=64, test_size=16, seed=0)
    assert dev_accuracy(model, tokenizer, get_task("arithmetic"), dev_rows) == info["dev_accuracy"]

    weights = model_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert warm_start("arithmetic", cache_dir=cache_dir, seed=0, **TINY_CAP) == model_dir
    assert weights.stat().st_mtime_ns == stamp  # served from the cache, not retrained
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_more_warm_start_steps_lower_the_held_out_answer_loss(cache_dir):
    task = get_task("arithmetic")
    _, held_out = generate_splits(task, train_size=0, test_size=64, seed=123)

    def answer_loss(model_dir):  # mean loss on "answer + EOS" tokens of held-out problems
        model, tokenizer = load(model_dir)
        input_ids, labels, mask = _collate([_encode_example(task, tokenizer, r) for r in held_out], tokenizer)
        with torch.no_grad():
            return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item()

    short = warm_start("arithmetic", cache_dir=cache_dir, seed=0, **TINY_CAP)
    longer = warm_start("arithmetic", cache_dir=cache_dir, seed=0, **{**TINY_CAP, "max_steps": 30})
    assert longer != short
    assert json.loads((longer / "warm_start.json").read_text())["steps"] == 30
    assert answer_loss(longer) < answer_loss(short)


def test_warm_start_on_a_small_problem_space_trains_on_what_is_left(cache_dir):
    # operands 0..39: 1600 problems, the first 1000 held out, 600 left to train on
    model_dir = warm_start("arithmetic", cache_dir=cache_dir, seed=0, knobs={"max_value": 39}, **TINY_CAP)
    assert warm_start_info(model_dir)["knobs"]["max_value"] == 39
    with pytest.raises(DataError, match="could only produce 100 distinct problems"):
        warm_start("arithmetic", cache_dir=cache_dir, seed=0, knobs={"max_value": 9}, **TINY_CAP)


@pytest.mark.slow
def test_default_warm_start_reaches_its_dev_accuracy_target(tmp_path):
    model_dir = warm_start("arithmetic", cache_dir=tmp_path, seed=0)
    info = warm_start_info(model_dir)
    assert info["reached_target"] and info["dev_accuracy"] >= 0.2
    assert info["steps"] % 25 == 0  # stopped at a dev check


def test_warm_start_says_what_it_does_before_and_after_and_nothing_when_cached(tmp_path):
    said: list[str] = []
    model_dir = warm_start("arithmetic", cache_dir=tmp_path, seed=0, announce=said.append, **TINY_CAP)
    assert len(said) == 2
    assert said[0].startswith("warm start: fine-tuning the built-in tiny model on arithmetic")
    assert "100% of 16 held-out problems" in said[0] and "at most 3 steps" in said[0]
    assert str(model_dir) in said[0]  # where it is cached
    info = warm_start_info(model_dir)
    assert said[1] == (
        f"warm start: done in {info['seconds']:.0f} s, 3 steps, held-out accuracy {info['dev_accuracy']:.3f}"
    )
    warm_start("arithmetic", cache_dir=tmp_path, seed=0, announce=said.append, **TINY_CAP)
    assert len(said) == 2  # served from the cache: nothing to announce
