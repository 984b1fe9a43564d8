"""Export a trained model to ONNX, with what a user needs to feed it in the metadata.

    export_onnx()  model.safetensors -> model.onnx: input "image" float32 (batch, 1, 28, 28),
                   output "logits" (batch, classes); the batch size is dynamic
    check_onnx()   onnxruntime against PyTorch on the same images: agreement, max |logit diff|

The metadata (`lenet.*` keys, all strings) says how to make the input from a picture:
class names, dataset, normalisation (x = pixels * input_scale - input_shift, pixels 0..255),
mean and std, input shape, and how the dataset framed its objects (lenet.use.predict.FRAMINGS).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import Normalizer, get_spec, load_dataset
from ..errors import DataError, RunError, UsageError
from ..store.files import atomic_write_bytes
from ..store.models import load_model, resolve_model_path
from .predict import FRAMINGS, MASS_CENTRE

FORMAT = "lenet-onnx/1"
FORMATS = ("onnx",)
# The largest |logit difference| between onnxruntime and PyTorch that still counts as
# the same model: float32 sums of ~400 products differ in the last bits (~1e-6), so
# 1e-3 leaves room for other kernels while catching any real mismatch.
LOGIT_TOLERANCE = 1e-3


@dataclass
class OnnxCheck:
    images: int
    source: str  # where the images came from, e.g. "mnist test set"
    agree: int  # images where onnxruntime and PyTorch predict the same class
    max_abs_logit_diff: float

    def __str__(self) -> str:
        return (f"onnxruntime vs PyTorch on {self.images:,} {self.source} images: same prediction on "
                f"{self.agree:,}/{self.images:,}, max |logit diff| {self.max_abs_logit_diff:.2e}")


def onnx_metadata(cfg: Any, meta: dict[str, Any]) -> dict[str, str]:
    """The lenet.* metadata_props of an exported model (ONNX metadata values are strings)."""
    spec = get_spec(cfg.data.dataset)
    normalize = Normalizer.for_config(cfg)
    framing = FRAMINGS[cfg.data.dataset]
    size = cfg.model.input_size
    return {
        "lenet.format": FORMAT,
        "lenet.model": cfg.model.name,
        "lenet.dataset": cfg.data.dataset,
        "lenet.class_names": json.dumps(list(meta.get("class_names") or spec.class_names)),
        "lenet.normalize": cfg.data.normalize,
        "lenet.mean": repr(spec.mean),
        "lenet.std": repr(spec.std),
        "lenet.input_scale": repr(normalize.scale),
        "lenet.input_shift": repr(normalize.shift),
        "lenet.input_shape": json.dumps(["batch", cfg.model.in_channels, size, size]),
        "lenet.input_polarity": "light object on a dark background (0 = background)",
        "lenet.framing": json.dumps({"box": framing.box, "centre": framing.centre, "mass_centre": MASS_CENTRE}),
        "lenet.test_accuracy": json.dumps(meta.get("test_accuracy")),
        "lenet.config": cfg.model_dump_json(),
    }


def _torch_export(model: torch.nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    """The ONNX bytes of ``model`` (torch.export-based exporter), batch dimension dynamic."""
    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." x4: not our concern
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # torch 2.13's own pytree code trips typing_extensions' deprecation of LeafSpec
            # during decomposition; nothing we call, nothing we can change.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.onnx.export(
                model, (example,), input_names=["image"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                dynamo=True, external_data=False, verbose=False)
        program.save(buffer, external_data=False)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - any exporter failure means the same to the user
        raise RunError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    finally:
        exporter_log.setLevel(level)
    return buffer.getvalue()


def export_onnx(model_path: str | Path, out: str | Path | None = None, opset: int | None = None) -> Path:
    """Write ``model_path`` (run dir or .safetensors) as ONNX; returns the path written.

    ``out`` defaults to model.onnx beside the model file.
    """
    import onnx

    path = resolve_model_path(model_path)
    out = Path(out) if out is not None else path.with_suffix(".onnx")
    if out.is_dir():
        out = out / path.with_suffix(".onnx").name
    trained = load_model(path, "cpu")
    cfg, meta = trained.config, trained.meta
    model = trained.model.to(memory_format=torch.contiguous_format)  # the plain layout ONNX runtimes expect
    size = cfg.model.input_size
    example = torch.zeros(2, cfg.model.in_channels, size, size)  # batch 2: 1 would be specialised away
    proto = onnx.load_from_string(_torch_export(model, example, opset))
    proto.doc_string = (f"lenet {cfg.model.name} trained on {cfg.data.dataset}. Input 'image': float32 "
                        f"(batch, 1, {size}, {size}) = pixels * lenet.input_scale - lenet.input_shift, "
                        "light object on a dark background. Output 'logits': (batch, classes).")
    del proto.metadata_props[:]
    for key, value in onnx_metadata(cfg, meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    if not out.parent.is_dir():
        raise RunError(f"cannot write {out}: folder {out.parent} does not exist")
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The lenet.* metadata of an exported file, decoded (class names as a list, numbers as numbers)."""
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise RunError(f"{onnx_path}: not an ONNX file ({exc})") from None
    raw = {p.key: p.value for p in proto.metadata_props if p.key.startswith("lenet.")}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.removeprefix("lenet.")
        if name in ("format", "model", "dataset", "normalize", "input_polarity"):
            out[name] = value
        elif name in ("mean", "std", "input_scale", "input_shift"):
            out[name] = float(value)
        else:
            out[name] = json.loads(value)
    return out


