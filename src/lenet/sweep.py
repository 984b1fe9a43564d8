"""Sweeps: one base config, a set of variants, N seeds each, trained and summarised.

    spec (YAML) -> SweepPlan: every variant's config validated before any training
    -> run_sweep(): runs/<sweep>/<variant>-s<seed>/ per run, skipping finished runs,
       resuming interrupted ones, recording failed ones and going on
    -> write_summary(): summary.csv, summary.md, summary.json, accuracy_bars.png, curves.png

A spec::

    name: pooling
    base: d2l                      # a preset, a config file, or {preset: d2l, optim.lr: 0.1}
    seeds: 3                       # a count (seeds 0, 1, 2) or a list [0, 7, 42]
    common: {train.epochs: 5}      # applied to every run, before the variant's own fields
    grid:                          # the cartesian product of the axes ...
      model.pool: [avg, max]
      model.activation: [sigmoid, relu]
    variants:                      # ... or (instead) a list of named variants
      - {name: max-pool, set: {model.pool: max}}

Config order for one run: base <- common <- command-line --set <- the variant's fields,
so a variant that is about a field (say train.epochs: 20) keeps it when the
command line shortens the sweep.
The sweep's result is its directory: every number in summary.md is recomputed from
the run directories, so a summary is never out of date with the runs it describes.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import PRESETS, RunConfig, build_config, load_file
from .errors import ConfigError, DivergedError, Interrupted, LenetError, RunBusy, RunError
from .runs import atomic_write_text, clear_run_dir, read_json_or_empty, run_lock, write_json
from .train import train

SPECS_DIR = Path(__file__).resolve().parent / "specs"
# A run directory name must be safe in a shell and on every filesystem.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
# Fields a sweep owns: each run's seed, directory name and parent folder.
RESERVED_KEYS = ("seed", "name", "out")
# Fields that do not change what a run computes, ignored when checking that an
# existing run directory belongs to the plan (a relative vs absolute --data-dir, say).
IGNORED_WHEN_COMPARING = ("name", "out", "device", "data.data_dir", "train.progress")
CURVES_PER_GROUP = 7  # + the baseline = 8 lines, within tab10's distinct colours


# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _safe_name(cls: type, value: str) -> str:
    """Sweep and variant names become directory names."""
    if not SAFE_NAME.match(value):
        raise ValueError("use letters, digits and . _ = , + - only (it names a directory)")
    return value


class VariantSpec(_Strict):
    name: str = Field(description="run directory prefix; letters, digits and . _ = , + -")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted config key -> value")
    note: str | None = Field(None, description="why this variant is in the sweep (shown in summary.md)")

    _safe = field_validator("name")(classmethod(_safe_name))


class SweepSpec(_Strict):
    name: str = Field(description="the sweep's directory under --out")
    description: str | None = None
    base: str | dict[str, Any] = Field("d2l", description="preset name, config file, or {preset: ..., key: value}")
    seeds: int | list[int] = Field(3, description="a count (0..N-1) or an explicit list")
    common: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value for every run")
    grid: dict[str, list[Any]] | None = Field(None, description="dotted key -> values; the cartesian product")
    variants: list[VariantSpec] | None = None
    include_base: bool = Field(True, description="add a 'base' variant unless one already equals the base")

    _safe = field_validator("name")(classmethod(_safe_name))

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

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


def _spec_error(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            model = VariantSpec if "variants" in loc[:-1] else SweepSpec
            valid = list(model.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown key {dotted!r}{hint} (valid here: {', '.join(valid)})")
        else:
            value = json.dumps(item.get("input"), default=str)
            lines.append(f"{dotted} = {value}: {item['msg'].removeprefix('Value error, ')}")
    where = f" {source}" if source else ""
    return ConfigError(f"invalid sweep spec{where}:\n  " + "\n  ".join(lines))


def parse_spec(data: Any, source: str = "") -> SweepSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid sweep spec {source}: expected a mapping, got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, source) from None
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
    if isinstance(spec.base, str) and _looks_like_file(spec.base):
        # A base config file is found next to the spec, wherever the sweep is run from.
        base = Path(spec.base)
        if not base.is_absolute():
            spec = spec.model_copy(update={"base": str((path.parent / base).resolve())})
    return spec


def exercises_spec() -> SweepSpec:
    """The built-in spec answering the chapter's exercises 1-3 (specs/exercises.yaml)."""
    return load_spec(SPECS_DIR / "exercises.yaml")


