"""The run configuration: verl's key names, one set of defaults (the dataclasses in :mod:`.schema`),
YAML + ``key=value`` loading (:mod:`.loader`, with :mod:`.keys` and :mod:`.interpolation`), resolution
(:mod:`.resolve`), validation and derived quantities (:mod:`.validate`), and the resolved-config dump and
start-up report (:mod:`.render`). See docs/configuration.md."""

from sapo.config.keys import all_keys, coerce, is_supported_key
from sapo.config.loader import load_config
from sapo.config.render import (
    config_to_dict,
    config_to_yaml,
    differences_from_verl,
    dump_config,
    format_startup_report,
    record_startup,
)
from sapo.config.resolve import resolve_config
from sapo.config.schema import Config, LoadReport
from sapo.config.validate import derived_quantities, effective_loss_agg_mode, training_schedule, validate
from sapo.config.verl_keys import ALIASES, IGNORED_KEYS, find_ignored
from sapo.config.world_checks import check_world_size, configured_world_size

__all__ = [
    "ALIASES",
    "IGNORED_KEYS",
    "Config",
    "LoadReport",
    "all_keys",
    "check_world_size",
    "coerce",
    "configured_world_size",
    "config_to_dict",
    "config_to_yaml",
    "derived_quantities",
    "differences_from_verl",
    "dump_config",
    "effective_loss_agg_mode",
    "find_ignored",
    "format_startup_report",
    "is_supported_key",
    "load_config",
    "record_startup",
    "resolve_config",
    "training_schedule",
    "validate",
]
