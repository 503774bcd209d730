"""Helpers that declare a config field with its help text and, where ours differs, verl's default."""

from __future__ import annotations

import copy
from dataclasses import MISSING, dataclass, field
from typing import Any

NO_VERL_DEFAULT = "(no verl equivalent)"


def opt(default: Any, help: str, *, verl: Any = MISSING, placeholder: bool = False) -> Any:
    """A config field: ``default`` (deep-copied for lists and dicts), ``help`` text and, when our default
    differs from verl's, verl's default (shown in the docs and at start-up; ``placeholder=True`` for verl
    defaults that are example paths nobody relies on: shown in the docs only)."""
    metadata: dict[str, Any] = {"help": help}
    if verl is not MISSING:
        metadata["verl_default"] = verl
        metadata["verl_placeholder"] = placeholder
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "section": True})


@dataclass
class LoadReport:
    """Where the values came from: filled by :func:`sapo.config.load_config`."""

    explicit: dict[str, str] = field(default_factory=dict)  # canonical key -> "file" | "override"
    ignored: list[tuple[str, Any, str]] = field(default_factory=list)  # (key as given, value, reason)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (key as given, canonical key)