def _looks_like_file(text: str) -> bool:
    return text not in PRESETS and (Path(text).suffix in (".yaml", ".yml", ".toml", ".json") or "/" in text)


# --------------------------------------------------------------------------- the plan


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"pool": "max"}, "optim.lr": 0.1} -> {"model.pool": "max", "optim.lr": 0.1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


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
    keys = list(grid)
    shorts = [k.split(".")[-1] for k in keys]
    labels = [short if shorts.count(short) == 1 else key for key, short in zip(keys, shorts, strict=True)]
    variants = []
    for values in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{label}={_name_part(v)}" for label, v in zip(labels, values, strict=True))
        variants.append(VariantSpec(name=name, set=dict(zip(keys, values, strict=True))))
    return variants


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


def _base_source(base: str | dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(preset, file, dotted overrides) of a spec's base."""
    if isinstance(base, str):
        return (None, base, {}) if _looks_like_file(base) else (base, None, {})
    rest = dict(base)
    preset, file = rest.pop("preset", None), rest.pop("file", None)
    return preset, file, flatten(rest)


def _check_reserved(keys: dict[str, Any], where: str) -> None:
    for key in keys:
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: {key!r} is set by the sweep itself (seeds: ..., the run directory); remove it")


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    tree = flatten(cfg.to_dict())
    return {k: v for k, v in tree.items() if k not in IGNORED_WHEN_COMPARING and k != "seed"}


def plan_sweep(spec: SweepSpec, out: str | Path = "runs", overrides: list[str] | None = None,
               seeds: int | None = None) -> SweepPlan:
    """Every variant's config, validated before anything trains; errors name the variant.

    ``overrides`` ("train.epochs=5") and ``seeds`` come from the command line and
    apply to every run; a variant's own fields still win over them.
    """
    from .config import parse_override
    from .models import LeNet, count_mult_adds, count_parameters

    overrides = list(overrides or [])
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}")
        spec = spec.model_copy(update={"seeds": seeds})
    preset, file, base_fields = _base_source(spec.base)
    common = flatten(spec.common)
    cli = dict(parse_override(text) for text in overrides)
    _check_reserved({**base_fields, **common, **cli}, f"sweep {spec.name!r}")

    def resolve(fields: dict[str, Any], where: str) -> RunConfig:
        try:
            return build_config(preset, file, flags={**base_fields, **common, **cli, **fields})
        except LenetError as exc:
            raise ConfigError(f"sweep {spec.name!r}, {where}: {exc}") from None

    base_cfg = resolve({}, "base")
    variant_specs = grid_variants(spec.grid) if spec.grid is not None else list(spec.variants or [])
    variants: list[VariantPlan] = []
    baseline = None
    for v in variant_specs:
        changes = flatten(v.set)
        _check_reserved(changes, f"sweep {spec.name!r}, variant {v.name!r}")
        cfg = resolve(changes, f"variant {v.name!r}")
        model = LeNet(cfg.model)
        variants.append(VariantPlan(v.name, changes, cfg, count_parameters(model),
                                    count_mult_adds(model, cfg.model), v.note))
        if baseline is None and _comparable(cfg) == _comparable(base_cfg):
            baseline = v.name
    if baseline is None and spec.include_base:
        if any(v.name == "base" for v in variants):
            raise ConfigError(f"sweep {spec.name!r}: a variant is named 'base' but differs from the base; "
                              "rename it or set include_base: false")
        model = LeNet(base_cfg.model)
        variants.insert(0, VariantPlan("base", {}, base_cfg, count_parameters(model),
                                       count_mult_adds(model, base_cfg.model), "the base config"))
        baseline = "base"
    return SweepPlan(spec.name, spec, Path(out) / spec.name, spec.seed_list(), variants, baseline, overrides)


# --------------------------------------------------------------------------- running


@dataclass
class RunOutcome:
    variant: str
    seed: int
    run_dir: str
    status: str  # finished | failed | interrupted | pending | busy (another process has it)
    action: str  # what this sweep did: skipped | trained | resumed | recorded
    reason: str | None = None
    test_accuracy: float | None = None
    seconds: float = 0.0  # wall time this sweep spent on the run


def read_status(run_dir: Path) -> dict[str, Any]:
    return read_json_or_empty(Path(run_dir) / "status.json")


def _failure_reason(status: dict[str, Any]) -> str:
    return status.get("reason") or f"{status.get('status')} at epoch {status.get('epoch', '?')}"


def run_state(run: PlannedRun) -> str:
    """What the sweep will do with this run: skip (finished), failed, resume, or new."""
    status = read_status(run.run_dir)
    if status.get("status") == "finished" and (run.run_dir / "metrics.jsonl").is_file():
        return "finished"
    if status.get("status") in ("diverged", "failed"):
        return "failed"
    if (run.run_dir / "checkpoint.pt").is_file() and (run.run_dir / "config.yaml").is_file():
        return "resume"
    return "new"


def _check_same_config(run: PlannedRun) -> None:
    """A run directory from an older, different spec must not be counted as this plan's."""
    from .runs import load_run_config

    if not (run.run_dir / "config.yaml").is_file():
        return
    saved = _comparable(load_run_config(run.run_dir))
    wanted = _comparable(run.config)
    differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differing:
        detail = "; ".join(f"{k}: {format_value(saved.get(k))} there, {format_value(wanted.get(k))} now"
                           for k in differing[:4])
        raise RunError(f"{run.run_dir} was trained with a different config ({detail}). "
                       "Use a new sweep name (--name) or --out, or delete that run directory")


def execute_run(config: dict[str, Any], run_dir: str, state: str) -> dict[str, Any]:
    """Train (or resume) one run and return its outcome; a failure is recorded, not raised.

    Module-level so a worker process can run it. Errors that would fail every run
    (data missing, config) propagate and stop the sweep.
    """
    tic = time.perf_counter()
    cfg = RunConfig.model_validate(config)
    path = Path(run_dir)
    outcome = {"run_dir": run_dir, "status": "finished", "reason": None, "test_accuracy": None}
    try:
        # Locked before anything is cleared: another sweep over the same folder may be
        # training this very run, and its files must not be deleted under it.
        with run_lock(path):
            if state == "resume":
                result = train(None, resume_dir=path, quiet=True)  # type: ignore[arg-type]
            else:
                if path.exists():
                    clear_run_dir(path)  # a run killed before its first checkpoint, or a retry
                result = train(cfg, exist_ok=True, quiet=True)
        outcome["test_accuracy"] = result.test_accuracy
    except RunBusy as exc:
        outcome.update(status="busy", reason=str(exc))  # the other process finishes it; not a failure
    except DivergedError as exc:
        outcome.update(status="failed", reason=str(exc))
        status = read_status(path)
        write_json(path / "status.json", {**status, "status": status.get("status", "failed"), "reason": str(exc)})
    except (Interrupted, KeyboardInterrupt):
        raise
    except LenetError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other crash fails this run, not the sweep
        reason = f"{type(exc).__name__}: {exc}"
        outcome.update(status="failed", reason=reason)
        if path.is_dir():
            write_json(path / "status.json", {"status": "failed", "reason": reason})
    outcome["seconds"] = time.perf_counter() - tic
    return outcome


def execute_together(configs: list[dict[str, Any]], run_dirs: list[str]) -> list[dict[str, Any]]:
    """Train new runs that share their layer shapes in one vmapped process (lenet.multi).

    A run that diverges is recorded as failed, as in execute_run; the others go on.
    """
    from .multi import train_many

    tic = time.perf_counter()
    with contextlib.ExitStack() as locks:
        try:
            for run_dir in run_dirs:
                locks.enter_context(run_lock(Path(run_dir)))
        except RunBusy as exc:  # another sweep is on one of them: leave the whole group to it
            return [{"run_dir": d, "status": "busy", "reason": str(exc), "test_accuracy": None, "seconds": 0.0}
                    for d in run_dirs]
        for run_dir in run_dirs:
            if Path(run_dir).exists():
                clear_run_dir(Path(run_dir))  # killed before finishing: a group restarts its runs
        results = train_many([RunConfig.model_validate(c) for c in configs], exist_ok=True, quiet=True)
    seconds = (time.perf_counter() - tic) / len(results)
    outcomes = []
    for run_dir, result in zip(run_dirs, results):
        failed = result.status != "finished"
        reason = read_status(Path(run_dir)).get("reason") if failed else None
        outcomes.append({"run_dir": run_dir, "status": "failed" if failed else "finished", "reason": reason,
                         "test_accuracy": None if failed else result.test_accuracy, "seconds": seconds})
    return outcomes


def batch_groups(todo: list[tuple[PlannedRun, str]], together: bool | None) -> list[list[tuple[PlannedRun, str]]]:
    """``todo`` cut into groups to train at once: new runs that lenet.multi can batch.

    together=None (auto) batches on CUDA only: measured on the 2-core CPU, 4 vmapped
    d2l runs took 51 s per run-epoch against 22 s for one run alone, while a GPU that
    one LeNet leaves idle gains most from it.
    """
    from .multi import groups
    from .train import resolve_device

    new = [(run, state) for run, state in todo if state == "new"]
    rest = [[item] for item in todo if item[1] != "new"]
    if together is None:
        together = bool(new) and resolve_device(new[0][0].config.device).type == "cuda"
    if not together or len(new) < 2:
        return [[item] for item in todo]
    return [[new[i] for i in group] for group in groups([run.config for run, _ in new])] + rest


def _init_worker(threads: int) -> None:
    import torch

    # Each of N workers gets cores/N threads: N processes of all-core torch fight over
    # the same cores and run slower together than one alone.
    torch.set_num_threads(threads)


def write_plan(plan: SweepPlan) -> None:
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan.sweep_dir / "sweep.json", plan.to_dict())


