"""`sapo.distributed.world.attempt_store`: under torchrun's shared agent store each restart attempt's ranks
meet under their own key prefix, so a restarted rank never reads an address a dead rank published."""

from datetime import timedelta

import pytest
import torch.distributed as dist

from sapo.distributed.world import attempt_store

TIMEOUT = timedelta(seconds=10)


@pytest.fixture
def agent_store(monkeypatch):
    """A real TCPStore server standing in for torchrun's agent, and the environment torchrun gives ranks."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    for name, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(server.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return server


def test_each_restart_attempt_writes_under_its_own_prefix(agent_store, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    attempt_store(TIMEOUT).set("rank_1_address", "dead")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = attempt_store(TIMEOUT)
    assert restarted.check(["rank_1_address"]) is False  # the dead attempt's key is not seen
    restarted.set("rank_1_address", "alive")
    assert agent_store.get("sapo/attempt_0/rank_1_address") == b"dead"
    assert agent_store.get("sapo/attempt_1/rank_1_address") == b"alive"


def test_without_the_agent_store_torch_makes_the_store(agent_store, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert attempt_store(TIMEOUT) is None


def test_several_nodes_with_restarts_get_the_launcher_advice(agent_store, monkeypatch, capsys):
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert attempt_store(TIMEOUT) is None  # restart counts differ between nodes: no prefix to agree on
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
