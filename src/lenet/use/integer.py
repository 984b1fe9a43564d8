"""The int8 model and its integer arithmetic: the reference the C code and ONNX are checked against.

Every activation is int8 with a per-tensor scale and zero point (real = scale * (q - zero));
weights are int8 per output channel, symmetric (-127..127); sums are int32. The rules, the
same in this module and in the C of ``c_export`` (lenet_model.c), bit for bit:

- input: q = pixel - 128; the Normalizer is folded into the first layer (``Int8Model.input_*``).
- conv / dense: acc = bias + sum(weight * (q - input_zero)) in int32 (padding reads q = input_zero).
- requantisation: out = saturate(round(acc * multiplier / 2**shift) + output_zero), the multiplier
  an int32 in [2**30, 2**31) (smaller only for a channel that rounds to nothing) and 1 <= shift <= 62,
  the product in int64; saturate to -128..127, or to int32 for the last layer's scores.
- rounding everywhere (requantisation, average pooling, building tables): half to even.
- activations: a 256-entry int8 table per layer (ReLU needs none: its output range starts at 0,
  so saturation at -128 is the ReLU); max pooling exact, padding never wins; average pooling
  the sum of (q - zero) over the window, padding counting as 0, divided by size*size (half to even).

Sums run in float64 here (conv2d, matmul: multiply-adds only, no Winograd or FFT for doubles):
every product and partial sum is an integer below 2**53, so they are exact, the same int32
accumulators C computes, at torch's speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError

INT8 = (-128, 127)
INT32 = (-(2**31), 2**31 - 1)
WEIGHT_MAX = 127  # symmetric weights: -127..127, so -w never overflows
MAX_BIAS = 2**24  # |int32 bias| at most this: quantize widens a channel's weight scale to keep it there
# The longest sum an int32 accumulator holds exactly: each term is at most 255 * 127
# (q - zero spans -255..255), after a bias of at most MAX_BIAS.
MAX_TERMS = (INT32[1] - MAX_BIAS) // (255 * WEIGHT_MAX)


@dataclass
class Affine:
    """A conv (weight (O, I, k, k)) or dense layer (weight (O, I)), requantised per output channel."""

    kind: Literal["conv", "dense"]
    name: str
    weight: torch.Tensor  # int8
    bias: torch.Tensor  # int32 (O,), in units of input_scale * weight_scale[o]
    multiplier: torch.Tensor  # int32 (O,)
    shift: torch.Tensor  # int32 (O,), 1..62
    input_zero: int
    output_zero: int
    padding: int = 0  # conv only: on every side
    scores: bool = False  # the last layer: int32 scores (output_zero 0), no int8 saturation
    # For people and ONNX only; the integer arithmetic never reads them.
    input_scale: float = 1.0
    output_scale: float = 1.0
    weight_scale: list[float] = field(default_factory=list)

    @property
    def terms(self) -> int:
        """Products summed into each accumulator."""
        return int(self.weight[0].numel())


@dataclass
class Lookup:
    """An element-wise activation: out = table[q + 128]."""

    name: str
    table: torch.Tensor  # int8 (256,)
    activation: str = ""


@dataclass
class Pool:
    name: str
    kind: Literal["max", "avg"]
    size: int
    stride: int
    padding: int
    zero: int  # the tensor's zero point (unchanged by pooling)


@dataclass
class Flatten:
    name: str = "flatten"


Layer = Union[Affine, Lookup, Pool, Flatten]


@dataclass
class Int8Model:
    """An int8 LeNet: the layers above, from raw uint8 pixels to int32 scores."""

    layers: list[Layer]
    input_shape: tuple[int, int, int]  # (C, H, W)
    input_scale: float  # the Normalizer's: real input = input_scale * (q - input_zero), q = pixel - 128
    input_zero: int
    score_scale: float  # real logit = score_scale * score
    info: dict[str, Any] = field(default_factory=dict)  # JSON: config, class names, accuracies, calibration

    @property
    def num_classes(self) -> int:
        return int(self.layers[-1].weight.shape[0])  # type: ignore[union-attr]

    def shapes(self) -> list[tuple[int, ...]]:
        """Each layer's output shape (without the batch), after checking the layers fit together."""
        return trace_shapes(self.layers, self.input_shape)

    @property
    def parameter_bytes(self) -> int:
        """Bytes of every constant C keeps in flash: int8 weights and tables, int32 biases and
        multipliers, one byte per shift."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, Affine):
                total += layer.weight.numel() + 4 * layer.bias.numel() + 4 * layer.multiplier.numel()
                total += layer.shift.numel()
            elif isinstance(layer, Lookup):
                total += layer.table.numel()
        return total

    @torch.no_grad()
    def scores(self, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """int32 scores (N, classes) for uint8 images (N, C, H, W): what lenet_predict writes."""
        if pixels.dtype != torch.uint8 or tuple(pixels.shape[1:]) != self.input_shape:
            raise ConfigError(f"the int8 model takes uint8 images (N, {', '.join(map(str, self.input_shape))}); "
                              f"got {pixels.dtype} {tuple(pixels.shape)}")
        out = [forward(self.layers, pixels[s:s + batch_size].to(torch.int64) - 128)
               for s in range(0, len(pixels), batch_size)]
        return torch.cat(out).to(torch.int32) if out else torch.empty(0, self.num_classes, dtype=torch.int32)

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        """Classes (N,): the first highest score, as lenet_predict returns."""
        return self.scores(pixels).argmax(1)


def trace_shapes(layers: list[Layer], input_shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """Output shapes layer by layer; a ConfigError names the first layer that does not fit."""
    shape: tuple[int, ...] = tuple(input_shape)
    shapes = []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        if isinstance(layer, Affine):
            if layer.scores != last:
                raise ConfigError(f"{layer.name}: only the last layer writes the int32 scores")
            if layer.kind == "conv":
                out, cin, k, k2 = (*layer.weight.shape,) if layer.weight.ndim == 4 else (0, 0, 0, -1)
                if len(shape) != 3 or cin != shape[0] or k != k2:
                    raise ConfigError(f"{layer.name}: weight {tuple(layer.weight.shape)} does not fit input {shape}")
                size = shape[1] + 2 * layer.padding - k + 1, shape[2] + 2 * layer.padding - k + 1
                shape = (out, *size)
            else:
                if layer.weight.ndim != 2 or len(shape) != 1 or layer.weight.shape[1] != shape[0]:
                    raise ConfigError(f"{layer.name}: weight {tuple(layer.weight.shape)} does not fit input {shape}")
                shape = (int(layer.weight.shape[0]),)
            if layer.terms > MAX_TERMS:
                raise ConfigError(f"{layer.name} sums {layer.terms:,} products per output: int32 accumulators are "
                                  f"exact for at most {MAX_TERMS:,}; use fewer channels or more pooling before it")
        elif isinstance(layer, Pool):
            if len(shape) != 3:
                raise ConfigError(f"{layer.name}: pooling needs a (C, H, W) input, got {shape}")
            size = [(n + 2 * layer.padding - layer.size) // layer.stride + 1 for n in shape[1:]]
            shape = (shape[0], *size)
        elif isinstance(layer, Flatten):
            shape = (int(torch.tensor(shape).prod()),)
        elif last:
            raise ConfigError(f"{layer.name}: the last layer must be the dense layer writing the scores")
        if min(shape) < 1:
            raise ConfigError(f"{layer.name}: output {shape} is empty")
        shapes.append(shape)
    if not layers or not isinstance(layers[-1], Affine):
        raise ConfigError("an int8 model ends with the dense layer that writes the scores")
    return shapes


# --------------------------------------------------------------------------- integer arithmetic


def round_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x / 2**shift rounded half to even (int64; shift >= 1, broadcast against x)."""
    q = x >> shift  # arithmetic shift: floor
    r = x - (q << shift)  # 0 <= r < 2**shift
    half = 1 << (shift - 1)
    return q + ((r > half) | ((r == half) & (q & 1 == 1))).to(torch.int64)


