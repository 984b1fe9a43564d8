"""A sweep's plan: every run's config, resolved and validated before anything trains.

Config order for one run: base <- common <- command-line --set <- the variant's fields,
so a variant that is about a field (say train.epochs: 20) keeps it when the
command line shortens the sweep. Runs are ordered seed-major: every variant's first
seed before any second seed, so a sweep stopped half-way already compares all variants.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, LenetError
from ...model.network import LeNet, count_mult_adds, count_parameters
from ...configuration.build import build_config, flatten, parse_override
from ...configuration.run import RunConfig
from .spec import SweepSpec, VariantSpec, looks_like_file

# Fields a sweep owns: each run's seed, directory name and parent folder.
RESERVED_KEYS = ("seed", "name", "out")
# Fields that say where or how a run computes, not what, ignored when checking that an
# existing run directory belongs to the plan: a sweep re-run with a relative instead of
# an absolute --data-dir, on another machine, or after lenet changed how it evaluates
# (train.eval_batch_size, 2048 until 0.3) or computes a step (speed.micro_batch,
# speed.fused_layers, speed.parallel_halves: the same update up to float rounding;
# speed.calibrate: whether they were measured) still finds its finished runs.
IGNORED_WHEN_COMPARING = ("name", "out", "device", "data.data_dir", "train.progress", "train.eval_batch_size",
                          "speed.micro_batch", "speed.fused_layers", "speed.parallel_halves", "speed.calibrate")
# Runs a sweep may plan unless --max-runs says more: a week of 1-minute runs, and a plan
# (configs, names, the dry-run's list) that fits in a few hundred MB.
MAX_RUNS = 10_000


def format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_changes(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "(the base)"


def grid_variants(grid: dict[str, list[Any]]) -> list[VariantSpec]:
    """The cartesian product of the axes, first axis slowest; names like "pool=max,lr=0.1".

    An axis is named by its last dotted component unless two axes share it.
    """
    return [_grid_variant(grid, values) for values in itertools.product(*grid.values())]


def _grid_variant(grid: dict[str, list[Any]], values: tuple[Any, ...]) -> VariantSpec:
    keys = list(grid)
    shorts = [k.split(".")[-1] for k in keys]
    labels = [short if shorts.count(short) == 1 else key for key, short in zip(keys, shorts, strict=True)]
    name = ",".join(f"{label}={_name_part(v)}" for label, v in zip(labels, values, strict=True))
    return VariantSpec(name=name, set=dict(zip(keys, values, strict=True)))


def axis_variants(grid: dict[str, list[Any]]) -> list[VariantSpec]:
    """Grid members that hold every value of every axis, each once: all axes at their
    first value but one (sum of the axis lengths, not their product). Each is a run of
    the grid, so an error in one is an error of the grid."""
    first = [values[0] for values in grid.values()]
    members = [tuple(first)]
    for i, values in enumerate(grid.values()):
        members += [(*first[:i], value, *first[i + 1:]) for value in values[1:]]
    return [_grid_variant(grid, m) for m in members]


def count_runs(spec: SweepSpec) -> tuple[int, int]:
    """(variants, runs) a spec can plan, by multiplication: the grid is never expanded.
    The base variant is counted: it is added when no variant equals it."""
    listed = math.prod(len(values) for values in spec.grid.values()) if spec.grid is not None \
        else len(spec.variants or [])
    variants = listed + (1 if spec.include_base else 0)
    return variants, variants * spec.seed_count()


def check_size(spec: SweepSpec, max_runs: int | None = None) -> None:
    """ConfigError when the spec can plan more than ``max_runs`` runs (--max-runs; None: MAX_RUNS)."""
    max_runs = MAX_RUNS if max_runs is None else max_runs
    variants, runs = count_runs(spec)
    if runs > max_runs:
        listed = variants - spec.include_base
        made = (f"the grid makes {' x '.join(str(len(v)) for v in spec.grid.values())} = {listed:,} variants"
                if spec.grid is not None else f"{listed:,} variants")
        base = " and the base" if spec.include_base else ""
        raise ConfigError(f"sweep {spec.name!r}: {made}{base}, x {spec.seed_count():,} seed(s) = up to {runs:,} "
                          f"runs, over the limit of {max_runs:,}; shrink the grid or the seeds, "
                          f"or raise the limit with --max-runs {runs}")


def _name_part(value: Any) -> str:
    text = format_value(value).strip("[]").replace(",", "-")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text) or "none"


@dataclass
class VariantPlan:
    name: str
    changes: dict[str, Any]  # dotted key -> value: what this variant sets over the base
    config: RunConfig  # resolved, seed 0
    parameters: int
    mult_adds: int
    note: str | None = None


@dataclass
class PlannedRun:
    variant: str
    seed: int
    config: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.variant} s{self.seed}"


@dataclass
class SweepPlan:
    name: str
    spec: SweepSpec
    sweep_dir: Path
    seeds: list[int]
    variants: list[VariantPlan]
    baseline: str | None  # the variant whose config is the base's
    overrides: list[str] = field(default_factory=list)

    def runs(self) -> list[PlannedRun]:
        # Seed-major: every variant's first seed before any second seed, so a sweep
        # stopped half-way already compares all variants.
        return [
            PlannedRun(v.name, seed,
                       v.config.model_copy(update={"seed": seed, "name": f"{v.name}-s{seed}",
                                                   "out": str(self.sweep_dir)}),
                       self.sweep_dir / f"{v.name}-s{seed}")
            for seed in self.seeds for v in self.variants
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec.model_dump(mode="json", exclude_none=True),
            "command_line_overrides": self.overrides,
            "seeds": self.seeds,
            "baseline": self.baseline,
            "variants": [{"name": v.name, "changes": v.changes, "note": v.note, "parameters": v.parameters,
                          "mult_adds": v.mult_adds, "config": v.config.to_dict()} for v in self.variants],
            "runs": [{"variant": r.variant, "seed": r.seed, "dir": r.run_dir.name} for r in self.runs()],
        }


def base_source(base: str | dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(preset, file, dotted overrides) of a spec's base."""
    if isinstance(base, str):
        return (None, base, {}) if looks_like_file(base) else (base, None, {})
    rest = dict(base)
    preset, file = rest.pop("preset", None), rest.pop("file", None)
    return preset, file, flatten(rest)


