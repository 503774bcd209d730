"""Build a :class:`Config` from the dataclass defaults, one YAML file of overrides and ``key=value``
command-line overrides (OmegaConf/Hydra style), in that order.

Override syntax:
  ``a.b.c=value``     set a key (``+a.b.c=value`` and ``++a.b.c=value`` are accepted the same way, so verl
                      command lines that add keys with ``+`` work unchanged);
  ``value``           parsed by the field's type: ``true``/``false``, numbers (``1e-6`` included), ``null``,
                      lists ``[a,b]`` or ``['a', 'b']``; a string field keeps the text as given.
Values may hold OmegaConf interpolations (``${a.b.c}``, ``${oc.env:VAR}``, ``${oc.select:key,default}``),
resolved once every file and override is applied; see :func:`_interpolate`.
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

from sapo.config.render import config_to_dict
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


def _has_interpolation(value: Any) -> bool:
    """True if ``value`` (text, or a list/mapping holding text) contains an OmegaConf ``${...}``."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_interpolation(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_interpolation(v) for v in value)
    return False


def _interpolate(config: Config, errors: list[str]) -> None:
    """Resolve every value that holds ``${...}`` with OmegaConf, against the whole tree as the file and
    the overrides left it, and store the result through the field's type (:func:`coerce`).

    OmegaConf is used for resolution only: keys, aliases, ignored verl keys and types stay ours. That gives
    verl's YAML its full syntax: whole-value references that keep the referred value's type
    (``${actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu}`` is an int), references inside text
    (``checkpoints/${trainer.project_name}``), nested and relative references, ``${oc.env:VAR,default}``,
    ``${oc.select:key,default}`` and ``\\${`` for a literal ``${``. Failures become one error per key."""
    pending = [key for key in all_keys() if _has_interpolation(_value_of(config, key))]
    if not pending:
        return
    # Imported here, not at module level: it costs ~60 ms and only configs that use ${...} need it.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    tree = config_to_dict(config)
    for key in list(pending):
        problem = _syntax_problem(_value_of(config, key))
        if problem is not None:
            errors.append(f"{key}: {problem} (from {_source_of(config, key)})")
            _set_in_tree(tree, key, None)  # one malformed value must not hide the other keys' problems
            pending.remove(key)
    try:
        root = OmegaConf.create(tree, flags={"allow_objects": True})
    except OmegaConfBaseException as err:  # e.g. a mapping field with keys OmegaConf cannot hold
        errors.append(f"cannot resolve ${{...}} interpolations: {_first_line(err)}")
        return
    for key in pending:
        _resolve_key(config, root, key, errors)


def _value_of(config: Config, key: str) -> Any:
    owner, name, _, _ = _locate(config, key)
    return getattr(owner, name)


def _source_of(config: Config, key: str) -> str:
    """Where the user set ``key`` (or a key inside it, for a mapping field), for error messages."""
    explicit = config.provenance.explicit
    if key in explicit:
        return explicit[key]
    inner = [source for name, source in explicit.items() if name.startswith(key + ".")]
    return inner[-1] if inner else "the defaults"


def _set_in_tree(tree: dict, key: str, value: Any) -> None:
    *sections, name = key.split(".")
    for section in sections:
        tree = tree[section]
    tree[name] = value