def run_sweep(plan: SweepPlan, jobs: int = 1, retry_failed: bool = False,
              log: Callable[[str], None] = print, progress: bool | None = None,
              together: bool | None = None) -> list[RunOutcome]:
    """Train every run of ``plan`` not finished yet; returns one outcome per run, in plan order.

    Finished runs are skipped, interrupted ones resumed from checkpoint.pt, failed ones
    kept as failed (retrained with ``retry_failed``). The summary is rewritten after
    every run, so an interrupted sweep still has an up-to-date summary.md.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    runs = plan.runs()
    for run in runs:
        _check_same_config(run)
    write_plan(plan)
    outcomes: dict[str, RunOutcome] = {}
    todo: list[tuple[PlannedRun, str]] = []
    total, done = len(runs), 0
    for run in runs:
        state = run_state(run)
        if state == "failed" and retry_failed:
            state = "new"
        if state in ("finished", "failed"):
            status = read_status(run.run_dir)
            acc = _final_accuracy(run.run_dir) if state == "finished" else None
            outcomes[run.run_dir.name] = RunOutcome(run.variant, run.seed, str(run.run_dir), state, "skipped",
                                                    None if state == "finished" else _failure_reason(status), acc)
            done += 1
            what = f"test acc {acc:.4f}" if acc is not None else f"failed earlier: {_short(_failure_reason(status))}"
            log(f"[{done}/{total}] {run.label}: {what} (done before, skipped)")
        else:
            todo.append((run, state))

    bar = _overall_bar(total, done, progress)

    def finish(run: PlannedRun, state: str, result: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        action = "resumed" if state == "resume" else "trained"
        outcome = RunOutcome(run.variant, run.seed, result["run_dir"], result["status"], action,
                             result["reason"], result["test_accuracy"], result["seconds"])
        outcomes[run.run_dir.name] = outcome
        if outcome.status == "finished":
            what = f"test acc {outcome.test_accuracy:.4f}"
        elif outcome.status == "busy":
            what = "skipped: another lenet process is training it now"
        else:
            what = f"FAILED: {_short(outcome.reason)}"
        resumed = ", resumed" if action == "resumed" else ""
        line = f"[{done}/{total}] {run.label}: {what} ({outcome.seconds:.1f} s{resumed})"
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            log(line)
        write_summary(plan.sweep_dir, plots=False)

    try:
        if jobs == 1 or len(todo) <= 1:
            for group in batch_groups(todo, together):
                if len(group) == 1:
                    run, state = group[0]
                    finish(run, state, execute_run(run.config.to_dict(), str(run.run_dir), state))
                    continue
                log(f"training {len(group)} runs together: {', '.join(run.label for run, _ in group)}")
                results = execute_together([run.config.to_dict() for run, _ in group],
                                           [str(run.run_dir) for run, _ in group])
                for (run, state), result in zip(group, results):
                    finish(run, state, result)
        else:
            _run_parallel(todo, jobs, finish)
    except Interrupted as exc:
        first = str(exc).split(";")[0]
        raise Interrupted(f"{first}; checkpoint saved. Run the same `lenet sweep` command again to finish: "
                          "finished runs are skipped and interrupted ones resume") from None
    finally:
        if bar is not None:
            bar.close()
        if plan.sweep_dir.is_dir():
            write_summary(plan.sweep_dir)
    return [outcomes[r.run_dir.name] for r in runs]


def _run_parallel(todo: list[tuple[PlannedRun, str]], jobs: int,
                  finish: Callable[[PlannedRun, str, dict[str, Any]], None]) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: forking a process that has started torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(execute_run, run.config.to_dict(), str(run.run_dir), state): (run, state)
                   for run, state in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    run, state = pending.pop(future)
                    finish(run, state, future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _overall_bar(total: int, done: int, progress: bool | None):
    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)


def _short(reason: str | None, limit: int = 90) -> str:
    text = (reason or "").split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _final_accuracy(run_dir: Path) -> float | None:
    rows = _read_rows(run_dir)
    return rows[-1].get("test_accuracy") if rows else None


def _read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dry_run_lines(plan: SweepPlan, retry_failed: bool = False) -> list[str]:
    runs = plan.runs()
    lines = [f"sweep {plan.name}: {len(plan.variants)} variants x {len(plan.seeds)} seeds = {len(runs)} runs "
             f"in {plan.sweep_dir}/"]
    counts: dict[str, int] = {}
    for run in runs:
        state = run_state(run)
        if state == "failed" and retry_failed:
            state = "retry"
        counts[state] = counts.get(state, 0) + 1
        variant = next(v for v in plan.variants if v.name == run.variant)
        lines.append(f"  {state:<8} {run.run_dir.name:<28} {format_changes(variant.changes)}"
                     f"  ({run.config.train.epochs} epochs, {run.config.data.dataset})")
    lines.append("would train " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines


# --------------------------------------------------------------------------- summary


@dataclass
class VariantSummary:
    name: str
    changes: str
    parameters: int
    mult_adds: int
    accuracies: list[float]  # final test accuracy of each finished seed
    best_epochs: list[int]
    train_seconds: list[float]
    failed: list[str]  # reasons
    pending: int
    note: str | None = None

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (n - 1); NaN for fewer than two."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / (self.n - 1))

    @property
    def best_epoch(self) -> int | None:
        return round(sum(self.best_epochs) / len(self.best_epochs)) if self.best_epochs else None

    @property
    def mean_seconds(self) -> float:
        return sum(self.train_seconds) / len(self.train_seconds) if self.train_seconds else math.nan

    @property
    def status(self) -> str:
        parts = [f"{self.n} finished"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({_short(self.failed[0], 70)})")
        if self.pending:
            parts.append(f"{self.pending} pending")
        return ", ".join(parts)

    def accuracy_text(self) -> str:
        if not self.n:
            return "—"
        return f"{self.mean:.4f}" if self.n < 2 else f"{self.mean:.4f} ± {self.std:.4f}"


def best_epoch(rows: list[dict[str, Any]]) -> int | None:
    """The epoch of the highest validation accuracy, or test accuracy without a split."""
    key = "val_accuracy" if any(r.get("val_accuracy") is not None for r in rows) else "test_accuracy"
    scored = [(r[key], r["epoch"]) for r in rows if r.get(key) is not None]
    if not scored:
        return None
    top = max(score for score, _ in scored)
    return min(epoch for score, epoch in scored if score == top)  # the first epoch to reach it


def load_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise RunError(f"{sweep_dir}: no sweep.json; is this a sweep directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def summarize(sweep_dir: str | Path) -> tuple[list[VariantSummary], dict[str, Any]]:
    """Per-variant statistics recomputed from the run directories listed in sweep.json."""
    sweep_dir = Path(sweep_dir)
    info = load_sweep(sweep_dir)
    summaries = []
    for v in info["variants"]:
        s = VariantSummary(v["name"], format_changes(v["changes"]), v["parameters"], v["mult_adds"],
                           [], [], [], [], 0, v.get("note"))
        for run in (r for r in info["runs"] if r["variant"] == v["name"]):
            run_dir = sweep_dir / run["dir"]
            status = read_status(run_dir)
            rows = _read_rows(run_dir)
            if status.get("status") == "finished" and rows:
                s.accuracies.append(float(rows[-1]["test_accuracy"]))
                epoch = best_epoch(rows)
                if epoch is not None:
                    s.best_epochs.append(epoch)
                s.train_seconds.append(sum(float(r.get("epoch_seconds") or 0) for r in rows))
            elif status.get("status") in ("diverged", "failed"):
                s.failed.append(_failure_reason(status))
            else:
                s.pending += 1
        summaries.append(s)
    return summaries, info


SUMMARY_COLUMNS = ["variant", "differs from base", "parameters", "mult-adds", "test accuracy",
                   "n", "best epoch", "train seconds", "status"]


def summary_rows(summaries: list[VariantSummary]) -> list[list[str]]:
    rows = []
    for s in summaries:
        rows.append([s.name, s.changes, f"{s.parameters:,}", f"{s.mult_adds:,}", s.accuracy_text(), str(s.n),
                     "—" if s.best_epoch is None else str(s.best_epoch),
                     "—" if math.isnan(s.mean_seconds) else f"{s.mean_seconds:.1f}", s.status])
    return rows


def summary_markdown(summaries: list[VariantSummary], info: dict[str, Any]) -> str:
    seeds = info.get("seeds", [])
    lines = [f"# Sweep `{info['name']}`", ""]
    if info.get("spec", {}).get("description"):
        lines += [info["spec"]["description"].strip(), ""]
    base = info.get("spec", {}).get("base")
    overrides = info.get("command_line_overrides") or []
    if overrides:
        lines += ["Set on the command line for every run (a variant's own fields win): "
                  + ", ".join(f"`{o}`" for o in overrides) + ".", ""]
    lines += [f"Base: `{json.dumps(base) if isinstance(base, dict) else base}`; seeds: {seeds}; "
              f"baseline variant: `{info.get('baseline')}`. Test accuracy is the final epoch's, "
              "mean ± sample std over the finished seeds (n); best epoch is the epoch of the highest "
              "validation accuracy (test accuracy without a validation split), mean over seeds.", ""]
    lines.append("| " + " | ".join(SUMMARY_COLUMNS) + " |")
    lines.append("|" + "|".join(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---"]) + "|")
    for row in summary_rows(summaries):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(summaries: list[VariantSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "differs_from_base", "parameters", "mult_adds", "test_accuracy_mean",
                     "test_accuracy_std", "n", "best_epoch", "train_seconds_mean", "finished", "failed",
                     "pending", "failure_reason"])
    def number(x: Any) -> Any:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x

    for s in summaries:
        writer.writerow([s.name, s.changes, s.parameters, s.mult_adds,
                         number(round(s.mean, 6) if s.n else None), number(round(s.std, 6) if s.n > 1 else None),
                         s.n, number(s.best_epoch), number(round(s.mean_seconds, 2) if s.train_seconds else None),
                         s.n, len(s.failed), s.pending, s.failed[0] if s.failed else ""])
    return buffer.getvalue()


def mean_curve(runs_rows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-epoch mean of train loss and accuracies over seeds (epochs all seeds reached)."""
    epochs = min(len(rows) for rows in runs_rows)
    out = []
    for i in range(epochs):
        row: dict[str, Any] = {"epoch": i + 1}
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
            values = [rows[i].get(key) for rows in runs_rows]
            if all(v is not None for v in values):
                row[key] = sum(values) / len(values)
        out.append(row)
    return out