def onnx_logits(onnx_path: str | Path, images: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """onnxruntime logits (N, classes) for uint8 images (N, 1, 28, 28), normalised as the metadata says."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) * np.float32(scale) - np.float32(shift)
    return session.run(["logits"], {"image": x})[0]


def check_onnx(onnx_path: str | Path, model: Any, images: np.ndarray, source: str = "test set") -> OnnxCheck:
    """Compare onnxruntime with PyTorch on uint8 images (N, 1, 28, 28) or (N, 28, 28);
    ``model``: what load_model takes (a run directory, a model file, a TrainedModel)."""
    trained = load_model(model, "cpu")
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 3:
        images = images[:, None]
    meta = read_metadata(onnx_path)
    ort_logits = onnx_logits(onnx_path, images, meta["input_scale"], meta["input_shift"])
    torch_logits = trained.logits(torch.from_numpy(images)).numpy()
    diff = float(np.abs(ort_logits - torch_logits).max()) if len(images) else 0.0
    agree = int((ort_logits.argmax(1) == torch_logits.argmax(1)).sum())
    return OnnxCheck(len(images), source, agree, diff)


def check_images(dataset: str, count: int, data_dir: str | Path | None = None) -> tuple[np.ndarray, str]:
    """The first ``count`` test images of ``dataset`` (uint8 (N, 1, 28, 28)), or, where the
    dataset is not on this machine, ``count`` seeded random images."""
    try:
        data = load_dataset(dataset, data_dir, download=False)
        return data.test.images[:count].numpy(), f"{dataset} test"
    except DataError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(count, 1, 28, 28), dtype=np.uint8), "random (dataset not found)"


def export(model_path: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int | None = None,
           check: int = 1000, data_dir: str | Path | None = None) -> tuple[Path, OnnxCheck | None]:
    """Export and, with ``check`` > 0, verify on that many test images; a mismatch is a RunError."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = export_onnx(model_path, out, opset)
    if check <= 0:
        return path, None
    trained = load_model(model_path, "cpu")
    cfg = trained.config
    images, source = check_images(cfg.data.dataset, check, data_dir or cfg.data.data_dir)
    result = check_onnx(path, trained, images, source)
    if result.max_abs_logit_diff > LOGIT_TOLERANCE:
        raise RunError(f"{path}: the exported model does not match PyTorch: {result}")
    return path, result
