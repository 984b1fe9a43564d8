"""Post-training int8 quantisation of a trained LeNet (the integer rules: ``integer``).

    fold(model)               the float network as int8 computes it: batch norm folded into
                              the conv or dense weights, dropout gone, ReLU fused into the layer
    calibrate(folded, images) each quantised tensor's range, from training images
    build_int8(folded, ...)   int8 weights (per output channel), int32 biases, fixed-point
                              requantisation, activation tables: an ``Int8Model``
    ptq(trained, images)      the three above; accuracy() compares float and int8 on a test set

Fine-tuning with the quantisation simulated (QAT) uses ``Folded`` with ranges given; its
loop is in lenet.training.qat, since using a model never imports the training machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..model.network import ACTIVATIONS
from .integer import INT8, MAX_BIAS, WEIGHT_MAX, Affine, Flatten, Int8Model, Layer, Lookup, Pool, fixed_point

CALIBRATION_IMAGES = 1000  # training images whose activations set the ranges (min..max of each tensor)
ACTIVATION_NAMES = {constructor: name for name, constructor in ACTIVATIONS.items()}


@dataclass
class Step:
    """One step of the folded network."""

    kind: str  # conv | dense | act | pool | flatten
    name: str
    padding: int = 0  # conv; pool
    relu: bool = False  # conv, dense: ReLU fused (its output range starts at 0)
    activation: nn.Module | None = None  # act: applied element-wise, becomes a table
    pool: str = ""  # max | avg
    size: int = 0
    stride: int = 0
    point: bool = False  # its output is a quantised tensor with a range of its own
    source: str = ""  # pool: the tensor whose range its output keeps


class Folded(nn.Module):
    """The float network as the int8 one computes it; with ``ranges`` ({tensor: (scale,
    zero)}) it simulates the quantisation (fake-quantised weights and tensors) for QAT."""

    def __init__(self, steps: list[Step], params: dict[str, torch.Tensor]):
        super().__init__()
        self.steps = steps
        self.params = nn.ParameterDict({k: nn.Parameter(v.float()) for k, v in params.items()})

    def forward(self, x: torch.Tensor, ranges: dict[str, tuple[float, int]] | None = None,
                observe: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
        for step in self.steps:  # x: (N, C, H, W), then (N, features) after flatten
            if step.kind in ("conv", "dense"):
                weight, bias = self.params[f"{step.name}_weight"], self.params[f"{step.name}_bias"]
                if ranges is not None:
                    weight = fake_quantize_weight(weight)
                if step.kind == "conv":
                    x = F.conv2d(x, weight, bias, padding=step.padding)
                else:
                    x = F.linear(x, weight, bias)
                x = F.relu(x) if step.relu else x
            elif step.kind == "act":
                x = step.activation(x)  # type: ignore[misc]
            elif step.kind == "flatten":
                x = x.flatten(1)
            elif step.pool == "max":
                x = F.max_pool2d(x, step.size, step.stride, step.padding)
            else:
                x = F.avg_pool2d(x, step.size, step.stride, step.padding)
                if ranges is not None and step.source in ranges:
                    x = torch.fake_quantize_per_tensor_affine(x, *ranges[step.source], *INT8)
            if step.point:
                if observe is not None:
                    observe(step.name, x)
                if ranges is not None:
                    x = torch.fake_quantize_per_tensor_affine(x, *ranges[step.name], *INT8)
        return x


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel, symmetric, as build_int8 rounds; gradients pass straight through."""
    scale = weight.detach().abs().flatten(1).amax(1) / WEIGHT_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zeros = torch.zeros(len(scale), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zeros, 0, -WEIGHT_MAX, WEIGHT_MAX)


def _conv_step(name: str, module: nn.Conv2d) -> Step:
    pad = module.padding
    if (module.stride, module.dilation, module.groups) != ((1, 1), (1, 1), 1) or not isinstance(pad, tuple) \
            or pad[0] != pad[1]:
        raise ConfigError(f"{name}: only convs with stride 1, no dilation or groups and equal padding have an "
                          "int8 form here")
    return Step("conv", name, padding=int(pad[0]))


