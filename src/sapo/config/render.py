"""Write and print a resolved config: the YAML stored in the run directory and the start-up summary
(derived quantities, ignored verl keys, differences from verl's defaults)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sapo.config.schema import NO_VERL_DEFAULT, Config
from sapo.run_dir import CONFIG_FILE, DERIVED_FILE, STARTUP_FILE


def config_to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict of a config (sections -> keys), without internal fields."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        out[f.name] = config_to_dict(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def dump_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temp file + rename). ``load_config(path)`` reads it
    back to the same values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(config_to_yaml(config))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def differences_from_verl(config: Config) -> list[tuple[str, Any, Any]]:
    """(key, our value, verl's default) for each key that was NOT set by the user and whose default is not
    verl's: what a verl user would otherwise be surprised by."""
    explicit = config.provenance.explicit
    out = []
    for key, f, value in _walk(config, ""):
        verl = f.metadata.get("verl_default", dataclasses.MISSING)
        if verl is dataclasses.MISSING or verl == NO_VERL_DEFAULT or key in explicit:
            continue
        if f.metadata.get("verl_placeholder"):
            continue
        out.append((key, value, verl))
    return out


def _walk(obj: Any, prefix: str):
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def format_startup_report(config: Config, derived: dict[str, Any]) -> str:
    """The text a run prints (and stores) at start-up: resolved config, derived quantities, ignored keys,
    aliases used and defaults that differ from verl's."""
    lines = ["== resolved config ==", config_to_yaml(config).rstrip(), "", "== derived quantities =="]
    width = max(len(k) for k in derived)
    lines += [f"  {key:<{width}}  {value}" for key, value in derived.items()]
    report = config.provenance
    if report.ignored:
        lines += ["", "== verl keys accepted and ignored (infrastructure only) =="]
        lines += [f"  {key}={value!r}: {reason}" for key, value, reason in report.ignored]
    if report.aliases:
        lines += ["", "== verl keys read under their sapo name =="]
        lines += [f"  {given} -> {canonical}" for given, canonical in report.aliases]
    diffs = differences_from_verl(config)
    if diffs:
        lines += ["", "== defaults that differ from verl's (not set by you) =="]
        lines += [f"  {key} = {value!r} (verl: {verl!r})" for key, value, verl in diffs]
    return "\n".join(lines) + "\n"


def record_startup(config: Config, derived: dict[str, Any], run_dir: str | Path) -> str:
    """Store ``config.yaml`` (resolved), ``derived.json`` and ``startup.txt`` (the report) in the run
    directory and return the report text for printing."""
    import json

    run_dir = Path(run_dir)
    dump_config(config, run_dir / CONFIG_FILE)
    (run_dir / DERIVED_FILE).write_text(json.dumps(derived, indent=1, default=str) + "\n")
    text = format_startup_report(config, derived)
    (run_dir / STARTUP_FILE).write_text(text)
    return text
