"""One validated config for a run: data, model, optimiser, training.

Built from a preset (or defaults), then a YAML/TOML file, then dotted overrides
("optim.lr=0.1") and CLI flags, in that order. Unknown keys and bad values are
errors that name the field, the value and, for typos, the closest valid key.
The resolved config is written to every run directory and into every model file.
"""

from __future__ import annotations

import copy
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "silu", "elu"]
Pooling = Literal["avg", "max", "none"]
Init = Literal["xavier", "xavier_normal", "kaiming", "normal", "default"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    """A LeNet-family architecture: conv blocks, then dense layers.

    Each conv block is conv -> [batch norm] -> activation -> [pool]. Lists give one
    value per conv block; a single number applies to every block.
    """

    name: str = Field("lenet5", description="registry name this architecture came from (for display)")
    in_channels: int = Field(1, ge=1)
    input_size: int = Field(28, ge=1, description="input height = width, pixels")
    num_classes: int = Field(10, ge=2)
    conv_channels: list[int] = Field(default_factory=lambda: [6, 16], min_length=1)
    kernel_size: list[int] = Field(default_factory=lambda: [5, 5])
    padding: list[int | Literal["same"]] = Field(default_factory=lambda: [2, 0])
    activation: Activation = "sigmoid"
    pool: Pooling = "avg"
    pool_size: int = Field(2, ge=1)
    pool_stride: int | None = Field(None, ge=1, description="defaults to pool_size")
    dense: list[int] = Field(default_factory=lambda: [120, 84], description="hidden dense widths")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    dropout_where: Literal["first", "all"] = Field(
        "first", description="dropout after the first hidden dense layer (Keras V2) or after each"
    )
    batch_norm: bool = False
    init: Init = "xavier"

    @field_validator("conv_channels", "dense")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"every width must be >= 1, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _broadcast(cls, data: Any) -> Any:
        # A single kernel size or padding applies to every conv block, so a sweep can
        # say "kernel_size: [3, 5, 7]" without knowing how many blocks there are.
        # Left out, they follow LeNet's pattern for any number of blocks: 5x5 kernels,
        # padding 2 on the first block only.
        if isinstance(data, dict):
            data = dict(data)
            n = len(data.get("conv_channels", [6, 16]) or [])
            data.setdefault("kernel_size", [5] * n)
            data.setdefault("padding", [2] + [0] * (n - 1))
            for key in ("kernel_size", "padding"):
                if not isinstance(data[key], (list, tuple)):
                    data[key] = [data[key]] * n
        return data

    @model_validator(mode="after")
    def _lengths(self) -> "ModelConfig":
        n = len(self.conv_channels)
        for key in ("kernel_size", "padding"):
            values = getattr(self, key)
            if len(values) != n:
                raise ValueError(
                    f"{key} has {len(values)} values but there are {n} conv blocks "
                    f"(conv_channels={self.conv_channels}); give one per block or a single number"
                )
        if any(k < 1 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be >= 1, got {self.kernel_size}")
        if any(p != "same" and p < 0 for p in self.padding):
            raise ValueError(f"padding must be >= 0 or 'same', got {self.padding}")
        return self


class DataConfig(Strict):
    dataset: Literal["fashion-mnist", "mnist"] = "fashion-mnist"
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


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    eval_batch_size: int = Field(2048, ge=1, description="evaluation needs no gradients: big batches")
    dry_run: bool = Field(False, description="one batch of training and evaluation, for smoke tests")
    deterministic: bool = False
    progress: Literal["auto", "always", "never"] = "auto"
    # Speed switches with a trade-off; each reaches the plain path's accuracy (test_train.py).
    compile: bool = Field(False, description="torch.compile the model; the first steps pay the compile time")
    amp: bool = Field(False, description="bfloat16 autocast for forward passes (CPU and CUDA)")
    channels_last: bool = Field(False, description="NHWC memory layout for model and batches")
    cuda_graphs: bool = Field(False, description="CUDA only: replay the compiled step as CUDA graphs")


class RunConfig(Strict):
    name: str | None = None
    preset: str | None = Field(None, description="the preset this config started from")
    seed: int = Field(0, ge=0)
    device: str = "auto"
    out: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml/.json) or TOML (.toml) file as a dict; syntax errors name the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read ({exc})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: TOML syntax error: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: YAML syntax error{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names at a dotted location of RunConfig (for did-you-mean)."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def explain(error: ValidationError, source: str = "config") -> ConfigError:
    """A pydantic error as one message per field, with did-you-mean for typos."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            valid = _fields_at(loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            lines.append(f"unknown key {dotted!r}{hint} (valid here: {', '.join(valid)})")
        else:
            value = item.get("input")
            message = item["msg"].removeprefix("Value error, ")
            if isinstance(value, dict):  # a whole-section check: the message names the fields
                lines.append(f"{dotted or '(top level)'}: {message}")
            else:
                lines.append(f"{dotted} = {json.dumps(value, default=str)}: {message}")
    return ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))


def build_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults <- preset <- file <- KEY=VALUE overrides <- flags (dotted keys; None = unset)."""
    tree: dict[str, Any] = {}
    source = "config"
    file_data: dict[str, Any] = {}
    if file is not None:
        file_data = load_file(file)
        source = f"config file {file}"
        preset = preset or file_data.pop("preset", None)
        file_data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, list(PRESETS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown preset {preset!r}{hint} (choose from {', '.join(PRESETS)})")
        tree = deep_merge(PRESETS[preset], {"preset": preset})
    tree = deep_merge(tree, file_data)
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    name = tree.get("model", {}).get("name")
    if name is not None:
        # A registered variant supplies its fields; anything set explicitly wins.
        from .models import registered_fields

        tree["model"] = deep_merge(registered_fields(name), tree["model"])
    return validate(tree, source)


def validate(tree: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise explain(exc, source) from None
    from .models import check_architecture  # late import: models imports this module

    check_architecture(config.model)
    return config