def _syntax_problem(value: Any) -> str | None:
    """Why OmegaConf cannot parse the interpolations in ``value``, or None. Checked per key, because
    OmegaConf parses a whole tree at once and would report only the first bad value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import GrammarParseError

    try:
        OmegaConf.create({"value": value}, flags={"allow_objects": True})
    except GrammarParseError as err:
        return (
            f"{value!r} is not a valid interpolation ({_first_line(err)}); write ${{section.key}}, "
            "${oc.env:VAR} or ${oc.select:section.key,default}, or \\${ for a literal ${"
        )
    return None


def _resolve_key(config: Config, root: Any, key: str, errors: list[str]) -> None:
    """Resolve one key in ``root`` (the OmegaConf tree) and store the value, coerced to the field type."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    owner, name, tp, _ = _locate(config, key)
    raw, source = getattr(owner, name), _source_of(config, key)
    for ref in _null_references_in_text(config, raw):
        errors.append(
            f"{key}: {raw!r} refers to {ref}, which is null at this point (inherited values are filled "
            "after interpolation), so the text would read 'None'; refer to the key it inherits from "
            f"(from {source})"
        )
        return
    try:
        value = OmegaConf.select(root, key)
        if OmegaConf.is_config(value):  # a list or mapping field, or a reference to one
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException as err:
        errors.append(f"{key}: {_explain_failure(err, raw)} (from {source})")
        return
    try:
        # Text that came out of a resolution is parsed by the field type like a command-line value, so
        # "${oc.env:LR}" can set a float and "${oc.env:FILES}" = "[a,b]" a list.
        setattr(owner, name, coerce(value, tp, is_text=isinstance(value, str)))
    except (TypeError, ValueError) as err:
        errors.append(f"{key}: {err} ({raw!r} resolved to {value!r}; from {source})")


_PLAIN_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _null_references_in_text(config: Config, raw: Any) -> list[str]:
    """Plain references inside longer text (not a whole value) to keys that are still null: such a key is
    an "inherit" null (``rollout.response_length``) that resolution fills only after interpolation."""
    if not isinstance(raw, str) or _PLAIN_REFERENCE.fullmatch(raw.strip()):
        return []  # a whole-value reference to a null stays null, and resolution then fills it as usual
    out = []
    for ref in _PLAIN_REFERENCE.findall(raw):
        located = _locate(config, ref)
        if located is not None and not located[3] and getattr(located[0], located[1]) is None:
            out.append(ref)
    return out


def _first_line(err: Exception) -> str:
    # OmegaConf appends "full_key: ..." and "object_type=..." lines that mean nothing to our users.
    return str(getattr(err, "msg", None) or err).strip().splitlines()[0]


def _explain_failure(err: Exception, raw: Any) -> str:
    """A message naming what could not be resolved and how to fix it, from an OmegaConf exception."""
    text = _first_line(err)
    # "not found", or a path through a leaf ("reward_model.reward_manager.name", a verl alias)
    missing = re.search(r"Interpolation key '([^']*)' not found", text) or re.search(
        r"Error trying to access ([^:\s]+): node", text
    )
    if missing:
        return _unknown_reference(missing.group(1), raw)
    if "Recursive interpolation" in text:
        return (
            f"{raw!r} is part of a reference cycle (the key refers to itself, directly or through other "
            "keys); give one key of the cycle a plain value"
        )
    env = re.search(r"Environment variable '([^']*)' not found", text)
    if env:
        var = env.group(1)
        return (
            f"cannot resolve {raw!r}: environment variable {var} is not set; set it, or give a default: "
            f"${{oc.env:{var},DEFAULT}}"
        )
    resolver = re.match(r"Unsupported interpolation type (\S+)", text)
    if resolver:
        return (
            f"cannot resolve {raw!r}: there is no resolver '{resolver.group(1)}'; use ${{section.key}}, "
            "${oc.env:VAR,default}, ${oc.select:section.key,default} or another oc.* resolver "
            "(a shell variable such as ${VAR:-default} must be expanded by the shell: use double quotes)"
        )
    return f"cannot resolve {raw!r}: {text}"


def _unknown_reference(ref: str, raw: Any) -> str:
    if ref in ALIASES:
        hint = f"; verl's {ref} is {ALIASES[ref]} here: write ${{{ALIASES[ref]}}}"
    elif find_ignored(ref) is not None:
        hint = f"; {ref} is a verl key that sapo ignores, so it has no value to refer to: write the value"
    else:
        matches = close_matches(ref)
        hint = f"; did you mean {', '.join('${' + m + '}' for m in matches)}?" if matches else ""
    where = "" if raw == f"${{{ref}}}" else f" in {raw!r}"
    return (
        f"cannot resolve ${{{ref}}}{where}: no such key{hint} "
        f"(or write ${{oc.select:{ref},DEFAULT}} to fall back to a default)"
    )


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
            elif _has_interpolation(value):
                setattr(owner, name, value)  # kept as given; _interpolate resolves and coerces it
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
