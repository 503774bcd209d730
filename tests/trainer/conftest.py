"""Fixtures for end-to-end trainer tests: tiny real models saved to disk and a gsm8k-layout parquet file."""

import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sapo.models.tiny import TinyModelSpec, build_tiny_model

# The multi-process tests share distributed_worker.py (helpers, and the script torchrun runs).
sys.path.insert(0, str(Path(__file__).parent))

SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    moe_intermediate_size=16,
    max_position_embeddings=256,
)


def gsm8k_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows in verl's gsm8k layout: a chat prompt, data_source openai/gsm8k, the answer as ground truth."""
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


@pytest.fixture(scope="session")
def gsm8k_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gsm8k")
    train, test = folder / "train.parquet", folder / "test.parquet"
    pq.write_table(pa.Table.from_pylist(gsm8k_rows(8, seed=0)), train)
    pq.write_table(pa.Table.from_pylist(gsm8k_rows(4, seed=1)), test)
    return str(train), str(test)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("qwen3"), TinyModelSpec(arch="qwen3", **SMALL)))


@pytest.fixture(scope="session")
def tiny_qwen3_moe(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("moe"), TinyModelSpec(arch="qwen3_moe", **SMALL)))


@pytest.fixture
def overrides_for(gsm8k_files):
    """``overrides_for(model_path, run_dir)``: the key=value list of a 2-step run on the gsm8k files."""
    return lambda model_path, run_dir: _base_overrides(model_path, gsm8k_files, run_dir)


def _base_overrides(model_path: str, files: tuple[str, str], run_dir) -> list[str]:
    train, test = files
    return [
        f"actor_rollout_ref.model.path={model_path}",
        f"data.train_files={train}",
        f"data.val_files={test}",
        "data.train_batch_size=2",
        "data.max_prompt_length=64",
        "data.max_response_length=6",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.total_training_steps=2",
        "trainer.logger=[tensorboard]",
        f"trainer.default_local_dir={run_dir}",
    ]
