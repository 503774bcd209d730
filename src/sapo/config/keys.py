"""Config keys: find the field a dotted key names, list every key, suggest close ones, and convert a value
to a field's type. Shared by the loader and the interpolation step."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any

import yaml

from sapo.config.schema import Config
from sapo.config.verl_keys import ALIASES

_NULL_TEXT = {"null", "none", "~"}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def locate(config: Config, key: str) -> tuple[Any, str, Any, list[str]] | None:
    """(owner object, field name, field type, remaining parts) for a key, or None if it is not a field.
    Remaining parts are non-empty only inside a dict-typed field."""
    owner: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = fields_of(type(owner))
        if part not in fields:
            return None
        tp = field_types(type(owner))[part]
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


def is_dict_field(key: str) -> bool:
    located = locate(Config(), key)
    return located is not None and _is_dict_type(located[2]) and not located[3]


def is_supported_key(key: str) -> bool:
    """True for a config field (a dotted key), including keys inside a mapping field."""
    return locate(Config(), ALIASES.get(key, key)) is not None


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every supported dotted key, in declaration order."""
    keys = []
    for name in fields_of(cls):
        tp = field_types(cls)[name]
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


def section_type(key: str) -> type | None:
    cls: Any = Config
    for part in key.split("."):
        fields = fields_of(cls)
        if part not in fields or not dataclasses.is_dataclass(field_types(cls)[part]):
            return None
        cls = field_types(cls)[part]
    return cls


def value_at(config: Config, key: str) -> Any:
    """The value of the field ``key`` names (``trainer.seed``)."""
    owner, name, _, _ = locate(config, key)
    return getattr(owner, name)


# --------------------------------------------------------------------------------------- coercion
def coerce(value: Any, tp: Any, *, is_text: bool = False) -> Any:
    """Convert ``value`` (YAML-typed, or command-line text when ``is_text``) to the field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, is_text)
    if is_text and tp is not str:
        value = parse_text(value)
    if value is None:
        raise ValueError(f"null is not allowed here (expected {getattr(tp, '__name__', tp)})")
    return _coerce_plain(value, tp)


def _coerce_union(value: Any, args: tuple, is_text: bool) -> Any:
    if _is_null(value):
        if type(None) in args:
            return None
        raise ValueError("null is not allowed here")
    parsed = parse_text(value) if is_text else value
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


def parse_text(text: Any) -> Any:
    """Command-line text as YAML (``3`` -> 3, ``[a,b]`` -> a list); text YAML cannot parse stays text."""
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


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
        number = _as_float(value)
        if number is None:
            raise ValueError(f"expected a number, got {value!r}")
        if math.isnan(number):  # NaN passes every `x > 0` check by failing none: refuse it here
            raise ValueError(f"expected a number, got {value!r} (not a number)")
        return number
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
