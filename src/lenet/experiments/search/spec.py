"""Search specs: a base config and a space of dotted config fields, validated before
any trial starts.

    name: lr-and-width
    base: keras-v2                      # a preset, a config file, or {preset: ..., key: value}
    common: {train.epochs: 10, data.val_split: 0.1}
    search:
      optim.lr: {loguniform: [1.0e-4, 1.0e-1]}
      model.dropout: {uniform: [0.0, 0.5]}
      model.conv_channels: {choice: [[6, 16], [16, 32]]}
      train.batch_size: {choice: [64, 128, 256]}
    metric: val_accuracy                # maximised; val_loss is minimised
    trials: 16                          # the trial budget (--trials)
    algorithm: tpe                      # tpe (Optuna) | random (--algorithm)
    asha: {grace_epochs: 1, reduction_factor: 3}   # early stopping; asha: false for none

Every value a distribution can give is checked against the config schema first (both
ends of a range, every choice), so a trial never fails on a value the spec allowed.
The search chooses on the validation split: a base without one is refused.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ...errors import ConfigError, LenetError
from ...configuration.base import Strict
from ...configuration.base import explain
from ...configuration.build import build_config, flatten, parse_override
from ...configuration.files import load_file
from ...configuration.run import RunConfig
from ..sweep.plan import MAX_RUNS, RESERVED_KEYS, base_source
from ..sweep.spec import check_safe_name, looks_like_file

KINDS = ("choice", "uniform", "loguniform", "randint")
METRICS = {"val_accuracy": "max", "val_loss": "min"}
# How a trial the search stopped says so (the start of its status.json reason).
STOPPED_BY_SEARCH = "the search stopped it (ASHA early stopping or its time budget)"
# Fields a search sets itself: every trial's folder, the test set kept out of the choice.
OWNED_KEYS = (*RESERVED_KEYS, "train.evaluate_test", "train.progress")


class Asha(Strict):
    grace_epochs: int = Field(1, ge=1, description="epochs every trial gets before it can be stopped")
    reduction_factor: int = Field(3, ge=2, description="keep the best 1/reduction_factor at each rung")


class SearchSpec(Strict):
    name: str = Field(description="the search's directory under --out")
    description: str | None = None
    base: str | dict[str, Any] = Field("d2l", description="preset name, config file, or {preset: ..., key: value}")
    common: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value for every trial")
    search: dict[str, dict[str, Any]] = Field(description="dotted key -> {choice|uniform|loguniform|randint: ...}")
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    trials: int = Field(16, ge=1, description="how many configs to try (at most --max-runs)")
    algorithm: Literal["tpe", "random"] = "tpe"
    time_budget: float | None = Field(None, gt=0, description="seconds; running trials stop when it is spent")
    asha: Asha | bool = Field(default_factory=Asha, description="ASHA early stopping; false: every trial runs "
                                                                "all its epochs")
    seed: int = Field(0, ge=0, lt=2**32, description="the searcher's seed and every trial's training seed")

    _safe = field_validator("name")(classmethod(check_safe_name))

    @field_validator("asha")
    @classmethod
    def _asha(cls, value: Asha | bool) -> Asha | bool:
        return Asha() if value is True else value

    @model_validator(mode="after")
    def _space(self) -> "SearchSpec":
        if not self.search:
            raise ValueError("`search:` is empty; give at least one field to search")
        for key, dist in self.search.items():
            Distribution.parse(key, dist)
        return self

    def distributions(self) -> dict[str, "Distribution"]:
        return {key: Distribution.parse(key, dist) for key, dist in self.search.items()}

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


class Distribution:
    """One searched field: its kind and arguments, as Tune and the trials table see it."""

    def __init__(self, key: str, kind: str, args: list[Any]):
        self.key, self.kind, self.args = key, kind, args

    @classmethod
    def parse(cls, key: str, spec: Any) -> "Distribution":
        where = f"search field {key!r}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ValueError(f"{where}: give one of {', '.join(f'{{{k}: ...}}' for k in KINDS)}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: {kind} takes a non-empty list, got {args!r}")
        if kind == "choice":
            if len({json.dumps(a, sort_keys=True) for a in args}) != len(args):
                raise ValueError(f"{where}: the choices repeat")
            return cls(key, kind, list(args))
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ValueError(f"{where}: {kind} takes [low, high], two numbers; got {args!r}")
        low, high = args
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"{where}: {kind} needs low < high, both finite; got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"{where}: loguniform needs low > 0 (a log scale); got {low}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ValueError(f"{where}: randint takes whole numbers [low, high] (high excluded); got {args!r}")
        return cls(key, kind, [low, high])

    def extremes(self) -> list[Any]:
        """Every value to validate against the config schema before the search starts."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    def tune(self):
        """The Tune sampler; choices travel as JSON text (Optuna takes only scalars)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice([json.dumps(a) for a in self.args])
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[self.kind](*self.args)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.kind == "choice" and isinstance(value, str) else value

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(a) for a in self.args)
        high = " (excluded)" if self.kind == "randint" else ""
        return f"{self.kind} from {self.args[0]:g} to {self.args[1]:g}{high}"


def parse_search_spec(data: Any, source: str = "") -> SearchSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid search spec {source}: expected a mapping, got {type(data).__name__}")
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, f"search spec {source}".strip(), root=SearchSpec) from None


def load_search_spec(path: str | Path) -> SearchSpec:
    path = Path(path)
    spec = parse_search_spec(load_file(path), str(path))
    if isinstance(spec.base, str) and looks_like_file(spec.base) and not Path(spec.base).is_absolute():
        spec = spec.model_copy(update={"base": str((path.parent / spec.base).resolve())})
    return spec


def check_trials(spec: SearchSpec, max_runs: int | None = None) -> None:
    """ConfigError when the spec asks for more than ``max_runs`` trials (--max-runs; None: MAX_RUNS)."""
    max_runs = MAX_RUNS if max_runs is None else max_runs
    if spec.trials > max_runs:
        raise ConfigError(f"search {spec.name!r}: {spec.trials:,} trials, over the limit of {max_runs:,}; ask for "
                          f"fewer (--trials), or raise the limit with --max-runs {spec.trials}")


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from 3600, "90s", "30m", "2h" or "1h30m" (None stays None)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ConfigError(f"--time-budget: {text!r} is not a duration; give seconds (3600) or 90s, 30m, 2h, 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"--time-budget must be above zero, got {text!r}")
    return total


class TrialConfigs:
    """Every trial's config: base <- common <- command-line --set <- the sampled values."""

    def __init__(self, spec: SearchSpec, overrides: list[str] | None = None):
        self.spec = spec
        self.preset, self.file, base_fields = base_source(spec.base)
        self.fields = {**base_fields, **flatten(spec.common), **dict(parse_override(t) for t in overrides or [])}
        self.space = spec.distributions()
        where = f"search {spec.name!r}"
        for key in [*self.fields, *self.space]:
            if key in OWNED_KEYS:
                raise ConfigError(f"{where}: {key!r} is set by the search itself; remove it")
        if "train.epochs" in self.space and spec.asha:
            raise ConfigError(f"{where}: train.epochs is ASHA's budget; search it with `asha: false`")
        self.base = self.build({})
        if self.base.data.val_split <= 0:
            raise ConfigError(f"{where}: a search chooses on a validation split and this base has none; add "
                              "data.val_split (e.g. common: {data.val_split: 0.1}) so the test set stays unseen")
        for dist in self.space.values():
            for value in dist.extremes():
                try:
                    self.build({dist.key: value})
                except LenetError as exc:
                    raise ConfigError(f"{where}: {dist.key} = {json.dumps(value)} ({dist.describe()}) is not a "
                                      f"valid value: {exc}") from None

    def build(self, sampled: dict[str, Any], **owned: Any) -> RunConfig:
        flags = {**self.fields, **sampled, "seed": self.spec.seed, "train.evaluate_test": False,
                 "train.progress": "never", **owned}
        return build_config(self.preset, self.file, flags=flags)

    def sampled(self, params: dict[str, Any]) -> dict[str, Any]:
        """Tune's sample (JSON-encoded choices) as config values."""
        return {key: dist.decode(params[key]) for key, dist in self.space.items() if key in params}


def spec_to_dict(spec: SearchSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)
