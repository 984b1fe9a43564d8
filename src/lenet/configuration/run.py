"""One validated config for a run: data, model, optimiser, training.

Built from a preset (or defaults), then a YAML/TOML file, then dotted overrides
("optim.lr=0.1") and CLI flags, in that order. Unknown keys and bad values are
errors that name the field, the value and, for typos, the closest valid key.
The resolved config is written to every run directory and into every model file.
"""

from __future__ import annotations

import copy
import difflib
import re
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..data.augment import NAMED as AUGMENTATIONS
from ..data.augment import AugmentConfig, named
from ..data.catalog import DATASETS
from ..model.network import MODEL_REGISTRY, ModelConfig, Strict, check_architecture


class DataConfig(Strict):
    dataset: Literal["fashion-mnist", "mnist"] = "fashion-mnist"
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="random changes to training images")
    data_dir: str | None = Field(None, description="folder holding <dataset>/ subfolders")
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out; 0 = none")
    normalize: Literal["unit", "standard"] = Field(
        "unit", description="unit: pixels/255 in [0,1] (the chapter); standard: (x-mean)/std"
    )

    @field_validator("val_split")
    @classmethod
    def _open_interval(cls, value: float) -> float:
        if value != 0.0 and not 0.0 < value < 1.0:
            raise ValueError("must be 0 (no validation split) or in (0, 1)")
        return value


class OptimConfig(Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.9, gt=0.0, le=100.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "constant"
    step_epochs: int = Field(5, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: lr factor per decay")
    warmup_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="onecycle: share of steps rising")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="decay of an exponential moving average of the weights "
                                                       "(0: none); with it, the averaged weights are the run's model")


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    eval_batch_size: int | None = Field(None, ge=1, description="images per evaluation batch (default: 2048 "
                                        "on a GPU, 1000 on a CPU, where batches of 2048 outgrow the caches)")
    dry_run: bool = Field(False, description="one batch of training and evaluation, for smoke tests")
    deterministic: bool = False
    progress: Literal["auto", "always", "never"] = "auto"
    tta: bool = Field(False, description="also report test accuracy with test-time augmentation (flips, shifts)")
    tensorboard: bool = Field(True, description="also write TensorBoard scalars into the run directory")
    evaluate_test: bool = Field(True, description="test loss and accuracy after every epoch; a search turns it "
                                                  "off, so choosing a config never sees the test set")
    # Speed switches; each reaches the plain path's accuracy (test_train.py). "auto" and
    # None are decided per machine when the run starts (runtime.resolve_speed) and the
    # choice is recorded in environment.json and the checkpoint.
    precision: Literal["auto", "fp32", "bf16", "tf32"] = Field(
        "auto", description="auto: bf16 autocast where this CPU runs it faster (measured), else fp32; "
                            "tf32: CUDA matmuls in TF32")
    compile: bool = Field(False, description="torch.compile the model; the first steps pay the compile time")
    amp: bool = Field(False, description="bfloat16 autocast for forward passes: precision bf16 by another name")
    channels_last: bool | None = Field(None, description="NHWC memory layout; None: on for the CPU, where it is "
                                                         "faster, off elsewhere")
    cuda_graphs: bool = Field(False, description="CUDA only: record the whole step as a CUDA graph and replay it")
    micro_batch: int | None = Field(None, ge=0, le=1_000_000, description=(
        "forward and backward in parts of this many images, gradients summed (the same update up to "
        "rounding), so activations stay in the CPU's caches; None: automatic on the CPU for networks without "
        "batch norm, off elsewhere; 0: off"))
    parallel_halves: bool | None = Field(None, description=(
        "CPU: each batch's two halves forward and backward at once, each on half the threads, gradients summed "
        "(the same update up to rounding; halves.py); None: where this CPU measured them within 3% of the "
        "fastest step or faster, for networks without batch norm or dropout"))
    fused_layers: bool | None = Field(None, description=(
        "the same function computed faster on the CPU (fused.py): the first conv block by pixel phases, the "
        "flatten in channels-last order, few-channel convs' input gradient as a transposed conv; None: on for "
        "channels-last CPU runs without --compile"))


