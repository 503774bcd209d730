import random
import shutil

import numpy as np
import pytest
import torch

from sapo.errors import ConfigError
from sapo.optim import build_scheduler
from sapo.trainer import checkpoint as ckpt
from sapo.trainer.checkpoint import (
    TRACKER_FILE,
    checkpoint_step,
    export_checkpoint_hf,
    export_hf,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def make_training(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup=3)
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps):
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4)  # draws from the torch CPU generator, so RNG state matters
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_resumed_training_continues_bit_for_bit(tmp_path):
    # uninterrupted: 6 steps
    torch.manual_seed(123)
    model, opt, sched = make_training()
    torch.manual_seed(123)
    full = train_steps(model, opt, sched, 6)
    # interrupted after 3 steps, saved, then a fresh process state continues
    model, opt, sched = make_training()
    torch.manual_seed(123)
    first = train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, extra_state={"epoch": 0})
    torch.manual_seed(999)  # a different process would have different RNG state
    model2, opt2, sched2 = make_training(seed=7)
    extra = load_checkpoint(find_resume_checkpoint(tmp_path, "auto"), model2, opt2, sched2)
    assert extra == {"epoch": 0}
    assert first + train_steps(model2, opt2, sched2, 3) == full  # exact equality, not approx


def test_rng_round_trip_all_generators(tmp_path):
    model, _, _ = make_training()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path, 1, model=model)
    expected = (random.random(), np.random.rand(3).tolist(), np.random.normal(), torch.rand(3).tolist())
    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    load_checkpoint(tmp_path / "global_step_1", model)
    got = (random.random(), np.random.rand(3).tolist(), np.random.normal(), torch.rand(3).tolist())
    assert got == expected


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 2)
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, extra_state={"pos": 16})
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, opt, sched, 2)

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):  # the third file of the save dies half-written
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"partial")
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, 4, model=model, optimizer=opt, scheduler=sched, extra_state={"pos": 32})
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert (tmp_path / TRACKER_FILE).read_text() == "2"
    assert not (tmp_path / "global_step_4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    latest = find_resume_checkpoint(tmp_path, "auto")
    assert latest == tmp_path / "global_step_2"
    fresh, opt2, sched2 = make_training(seed=5)
    assert load_checkpoint(latest, fresh, opt2, sched2) == {"pos": 16}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved_weights[key])


def test_killed_save_leftovers_are_ignored_and_cleaned(tmp_path):
    model, _, _ = make_training()
    save_checkpoint(tmp_path, 1, model=model)
    # a process killed mid-save (no chance to clean up) leaves a temp dir and an incomplete step dir
    (tmp_path / ".tmp_global_step_2.999").mkdir()
    (tmp_path / ".tmp_global_step_2.999" / "model.pt").write_bytes(b"junk")
    (tmp_path / "global_step_3").mkdir()  # no meta.json: incomplete
    (tmp_path / TRACKER_FILE).write_text("3")  # even a tracker pointing at it falls back to a complete one
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / "global_step_1"
    save_checkpoint(tmp_path, 2, model=model)
    assert not (tmp_path / ".tmp_global_step_2.999").exists()
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / "global_step_2"


def test_save_killed_between_renames_restores_the_old_copy(tmp_path):
    model, _, _ = make_training()
    save_checkpoint(tmp_path, 1, model=model, extra_state={"step": 1})
    save_checkpoint(tmp_path, 2, model=model, extra_state={"step": 2})
    # re-saving step 2 moves the old copy aside first; a kill right then leaves only the copy
    (tmp_path / "global_step_2").rename(tmp_path / ".old_global_step_2.4242")
    # and an older re-save left a stale copy beside a step that is still there
    shutil.copytree(tmp_path / "global_step_1", tmp_path / ".old_global_step_1.77")

    ckpt.remove_stale_temp_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["global_step_1", "global_step_2"]
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / "global_step_2"
    assert load_checkpoint(tmp_path / "global_step_2", model) == {"step": 2}
    assert load_checkpoint(tmp_path / "global_step_1", model) == {"step": 1}


def test_keep_last_k_and_resave_same_step(tmp_path):
    model, _, _ = make_training()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model=model, max_to_keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    save_checkpoint(tmp_path, 4, model=model, extra_state={"again": True}, max_to_keep=2)
    assert load_checkpoint(tmp_path / "global_step_4", model) == {"again": True}
    assert checkpoint_step(tmp_path / "global_step_4") == 4


