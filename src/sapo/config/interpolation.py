"""``${...}`` interpolation of config values, resolved by OmegaConf (imported only when a value holds one).

OmegaConf is used for resolution only: keys, aliases, ignored verl keys and types stay the loader's
(:mod:`sapo.config.keys`). Each failure becomes one error naming the key, where it was set and the fix.
"""

from __future__ import annotations

import re
from typing import Any

from sapo.config.keys import all_keys, close_matches, coerce, locate, value_at
from sapo.config.render import config_to_dict
from sapo.config.schema import Config
from sapo.config.verl_keys import ALIASES, find_ignored


def has_interpolation(value: Any) -> bool:
    """True if ``value`` (text, or a list/mapping holding text) contains an OmegaConf ``${...}``."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(has_interpolation(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_interpolation(v) for v in value)
    return False


def interpolate(config: Config, errors: list[str]) -> None:
    """Resolve every value that holds ``${...}`` with OmegaConf, against the whole tree as the file and
    the overrides left it, and store the result through the field's type (:func:`coerce`).

    OmegaConf is used for resolution only: keys, aliases, ignored verl keys and types stay ours. That gives
    verl's YAML its full syntax: whole-value references that keep the referred value's type
    (``${actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu}`` is an int), references inside text
    (``checkpoints/${trainer.project_name}``), nested and relative references, ``${oc.env:VAR,default}``,
    ``${oc.select:key,default}`` and ``\\${`` for a literal ``${``. Failures become one error per key."""
    pending = [key for key in all_keys() if has_interpolation(value_at(config, key))]
    if not pending:
        return
    # Imported here, not at module level: it costs ~60 ms and only configs that use ${...} need it.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    tree = config_to_dict(config)
    for key in list(pending):
        problem = _syntax_problem(value_at(config, key))
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

    owner, name, tp, _ = locate(config, key)
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
        located = locate(config, ref)
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
