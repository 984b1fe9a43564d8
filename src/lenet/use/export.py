"""Export a trained model to ONNX, with what a user needs to feed it in the metadata.

    export_onnx()  model.safetensors -> model.onnx: input "image" float32 (batch, C, S, S),
                   output "logits" (batch, classes); the batch size is dynamic
    check_onnx()   onnxruntime against PyTorch on the same images: agreement, max |logit diff|
    export_int8()  the int8 model (model-int8.safetensors, or quantised on the spot) as int8
                   ONNX (onnx_int8) or plain C (c_export), checked against the integer reference

The metadata (`lenet.*` keys, all strings) says how to make the input from a picture:
class names, dataset, normalisation (x = pixels * input_scale - input_shift, pixels 0..255),
mean and std, input shape, and how the dataset framed its objects (lenet.use.predict.FRAMINGS;
"resize" for own data and CIFAR-10: the picture converted to the channels and resized, no more).
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

from ..configuration.run import RunConfig, validate
from ..data.datasets import Normalizer, data_spec, load_data, load_dataset, locate
from ..errors import DataError, RunError, UsageError
from ..store.files import atomic_write_bytes
from ..store.models import MODEL_FILE, load_model, read_safetensors_header, recorded_preprocess, resolve_model_path
from .c_export import CompilerMissing, check_c, write_c
from .int8_file import FORMAT as INT8_FORMAT
from .int8_file import INT8_FILE, load_int8
from .onnx_int8 import check_onnx_int8, write_int8_onnx
from .predict import FRAMINGS, MASS_CENTRE
from .quantize import calibration_images, ptq

FORMAT = "lenet-onnx/1"
FORMATS = ("onnx", "c")  # c: always int8
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
    spec = data_spec(cfg)
    preprocess = recorded_preprocess(cfg, meta)
    normalize = Normalizer(preprocess["normalize"], preprocess["mean"], preprocess["std"])
    framing = FRAMINGS.get(preprocess["framing"])
    size = cfg.model.input_size
    framing_note = ({"box": framing.box, "centre": framing.centre, "mass_centre": MASS_CENTRE} if framing else
                    {"resize": "the whole picture, converted to the channels, resized (bilinear) to the input size"})
    return {
        "lenet.format": FORMAT,
        "lenet.model": cfg.model.name,
        "lenet.dataset": spec.name,
        "lenet.class_names": json.dumps(list(meta.get("class_names") or spec.class_names)),
        "lenet.normalize": cfg.data.normalize,
        "lenet.mean": repr(spec.mean),
        "lenet.std": repr(spec.std),
        "lenet.input_scale": repr(normalize.scale),
        "lenet.input_shift": repr(normalize.shift),
        "lenet.input_shape": json.dumps(["batch", cfg.model.in_channels, size, size]),
        "lenet.input_polarity": ("light object on a dark background (0 = background)" if framing
                                 else "as the training pictures"),
        "lenet.framing": json.dumps(framing_note),
        "lenet.preprocess": json.dumps(preprocess),
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
    proto.doc_string = (f"lenet {cfg.model.name} trained on {data_spec(cfg).name}. Input 'image': float32 "
                        f"(batch, {cfg.model.in_channels}, {size}, {size}) = pixels * lenet.input_scale - "
                        "lenet.input_shift, made as lenet.preprocess says. Output 'logits': (batch, classes).")
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
    """onnxruntime logits (N, classes) for uint8 images (N, C, S, S), normalised as the metadata says."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) * np.float32(scale) - np.float32(shift)
    return session.run(["logits"], {"image": x})[0]


