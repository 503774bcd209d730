"""Keys that are accepted at their default only, because any other value would be silently ignored
(DESIGN.md: never silently ignore a key that changes the algorithm). Each problem names the key, why the
value cannot be honoured, and what to do instead. Called by :func:`sapo.config.validate.validate`."""

from __future__ import annotations

from sapo.config.schema import Config


def unsupported_value_problems(config: Config) -> list[str]:
    """Keys that are accepted at their default only: any other value would be silently ignored."""
    arr, critic, data = config.actor_rollout_ref, config.critic, config.data
    out = []
    for prefix, model in (("actor_rollout_ref.model", arr.model), ("critic.model", critic.model)):
        if model.trust_remote_code:
            out.append(
                f"{prefix}.trust_remote_code=true is not supported: models and tokenizers load with the "
                "classes transformers ships; use a model of a built-in architecture and remove the key"
            )
        if model.override_config:
            out.append(
                f"{prefix}.override_config={model.override_config} is not supported: save a copy of the "
                "model with the change in its config.json and point the path at it"
            )
    if data.tokenizer and arr.model.tokenizer_path and data.tokenizer != arr.model.tokenizer_path:
        out.append(
            f"data.tokenizer={data.tokenizer!r} and actor_rollout_ref.model.tokenizer_path="
            f"{arr.model.tokenizer_path!r} differ, but one tokenizer serves the data and the policy: set one"
        )
    policy_tokenizers = {arr.model.path, arr.model.tokenizer_path, data.tokenizer} - {None}
    if critic.model.tokenizer_path and critic.model.tokenizer_path not in policy_tokenizers:
        out.append(
            f"critic.model.tokenizer_path={critic.model.tokenizer_path!r} is not the policy's tokenizer: the "
            "critic reads the policy's token ids, so it always uses the policy's tokenizer; remove the key"
        )
    prompt_length = arr.rollout.prompt_length
    if prompt_length is not None and prompt_length != data.max_prompt_length:
        out.append(
            f"actor_rollout_ref.rollout.prompt_length={prompt_length} differs from data.max_prompt_length="
            f"{data.max_prompt_length}: prompts are limited by data.max_prompt_length; set that instead"
        )
    trainer = config.trainer
    if trainer.max_critic_ckpt_to_keep is not None and (
        trainer.max_critic_ckpt_to_keep != trainer.max_actor_ckpt_to_keep
    ):
        out.append(
            f"trainer.max_critic_ckpt_to_keep={trainer.max_critic_ckpt_to_keep} differs from "
            f"max_actor_ckpt_to_keep={trainer.max_actor_ckpt_to_keep}: the critic is saved in the same "
            "checkpoint, so one number governs both; set trainer.max_actor_ckpt_to_keep"
        )
    buffer = config.reward_model.overlong_buffer
    if buffer.log and not buffer.enable:
        out.append(
            "reward_model.overlong_buffer.log=true logs the overlong buffer's penalty, which is off: set "
            "reward_model.overlong_buffer.enable=true (and reward_manager=dapo), or log=false"
        )
    return out
