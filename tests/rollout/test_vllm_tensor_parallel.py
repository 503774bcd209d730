"""``actor_rollout_ref.rollout.tensor_model_parallel_size=2``: two torchrun processes share one vllm
engine, each holding half of its weights (marked vllm; skipped without vLLM). The worker,
vllm_tp_worker.py, compares each rank's results with its own ``hf`` engine on the whole model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sapo.models.tiny import TinyModelSpec, build_tiny_model

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

WORKER = Path(__file__).with_name("vllm_tp_worker.py")


def _run_worker(model_dir, out_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, str(WORKER), str(model_dir), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["kv-heads-split", "kv-head-replicated"])
def test_two_ranks_share_one_tensor_parallel_engine(tmp_path, kv_heads):
    """Greedy outputs equal the hf engine's, sampled log-probs are the trainer's, a sync changes what
    is generated, and a stale tensor held by one rank's shard is named on both ranks."""
    spec = TinyModelSpec(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,  # 1 < 2 ranks: vLLM replicates the kv head on both
        head_dim=32,
        max_position_embeddings=128,
    )
    model_dir = build_tiny_model(tmp_path / "m", spec, seed=3)
    results = _run_worker(model_dir, tmp_path)
    assert [r["prompts"] for r in results] == [4, 3]  # each rank kept its own prompts' responses
    for result in results:
        assert result["greedy_equal"] and result["synced_greedy_equal"], result
        assert result["sync_changed_output"]
        assert result["log_prob_gap"] < 2e-4 and result["synced_log_prob_gap"] < 2e-4, result
        stale = result["stale"]
        assert stale["q_rows_of_rank_1"] == ["model.layers.1.self_attn.q_proj.weight"]
        assert stale["k_whole"] == ["model.layers.1.self_attn.k_proj.weight"]
        assert stale["o_whole"] == ["model.layers.1.self_attn.o_proj.weight"]
        assert stale["embed_rows_of_rank_1"] == ["model.embed_tokens.weight"]
