"""Every key reaches the component it configures: ``start_run`` on a config where each key is set to a
value other than its default, then the built run is inspected (sampling, loss numbers, optimizer, schedule,
sampler, datasets, critic, reward, warm start). The components themselves are tested elsewhere by hand
(tests/core, tests/trainer/test_optim.py, ...); this file checks the wiring between config and component."""

import pytest
import torch

from sapo.config import load_config
from sapo.data.tasks import generate_splits, get_task
from sapo.rewards.managers import RewardSample
from sapo.trainer import loop
from sapo.trainer import validate as validate_module
from sapo.trainer.run import start_run
from sapo.trainer.setup import build_reward

ACTOR = [
    "data.train_max_samples=6",
    "data.val_max_samples=3",
    "data.val_batch_size=2",
    "data.shuffle=false",
    "data.seed=7",
    "data.max_prompt_length=30",
    "data.truncation=left",
    "actor_rollout_ref.model.dtype=float32",
    "actor_rollout_ref.model.enable_gradient_checkpointing=true",
    "actor_rollout_ref.actor.ppo_epochs=3",
    "actor_rollout_ref.actor.shuffle=true",
    "actor_rollout_ref.actor.data_loader_seed=11",
    "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
    "actor_rollout_ref.actor.clip_ratio=0.3",
    "actor_rollout_ref.actor.clip_ratio_high=0.28",
    "actor_rollout_ref.actor.clip_ratio_c=4.0",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm",
    "actor_rollout_ref.actor.loss_scale_factor=9",
    "actor_rollout_ref.actor.entropy_coeff=0.01",
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_coef=0.2",
    "actor_rollout_ref.actor.kl_loss_type=mse",
    "actor_rollout_ref.actor.grad_clip=3.0",
    "actor_rollout_ref.actor.optim.clip_grad=2.0",
    "actor_rollout_ref.actor.optim.lr=0.002",
    "actor_rollout_ref.actor.optim.weight_decay=0.05",
    "actor_rollout_ref.actor.optim.betas=[0.8,0.9]",
    "actor_rollout_ref.actor.optim.eps=1e-6",
    "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine",
    "actor_rollout_ref.actor.optim.lr_warmup_steps=-1",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.25",
    "actor_rollout_ref.actor.optim.total_training_steps=8",
    "actor_rollout_ref.actor.optim.min_lr_ratio=0.1",
    "actor_rollout_ref.actor.optim.num_cycles=1.0",
    "actor_rollout_ref.rollout.do_sample=false",
    "actor_rollout_ref.rollout.temperature=0.7",
    "actor_rollout_ref.rollout.top_p=0.9",
    "actor_rollout_ref.rollout.top_k=5",
    "actor_rollout_ref.rollout.response_length=5",
    "actor_rollout_ref.rollout.val_kwargs.n=2",
    "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
    "actor_rollout_ref.rollout.val_kwargs.temperature=0.5",
    "actor_rollout_ref.rollout.val_kwargs.top_p=0.8",
    "actor_rollout_ref.rollout.val_kwargs.top_k=3",
    "algorithm.adv_estimator=grpo",
    "algorithm.norm_adv_by_std_in_grpo=false",
    "algorithm.use_kl_in_reward=true",
    "algorithm.kl_ctrl.kl_coef=0.05",
    "trainer.total_epochs=2",
    "trainer.project_name=p",
    "trainer.experiment_name=e",
    "trainer.logger=[console,tensorboard]",
    "trainer.device=cpu",
    "trainer.cpu_threads=1",
]


