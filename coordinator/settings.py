"""Coordinator configuration from a TOML file and overrides.

Precedence (highest first): command-line argument > environment `KEDGE_COORDINATOR_*` (click reads
it into the same option) > `--config FILE` > the dataclass defaults. The file's tables match the
nested Config dataclasses:

    [coordinator]        lease_ttl_s = 5.0, start_min_nodes = 2, ...
    [diagnosis]          hang_min_s = 4.0, ...
    [policy]             restart_budget = 5, world_multiple = 8, ...
    [executor]           stop_grace_s = 3.0, master_port = 29500, ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib
from kedge.coordinator.core import Config

_SECTIONS = ("diagnosis", "policy", "executor")


class ConfigError(ValueError):
    """The configuration file or an override is invalid (one line, for the CLI)."""


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the file (if any), then `overrides` ("section.field" or "field" keys; None
    values are skipped, meaning "not given")."""
    config = Config()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            for key, value in values.items():
                _set(config, section, key, value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, _, key = dotted.rpartition(".")
            _set(config, section or "coordinator", key, value)
    return config


def _set(config: Config, section: str, key: str, value: Any) -> None:
    if section == "coordinator":
        target: Any = config
    elif section in _SECTIONS:
        target = getattr(config, section)
    else:
        raise ConfigError(f"unknown config section [{section}]")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields or key in _SECTIONS:
        raise ConfigError(f"unknown setting {section}.{key}")
    current = getattr(target, key)
    if isinstance(current, bool) != isinstance(value, bool) or not isinstance(value, (type(current), int)):
        raise ConfigError(f"{section}.{key} must be {type(current).__name__}, got {value!r}")
    setattr(target, key, type(current)(value))