def fold(model: nn.Module) -> Folded:
    """A LeNet (features then classifier, in eval mode) as a Folded network, float64 folding."""
    steps: list[Step] = []
    params: dict[str, torch.Tensor] = {}
    children = [*model.features.named_children(), *model.classifier.named_children()]  # type: ignore[operator]
    for name, module in children:
        last = steps[-1] if steps else None
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            steps.append(_conv_step(name, module) if isinstance(module, nn.Conv2d) else Step("dense", name))
            weight = module.weight.detach().double()
            params[f"{name}_weight"] = weight
            params[f"{name}_bias"] = (module.bias.detach().double() if module.bias is not None
                                      else torch.zeros(len(weight), dtype=torch.float64))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and last and last.kind in ("conv", "dense") \
                and not last.relu:
            # y = gamma * (x - mean) / sqrt(var + eps) + beta, with x = w * input + b
            gain = module.weight.detach().double() / torch.sqrt(module.running_var.double() + module.eps)
            w, b = params[f"{last.name}_weight"], params[f"{last.name}_bias"]
            params[f"{last.name}_weight"] = w * gain.view(-1, *([1] * (w.ndim - 1)))
            params[f"{last.name}_bias"] = (b - module.running_mean.double()) * gain + module.bias.detach().double()
        elif isinstance(module, nn.ReLU) and last and last.kind in ("conv", "dense") and not last.relu:
            last.relu = True
        elif type(module) in ACTIVATION_NAMES:
            steps.append(Step("act", name, activation=module))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            steps.append(_pool_step(name, module))
        elif isinstance(module, nn.Flatten):
            steps.append(Step("flatten", name))
        elif not isinstance(module, nn.Dropout):  # dropout is the identity at inference
            raise ConfigError(f"{name}: a {type(module).__name__} has no int8 form here")
    if not steps or steps[-1].kind != "dense":
        raise ConfigError("the model must end with a dense layer (its outputs become the int32 scores)")
    source = ""
    for step in steps[:-1]:
        step.point = step.kind in ("conv", "dense", "act")
        source = step.name if step.point else source
        step.source = source if step.kind == "pool" else ""
    return Folded(steps, params).eval()


def _pool_step(name: str, module: nn.Module) -> Step:
    size, stride, padding = (module.kernel_size, module.stride, module.padding)  # type: ignore[attr-defined]
    values = [v if isinstance(v, int) else v[0] for v in (size, stride, padding)]
    square = all(isinstance(v, int) or len(set(v)) == 1 for v in (size, stride, padding))
    plain = not module.ceil_mode and (isinstance(module, nn.MaxPool2d) and module.dilation in (1, (1, 1))
                                      or isinstance(module, nn.AvgPool2d) and module.count_include_pad
                                      and module.divisor_override is None)
    if not (square and plain):
        raise ConfigError(f"{name}: only square pooling without ceil_mode or dilation has an int8 form here")
    return Step("pool", name, pool="max" if isinstance(module, nn.MaxPool2d) else "avg",
                size=values[0], stride=values[1], padding=values[2])


@torch.no_grad()
def calibrate(folded: Folded, inputs: torch.Tensor, batch_size: int = 500) -> dict[str, tuple[float, float]]:
    """(min, max) of every quantised tensor over ``inputs`` (normalised float images)."""
    seen: dict[str, tuple[float, float]] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        old = seen.get(name, (lo, hi))
        seen[name] = (min(lo, old[0]), max(hi, old[1]))

    for start in range(0, len(inputs), batch_size):
        folded(inputs[start:start + batch_size], observe=observe)
    return seen


def tensor_quantization(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an int8 tensor spanning [lo, hi] widened to hold 0 exactly
    (padding and ReLU need it); the scale rounded to float32, as ONNX stores it."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / 255)) if hi > lo else 1.0  # an all-zero tensor: any scale
    zero = int(np.clip(np.rint(INT8[0] - lo / scale), *INT8))
    return scale, zero


def quantization_ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, int]]:
    return {name: tensor_quantization(*span) for name, span in ranges.items()}