def check_onnx(onnx_path: str | Path, model: Any, images: np.ndarray, source: str = "test set") -> OnnxCheck:
    """Compare onnxruntime with PyTorch on uint8 images (N, C, S, S) or (N, S, S);
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


def check_images(dataset: str | RunConfig, count: int, data_dir: str | Path | None = None,
                 shape: tuple[int, ...] = (1, 28, 28)) -> tuple[np.ndarray, str]:
    """The first ``count`` test images of ``dataset`` (a catalogue name, or a run's config:
    its own data) as uint8 (N, C, S, S), or, where the data is not on this machine, ``count``
    seeded random images of ``shape``."""
    try:
        if isinstance(dataset, RunConfig):
            d = dataset.data
            if d.path is None:  # a catalogue dataset: never downloaded for a check (DataError where absent)
                locate(d.dataset, data_dir or d.data_dir, download=False)
            data = load_data(dataset, data_dir)  # resized or converted as the run trained
            return data.test.images[:count].numpy(), f"{data.spec.name} test"
        data = load_dataset(dataset, data_dir, download=False)
        return data.test.images[:count].numpy(), f"{dataset} test"
    except DataError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8), "random (dataset not found)"


def export(model_path: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int | None = None,
           check: int = 1000, data_dir: str | Path | None = None, int8: bool = False,
           **bounds: int) -> tuple[Path, Any]:
    """Export and, with ``check`` > 0, verify on that many test images; a mismatch is a RunError.
    ``int8`` (always for fmt "c"): the int8 model, see export_int8, which takes ``bounds``."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "c" or int8:
        return export_int8(model_path, fmt, out, opset, check, data_dir, **bounds)
    path = export_onnx(model_path, out, opset)
    if check <= 0:
        return path, None
    trained = load_model(model_path, "cpu")
    cfg = trained.config
    images, source = check_images(cfg, check, data_dir, (cfg.model.in_channels, cfg.model.input_size,
                                                         cfg.model.input_size))
    result = check_onnx(path, trained, images, source)
    if result.max_abs_logit_diff > LOGIT_TOLERANCE:
        raise RunError(f"{path}: the exported model does not match PyTorch: {result}")
    return path, result


def int8_source(target: str | Path, data_dir: str | Path | None = None) -> tuple[Any, str, Path]:
    """(Int8Model, a note, the folder exports go to by default) for a run directory, its
    model.safetensors or a model-int8.safetensors. A run without an int8 model is quantised
    now (PTQ), not written: `lenet quantize` writes it and reports its accuracy."""
    path = Path(target)
    if path.is_file() and (read_safetensors_header(path).get("__metadata__") or {}).get("format") == INT8_FORMAT:
        return load_int8(path), "", path.parent
    beside = path / INT8_FILE if path.is_dir() else path.parent / INT8_FILE if path.name == MODEL_FILE else None
    if beside is not None and beside.is_file():
        return load_int8(beside), "", beside.parent

    trained = load_model(path, "cpu")
    data = load_data(trained.config, data_dir)
    model, calibration = ptq(trained, calibration_images(data.train.images))
    note = (f"no {INT8_FILE} beside {trained.path.name}: quantised now (PTQ, {calibration.images:,} training "
            f"images), not kept; `lenet quantize {target}` keeps it and reports its accuracy")
    return model, note, trained.path.parent


def export_int8(model_path: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int | None = None,
                check: int = 1000, data_dir: str | Path | None = None, **bounds: int) -> tuple[Path, Any]:
    """The int8 model as int8 ONNX (fmt "onnx": model-int8.onnx) or C (fmt "c": a folder, c/);
    with ``check`` > 0, verified on that many test images against the integer reference:
    ONNX must agree on MIN_AGREEMENT of them, C on every score of every image. The check is
    an Agreement, or a line saying why there was none (no C compiler)."""
    model, note, folder = int8_source(model_path, data_dir)
    if fmt == "c":
        path = write_c(model, Path(out) if out is not None else folder / "c", **bounds)
    else:
        path = Path(out) if out is not None else folder / "model-int8.onnx"
        path = write_int8_onnx(model, path / "model-int8.onnx" if path.is_dir() else path, opset)
    if check <= 0:
        return path, note or None
    config = model.info.get("config") or {}
    try:
        run_config: str | RunConfig = validate(config, "the int8 model's config") if config else ""
    except Exception:  # noqa: BLE001 - an old or odd config: check on the catalogue name, as before
        run_config = ""
    images, source = check_images(run_config or model.info.get("dataset", ""), check,
                                  data_dir or config.get("data", {}).get("data_dir"), model.input_shape)
    try:
        result = check_c(path, model, images, source) if fmt == "c" else check_onnx_int8(path, model, images, source)
    except CompilerMissing as exc:
        return path, str(exc)
    result.note = note
    return path, result
