"""LeNet-family models: one configurable class, named variants in a registry.

``LeNet(ModelConfig)`` builds conv blocks (conv -> [BN] -> activation -> [pool])
followed by dense layers; every layer has a stable name (conv1, act1, pool1, ...,
fc1, ...) so summaries, activation probes and weight files can refer to it.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..configuration.base import Strict
from ..errors import ConfigError, UsageError

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "silu", "elu"]
Pooling = Literal["avg", "max", "none"]
Init = Literal["xavier", "xavier_normal", "kaiming", "normal", "default"]


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
    pool_padding: int = Field(0, ge=0, description="zeros added on each side before pooling (DJL: 2)")
    dense: list[int] = Field(default_factory=lambda: [120, 84], description="hidden dense widths")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    dropout_where: Literal["first", "all"] = Field(
        "first", description="dropout after the first hidden dense layer (Keras V2) or after each"
    )
    batch_norm: bool = False
    conv_bias: list[bool] = Field(default_factory=lambda: [True, True],
                                  description="a bias per conv block (DJL's first conv has none)")
    init: Init = "xavier"
    first_conv_init: Init | None = Field(None, description="the first conv's init, if not `init` (DJL: normal)")

    @field_validator("conv_channels", "dense")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"every width must be >= 1, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _named_variant_then_broadcast(cls, data: Any) -> Any:
        # A registered name supplies its variant's fields, under anything given
        # explicitly: ModelConfig(name="lenet5-bn") has batch norm however it is built
        # (a preset, a file, --model, or ModelConfig/RunConfig in Python).
        # A single kernel size or padding applies to every conv block, so a sweep can
        # say "kernel_size: [3, 5, 7]" without knowing how many blocks there are.
        # Left out, they follow LeNet's pattern for any number of blocks: 5x5 kernels,
        # padding 2 on the first block only.
        if isinstance(data, dict):
            data = {**registered_fields(data.get("name", "lenet5")), **data}
            channels = data.get("conv_channels", [6, 16])
            n = len(channels) if isinstance(channels, (list, tuple)) else 1  # a number: refused below
            data.setdefault("kernel_size", [5] * n)
            data.setdefault("padding", [2] + [0] * (n - 1))
            data.setdefault("conv_bias", [True] * n)
            for key in ("kernel_size", "padding", "conv_bias"):
                if not isinstance(data[key], (list, tuple)):
                    data[key] = [data[key]] * n
        return data

    @model_validator(mode="after")
    def _lengths(self) -> "ModelConfig":
        n = len(self.conv_channels)
        for key in ("kernel_size", "padding", "conv_bias"):
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
        if self.pool_padding > self.pool_size // 2:
            raise ValueError(f"pool_padding {self.pool_padding} is over half the pool size {self.pool_size} "
                             "(a window of padding only); use at most pool_size // 2")
        return self


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def _padding(p: int | str, kernel: int) -> int:
    # "same" keeps the size for odd kernels (stride 1): pad (k - 1) / 2 on each side.
    return kernel // 2 if p == "same" else int(p)


def _pool_stride(cfg: ModelConfig) -> int:
    return cfg.pool_stride or cfg.pool_size


def check_architecture(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """Feature-map sizes through the conv blocks; ConfigError naming the layer that
    shrinks the map below 1x1. Returns [(layer, channels, size)] for each block output."""
    size = cfg.input_size
    channels = cfg.in_channels
    shapes = []
    for i, (out_ch, k, p) in enumerate(zip(cfg.conv_channels, cfg.kernel_size, cfg.padding), start=1):
        pad = _padding(p, k)
        new = size + 2 * pad - k + 1
        if new < 1:
            raise ConfigError(
                f"impossible architecture: conv{i} (kernel {k}, padding {pad}) gets a "
                f"{channels}x{size}x{size} input and would output {new}x{new}; "
                "use a smaller kernel, more padding, or fewer conv blocks"
            )
        size, channels = new, out_ch
        if cfg.pool != "none":
            stride = _pool_stride(cfg)
            new = (size + 2 * cfg.pool_padding - cfg.pool_size) // stride + 1
            if new < 1:
                raise ConfigError(
                    f"impossible architecture: pool{i} (size {cfg.pool_size}, stride {stride}) gets a "
                    f"{channels}x{size}x{size} input and would output less than 1x1; "
                    "use padding, smaller kernels, pool: none, or fewer conv blocks"
                )
            size = new
        shapes.append((f"block{i}", channels, size))
    parameters = count_config_parameters(cfg, shapes)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"architecture too large: {parameters:,} parameters (conv {cfg.conv_channels}, dense "
                          f"{cfg.dense}); lenet builds LeNet-sized networks, at most {MAX_PARAMETERS:,}")
    return shapes


# LeNet-5 has 61,706 parameters and the widest variants here a few hundred thousand; a
# config (or a model file's stored config) asking for more than this is a mistake or an
# attack (dense: [45000, 45000] is 2 billion parameters, 8 GB), refused before building.
MAX_PARAMETERS = 50_000_000


def count_config_parameters(cfg: ModelConfig, shapes: list[tuple[str, int, int]]) -> int:
    """The parameters LeNet(cfg) would have, counted from the config (nothing is built)."""
    count, in_ch = 0, cfg.in_channels
    for out_ch, k, bias in zip(cfg.conv_channels, cfg.kernel_size, cfg.conv_bias):
        count += out_ch * in_ch * k * k + (out_ch if bias and not cfg.batch_norm else 0)
        count += 2 * out_ch if cfg.batch_norm else 0
        in_ch = out_ch
    width = shapes[-1][1] * shapes[-1][2] ** 2
    for hidden in cfg.dense:
        count += width * hidden + (2 * hidden if cfg.batch_norm else hidden)
        width = hidden
    return count + width * cfg.num_classes + cfg.num_classes


class LeNet(nn.Module):
    """A LeNet-family CNN described entirely by a ModelConfig."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        shapes = check_architecture(cfg)
        self.config = cfg
        act = ACTIVATIONS[cfg.activation]
        features: "OrderedDict[str, nn.Module]" = OrderedDict()
        in_ch = cfg.in_channels
        for i, (out_ch, k, p) in enumerate(zip(cfg.conv_channels, cfg.kernel_size, cfg.padding), start=1):
            # BN makes the conv bias redundant (BN has its own shift).
            bias = cfg.conv_bias[i - 1] and not cfg.batch_norm
            features[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, k, padding=_padding(p, k), bias=bias)
            if cfg.batch_norm:
                features[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            features[f"act{i}"] = act()
            if cfg.pool == "avg":
                # count_include_pad: padded zeros count in the average, as in MXNet/DJL's default
                features[f"pool{i}"] = nn.AvgPool2d(cfg.pool_size, _pool_stride(cfg), cfg.pool_padding)
            elif cfg.pool == "max":
                features[f"pool{i}"] = nn.MaxPool2d(cfg.pool_size, _pool_stride(cfg), cfg.pool_padding)
            in_ch = out_ch
        self.features = nn.Sequential(features)

        _, channels, size = shapes[-1]
        classifier: "OrderedDict[str, nn.Module]" = OrderedDict(flatten=nn.Flatten())
        width = channels * size * size  # 16 * 5 * 5 = 400 for LeNet-5
        for j, hidden in enumerate(cfg.dense, start=1):
            classifier[f"fc{j}"] = nn.Linear(width, hidden, bias=not cfg.batch_norm)
            if cfg.batch_norm:
                classifier[f"fc_bn{j}"] = nn.BatchNorm1d(hidden)
            classifier[f"fc_act{j}"] = act()
            if cfg.dropout > 0 and (j == 1 or cfg.dropout_where == "all"):
                classifier[f"dropout{j}"] = nn.Dropout(cfg.dropout)
            width = hidden
        classifier[f"fc{len(cfg.dense) + 1}"] = nn.Linear(width, cfg.num_classes)
        self.classifier = nn.Sequential(classifier)
        initialize(self, cfg.init, cfg.activation)
        if cfg.first_conv_init is not None:
            initialize(self.features.conv1, cfg.first_conv_init, cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float -> (B, classes) logits
        return self.classifier(self.features(x))


def initialize(model: nn.Module, scheme: str, activation: str) -> None:
    """Initialise conv and linear weights; biases to zero (as Keras and d2l's Xavier do)."""
    if scheme == "default":
        return  # PyTorch's own: kaiming_uniform(a=sqrt(5)), the "framework default" exercise
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if scheme == "xavier":
            nn.init.xavier_uniform_(module.weight)  # d2l's init_cnn and Keras' glorot_uniform
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(module.weight)
        elif scheme == "kaiming":
            nonlinearity = "relu" if activation in ("relu", "gelu", "silu", "elu") else "leaky_relu"
            nn.init.kaiming_normal_(module.weight, nonlinearity=nonlinearity)
        elif scheme == "normal":
            nn.init.normal_(module.weight, std=0.01)  # d2l's "init_weights" alternative
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- registry

MODEL_REGISTRY: dict[str, Callable[[], dict[str, Any]]] = {}
MODEL_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str):
    def wrap(factory: Callable[[], dict[str, Any]]):
        MODEL_REGISTRY[name] = factory
        MODEL_DESCRIPTIONS[name] = description
        return factory

    return wrap


@register_model("lenet5", "the chapter's LeNet-5: sigmoid, avg-pool, 6-16 conv, 120-84 dense")
def lenet5() -> dict[str, Any]:
    return {}


@register_model("lenet5-v2", "Keras V2: ReLU, max-pool, dropout 0.5 after dense 120")
def lenet5_v2() -> dict[str, Any]:
    return {"activation": "relu", "pool": "max", "dropout": 0.5}


@register_model("lenet5-bn", "d2l's batch-norm LeNet: BN after every conv and hidden dense layer")
def lenet5_bn() -> dict[str, Any]:
    return {"batch_norm": True}


@register_model("lenet5-relu", "LeNet-5 with ReLU, max-pool and Kaiming init")
def lenet5_relu() -> dict[str, Any]:
    return {"activation": "relu", "pool": "max", "init": "kaiming"}


@register_model("lenet-wide", "wider LeNet: 16-32 conv, one 128 dense, ReLU, BN, max-pool")
def lenet_wide() -> dict[str, Any]:
    return {"conv_channels": [16, 32], "dense": [128], "activation": "relu", "pool": "max",
            "batch_norm": True, "init": "kaiming", "padding": [2, 0]}


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in MODEL_REGISTRY if fnmatch.fnmatch(n, pattern))