class RunConfig(Strict):
    name: str | None = Field(None, max_length=100, description="the run directory's name: letters, digits, . _ = , + -")
    preset: str | None = Field(None, description="the preset this config started from")
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's generators take seeds below 2**32")
    device: str = "auto"
    out: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        # It names a folder under --out: no separators, no "..", nothing a shell or a
        # filesystem reads specially (newlines, control characters).
        if value is not None and not SAFE_NAME.match(value):
            raise ValueError("use letters, digits and . _ = , + - only, starting with a letter or digit "
                             "(it names the run's folder inside --out)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @model_validator(mode="after")
    def _no_mirrored_digits(self) -> "RunConfig":
        if self.data.dataset == "mnist" and self.data.augment.flip and not self.data.augment.force_flip:
            raise ValueError("data.augment.flip on MNIST: digits are not mirror-symmetric (a mirrored 2 is no 2); "
                             "leave flip off, or set data.augment.force_flip=true to flip anyway")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# A run or sweep name becomes a folder name: safe in a shell and on every filesystem.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")


# --------------------------------------------------------------------------- presets

# Each preset reproduces one recipe of the chapter's sources, as overrides of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # d2l.ai 7.6 (PyTorch): LeNet-5, sigmoid, avg-pool, Xavier-uniform, SGD lr 0.9,
    # batch 256, 10 epochs, pixels in [0, 1]. Published: test acc 0.78-0.81.
    "d2l": {"model": {"name": "lenet5"}},
    # The chapter's Keras version: same layers (conv1 "same" = pad 2 for 5x5),
    # Adam 1e-3, batch 64, 10 epochs, 10% validation split.
    "keras-v1": {
        "model": {"name": "lenet5", "padding": ["same", 0]},
        "optim": {"optimizer": "adam", "lr": 1e-3},
        "train": {"batch_size": 64},
        "data": {"val_split": 0.1},
    },
    # Keras "V2": ReLU, max-pool, dropout 0.5 after dense 120, Adam, batch 64.
    "keras-v2": {
        "model": {"name": "lenet5-v2", "padding": ["same", 0], "activation": "relu",
                  "pool": "max", "dropout": 0.5, "init": "xavier"},
        "optim": {"optimizer": "adam", "lr": 1e-3},
        "train": {"batch_size": 64},
        "data": {"val_split": 0.1},
    },
    # The chapter's DJL (Java) version: the first conv has no bias and a normal init
    # (sigma 0.01), average pooling uses a 5x5 window, stride 2, padding 2; Xavier
    # elsewhere; SGD lr 0.9, batch 256, 10 epochs (as d2l).
    "djl": {"model": {"name": "lenet5", "conv_bias": [False, True], "first_conv_init": "normal",
                      "pool_size": 5, "pool_stride": 2, "pool_padding": 2}},
    # Speedruns: fewest seconds to a target test accuracy with at most 100k parameters.
    # BN + ReLU + max-pool, standardised pixels, AdamW under a one-cycle schedule.
    # Measured on the 2-core CPU (single thread, shared machine): MNIST 0.9901 after
    # epoch 2; Fashion-MNIST 0.9081 after epoch 4 and 0.9127 after 5 of an 8-epoch run.
    "speedrun-mnist": {
        "model": {"name": "lenet5-bn", "activation": "relu", "pool": "max", "init": "kaiming"},
        "data": {"dataset": "mnist", "normalize": "standard"},
        "optim": {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.01, "schedule": "onecycle",
                  "label_smoothing": 0.05},
        "train": {"epochs": 3, "batch_size": 256},
    },
    "speedrun-fashion-mnist": {
        "model": {"name": "lenet5-bn", "conv_channels": [16, 32], "dense": [96], "activation": "relu",
                  "pool": "max", "init": "kaiming"},  # 91,258 parameters
        "data": {"dataset": "fashion-mnist", "normalize": "standard"},
        "optim": {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.01, "schedule": "onecycle",
                  "label_smoothing": 0.1},
        "train": {"epochs": 6, "batch_size": 256},
    },
    # Records for at most 100k parameters (docs/accuracy.md): the speedrun network,
    # trained longer with augmentation on the device. Every choice was made on the 10%
    # validation split (docs/specs/search-*.yaml); the test set only reports. Fashion-MNIST:
    # shifts and flips (erasing lost 0.001), 50 epochs (val 0.9287 against 0.9268 at 30),
    # TTA on (val 0.9323 against 0.9280), the moving average off (it tied).
    "best-fashion-mnist": {
        "model": {"name": "lenet5-bn", "conv_channels": [16, 32], "dense": [96], "activation": "relu",
                  "pool": "max", "init": "kaiming"},  # 91,258 parameters
        "data": {"dataset": "fashion-mnist", "normalize": "standard", "val_split": 0.1,
                 "augment": {"translate": 2, "flip": True}},
        "optim": {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.01, "schedule": "onecycle",
                  "label_smoothing": 0.1},
        "train": {"epochs": 50, "batch_size": 256, "tta": True},
    },
    # MNIST: shifts and LeCun's affine distortions, never mirror images; the moving
    # average and TTA tied the plain weights on validation (0.9948 each), so they are out.
    "best-mnist": {
        "model": {"name": "lenet5-bn", "conv_channels": [16, 32], "dense": [96], "activation": "relu",
                  "pool": "max", "init": "kaiming"},  # 91,258 parameters
        "data": {"dataset": "mnist", "normalize": "standard", "val_split": 0.1,
                 "augment": {"translate": 2, "rotate": 10.0, "scale": 0.1, "shear": 10.0}},
        "optim": {"optimizer": "adamw", "lr": 5e-3, "weight_decay": 0.01, "schedule": "onecycle",
                  "label_smoothing": 0.1},
        "train": {"epochs": 20, "batch_size": 256},
    },
}