def _affine(step: Step, weight: torch.Tensor, bias: torch.Tensor, in_q: tuple[float, int],
            out_q: tuple[float, int] | None) -> Affine:
    """Quantise one conv or dense layer; ``out_q`` None = the last layer, int32 scores."""
    in_scale = in_q[0]
    channels = len(weight)
    peak = weight.abs().flatten(1).amax(1)
    # A channel's scale also keeps its int32 bias within MAX_BIAS (a near-dead channel with a
    # real bias would otherwise overflow it); 1.0 for a channel of zeros.
    scale = torch.maximum(peak / WEIGHT_MAX, bias.abs() / (in_scale * MAX_BIAS))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float().double()  # float32 values, as ONNX
    q_weight = torch.round(weight / scale.view(-1, *([1] * (weight.ndim - 1)))).clamp(-WEIGHT_MAX, WEIGHT_MAX)
    q_bias = torch.round(bias / (in_scale * scale)).clamp(-MAX_BIAS, MAX_BIAS)
    out_scale, out_zero = out_q if out_q is not None else (float(in_scale * scale.max()), 0)
    fixed = [fixed_point(in_scale * float(scale[o]) / out_scale) for o in range(channels)]
    return Affine(step.kind, step.name, q_weight.to(torch.int8), q_bias.to(torch.int32),  # type: ignore[arg-type]
                  torch.tensor([m for m, _ in fixed], dtype=torch.int32),
                  torch.tensor([s for _, s in fixed], dtype=torch.int32), in_q[1], out_zero, step.padding,
                  out_q is None, in_scale, out_scale, scale.tolist())


def _table(activation: nn.Module, in_q: tuple[float, int], out_q: tuple[float, int]) -> torch.Tensor:
    grid = in_q[0] * (torch.arange(*INT8[:1], INT8[1] + 1, dtype=torch.float64) - in_q[1])  # every int8 value
    with torch.no_grad():
        real = activation(grid)
    return (torch.round(real / out_q[0]) + out_q[1]).clamp(*INT8).to(torch.int8)


def build_int8(folded: Folded, ranges: dict[str, tuple[float, int]], input_scale: float, input_shift: float,
               input_shape: tuple[int, int, int]) -> Int8Model:
    """The Int8Model of ``folded`` with tensor quantisations ``ranges`` ({name: (scale, zero)}).

    The input is the raw pixel: real = input_scale * pixel - input_shift = input_scale * (q -
    input_zero) with q = pixel - 128, input_zero = round(input_shift / input_scale) - 128. The
    fraction rounding leaves (0 for pixels in [0, 1]; 0.07 pixel levels for Fashion-MNIST's
    standardisation) is folded into the first layer's bias."""
    scale = float(np.float32(input_scale))
    pixel_zero = round(input_shift / scale)
    fraction = input_shift / scale - pixel_zero
    current = (scale, pixel_zero - 128)
    layers: list[Layer] = []
    for index, step in enumerate(folded.steps):
        if step.kind in ("conv", "dense"):
            weight = folded.params[f"{step.name}_weight"].detach().double()
            bias = folded.params[f"{step.name}_bias"].detach().double()
            if not layers and fraction:
                bias = bias - scale * fraction * weight.flatten(1).sum(1)
            out_q = ranges[step.name] if index < len(folded.steps) - 1 else None
            layers.append(_affine(step, weight, bias, current, out_q))
            current = out_q if out_q is not None else current
        elif step.kind == "act":
            name = ACTIVATION_NAMES[type(step.activation)]
            layers.append(Lookup(step.name, _table(step.activation, current, ranges[step.name]), name))  # type: ignore[arg-type]
            current = ranges[step.name]
        elif step.kind == "pool":
            layers.append(Pool(step.name, step.pool, step.size, step.stride, step.padding, current[1]))  # type: ignore[arg-type]
        else:
            layers.append(Flatten(step.name))
    last = layers[-1]
    model = Int8Model(layers, input_shape, scale, pixel_zero - 128, last.output_scale)  # type: ignore[union-attr]
    model.shapes()  # every layer fits, and no int32 sum can overflow
    return model


