"""Build a :class:`Config` from the dataclass defaults, one YAML file of overrides and ``key=value``
command-line overrides (OmegaConf/Hydra style), in that order.

Override syntax:
  ``a.b.c=value``     set a key (``+a.b.c=value`` and ``++a.b.c=value`` are accepted the same way, so verl
                      command lines that add keys with ``+`` work unchanged);
  ``value``           parsed by the field's type: ``true``/``false``, numbers (``1e-6`` included), ``null``,
                      lists ``[a,b]`` or ``['a', 'b']``; a string field keeps the text as given.
Keys are resolved in this order: a config field, a verl alias (verl_keys.ALIASES), a verl key accepted and
ignored (verl_keys.IGNORED_KEYS), otherwise an error naming the key and its closest matches. All problems
are reported together in one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sapo.config.resolve import resolve_config
from sapo.config.schema import Config
from sapo.config.verl_keys import ALIASES, find_ignored
from sapo.errors import ConfigError

_NULL_TEXT = {"null", "none", "~"}


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
    _interpolate(config, errors)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return resolve_config(config)


_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def _interpolate(config: Config, errors: list[str]) -> None:
    """Replace ``${a.b.c}`` inside text values by that key's value, as OmegaConf does for plain references
    (verl's own default is ``checkpoints/${trainer.project_name}/${trainer.experiment_name}``). Resolvers
    such as ``${oc.env:...}`` are not supported."""
    for key in all_keys():
        owner, name, _, _ = _locate(config, key)
        value = getattr(owner, name)
        if not isinstance(value, str) or "${" not in value:
            continue

        def substitute(match: re.Match, key: str = key) -> str:
            ref = match.group(1).strip()
            located = _locate(config, ref) if ":" not in ref else None
            if located is None or located[3]:
                raise ValueError(
                    f"{key}: cannot resolve ${{{ref}}}; only references to other keys such as "
                    "${trainer.project_name} are supported"
                )
            target = getattr(located[0], located[1])
            if isinstance(target, str) and "${" in target:
                raise ValueError(f"{key}: ${{{ref}}} refers to another interpolation; use a plain value")
            return str(target)

        try:
            setattr(owner, name, _REFERENCE.sub(substitute, value))
        except ValueError as err:
            errors.append(str(err))


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
        if isinstance(value, dict) and not _is_dict_field(key):
            yield from _flatten(value, key + ".")  # an empty mapping sets nothing
        else:
            yield key, value


# ------------------------------------------------------------------------------------- key lookup
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _locate(config: Config, key: str) -> tuple[Any, str, Any, list[str]] | None:
    """(owner object, field name, field type, remaining parts) for a key, or None if it is not a field.
    Remaining parts are non-empty only inside a dict-typed field."""
    owner: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(type(owner))
        if part not in fields:
            return None
        tp = _hints(type(owner))[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                return None  # a section, not a key
            owner = getattr(owner, part)
            continue
        rest = parts[i + 1 :]
        if rest and not _is_dict_type(tp):
            return None
        return owner, part, tp, rest
    return None


def _is_dict_type(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _is_dict_field(key: str) -> bool:
    located = _locate(Config(), key)
    return located is not None and _is_dict_type(located[2]) and not located[3]


def is_supported_key(key: str) -> bool:
    """True for a config field (a dotted key), including keys inside a mapping field."""
    return _locate(Config(), ALIASES.get(key, key)) is not None


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every supported dotted key, in declaration order."""
    keys = []
    for name in _fields(cls):
        tp = _hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def close_matches(key: str) -> list[str]:
    """Up to three supported keys close to ``key``: first by the last part among the keys of the same
    section (a typo in the key name), else by the whole dotted path (a typo in a section name)."""
    candidates = all_keys() + list(ALIASES)
    parent, _, leaf = key.rpartition(".")
    parents = sorted({c.rpartition(".")[0] for c in candidates})
    if parent not in parents:  # a misspelt section: look under the closest one
        parent = next(iter(difflib.get_close_matches(parent, parents, n=1, cutoff=0.75)), parent)
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.75)
    close += [name for name in siblings if name.startswith(leaf) and name not in close]  # abbreviations
    return [siblings[name] for name in close[:3]]


# ---------------------------------------------------------------------------------------- apply
def _apply(config: Config, key: str, value: Any, *, is_text: bool, source: str, errors: list[str]) -> None:
    report = config.provenance
    canonical = ALIASES.get(key, key)
    if canonical != key:
        report.aliases.append((key, canonical))
    located = _locate(config, canonical)
    if located is not None:
        owner, name, tp, rest = located
        try:
            if rest:  # a key inside a dict-typed field, e.g. data.apply_chat_template_kwargs.enable_thinking
                _set_nested(getattr(owner, name), rest, yaml.safe_load(value) if is_text else value)
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
            f"e.g. {canonical}.{all_keys(_section_type(canonical))[0]}=..."
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
    return _section_type(key) is not None


def _section_type(key: str) -> type | None:
    cls: Any = Config
    for part in key.split("."):
        fields = _fields(cls)
        if part not in fields or not dataclasses.is_dataclass(_hints(cls)[part]):
            return None
        cls = _hints(cls)[part]
    return cls


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


# --------------------------------------------------------------------------------------- coercion
def coerce(value: Any, tp: Any, *, is_text: bool = False) -> Any:
    """Convert ``value`` (YAML-typed, or command-line text when ``is_text``) to the field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, is_text)
    if is_text and tp is not str:
        value = _parse_text(value)
    if value is None:
        raise ValueError(f"null is not allowed here (expected {getattr(tp, '__name__', tp)})")
    return _coerce_plain(value, tp)


def _coerce_union(value: Any, args: tuple, is_text: bool) -> Any:
    if _is_null(value):
        if type(None) in args:
            return None
        raise ValueError("null is not allowed here")
    parsed = _parse_text(value) if is_text else value
    members = [a for a in args if a is not type(None)]
    if is_text and str in members and not isinstance(parsed, list):
        return value  # text stays text for a str-or-list field: "1e-6" and "007" are names, not numbers
    errors = []
    for member in members:
        try:
            return _coerce_plain(parsed, member)
        except (TypeError, ValueError) as err:
            errors.append(str(err))
    raise ValueError(" / ".join(errors))


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NULL_TEXT)


def _parse_text(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _coerce_plain(value: Any, tp: Any) -> Any:  # noqa: C901 - one branch per supported type
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected text, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [_coerce_plain(item, item_tp) for item in items]
    if _is_dict_type(tp):
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"expected a mapping, got {value!r}")
    raise TypeError(f"unsupported field type {tp}")