def test_actor_side_keys_reach_their_components(tmp_path, tiny_qwen3, overrides_for, monkeypatch):
    base = [
        o
        for o in overrides_for(tiny_qwen3, tmp_path)
        if not o.startswith(("trainer.total_training_steps", "trainer.logger"))
    ]
    config = load_config(None, [*base, *ACTOR])
    threads = torch.get_num_threads()
    run = start_run(config, quiet=True)
    threads_during_run = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert (len(run.train_set), len(run.val_set)) == (6, 3)
        assert all(len(run.train_set[i]["prompt_ids"]) <= 30 for i in range(6))  # truncation=left at 30
        assert (run.sampler.shuffle, run.sampler.seed) == (False, 7)
        assert run.policy.is_gradient_checkpointing and next(run.policy.parameters()).dtype == torch.float32
        actor, schedule = run.actor.loss, run.actor.schedule
        assert (schedule.ppo_epochs, schedule.shuffle, actor.loss_mode) == (3, True, "vanilla")
        assert run.shuffle_generator.initial_seed() == 11
        # clip_ratio=0.3 sets the low side; the explicit clip_ratio_high wins on the high side.
        kwargs = actor.loss_kwargs
        assert (kwargs["clip_ratio_low"], kwargs["clip_ratio_high"], kwargs["clip_ratio_c"]) == (
            0.3,
            0.28,
            4.0,
        )
        assert (actor.loss_agg_mode, schedule.loss_scale_factor) == ("seq-mean-token-sum-norm", 9)
        assert (actor.entropy_coeff, actor.use_kl_loss, actor.kl_loss_coef) == (0.01, True, 0.2)
        assert (actor.kl_loss_type, schedule.grad_clip, actor.temperature) == (
            "mse",
            2.0,
            0.7,
        )  # clip_grad wins
        assert run.reference is not None and run.kl_ctrl.value == 0.05
        group = run.optimizer.param_groups[0]
        assert (group["weight_decay"], group["betas"], group["eps"], group["initial_lr"]) == (
            0.05,
            (0.8, 0.9),
            1e-6,
            0.002,
        )
        # optim.total_training_steps=8 sets the schedule's length: warmup int(0.25 x 8) = 2 steps, then
        # cosine with m = 0.1, c = 1.0 over 6 steps; at step 5, p = 3/6 and cos(2 pi x 0.5) = -1 -> factor m.
        factors = [run.scheduler.factor(s) for s in (0, 1, 2, 5)]
        assert factors == pytest.approx([0.1, 0.1 + 0.9 * 0.5, 1.0, 0.1])
        # trainer.total_epochs=2 over 6 prompts in batches of 2: 3 steps per epoch, 6 steps.
        assert run.total_steps == 6
        sampling, val = run.sampling, run.val_sampling
        assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_new_tokens) == (
            0.7,
            0.9,
            5,
            5,
        )
        assert (val.n, val.do_sample, val.temperature, val.top_p, val.top_k) == (2, True, 0.5, 0.8, 3)
        assert run.estimator_kwargs == {"norm_adv_by_std_in_grpo": False}
        assert run.run_dir == tmp_path and run.device == torch.device("cpu")
        assert threads_during_run == 1  # trainer.cpu_threads
        assert run.logger.progress is not None and run.logger._tensorboard is not None
        # data.val_batch_size=2: the 3 validation prompts are generated in batches of 2 and 1.
        sizes = []
        real = validate_module.generate_and_score

        def recording(engine, tokenizer, reward, items, sampling, **kwargs):
            sizes.append(len(items))
            return real(engine, tokenizer, reward, items, sampling, **kwargs)

        monkeypatch.setattr(validate_module, "generate_and_score", recording)
        loop.validate(run)
        assert sizes == [2, 1]
    finally:
        run.close()