# --------------------------------------------------------------------------- the whole job


@dataclass
class Calibration:
    """What set the ranges: how many training images, which, and the tensor quantisations."""

    images: int
    seed: int
    ranges: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "source": "training set", "seed": self.seed,
                "ranges": {k: list(v) for k, v in self.ranges.items()}}


def calibration_images(train_images: torch.Tensor, count: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """``count`` training images (uint8 (N, C, H, W)), chosen by a seeded shuffle."""
    if count < 1:
        raise ConfigError(f"calibration needs at least one image; got {count}")
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    return train_images[order[:count]]


def ptq(trained: Any, images: torch.Tensor, ranges: dict[str, tuple[float, int]] | None = None,
        folded: Folded | None = None, seed: int = 0) -> tuple[Int8Model, Calibration]:
    """Post-training quantisation of a TrainedModel with ``images`` (uint8 training images)
    setting the ranges, unless ``ranges`` are given (QAT keeps the ones it trained with)."""
    folded = folded if folded is not None else fold(trained.model.cpu())
    normalize = trained.normalize
    if ranges is None:
        ranges = quantization_ranges(calibrate(folded, normalize(images).contiguous()))
    cfg = trained.config.model
    int8 = build_int8(folded, ranges, normalize.scale, normalize.shift,
                      (cfg.in_channels, cfg.input_size, cfg.input_size))
    int8.info.update({"config": trained.config.to_dict(), "class_names": list(trained.class_names),
                      "dataset": trained.config.data.dataset, "source": str(trained.path)})
    return int8, Calibration(len(images), seed, ranges)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean()) if len(labels) else float("nan")


def float_predictions(trained: Any, images: torch.Tensor) -> torch.Tensor:
    """The float model's classes, one plain forward (no test-time augmentation: int8 has none)."""
    return trained.logits(images).argmax(1)


@dataclass
class Quantized:
    """lenet.quantize's result: the int8 model, where it was written, and the accuracies
    of the float and int8 models on the same test images (plain forward, no TTA)."""

    model: Int8Model
    path: Any  # Path of model-int8.safetensors, None when kept in memory
    float_accuracy: float
    ptq_accuracy: float
    qat_accuracy: float | None  # None without QAT
    test_images: int
    float_bytes: int  # the float32 weights
    calibration: Calibration
    qat_epochs: int = 0

    @property
    def int8_accuracy(self) -> float:
        """The accuracy of the model kept: QAT's where it ran, else PTQ's."""
        return self.qat_accuracy if self.qat_accuracy is not None else self.ptq_accuracy

    @property
    def bytes(self) -> int:
        return self.model.parameter_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"float_accuracy": self.float_accuracy, "ptq_accuracy": self.ptq_accuracy,
                "qat_accuracy": self.qat_accuracy, "int8_accuracy": self.int8_accuracy,
                "test_images": self.test_images, "float_bytes": self.float_bytes, "int8_bytes": self.bytes,
                "qat_epochs": self.qat_epochs, "calibration_images": self.calibration.images,
                "path": None if self.path is None else str(self.path)}

    def __str__(self) -> str:
        def row(label: str, value: float) -> str:
            return f"{label:<22} {value:.4f}  ({100 * (value - self.float_accuracy):+.2f} points)"

        lines = [f"test accuracy on {self.test_images:,} images (one plain forward each):",
                 f"{'float32':<22} {self.float_accuracy:.4f}", row("int8 (PTQ)", self.ptq_accuracy)]
        if self.qat_accuracy is not None:
            lines.append(row(f"int8 (QAT, {self.qat_epochs} epoch{'s' * (self.qat_epochs != 1)})", self.qat_accuracy))
        lines.append(f"weights: {self.float_bytes:,} bytes as float32, {self.bytes:,} bytes as int8 "
                     f"(with biases, scales and tables; {self.float_bytes / self.bytes:.1f}x smaller); "
                     f"ranges from {self.calibration.images:,} training images")
        if self.path is not None:
            lines.append(f"wrote {self.path}")
        return "\n".join(lines)