# --------------------------------------------------------------------------- building


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["optim"]["lr"] = value for "optim.lr"; intermediate dicts are created."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """"optim.lr=0.1" -> ("optim.lr", 0.1); values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.lr=0.1)")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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


def _fields_at(root: Any, loc: tuple[Any, ...]) -> list[str]:
    """Valid field names at a location of a pydantic model (for did-you-mean); list
    indices in ``loc`` (variants.3.name) and Optional/list annotations are stepped through."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        entry = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if entry is None:
            return []
        model = entry.annotation
        while not hasattr(model, "model_fields") and typing.get_args(model):
            model = next((a for a in typing.get_args(model) if hasattr(a, "model_fields")
                          or typing.get_args(a)), None)
    return list(getattr(model, "model_fields", {}))


def explain(error: ValidationError, source: str = "config", root: Any = None) -> ConfigError:
    """A pydantic error as one message per field, with did-you-mean for typos.
    ``root``: the model validated (default RunConfig), whose fields the hints name."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            valid = _fields_at(root or RunConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            lines.append(f"unknown key {dotted!r}{hint} (valid here: {', '.join(valid)})")
        else:
            value = item.get("input")
            message = item["msg"].removeprefix("Value error, ")
            if isinstance(value, dict):  # a whole-section check: the message names the fields
                lines.append(f"{dotted or '(top level)'}: {message}")
            else:
                lines.append(f"{dotted} = {_short_json(value)}: {message}")
    return ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))


def _short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


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


# --------------------------------------------------------------------------- flags

@dataclass(frozen=True)
class Flag:
    """One training option as the CLI spells it (--batch-size) and Python does
    (lenet.config(batch_size=...)), and the config field it sets."""

    name: str  # Python keyword; the CLI flag is --name with "-" for "_"
    key: str  # dotted config field
    help: str  # states the default, as every CLI flag's help does
    type: Any = str  # bool: a switch (--amp), set only when given
    choices: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


FLAGS: tuple[Flag, ...] = (
    Flag("device", "device", "auto | cpu | cuda | cuda:N | mps (default: auto)"),
    Flag("seed", "seed", "random seed for init, shuffling and the validation split (default: 0)", int),
    Flag("epochs", "train.epochs", "passes over the training set (d2l: 10)", int),
    Flag("batch_size", "train.batch_size", "examples per step (d2l: 256, keras: 64)", int),
    Flag("lr", "optim.lr", "learning rate (d2l: 0.9, keras: 0.001)", float),
    Flag("optimizer", "optim.optimizer", "(d2l: sgd, keras: adam)", str, ("sgd", "adam", "adamw")),
    Flag("momentum", "optim.momentum", "SGD momentum (default: 0)", float),
    Flag("weight_decay", "optim.weight_decay", "L2 / decoupled weight decay (default: 0)", float),
    Flag("schedule", "optim.schedule", "learning-rate schedule over all steps (default: constant)", str,
         ("constant", "step", "cosine", "onecycle")),
    Flag("label_smoothing", "optim.label_smoothing", "(default: 0)", float),
    Flag("val_split", "data.val_split", "fraction of train held out, stratified (keras: 0.1)", float),
    Flag("dataset", "data.dataset", "(default: fashion-mnist)", str, tuple(DATASETS)),
    Flag("data_dir", "data.data_dir", "folder holding fashion-mnist/ and mnist/ (default: search)"),
    Flag("model", "model.name",
         f"registered architecture: {' | '.join(sorted(MODEL_REGISTRY))} (default: from preset)"),
    Flag("name", "name", "run directory name (default: <preset>-<dataset>-<time>)"),
    Flag("out", "out", "folder for run directories (default: runs)"),
    Flag("augment", "data.augment", f"augment training images: a comma list of {', '.join(AUGMENTATIONS)} "
                                    "(default: none; strengths: --set data.augment.rotate=15 ...)"),
    Flag("ema", "optim.ema", "decay of a moving average of the weights, e.g. 0.999 (default: 0, none)", float),
    Flag("tta", "train.tta", "also report test accuracy with test-time augmentation", bool),
    Flag("dry_run", "train.dry_run", "one batch of training and evaluation (smoke test)", bool),
    Flag("deterministic", "train.deterministic", "deterministic algorithms (slower)", bool),
    # Speed switches: each has a trade-off, so each is off unless given.
    Flag("compile", "train.compile", "torch.compile the model (first epoch pays the compile time)", bool),
    Flag("precision", "train.precision", "auto: bf16 where this CPU runs it faster, measured (default: auto)", str,
         ("auto", "fp32", "bf16", "tf32")),
    Flag("amp", "train.amp", "bfloat16 autocast on CPU and CUDA (= --precision bf16)", bool),
    Flag("channels_last", "train.channels_last", "channels-last (NHWC) memory layout (default: on for the CPU)", bool),
    Flag("cuda_graphs", "train.cuda_graphs", "CUDA only: record the whole step as a CUDA graph, replay it", bool),
    Flag("micro_batch", "train.micro_batch", "forward and backward in parts of N images, gradients summed; 0: off "
         "(default: automatic on the CPU without batch norm)", int),
)
FLAGS_BY_NAME = {f.name: f for f in FLAGS}


def flag_fields(values: dict[str, Any]) -> dict[str, Any]:
    """{"batch_size": 64, "amp": True} -> {"train.batch_size": 64, "train.amp": True};
    an unknown name is a ConfigError with the closest flag. None (and False for a
    switch) means "not given": the preset's value stays."""
    fields = {}
    for name, value in values.items():
        if name not in FLAGS_BY_NAME:
            close = difflib.get_close_matches(name, list(FLAGS_BY_NAME), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown option {name!r}{hint} (options: {', '.join(FLAGS_BY_NAME)}; "
                              "any other field: set={'section.field': value})")
        flag = FLAGS_BY_NAME[name]
        if value is None or (flag.type is bool and value is False):
            continue
        if name == "augment":  # names -> the fields they turn on (augment.NAMED)
            try:
                fields.update({f"data.augment.{k}": v for k, v in named(value).items()})
            except ValueError as exc:
                raise ConfigError(f"--augment {value}: {exc}") from None
            continue
        fields[flag.key] = value
    return fields


def build_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- preset <- file <- overrides <- flags (dotted keys; None = unset).

    ``overrides``: "KEY=VALUE" texts (values parsed as YAML), or a dict of dotted keys
    to values that are already typed (lenet.config's ``set=``)."""
    tree: dict[str, Any] = {}
    source = "config"
    file_data: dict[str, Any] = {}
    if file is not None:
        file_data = load_file(file)
        source = f"config file {file}"
        preset = preset or file_data.pop("preset", None)
        file_data.pop("preset", None)
    if preset is not None:
        preset = preset_name(preset)
        tree = deep_merge(PRESETS[preset], {"preset": preset})
    tree = deep_merge(tree, file_data)
    pairs = overrides.items() if isinstance(overrides, dict) else (parse_override(t) for t in overrides or [])
    for key, value in pairs:
        set_dotted(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    return validate(tree, source)


def preset_name(name: str) -> str:
    """A preset's name as registered: matched case-insensitively; an unknown one is a
    ConfigError that lists them all and suggests the closest."""
    if name in PRESETS:
        return name
    folded = {p.lower(): p for p in PRESETS}
    if str(name).lower() in folded:
        return folded[str(name).lower()]
    close = difflib.get_close_matches(str(name).lower(), list(PRESETS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown preset {name!r}{hint} (choose from {', '.join(PRESETS)})")


def validate(tree: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise explain(exc, source) from None
    check_architecture(config.model)
    return config
