"""Sweep specs: what a sweep is, as YAML, validated before anything trains.

    name: pooling
    base: d2l                      # a preset, a config file, or {preset: d2l, optim.lr: 0.1}
    seeds: 3                       # a count (seeds 0, 1, 2) or a list [0, 7, 42]
    common: {train.epochs: 5}      # applied to every run, before the variant's own fields
    grid:                          # the cartesian product of the axes ...
      model.pool: [avg, max]
      model.activation: [sigmoid, relu]
    variants:                      # ... or (instead) a list of named variants
      - {name: max-pool, set: {model.pool: max}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from ...errors import ConfigError
from ...configuration.base import Strict
from ...configuration.base import explain
from ...configuration.files import load_file
from ...configuration.presets import PRESETS
from ...configuration.run import SAFE_NAME

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def check_safe_name(cls: type, value: str) -> str:
    """Sweep and variant names become directory names."""
    if not SAFE_NAME.match(value):
        raise ValueError("use letters, digits and . _ = , + - only (it names a directory)")
    return value


class VariantSpec(Strict):
    name: str = Field(description="run directory prefix; letters, digits and . _ = , + -")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted config key -> value")
    note: str | None = Field(None, description="why this variant is in the sweep (shown in summary.md)")

    _safe = field_validator("name")(classmethod(check_safe_name))


class SweepSpec(Strict):
    name: str = Field(description="the sweep's directory under --out")
    description: str | None = None
    base: str | dict[str, Any] = Field("d2l", description="preset name, config file, or {preset: ..., key: value}")
    seeds: int | list[int] = Field(3, description="a count (0..N-1) or an explicit list")
    common: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value for every run")
    grid: dict[str, list[Any]] | None = Field(None, description="dotted key -> values; the cartesian product")
    variants: list[VariantSpec] | None = None
    include_base: bool = Field(True, description="add a 'base' variant unless one already equals the base")

    _safe = field_validator("name")(classmethod(check_safe_name))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1")
        else:
            if not value:
                raise ValueError("the list of seeds is empty")
            if any(s < 0 for s in value) or len(set(value)) != len(value):
                raise ValueError("seeds must be distinct and >= 0")
        return value

    def seed_count(self) -> int:
        return self.seeds if isinstance(self.seeds, int) else len(self.seeds)

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def parse_spec(data: Any, source: str = "") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid sweep spec {source}: expected a mapping, got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, f"sweep spec {source}".strip(), root=SweepSpec) from None
    if spec.grid is None and spec.variants is None:
        raise ConfigError(f"invalid sweep spec {source}: give `grid:` (axes to combine) or `variants:` (a list)")
    if spec.grid is not None and spec.variants is not None:
        raise ConfigError(f"invalid sweep spec {source}: give `grid:` or `variants:`, not both")
    if spec.grid is not None:
        if not spec.grid:
            raise ConfigError(f"invalid sweep spec {source}: `grid:` has no axes")
        for key, values in spec.grid.items():
            if not values:
                raise ConfigError(f"invalid sweep spec {source}: grid axis {key!r} is empty; give at least one value")
    if spec.variants is not None:
        if not spec.variants:
            raise ConfigError(f"invalid sweep spec {source}: `variants:` is empty")
        names = [v.name for v in spec.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"invalid sweep spec {source}: variant names repeat: {', '.join(repeated)}")
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    spec = parse_spec(load_file(path), str(path))
    if isinstance(spec.base, str) and looks_like_file(spec.base):
        # A base config file is found next to the spec, wherever the sweep is run from.
        base = Path(spec.base)
        if not base.is_absolute():
            spec = spec.model_copy(update={"base": str((path.parent / base).resolve())})
    return spec


def exercises_spec() -> SweepSpec:
    """The built-in spec answering the chapter's exercises 1-3 (specs/exercises.yaml)."""
    return load_spec(SPECS_DIR / "exercises.yaml")


def looks_like_file(text: str) -> bool:
    """Whether a spec's ``base`` names a config file rather than a preset."""
    return text not in PRESETS and (Path(text).suffix in (".yaml", ".yml", ".toml", ".json") or "/" in text)


def spec_to_yaml(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
