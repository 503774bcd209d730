"""Build a :class:`Config` from the dataclass defaults, one YAML file of overrides and ``key=value``
command-line overrides (OmegaConf/Hydra style), in that order.

Override syntax:
  ``a.b.c=value``     set a key (``+a.b.c=value`` and ``++a.b.c=value`` are accepted the same way, so verl
                      command lines that add keys with ``+`` work unchanged);
  ``value``           parsed by the field's type: ``true``/``false``, numbers (``1e-6`` included), ``null``,
                      lists ``[a,b]`` or ``['a', 'b']``; a string field keeps the text as given.
Values may hold OmegaConf interpolations (``${a.b.c}``, ``${oc.env:VAR}``, ``${oc.select:key,default}``),
resolved once every file and override is applied; see :mod:`sapo.config.interpolation`.
Keys are resolved in this order: a config field, a verl alias (verl_keys.ALIASES), a verl key accepted and
ignored (verl_keys.IGNORED_KEYS), otherwise an error naming the key and its closest matches. All problems
are reported together in one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from sapo.config.interpolation import has_interpolation, interpolate
from sapo.config.keys import (
    all_keys,
    close_matches,
    coerce,
    is_dict_field,
    locate,
    parse_text,
    section_type,
)
from sapo.config.resolve import resolve_config
from sapo.config.schema import Config
from sapo.config.verl_keys import ALIASES, find_ignored
from sapo.errors import ConfigError


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then the overrides; then :func:`resolve_config`. Raises ConfigError."""
    config = Config()
    errors: list[str] = []
    if yaml_path is not None:
        for key, value in _yaml_items(Path(yaml_path)):
            _apply(config, key, value, is_text=False, source=f"file {yaml_path}", errors=errors)
    for item in overrides:
        key, text = _split_override(item, errors)
        if key is not None:
            _apply(config, key, text, is_text=True, source=f"override '{item}'", errors=errors)
    interpolate(config, errors)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return resolve_config(config)


def _split_override(item: str, errors: list[str]) -> tuple[str | None, str]:
    if item.startswith("~"):
        errors.append(f"'{item}': deleting keys (~key) is not supported; set the key to null instead")
        return None, ""
    if "=" not in item:
        errors.append(f"'{item}': an override must look like key=value (e.g. data.train_batch_size=64)")
        return None, ""
    key, text = item.split("=", 1)
    return key.lstrip("+").strip(), text


def _yaml_items(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file to --config")
    with path.open() as handle:
        try:
            tree = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if tree is None:
        return []
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (data:, trainer:, ...), not a {type(tree).__name__}"
        )
    return list(_flatten(tree, ""))


def _flatten(tree: dict, prefix: str):
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not is_dict_field(key):
            yield from _flatten(value, key + ".")  # an empty mapping sets nothing
        else:
            yield key, value


def _apply(config: Config, key: str, value: Any, *, is_text: bool, source: str, errors: list[str]) -> None:
    report = config.provenance
    canonical = ALIASES.get(key, key)
    if canonical != key:
        report.aliases.append((key, canonical))
    located = locate(config, canonical)
    if located is not None:
        owner, name, tp, rest = located
        try:
            if rest:  # a key inside a dict-typed field, e.g. data.apply_chat_template_kwargs.enable_thinking
                _set_nested(getattr(owner, name), rest, parse_text(value) if is_text else value)
            elif has_interpolation(value):
                setattr(owner, name, value)  # kept as given; interpolate resolves and coerces it
            else:
                setattr(owner, name, coerce(value, tp, is_text=is_text))
        except (TypeError, ValueError) as err:
            errors.append(f"{canonical}: {err} (from {source})")
            return
        report.explicit[canonical] = source
        return
    if _is_section(canonical):
        errors.append(
            f"{canonical} is a section, not a key (from {source}); set its keys, "
            f"e.g. {canonical}.{all_keys(section_type(canonical))[0]}=..."
        )
        return
    rule = find_ignored(key)
    if rule is not None:
        if rule.accepts(value):
            report.ignored.append((key, value, rule.reason))
        else:
            errors.append(
                f"{key}={value!r} is not supported ({rule.reason}); sapo accepts it only as "
                f"{rule.allowed_text()} (from {source})"
            )
        return
    errors.append(_unknown_key_message(key, source))


def _set_nested(target: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _is_section(key: str) -> bool:
    return section_type(key) is not None


def _unknown_key_message(key: str, source: str) -> str:
    sections = [f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")]
    top = key.split(".", 1)[0]
    hint = ""
    if top not in sections and top not in {k.split(".", 1)[0] for k in ALIASES}:
        near = difflib.get_close_matches(top, sections, n=1, cutoff=0.6)
        hint = f"; unknown section '{top}'" + (f" (did you mean '{near[0]}'?)" if near else "")
    matches = close_matches(key)
    suggestion = f"; did you mean: {', '.join(matches)}?" if matches else ""
    return (
        f"unknown key '{key}' (from {source}){hint}{suggestion} "
        "See docs/configuration.md for every supported key and the verl keys that are ignored."
    )
