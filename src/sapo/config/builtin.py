"""The ``sapo`` config section: this project's own keys for the built-in default run.

``sapo train`` with no model and no data builds a tiny model (``sapo.tiny_model``), warm-starts it with
supervised steps on a generated task (``sapo.warm_start``, ``sapo.task``) and then runs SAPO on the same
task. None of these keys exists in verl; a verl command line never needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sapo.config.fields import opt, section


@dataclass
class TaskConfig:
    name: str = opt(
        "arithmetic", "Built-in task used when data.train_files is null: arithmetic | countdown (sapo data)."
    )
    knobs: dict = opt(
        {}, "The task's difficulty knobs, e.g. sapo.task.knobs.max_value=999 (see `sapo data`)."
    )
    num_train: int = opt(
        9600,
        "Generated training prompts (9600 = 600 steps of 16 prompts; the demo's 1200 steps are "
        "trainer.total_epochs=2). Operands 0-99 allow 10,000 distinct problems, validation included.",
    )
    num_val: int = opt(200, "Generated validation prompts.")
    seed: int | None = opt(
        None,
        "Seed of the generated problems and of the warm start (the task's dataset and base checkpoint). "
        "null: trainer.seed, so a new trainer.seed varies everything. Set it to keep one dataset and one "
        "cached warm start across RL seeds, as RL runs of a real model share a dataset and a base model.",
    )


@dataclass
class TinyModelConfig:
    arch: str = opt("llama", "qwen3 | llama | qwen3_moe (see sapo.models.tiny).")
    hidden_size: int = opt(128, "Hidden size.")
    intermediate_size: int = opt(512, "MLP width.")
    num_hidden_layers: int = opt(4, "Layers.")
    num_attention_heads: int = opt(4, "Attention heads.")


@dataclass
class WarmStartConfig:
    lr: float = opt(1e-3, "Warm-start learning rate.")
    batch_size: int = opt(64, "Warm-start examples per step.")
    max_steps: int = opt(2000, "Hard cap on warm-start steps.")
    max_seconds: float = opt(
        300.0,
        "Safety cap on warm-start wall time. The target and max_steps are what normally stop it; a time cap "
        "alone would make the result depend on the machine's speed.",
    )
    eval_every: int = opt(25, "Check held-out accuracy every N steps.")
    target_accuracy: float = opt(0.2, "Stop once held-out greedy accuracy reaches this.")


@dataclass
class SapoConfig:
    task: TaskConfig = section(TaskConfig, "The built-in task.")
    tiny_model: TinyModelConfig = section(TinyModelConfig, "The built-in tiny model (model.path null).")
    warm_start: WarmStartConfig = section(WarmStartConfig, "Supervised warm start of the tiny model.")
