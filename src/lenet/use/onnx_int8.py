"""The int8 model as a quantised ONNX graph (QDQ), checked against the integer reference.

Input "pixels": uint8 (batch, C, H, W), raw 0..255 (the normalisation is the first layer's
input quantisation). Output "logits": float32 (batch, classes), the last layer's sums times
their scales. Tensors between layers are uint8 = the reference's int8 + 128 (zero points
too), onnxruntime's preferred form; the integers are the reference's. Per layer:

- conv / dense: DequantizeLinear of the input, of the int8 weights (per output channel) and
  of the int32 bias; Conv or Gemm; QuantizeLinear to the next tensor. onnxruntime fuses these
  into int8 kernels whose requantisation is a float multiply: the one place it may round a
  value 1 step apart from the fixed-point reference, hence the agreement check.
- activations: the reference's 256-entry table, as a Gather (exact).
- pooling: DequantizeLinear with scale 1 gives the integers q - zero exactly as floats; MaxPool
  or AveragePool (padding counted) over them; QuantizeLinear with scale 1 rounds half to
  even, as the reference does (exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError, UsageError
from ..store.files import atomic_write_bytes
from .integer import Affine, Int8Model, Lookup, Pool

FORMAT = "lenet-onnx-int8/1"
OPSET = 17
MIN_OPSET = 13  # DequantizeLinear per channel (axis)
MIN_AGREEMENT = 0.999  # share of images onnxruntime must classify as the reference does


@dataclass
class Agreement:
    """How often another runtime classifies as the int8 reference does."""

    runtime: str
    images: int
    source: str
    agree: int
    identical: int | None = None  # images whose every score is bit-identical (C only)
    note: str = ""

    @property
    def share(self) -> float:
        return self.agree / self.images if self.images else 1.0

    def __str__(self) -> str:
        text = (f"{self.runtime} vs the int8 reference on {self.images:,} {self.source} images: same class on "
                f"{self.agree:,}/{self.images:,} ({100 * self.share:.2f}%)")
        if self.identical is not None:
            text += f", every score identical on {self.identical:,}"
        return text + (f"\n({self.note})" if self.note else "")


class _Graph:
    """Nodes and initialisers, added in order."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def dequantize(self, x: str, scale: Any, zero: Any, name: str, axis: int | None = None) -> str:
        scale_name, zero_name = self.const(f"{name}_scale", scale), self.const(f"{name}_zero", zero)
        extra = {"axis": axis} if axis is not None else {}
        return self.node("DequantizeLinear", [x, scale_name, zero_name], name, **extra)

    def quantize(self, x: str, scale: float, zero: int, name: str) -> str:
        inputs = [x, self.const(f"{name}_scale", np.float32(scale)), self.const(f"{name}_zero", np.uint8(zero + 128))]
        return self.node("QuantizeLinear", inputs, name)


def _affine(graph: _Graph, layer: Affine, x: str) -> str:
    n = layer.name
    real = graph.dequantize(x, np.float32(layer.input_scale), np.uint8(layer.input_zero + 128), f"{n}_input")
    scales = np.asarray(layer.weight_scale, dtype=np.float32)
    weight = graph.dequantize(graph.const(f"{n}_weight_q", layer.weight.numpy()), scales,
                              np.zeros(len(scales), np.int8), f"{n}_weight", axis=0)
    bias = graph.dequantize(graph.const(f"{n}_bias_q", layer.bias.numpy()),
                            (np.float32(layer.input_scale) * scales).astype(np.float32),
                            np.zeros(len(scales), np.int32), f"{n}_bias", axis=0)
    out = "logits" if layer.scores else f"{n}_real"
    if layer.kind == "conv":
        graph.node("Conv", [real, weight, bias], out, pads=[layer.padding] * 4)
    else:
        graph.node("Gemm", [real, weight, bias], out, transB=1)
    return out if layer.scores else graph.quantize(out, layer.output_scale, layer.output_zero, n)