def write_summary(sweep_dir: str | Path, plots: bool = True) -> list[VariantSummary]:
    """summary.md, summary.csv and summary.json; with ``plots`` also the two figures."""
    sweep_dir = Path(sweep_dir)
    summaries, info = summarize(sweep_dir)
    atomic_write_text(sweep_dir / "summary.md", summary_markdown(summaries, info))
    atomic_write_text(sweep_dir / "summary.csv", summary_csv(summaries))
    write_json(sweep_dir / "summary.json", {
        "name": info["name"], "baseline": info.get("baseline"), "seeds": info.get("seeds"),
        "variants": [{"name": s.name, "differs_from_base": s.changes, "parameters": s.parameters,
                      "mult_adds": s.mult_adds, "test_accuracies": s.accuracies,
                      "test_accuracy_mean": s.mean if s.n else None, "test_accuracy_std": s.std if s.n > 1 else None,
                      "best_epoch": s.best_epoch, "train_seconds_mean": s.mean_seconds if s.train_seconds else None,
                      "failed": s.failed, "pending": s.pending, "note": s.note} for s in summaries],
    })
    if plots:
        write_plots(sweep_dir, summaries, info)
    return summaries


def write_plots(sweep_dir: Path, summaries: list[VariantSummary], info: dict[str, Any]) -> list[Path]:
    from .viz import plot_accuracy_bars, plot_curves

    done = [s for s in summaries if s.n]
    written = []
    if not done:
        return written
    baseline = next((s.mean for s in done if s.name == info.get("baseline")), None)
    seeds = info.get("seeds", [])
    written.append(plot_accuracy_bars(
        [s.name for s in done], [s.mean for s in done], [s.std for s in done], sweep_dir / "accuracy_bars.png",
        title=f"{info['name']}: final test accuracy, mean ± std over {len(seeds)} seed(s)", baseline=baseline))
    curves = []
    for s in done:
        finished = [sweep_dir / r["dir"] for r in info["runs"] if r["variant"] == s.name
                    and read_status(sweep_dir / r["dir"]).get("status") == "finished"]
        rows = [r for r in (_read_rows(d) for d in finished) if r]
        if rows:
            curves.append((s.name, mean_curve(rows)))
    if curves:
        written.append(plot_curves(curves, sweep_dir / "curves.png",
                                   title=f"{info['name']}: mean over seeds per variant"))
    # Past 10 lines the colours repeat (tab10), so big sweeps also get groups of
    # CURVES_PER_GROUP variants, each with the baseline drawn for reference.
    for stale in sweep_dir.glob("curves-*.png"):
        stale.unlink()
    if len(curves) > 10:
        reference = [c for c in curves if c[0] == info.get("baseline")]
        others = [c for c in curves if c[0] != info.get("baseline")]
        for number, start in enumerate(range(0, len(others), CURVES_PER_GROUP), start=1):
            group = reference + others[start:start + CURVES_PER_GROUP]
            last = start + len(group) - len(reference)
            title = f"{info['name']}: variants {start + 1}-{last} of {len(others)}"
            written.append(plot_curves(group, sweep_dir / f"curves-{number}.png",
                                       title=title + (" and the baseline" if reference else "")))
    return written


def format_dry_run(plan: SweepPlan, retry_failed: bool = False) -> str:
    return "\n".join(dry_run_lines(plan, retry_failed))


def spec_to_yaml(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
