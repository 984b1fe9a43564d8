"""Config and spec files: YAML (no aliases, bounded size) and TOML, errors that say where."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config or sweep spec is a few kB; 1 MiB is no config


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config needs none, and nested aliases (a
    "billion laughs") expand without bound wherever the data is walked or printed."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in lenet's YAML files; "
                                                          "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML as lenet reads it: safe types only, no aliases (yaml.YAMLError otherwise)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def load_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml/.json) or TOML (.toml) file as a dict; syntax errors name the line."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path}: over {MAX_CONFIG_BYTES:,} bytes, no config is that big")
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = parse_yaml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: TOML syntax error: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: what and where."""
    where = getattr(exc, "problem_mark", None)
    at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"YAML syntax error{at}: {problem}"