def test_critic_keys_reach_the_critic(tmp_path, tiny_qwen3, overrides_for):
    extra = [
        "algorithm.adv_estimator=gae",
        "algorithm.gamma=0.9",
        "algorithm.lam=0.8",
        "critic.ppo_mini_batch_size=2",
        "critic.ppo_micro_batch_size_per_gpu=2",
        "critic.ppo_epochs=2",
        "critic.shuffle=true",
        "critic.cliprange_value=0.3",
        "critic.loss_agg_mode=seq-mean-token-mean",
        "critic.grad_clip=0.7",
        "critic.optim.lr=0.003",
        "critic.optim.weight_decay=0.02",
        "critic.optim.betas=[0.7,0.95]",
        "critic.optim.eps=1e-5",
        "critic.optim.clip_grad=0.6",
        "critic.optim.lr_scheduler_type=cosine",
        "critic.optim.lr_warmup_steps=1",
        "critic.optim.lr_warmup_steps_ratio=0.5",
        "critic.optim.total_training_steps=5",
        "critic.optim.min_lr_ratio=0.2",
        "critic.optim.num_cycles=0.5",
        f"critic.model.path={tiny_qwen3}",
        f"critic.model.tokenizer_path={tiny_qwen3}",
    ]
    run = start_run(load_config(None, [*overrides_for(tiny_qwen3, tmp_path), *extra]), quiet=True)
    try:
        settings, schedule = run.critic_settings, run.critic_settings.schedule
        assert (schedule.mini_batch_size, schedule.micro_batch_size, schedule.ppo_epochs) == (4, 2, 2)
        assert (schedule.shuffle, settings.cliprange_value, schedule.grad_clip) == (
            True,
            0.3,
            0.6,
        )  # clip_grad
        assert settings.loss_agg_mode == "seq-mean-token-mean" and schedule.max_token_len is None
        group = run.critic_optimizer.param_groups[0]
        assert (group["initial_lr"], group["weight_decay"], group["betas"], group["eps"]) == (
            0.003,
            0.02,
            (0.7, 0.95),
            1e-5,
        )
        # lr_warmup_steps=1 (>= 0 wins over the ratio), then cosine over 5 - 1 = 4 steps down to m = 0.2:
        # step 0: 0.2 + 0.8 x 0 / 1 = 0.2; step 3: p = 2/4, (1 + cos(pi / 2)) / 2 = 0.5 -> 0.2 + 0.8 x 0.5.
        factors = [run.critic_scheduler.factor(s) for s in (0, 1, 3)]
        assert factors == pytest.approx([0.2, 1.0, 0.6])
        assert run.estimator_kwargs == {"gamma": 0.9, "lam": 0.8}  # values come from the critic per step
        metrics = loop.training_step(run)
        assert "critic/vf_loss" in metrics
    finally:
        run.close()