def _check_reserved(keys: dict[str, Any], where: str) -> None:
    for key in keys:
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: {key!r} is set by the sweep itself (seeds: ..., the run directory); remove it")


def comparable(cfg: RunConfig) -> dict[str, Any]:
    """The fields that decide what a run computes (for "is this directory the plan's run?")."""
    tree = flatten(cfg.to_dict())
    return {k: v for k, v in tree.items() if k not in IGNORED_WHEN_COMPARING and k != "seed"}


def plan_sweep(spec: SweepSpec, out: str | Path = "runs", overrides: list[str] | None = None,
               seeds: int | None = None, max_runs: int | None = None) -> SweepPlan:
    """Every variant's config, validated before anything trains; errors name the variant.

    ``overrides`` ("train.epochs=5") and ``seeds`` come from the command line and
    apply to every run; a variant's own fields still win over them. A spec that can
    plan more than ``max_runs`` runs is refused before its grid is expanded, and every
    grid field and value is checked before the product is built.
    """
    overrides = list(overrides or [])
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}")
        spec = spec.model_copy(update={"seeds": seeds})
    check_size(spec, max_runs)
    preset, file, base_fields = base_source(spec.base)
    common = flatten(spec.common)
    cli = dict(parse_override(text) for text in overrides)
    _check_reserved({**base_fields, **common, **cli}, f"sweep {spec.name!r}")

    def resolve(fields: dict[str, Any], where: str) -> RunConfig:
        try:
            return build_config(preset, file, flags={**base_fields, **common, **cli, **fields})
        except LenetError as exc:
            raise ConfigError(f"sweep {spec.name!r}, {where}: {exc}") from None

    def resolve_variant(v: VariantSpec) -> tuple[VariantSpec, dict[str, Any], RunConfig]:
        changes = flatten(v.set)
        _check_reserved(changes, f"sweep {spec.name!r}, variant {v.name!r}")
        return v, changes, resolve(changes, f"variant {v.name!r}")

    base_cfg = resolve({}, "base")
    if spec.grid is not None:
        for v in axis_variants(spec.grid):  # every field name and value, before the product
            resolve_variant(v)
    variant_specs = grid_variants(spec.grid) if spec.grid is not None else list(spec.variants or [])
    resolved = [resolve_variant(v) for v in variant_specs]  # every config valid before any model is built
    sizes = _ModelSizes()
    variants: list[VariantPlan] = []
    baseline = None
    for v, changes, cfg in resolved:
        variants.append(VariantPlan(v.name, changes, cfg, *sizes(cfg), v.note))
        if baseline is None and comparable(cfg) == comparable(base_cfg):
            baseline = v.name
    if baseline is None and spec.include_base:
        if any(v.name == "base" for v in variants):
            raise ConfigError(f"sweep {spec.name!r}: a variant is named 'base' but differs from the base; "
                              "rename it or set include_base: false")
        variants.insert(0, VariantPlan("base", {}, base_cfg, *sizes(base_cfg), "the base config"))
        baseline = "base"
    return SweepPlan(spec.name, spec, Path(out) / spec.name, spec.seed_list(), variants, baseline, overrides)


class _ModelSizes:
    """(parameters, mult-adds) of a config's network, built once per distinct
    architecture: a grid over optimiser fields shares one (a forward pass each costs ms)."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[int, int]] = {}

    def __call__(self, cfg: RunConfig) -> tuple[int, int]:
        key = json.dumps(cfg.model.model_dump(mode="json"), sort_keys=True)
        if key not in self.known:
            model = LeNet(cfg.model)
            self.known[key] = (count_parameters(model), count_mult_adds(model, cfg.model))
        return self.known[key]