def test_resume_modes(tmp_path):
    model, _, _ = make_training()
    assert find_resume_checkpoint(tmp_path, "auto") is None  # fresh run
    save_checkpoint(tmp_path, 5, model=model)
    assert find_resume_checkpoint(tmp_path, "disable") is None
    assert (
        find_resume_checkpoint(tmp_path, "resume_path", tmp_path / "global_step_5")
        == tmp_path / "global_step_5"
    )
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path, "resume_path", tmp_path / "global_step_9")
    with pytest.raises(ConfigError, match="needs trainer.resume_from_path"):
        find_resume_checkpoint(tmp_path, "resume_path", None)


def test_extra_state_must_be_loadable_types(tmp_path):
    model, _, _ = make_training()
    with pytest.raises(TypeError, match=r"extra_state\['sampler'\]\['seed'\] is a int64"):
        save_checkpoint(tmp_path, 1, model=model, extra_state={"sampler": {"seed": np.int64(3)}})
    assert list_checkpoints(tmp_path) == []
    state = {"sampler": {"epoch": 1, "order": torch.arange(5), "name": "x"}, "kl": [0.1, None]}
    save_checkpoint(tmp_path, 1, model=model, extra_state=state)
    loaded = load_checkpoint(tmp_path / "global_step_1", model)
    assert torch.equal(loaded["sampler"]["order"], torch.arange(5)) and loaded["kl"] == [0.1, None]


def test_export_hf_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sapo.models.tiny import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
    )
    src = build_tiny_model(tmp_path / "tiny", spec, seed=0)
    model = AutoModelForCausalLM.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():  # change the weights so the export is not just the original files
        for p in model.parameters():
            p.add_(0.01)
    save_checkpoint(tmp_path / "run", 1, model=model)
    out = export_hf(model, tokenizer, tmp_path / "run" / "hf_model")
    assert (out / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("12+34=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert AutoTokenizer.from_pretrained(out)("12+34=")["input_ids"] == tokenizer("12+34=")["input_ids"]
    # a checkpoint exported later into a fresh copy of the architecture gives the same weights
    base = AutoModelForCausalLM.from_pretrained(src)
    again = export_checkpoint_hf(tmp_path / "run" / "global_step_1", base, tokenizer, tmp_path / "exp2")
    reloaded = AutoModelForCausalLM.from_pretrained(again)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


@pytest.mark.gpu
def test_cuda_rng_and_gpu_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 2).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4, device="cuda")).sum().backward()
    optimizer.step()
    torch.cuda.manual_seed_all(11)
    save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer)
    expected = torch.rand(4, device="cuda").cpu()
    torch.cuda.manual_seed_all(99)
    model2 = torch.nn.Linear(4, 2).cuda()
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    load_checkpoint(tmp_path / "global_step_1", model2, optimizer2, map_location="cuda")
    assert torch.equal(torch.rand(4, device="cuda").cpu(), expected)
    assert torch.equal(model2.weight, model.weight)
    assert optimizer2.state_dict()["state"][0]["exp_avg"].device.type == "cuda"


def _per_rank_worker(rank: int, world: int, run_dir: str, port: int) -> None:
    import torch.distributed as dist

    from sapo.trainer.checkpoint import capture_rng_state

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # every rank has its own stream
        states = [None] * world
        dist.all_gather_object(states, capture_rng_state())
        expected = torch.rand(3)  # what each rank draws next after the save
        model = torch.nn.Linear(2, 2)
        if rank == 0:
            save_checkpoint(run_dir, 1, model=model.state_dict(), rng_states=states)
        dist.barrier()
        torch.manual_seed(0)  # scramble, then resume
        load_checkpoint(f"{run_dir}/global_step_1", None, rank=rank)
        assert torch.equal(torch.rand(3), expected), f"rank {rank} did not get its own stream back"
    finally:
        dist.destroy_process_group()


def test_per_rank_rng_states_with_gloo(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_per_rank_worker, args=(2, str(tmp_path), port), nprocs=2, join=True)
    with pytest.raises(ConfigError, match="RNG states for 2 processes, but this is rank 2"):
        load_checkpoint(tmp_path / "global_step_1", None, rank=2)


def test_state_dicts_can_be_passed_directly(tmp_path):
    model, opt, _ = make_training()
    train_steps(model, opt, build_scheduler(opt, total_steps=5), 1)
    save_checkpoint(tmp_path, 1, model=model.state_dict(), optimizer=opt.state_dict(), rng=False)
    assert not (tmp_path / "global_step_1" / "rng_state.pt").exists()
    fresh, opt2, _ = make_training(seed=3)
    load_checkpoint(tmp_path / "global_step_1", fresh, opt2)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
