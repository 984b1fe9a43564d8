"""model-int8.safetensors: an Int8Model, its scales and its preprocessing, in one file.

Tensors: {layer}.weight (int8), .bias, .multiplier, .shift (int32) for conv and dense
layers, {layer}.table (int8, 256) for activations. Metadata: "format", "layers" (the
layer list without its tensors), "input" (shape, scale, zero point), "score_scale" and
"info" (the run's config, class names, dataset, accuracies, calibration), all JSON.

Loading checks everything before anything is used: the format, every field, every
tensor's dtype and shape against the layers, the values the integer arithmetic relies
on (weights -127..127, biases within MAX_BIAS, shifts 1..62, zero points int8), and that
no layer's int32 sums can overflow. Layer names become C identifiers, so they must be ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ConfigError, RunError
from ..model.network import ACTIVATIONS
from ..store.models import read_safetensors_header
from ..store.files import atomic_write_bytes
from .integer import INT8, MAX_BIAS, WEIGHT_MAX, Affine, Flatten, Int8Model, Layer, Lookup, Pool

FORMAT = "lenet-int8/1"
INT8_FILE = "model-int8.safetensors"
MAX_FILE_BYTES = 256 << 20  # an int8 LeNet is kilobytes; MAX_PARAMETERS (50M) int8 weights fit
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}\Z")
DTYPES = {"weight": ("I8", torch.int8), "bias": ("I32", torch.int32), "multiplier": ("I32", torch.int32),
          "shift": ("I32", torch.int32), "table": ("I8", torch.int8)}


def _describe(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, Affine):
        return {"kind": layer.kind, "name": layer.name, "input_zero": layer.input_zero,
                "output_zero": layer.output_zero, "padding": layer.padding, "scores": layer.scores,
                "input_scale": layer.input_scale, "output_scale": layer.output_scale,
                "weight_scale": layer.weight_scale}
    if isinstance(layer, Lookup):
        return {"kind": "lookup", "name": layer.name, "activation": layer.activation}
    if isinstance(layer, Pool):
        return {"kind": "pool", "name": layer.name, "pool": layer.kind, "size": layer.size,
                "stride": layer.stride, "padding": layer.padding, "zero": layer.zero}
    return {"kind": "flatten", "name": layer.name}


def save_int8(path: str | Path, model: Int8Model) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for layer in model.layers:
        if isinstance(layer, Affine):
            for part in ("weight", "bias", "multiplier", "shift"):
                tensors[f"{layer.name}.{part}"] = getattr(layer, part).contiguous()
        elif isinstance(layer, Lookup):
            tensors[f"{layer.name}.table"] = layer.table.contiguous()
    metadata = {
        "format": FORMAT,
        "layers": json.dumps([_describe(layer) for layer in model.layers]),
        "input": json.dumps({"shape": list(model.input_shape), "scale": model.input_scale,
                             "zero": model.input_zero}),
        "score_scale": json.dumps(model.score_scale),
        "info": json.dumps(model.info),
    }
    atomic_write_bytes(Path(path), st_save(tensors, metadata=metadata))
    return Path(path)


def resolve_int8_path(target: str | Path) -> Path:
    path = Path(target)
    if path.is_dir():
        path = path / INT8_FILE
    if not path.is_file():
        raise RunError(f"{path}: no int8 model here; make one with `lenet quantize {target}`")
    return path


def load_int8(target: str | Path) -> Int8Model:
    """An Int8Model from a run directory (its model-int8.safetensors) or the file itself."""
    path = resolve_int8_path(target)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RunError(f"{path}: {path.stat().st_size:,} bytes, more than an int8 LeNet can be "
                       f"({MAX_FILE_BYTES:,}); not a lenet int8 model")
    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunError(f"{path}: a safetensors file, but not a lenet int8 model (format {meta.get('format')!r}, "
                       f"expected {FORMAT!r}); make one with `lenet quantize RUN`")
    try:
        fields = {k: json.loads(meta[k]) for k in ("layers", "input", "score_scale", "info")}
        layers = [_layer(entry) for entry in fields["layers"]]
        declared = {k: (v.get("dtype"), tuple(v.get("shape", ()))) for k, v in header.items()
                    if k != "__metadata__" and isinstance(v, dict)}
        _check_declared(layers, declared)
        tensors = st_load(path.read_bytes())
        model = _assemble(layers, tensors, fields)
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError, ConfigError) as exc:
        raise RunError(f"{path}: not a valid lenet int8 model ({type(exc).__name__}: {exc})") from None
    except SafetensorError as exc:
        raise RunError(f"{path}: not a readable safetensors file ({exc})") from None
    return model


def _int(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _scale(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return float(value)


def _layer(entry: dict[str, Any]) -> Layer:
    name = entry["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"layer name {str(name)[:50]!r} is not an identifier")
    kind = entry["kind"]
    if kind in ("conv", "dense"):
        scales = entry["weight_scale"]
        if not isinstance(scales, list):
            raise ValueError(f"{name}: weight_scale must be a list")
        empty = torch.empty(0)
        return Affine(kind, name, empty, empty, empty, empty, _int(entry["input_zero"], *INT8, "input_zero"),
                      _int(entry["output_zero"], *INT8, "output_zero"), _int(entry["padding"], 0, 64, "padding"),
                      bool(entry["scores"]), _scale(entry["input_scale"], "input_scale"),
                      _scale(entry["output_scale"], "output_scale"), [_scale(s, "weight_scale") for s in scales])
    if kind == "lookup":
        activation = entry.get("activation", "")
        if activation not in ("", *ACTIVATIONS):
            raise ValueError(f"{name}: unknown activation {str(activation)[:20]!r}")
        return Lookup(name, torch.empty(0), activation)
    if kind == "pool":
        if entry["pool"] not in ("max", "avg"):
            raise ValueError(f"{name}: pool must be max or avg")
        size = _int(entry["size"], 1, 64, "pool size")
        return Pool(name, entry["pool"], size, _int(entry["stride"], 1, 64, "pool stride"),
                    _int(entry["padding"], 0, size // 2, "pool padding"), _int(entry["zero"], *INT8, "pool zero"))
    if kind == "flatten":
        return Flatten(name)
    raise ValueError(f"unknown layer kind {str(kind)[:20]!r}")


def _parts(layer: Layer) -> tuple[str, ...]:
    return ("weight", "bias", "multiplier", "shift") if isinstance(layer, Affine) else \
        ("table",) if isinstance(layer, Lookup) else ()


def _check_declared(layers: list[Layer], declared: dict[str, tuple[Any, tuple[int, ...]]]) -> None:
    """Names, dtypes and shapes from the header, before any tensor is read."""
    if len({layer.name for layer in layers}) != len(layers):
        raise ValueError("two layers share a name")
    wanted = {f"{layer.name}.{part}" for layer in layers for part in _parts(layer)}
    if set(declared) != wanted:
        odd = sorted(set(declared) ^ wanted)[:4]
        raise ValueError(f"tensors do not match the layers: {', '.join(odd)}")
    for layer in layers:
        for part in _parts(layer):
            dtype, shape = declared[f"{layer.name}.{part}"]
            if dtype != DTYPES[part][0]:
                raise ValueError(f"{layer.name}.{part} is {dtype}, expected {DTYPES[part][0]}")
            if part == "table" and shape != (256,):
                raise ValueError(f"{layer.name}.table has shape {shape}, expected (256,)")
            if isinstance(layer, Affine) and part == "weight" and len(shape) != (4 if layer.kind == "conv" else 2):
                raise ValueError(f"{layer.name}.weight has shape {shape}")
            if isinstance(layer, Affine) and part != "weight" and shape != declared[f"{layer.name}.weight"][1][:1]:
                raise ValueError(f"{layer.name}.{part} has shape {shape}: one per output channel")


def _assemble(layers: list[Layer], tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> Int8Model:
    for layer in layers:
        if isinstance(layer, Lookup):
            layer.table = tensors[f"{layer.name}.table"]
            continue
        if not isinstance(layer, Affine):
            continue
        for part in _parts(layer):
            setattr(layer, part, tensors[f"{layer.name}.{part}"])
        checks = {"weight": (-WEIGHT_MAX, WEIGHT_MAX), "bias": (-MAX_BIAS, MAX_BIAS),
                  "multiplier": (0, 2**31 - 1), "shift": (1, 62)}
        for part, (low, high) in checks.items():
            values = getattr(layer, part)
            if len(values) and not (low <= int(values.min()) and int(values.max()) <= high):
                raise ValueError(f"{layer.name}.{part} holds values outside {low}..{high}")
        if len(layer.weight_scale) != len(layer.weight):
            raise ValueError(f"{layer.name}: {len(layer.weight_scale)} weight scales for {len(layer.weight)} channels")
        if layer.scores and layer.output_zero != 0:
            raise ValueError(f"{layer.name}: the scores have zero point 0")
    shape = fields["input"]["shape"]
    if not (isinstance(shape, list) and len(shape) == 3):
        raise ValueError(f"input shape must be [C, H, W], got {shape!r}")
    input_shape = tuple(_int(v, 1, 4096, "input size") for v in shape)
    model = Int8Model(layers, input_shape, _scale(fields["input"]["scale"], "input scale"),  # type: ignore[arg-type]
                      _int(fields["input"]["zero"], *INT8, "input zero"), _scale(fields["score_scale"], "score_scale"),
                      fields["info"] if isinstance(fields["info"], dict) else {})
    model.shapes()  # layers fit together, the last writes the scores, no int32 sum overflows
    names = model.info.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == model.num_classes
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"class_names must be {model.num_classes} strings")
    return model