class UnknownModel(UsageError, ValueError):
    """A model name not in the registry: a UsageError for callers, and a ValueError
    inside pydantic validation, which turns it into a config error naming the field."""


def registered_fields(name: Any) -> dict[str, Any]:
    """Only the fields variant ``name`` sets; the rest keep ModelConfig's defaults."""
    if not isinstance(name, str) or name not in MODEL_REGISTRY:
        raise UnknownModel(f"unknown model {name!r}; `lenet models` lists: {', '.join(list_models())}")
    return {"name": name, **MODEL_REGISTRY[name]()}


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered variant ``name`` with ``overrides`` applied (None = keep)."""
    registered_fields(name)  # an unknown name is a UsageError here, before validation
    fields = {"name": name, **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig.model_validate(fields)


def create_model(cfg: ModelConfig | str, **overrides: Any) -> LeNet:
    if isinstance(cfg, str):
        cfg = model_config(cfg, **overrides)
    return LeNet(cfg)


# --------------------------------------------------------------------------- summary


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # without the batch dimension
    parameters: int
    mult_adds: int


def summarize(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[LayerInfo]:
    """Every leaf layer's output shape, parameters and multiply-adds for one input.

    Multiply-adds count conv and linear layers only (the rest is < 1% for LeNet):
    conv = output elements * in_channels/groups * kh * kw; linear = in * out.
    """
    rows: list[LayerInfo] = []
    hooks = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor, name: str) -> None:
        shape = tuple(output.shape[1:])
        params = sum(p.numel() for p in module.parameters(recurse=False))
        macs = 0
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features
        rows.append(LayerInfo(name, type(module).__name__, shape, params, macs))

    for name, module in model.named_modules():
        if name and not list(module.children()):
            short = name.split(".")[-1]
            hooks.append(module.register_forward_hook(lambda m, i, o, n=short: hook(m, i, o, n)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def format_summary(rows: list[LayerInfo], title: str = "") -> str:
    header = f"{'layer':<10} {'type':<12} {'output shape':<14} {'params':>10} {'mult-adds':>12}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(str(s) for s in r.output_shape)
        lines.append(f"{r.name:<10} {r.kind:<12} {shape:<14} {r.parameters:>10,} {r.mult_adds:>12,}")
    total_params = sum(r.parameters for r in rows)
    total_macs = sum(r.mult_adds for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<10} {'':<12} {'':<14} {total_params:>10,} {total_macs:>12,}")
    lines.append(
        f"forward: {2 * total_macs / 1e6:.2f} MFLOP per image; "
        f"weights: {total_params * 4 / 1024:.1f} KiB as float32"
    )
    return "\n".join(lines)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_mult_adds(model: nn.Module, cfg: ModelConfig) -> int:
    shape = (1, cfg.in_channels, cfg.input_size, cfg.input_size)
    return sum(r.mult_adds for r in summarize(model, shape))