def divide_rounded(total: torch.Tensor, count: int) -> torch.Tensor:
    """total / count rounded half to even (int64, count > 0)."""
    q = torch.div(total, count, rounding_mode="floor")
    r = total - q * count
    return q + ((2 * r > count) | ((2 * r == count) & (q & 1 == 1))).to(torch.int64)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, zero: int,
               bounds: tuple[int, int]) -> torch.Tensor:
    """int64 accumulators (N, O, ...) -> saturate(round(acc * multiplier[o] / 2**shift[o]) + zero)."""
    view = (1, -1) + (1,) * (acc.ndim - 2)
    scaled = round_shift(acc * multiplier.to(torch.int64).view(view), shift.to(torch.int64).view(view))
    return (scaled + zero).clamp(*bounds)


def fixed_point(real: float) -> tuple[int, int]:
    """(multiplier, shift) with multiplier / 2**shift ~= real: multiplier in [2**30, 2**31), 1 <= shift <= 62."""
    if not (math.isfinite(real) and 0 <= real < 2**30):
        raise ConfigError(f"a requantisation scale of {real!r} cannot be a fixed-point multiplier "
                          "(the calibrated ranges are broken: NaN weights or an empty range?)")
    if real == 0:
        return 0, 62
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2**exponent, mantissa in [0.5, 1)
    multiplier, shift = round(mantissa * 2**31), 31 - exponent
    if multiplier == 2**31:
        multiplier, shift = multiplier // 2, shift - 1
    if shift > 62:  # a scale below 2**-31: keep the bits that still count
        multiplier, shift = round(real * 2**62), 62
    return multiplier, shift


def _accumulate(layer: Affine, x: torch.Tensor) -> torch.Tensor:
    centred = (x - layer.input_zero).to(torch.float64)
    weight = layer.weight.to(torch.float64)
    if layer.kind == "conv":
        acc = F.conv2d(centred, weight, padding=layer.padding)  # (N, O, H', W'); padding = 0 = input_zero
    else:
        acc = centred @ weight.T  # (N, O)
    view = (1, -1) + (1,) * (acc.ndim - 2)
    return acc.to(torch.int64) + layer.bias.to(torch.int64).view(view)


def forward(layers: list[Layer], x: torch.Tensor) -> torch.Tensor:
    """The integer forward: int8 values (N, C, H, W) held as int64 -> int32 scores (N, classes), as int64."""
    for layer in layers:
        if isinstance(layer, Affine):
            bounds = INT32 if layer.scores else INT8
            x = requantize(_accumulate(layer, x), layer.multiplier, layer.shift, layer.output_zero, bounds)
        elif isinstance(layer, Lookup):
            x = layer.table.to(torch.int64)[x + 128]
        elif isinstance(layer, Flatten):
            x = x.flatten(1)
        elif layer.kind == "max":
            pooled = F.max_pool2d(x.to(torch.float64), layer.size, layer.stride, layer.padding)  # pads never win
            x = pooled.to(torch.int64)
        else:
            centred = (x - layer.zero).to(torch.float64)
            total = F.avg_pool2d(centred, layer.size, layer.stride, layer.padding, divisor_override=1)
            x = (divide_rounded(total.to(torch.int64), layer.size * layer.size) + layer.zero).clamp(*INT8)
    return x