def _pool(graph: _Graph, layer: Pool, x: str) -> str:
    # Scale 1: the floats are the integers q - zero, so pooling and rounding are exact.
    centred = graph.dequantize(x, np.float32(1.0), np.uint8(layer.zero + 128), f"{layer.name}_centred")
    attributes: dict[str, Any] = {"kernel_shape": [layer.size] * 2, "strides": [layer.stride] * 2,
                                  "pads": [layer.padding] * 4}
    if layer.kind == "avg":
        attributes["count_include_pad"] = 1
    pooled = graph.node("AveragePool" if layer.kind == "avg" else "MaxPool", [centred], f"{layer.name}_real",
                        **attributes)
    return graph.quantize(pooled, 1.0, layer.zero, layer.name)


def int8_onnx(model: Int8Model, metadata: dict[str, str] | None = None, opset: int | None = None) -> Any:
    """The ONNX ModelProto of ``model`` (checked by onnx.checker)."""
    import onnx
    from onnx import TensorProto, helper

    opset = OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: int8 ONNX needs opset {MIN_OPSET} or later (per-channel DequantizeLinear)")
    model.shapes()
    graph = _Graph()
    x = "pixels"
    for layer in model.layers:
        if isinstance(layer, Affine):
            x = _affine(graph, layer, x)
        elif isinstance(layer, Lookup):
            table = (layer.table.numpy().astype(np.int16) + 128).astype(np.uint8)  # indexed by uint8 = int8 + 128
            index = graph.node("Cast", [x], f"{layer.name}_index", to=TensorProto.INT32)
            x = graph.node("Gather", [graph.const(f"{layer.name}_table", table), index], layer.name)
        elif isinstance(layer, Pool):
            x = _pool(graph, layer, x)
        else:
            x = graph.node("Flatten", [x], layer.name, axis=1)
    c, h, w = model.input_shape
    inputs = [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", c, h, w])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])]
    proto = helper.make_model(helper.make_graph(graph.nodes, "lenet_int8", inputs, outputs, graph.initializers),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="lenet")
    proto.doc_string = (f"lenet int8 model. Input 'pixels': uint8 (batch, {c}, {h}, {w}), raw 0..255, light object on "
                        "a dark background. Output 'logits': float32 (batch, classes).")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto


def int8_metadata(model: Int8Model) -> dict[str, str]:
    """lenet.* metadata_props: what the file is, its classes, and how its input is made."""
    info = model.info
    c, h, w = model.input_shape
    return {
        "lenet.format": FORMAT,
        "lenet.dataset": str(info.get("dataset", "")),
        "lenet.class_names": json.dumps(info.get("class_names") or [str(i) for i in range(model.num_classes)]),
        "lenet.input_shape": json.dumps(["batch", c, h, w]),
        "lenet.input_polarity": "light object on a dark background (0 = background)",
        "lenet.input": json.dumps("uint8 pixels 0..255 as they are: the normalisation is inside the model"),
        "lenet.int8_accuracy": json.dumps(info.get("int8_accuracy")),
        "lenet.config": json.dumps(info.get("config")),
    }


def write_int8_onnx(model: Int8Model, out: Path, opset: int | None = None) -> Path:
    if not out.parent.is_dir():
        raise RunError(f"cannot write {out}: folder {out.parent} does not exist")
    atomic_write_bytes(out, int8_onnx(model, int8_metadata(model), opset).SerializeToString())
    return out


def onnx_int8_logits(onnx_path: str | Path, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """onnxruntime's logits (N, classes) for uint8 images (N, C, H, W)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    parts = [session.run(["logits"], {"pixels": images[s:s + batch_size]})[0]
             for s in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def check_onnx_int8(onnx_path: str | Path, model: Int8Model, images: np.ndarray, source: str) -> Agreement:
    """Classes from onnxruntime against the reference's on ``images``; under MIN_AGREEMENT is a RunError."""
    expected = model.predict(torch.from_numpy(images)).numpy()
    got = onnx_int8_logits(onnx_path, images).argmax(1) if len(images) else expected
    result = Agreement("onnxruntime (int8 QDQ)", len(images), source, int((got == expected).sum()))
    if result.share < MIN_AGREEMENT:
        raise RunError(f"{onnx_path}: onnxruntime disagrees with the int8 reference too often: {result} "
                       f"(at least {100 * MIN_AGREEMENT:.1f}% must agree)")
    return result