def test_reward_keys_reach_the_reward_manager(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(
        "def my_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.25\n"
    )
    config = load_config(
        None,
        [
            f"custom_reward_function.path={script}",
            "custom_reward_function.name=my_score",
            "reward_model.on_error=zero",
            "reward_model.reward_manager=dapo",
            "reward_model.overlong_buffer.enable=true",
            "reward_model.overlong_buffer.len=4",
            "reward_model.overlong_buffer.penalty_factor=2.0",
            "reward_model.overlong_buffer.max_resp_len=10",
        ],
    )
    manager = build_reward(config)
    assert manager.on_error == "zero"
    # max_resp_len 10 (not the 16 passed in), buffer 4, factor 2: a 9-token response is 9 - 6 = 3 tokens
    # into the buffer: 0.25 + min(0, -3 / 4 x 2) = 0.25 - 1.5.
    sample = RewardSample(data_source="x", response="y", ground_truth="z", response_length=9)
    assert manager([sample]).scores == [pytest.approx(0.25 - 1.5)]


def test_builtin_run_keys_reach_the_warm_start_and_task(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPO_CACHE", str(tmp_path / "cache"))
    overrides = [
        f"trainer.default_local_dir={tmp_path / 'run'}",
        "sapo.task.name=countdown",
        "sapo.task.num_train=16",
        "sapo.task.num_val=4",
        "sapo.task.seed=5",
        "sapo.tiny_model.arch=qwen3",
        "sapo.tiny_model.hidden_size=32",
        "sapo.tiny_model.intermediate_size=48",
        "sapo.tiny_model.num_hidden_layers=1",
        "sapo.tiny_model.num_attention_heads=2",
        "sapo.warm_start.lr=0.002",
        "sapo.warm_start.batch_size=4",
        "sapo.warm_start.max_steps=2",
        "sapo.warm_start.max_seconds=30",
        "sapo.warm_start.eval_every=2",
        "sapo.warm_start.target_accuracy=1.0",
        "data.train_batch_size=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "trainer.logger=[]",
    ]
    run = start_run(load_config(None, overrides), quiet=True)
    try:
        info = run.warm_start
        assert info["task"] == "countdown" and info["steps"] == 2 and info["seed"] == 5
        assert (info["lr"], info["batch_size"], info["check_every"]) == (0.002, 4, 2)
        assert (info["max_seconds"], info["target_accuracy"]) == (30.0, 1.0)
        spec = info["spec"]
        assert (spec["arch"], spec["hidden_size"], spec["intermediate_size"]) == ("qwen3", 32, 48)
        assert (spec["num_hidden_layers"], spec["num_attention_heads"]) == (1, 2)
        assert (len(run.train_set), len(run.val_set)) == (16, 4)
        assert {run.train_set[i]["data_source"] for i in range(16)} == {"sapo/countdown"}
        train, val = generate_splits(get_task("countdown"), train_size=16, test_size=4, seed=5)
        val_prompts = [row["prompt"][0]["content"] for row in val]
        assert [run.val_set[i]["prompt_text"] for i in range(4)] == val_prompts
        assert run.train_set[0]["prompt_text"] == train[0]["prompt"][0]["content"]
    finally:
        run.close()


def test_reward_timeout_reaches_the_manager(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1\n"
    )
    custom = [f"custom_reward_function.path={script}"]
    for overrides, timeout in (
        (custom + ["reward_model.timeout_s=5"], 5.0),
        (custom, 30.0),  # the default: a custom function's calls are time-limited
        (custom + ["reward_model.timeout_s=null"], None),
        (["reward_model.timeout_s=5"], None),  # the built-in scorers run in-process
    ):
        manager = build_reward(load_config(None, [*overrides, "reward_model.max_error_fraction=0.25"]))
        try:
            assert (manager.timeout_s, manager.max_error_fraction) == (timeout, 0.25), overrides
        finally:
            manager.close()


def test_inherited_keys_resolve_from_the_trainer_section():
    from sapo.trainer.setup import task_seed

    config = load_config(None, ["trainer.seed=9", "trainer.project_name=p", "trainer.experiment_name=e"])
    assert task_seed(config) == 9  # the built-in task follows trainer.seed unless sapo.task.seed is set
    assert task_seed(load_config(None, ["trainer.seed=9", "sapo.task.seed=3"])) == 3
    assert (config.data.seed, config.actor_rollout_ref.actor.data_loader_seed) == (9, 9)
    assert config.trainer.default_local_dir == "checkpoints/p/e"  # verl's run directory


def test_sapo_and_covariance_loss_numbers_reach_the_loss():
    from sapo.trainer.settings import actor_settings

    prefix = "actor_rollout_ref.actor"
    sapo = load_config(None, [f"{prefix}.tau_pos=0.9", f"{prefix}.tau_neg=1.2"])
    assert actor_settings(sapo).loss.loss_kwargs == {"tau_pos": 0.9, "tau_neg": 1.2}
    cov = [f"{prefix}.policy_loss.clip_cov_ratio=0.01", f"{prefix}.policy_loss.clip_cov_lb=0.5"]
    cov += [f"{prefix}.policy_loss.clip_cov_ub=4.0", f"{prefix}.policy_loss.loss_mode=clip_cov"]
    kwargs = actor_settings(load_config(None, cov)).loss.loss_kwargs
    assert (kwargs["clip_cov_ratio"], kwargs["clip_cov_lb"], kwargs["clip_cov_ub"]) == (0.01, 0.5, 4.0)
    kl_cov = [f"{prefix}.policy_loss.loss_mode=kl_cov", f"{prefix}.policy_loss.kl_cov_ratio=0.02"]
    kl_cov.append(f"{prefix}.policy_loss.ppo_kl_coef=0.3")
    kwargs = actor_settings(load_config(None, kl_cov)).loss.loss_kwargs
    assert (kwargs["kl_cov_ratio"], kwargs["ppo_kl_coef"]) == (0.02, 0.3)
