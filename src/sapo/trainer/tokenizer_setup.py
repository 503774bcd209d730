"""The tokenizer settings of a run, applied after the model is loaded.

- ``data.tokenizer`` / ``actor_rollout_ref.model.tokenizer_path``: load the tokenizer from that directory
  instead of the model's (one tokenizer renders the prompts, drives generation and decodes the responses,
  so the two keys must agree when both are set);
- ``actor_rollout_ref.model.custom_chat_template``: a Jinja template that replaces the tokenizer's own; it
  renders every chat prompt and is saved with the exported model.
"""

from __future__ import annotations

from pathlib import Path

from sapo.models.loading import load_tokenizer


def apply_tokenizer_settings(tokenizer, model, *, path: str | None, chat_template: str | None):
    """``tokenizer``, or the one loaded from ``path``, with ``chat_template`` installed when given."""
    if path is not None:
        tokenizer = _load(Path(path).expanduser(), model)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _load(path: Path, model):
    return load_tokenizer(
        path,
        model,
        fix="point data.tokenizer / actor_rollout_ref.model.tokenizer_path at a directory saved with "
        "tokenizer.save_pretrained",
    )
