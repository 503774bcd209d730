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
    name: str = opt("addition", "Built-in task used when data.train_files is null (see sapo.data.tasks).")
    num_train: int = opt(20000, "Generated training prompts.")
    num_val: int = opt(200, "Generated validation prompts.")
    max_operand: int = opt(999, "Operands are drawn from 0..max_operand.")


@dataclass
class TinyModelConfig:
    arch: str = opt("llama", "qwen3 | llama | qwen3_moe (see sapo.models.tiny).")
    hidden_size: int = opt(128, "Hidden size.")
    intermediate_size: int = opt(512, "MLP width.")
    num_hidden_layers: int = opt(4, "Layers.")
    num_attention_heads: int = opt(4, "Attention heads.")


@dataclass
class WarmStartConfig:
    enable: bool | None = opt(
        None,
        "Supervised warm start before RL. null: on when the built-in tiny model is used (model.path null).",
    )
    lr: float = opt(1e-3, "Warm-start learning rate.")
    batch_size: int = opt(64, "Warm-start examples per step.")
    max_steps: int = opt(2000, "Hard cap on warm-start steps.")
    max_seconds: float = opt(60.0, "Hard cap on warm-start wall time.")
    eval_every: int = opt(25, "Check held-out accuracy every N steps.")
    target_accuracy: float = opt(0.2, "Stop once held-out greedy accuracy reaches this.")


@dataclass
class SapoConfig:
    task: TaskConfig = section(TaskConfig, "The built-in task.")
    tiny_model: TinyModelConfig = section(TinyModelConfig, "The built-in tiny model (model.path null).")
    warm_start: WarmStartConfig = section(WarmStartConfig, "Supervised warm start of the tiny model.")
