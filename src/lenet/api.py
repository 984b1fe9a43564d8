"""The Python front door: what ``import lenet`` offers. The CLI is a thin layer over
these same functions, with the same names and defaults:

    cfg = lenet.config("keras-v2", epochs=3, dataset="mnist", set={"model.pool": "avg"})
    run = lenet.train(cfg)                    # in memory: writes nothing, prints nothing
    run = lenet.train(cfg, out="runs")        # the run directory `lenet train` makes
    run.model, run.config, run.history, run.test_accuracy, run.plot()
    run = lenet.load("runs/keras-v2-...")     # a run directory or a .safetensors file
    report = lenet.evaluate(run)              # accuracy, per class, confusion, mistakes
    print(lenet.summary(cfg))                 # the layer table of `lenet summary`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.augment import named
from .errors import ConfigError, RunError, UsageError
from .model.network import LayerInfo, LeNet, ModelConfig, format_summary, list_models, model_config, summarize
from .configuration.build import build_config, flag_fields
from .configuration.presets import PRESETS, preset_name
from .configuration.run import RunConfig
from .data.datasets import data_spec
from .store.checkpoint import CHECKPOINT, load_checkpoint
from .store.models import MODEL_FILE, load_model
from .store.recorder import FINISHED, INTERRUPTED, read_status
from .store.runs import load_run_config, read_metrics
from .training.result import Run


def config(preset: str | None = None, *, file: str | Path | None = None, set: dict[str, Any] | None = None,
           **options: Any) -> RunConfig:
    """The config `lenet train` resolves from the same words: the preset (default d2l,
    unless ``file`` names one), then the file, then ``set`` ({"model.pool": "max"}: any
    dotted field), then the options, named as the CLI's flags (epochs=3, batch_size=64,
    lr=0.1, dataset="mnist", amp=True, ...). Validated exactly as the CLI validates:
    an unknown option or field, or a bad value, is a ConfigError naming it."""
    if preset is None and file is None:
        preset = "d2l"
    overrides = dict(set or {})
    names = options.pop("augment", None)
    if names:  # what the names turn on comes first, so set= can change a strength
        try:
            overrides = {**{f"data.augment.{k}": v for k, v in named(names).items()}, **overrides}
        except ValueError as exc:
            raise ConfigError(f"--augment {names}: {exc}") from None
    return build_config(preset, file, overrides, flag_fields(options))


def load(path: str | Path, device: str = "cpu") -> Run:
    """A run from its directory (config, history, status, and the model: the final one,
    or the last checkpoint's where the run did not finish) or from a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file() and (path.parent / "metrics.jsonl").is_file() \
            and path.name == MODEL_FILE:
        path = path.parent  # a run directory's own model file: load the whole run
    if path.is_dir() and not (path / MODEL_FILE).is_file() and (path / CHECKPOINT).is_file():
        cfg = load_run_config(path)
        model = LeNet(cfg.model)
        try:
            model.load_state_dict(load_checkpoint(path)["model"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise RunError(f"{path / CHECKPOINT}: its weights do not fit the run's config ({exc})") from None
        status = read_status(path).get("status", INTERRUPTED)
        return Run(cfg, model.to(device).eval(), read_metrics(path, missing_ok=True), path, status,
                   data_spec(cfg).class_names)
    trained = load_model(path, device)
    if path.is_dir():
        return Run(trained.config, trained.model, read_metrics(path, missing_ok=True), path,
                   read_status(path).get("status", FINISHED), tuple(trained.class_names))
    return Run(trained.config, trained.model, [], None, FINISHED, tuple(trained.class_names))


@dataclass
class ModelSummary:
    """`lenet summary`'s table: each layer's output shape, parameters and multiply-adds."""

    title: str
    input_shape: tuple[int, ...]
    layers: list[LayerInfo]

    @property
    def parameters(self) -> int:
        return sum(r.parameters for r in self.layers)

    @property
    def mult_adds(self) -> int:
        return sum(r.mult_adds for r in self.layers)

    def to_list(self) -> list[dict[str, Any]]:
        return [r.__dict__ for r in self.layers]

    def __str__(self) -> str:
        return format_summary(self.layers, f"{self.title}: input {'x'.join(map(str, self.input_shape))}")


def architecture(target: Any) -> tuple[ModelConfig, str]:
    """(ModelConfig, a title) from a model name, a preset, a RunConfig or ModelConfig, a
    Run, a run directory, a model file or a config file."""
    if isinstance(target, ModelConfig):
        return target, target.name
    if isinstance(target, RunConfig):
        return target.model, f"preset {target.preset}" if target.preset else target.model.name
    if isinstance(target, Run):
        return target.config.model, str(target.run_dir or target.config.model.name)
    text = str(target)
    path = Path(text)
    if text in list_models():
        return model_config(text), text
    if not path.exists():
        try:
            name = preset_name(text)
            return build_config(name).model, f"preset {name}"
        except Exception:  # noqa: BLE001 - not a preset either: say what it could have been
            pass
    if path.is_dir() or path.suffix == ".safetensors":
        return load_model(path).config.model, str(path)
    if path.is_file():
        return build_config(None, path).model, str(path)
    raise UsageError(f"{text!r} is neither a model ({', '.join(list_models())}), a preset "
                     f"({', '.join(PRESETS)}), a run directory nor a config file")


def summary(target: Any) -> ModelSummary:
    """The layer table of a model name, preset, config, run, run directory or model file."""
    cfg, title = architecture(target)
    shape = (1, cfg.in_channels, cfg.input_size, cfg.input_size)
    return ModelSummary(title, shape, summarize(LeNet(cfg), shape))
