"""Model files: a trained LeNet as model.safetensors, and the one way to load one.

    save_model(path, model, cfg, class_names)   the weights, with the resolved config,
                                                class names, dataset and accuracy in
                                                the metadata: nothing else is needed
    load_model(target, device) -> TrainedModel  a TrainedModel, a Run (in memory or on
                                                disk), a run directory or a .safetensors
                                                file, ready to use: every command that
                                                uses a trained model starts here
    read_model_file(path)                       what load_model checks before it builds
                                                anything (header, config, class names,
                                                shapes, finite weights)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..configuration.run import RunConfig, validate
from ..data.datasets import Normalizer, data_spec
from ..errors import ConfigError, RunError
from ..model.network import LeNet
from ..device import resolve_device
from ..speed.forward import eval_batch_size
from .files import atomic_write_bytes

MODEL_FILE = "model.safetensors"
FORMAT = "lenet-model/1"
IN_MEMORY = "(in memory)"  # TrainedModel.path of a model that was never saved
# What each optional metadata field must be, so a hand-edited file fails on load, not in use.
META_TYPES: dict[str, tuple[type, ...]] = {"test_accuracy": (float, int), "epochs": (int,), "speed": (dict,),
                                           "preprocess": (dict,)}
MAX_HEADER_BYTES = 1 << 20  # a lenet model's safetensors header: names, shapes, config (a few kB)


def preprocess_record(cfg: RunConfig) -> dict[str, Any]:
    """How a run's pictures are made before the model sees them (the file's "preprocess"):
    framing, channels, size and normalisation, so predict needs nothing else."""
    spec = data_spec(cfg)
    return {"framing": spec.framing, "channels": int(spec.channels), "size": int(spec.size),
            "normalize": cfg.data.normalize, "mean": float(spec.mean), "std": float(spec.std)}


def check_preprocess(path: Path, record: dict[str, Any]) -> None:
    """A model file's "preprocess" as preprocess_record writes it, or a RunError naming what is not."""
    kinds = {"framing": str, "channels": int, "size": int, "normalize": str, "mean": (int, float), "std": (int, float)}
    wrong = [k for k, kind in kinds.items() if not isinstance(record.get(k), kind) or isinstance(record.get(k), bool)]
    if not wrong:
        wrong = [k for k in ("channels", "size", "std") if record[k] <= 0]
    if wrong:
        raise RunError(f"{path}: the recorded preprocessing has a missing or invalid {', '.join(wrong)}: "
                       f"{str(record)[:120]}")


def recorded_preprocess(cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What a model file recorded of its preprocessing (what the model trained on wins);
    for files from before the record, what its config says."""
    return meta.get("preprocess") or preprocess_record(cfg)


def save_model(path: Path, model: torch.nn.Module, cfg: RunConfig, class_names: tuple[str, ...],
               extra: dict[str, Any] | None = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(cfg.to_dict()),
        "class_names": json.dumps(list(class_names)),
        "dataset": data_spec(cfg).name,
        "preprocess": json.dumps(preprocess_record(cfg)),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    atomic_write_bytes(Path(path), st_save(tensors, metadata=metadata))
    return Path(path)


def resolve_model_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{path}: no such model file (give a run directory or a .safetensors file)")
    return path


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets, and
    "__metadata__"), read without loading any tensor; a RunError if it is not one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise RunError(f"{path}: not a safetensors model file (header length {length})")
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a safetensors model file ({exc})") from None
    if not isinstance(header, dict):
        raise RunError(f"{path}: not a safetensors model file (its header is not a mapping)")
    return header


def read_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[LeNet, RunConfig, dict[str, Any]]:
    """(model in eval mode, RunConfig, metadata) from a run directory or .safetensors file:
    the checked reading that load_model builds on.

    Everything the file declares is checked before anything is built: the stored config,
    the class names, and every weight's shape against the architecture the config
    describes (worked out on the meta device, which allocates nothing); the file's
    tensors are read only then, and must be finite.
    """
    path = resolve_model_path(path)
    header = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "config" not in metadata:
        raise RunError(f"{path}: a safetensors file, but not a lenet model (no lenet config in its metadata)")
    try:
        cfg = validate(json.loads(metadata["config"]), f"config stored in {path}")
    except (json.JSONDecodeError, TypeError, ConfigError) as exc:
        raise RunError(f"{path}: the stored config is invalid: {exc}") from None
    try:
        meta = {k: (json.loads(v) if k not in ("format", "config", "dataset") else v) for k, v in metadata.items()}
    except (json.JSONDecodeError, TypeError) as exc:
        raise RunError(f"{path}: the metadata is not valid JSON ({exc})") from None
    for key, kinds in META_TYPES.items():
        if meta.get(key) is not None and (not isinstance(meta[key], kinds) or isinstance(meta[key], bool)):
            raise RunError(f"{path}: {key} in the metadata must be {kinds[0].__name__}; got {str(meta[key])[:120]}")
    if meta.get("preprocess") is not None:
        check_preprocess(path, meta["preprocess"])
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == cfg.model.num_classes
                                  and all(isinstance(n, str) and n for n in names)):
        raise RunError(f"{path}: class_names in the metadata must be {cfg.model.num_classes} names "
                       f"(strings); got {str(names)[:120]}")
    with torch.device("meta"):  # shapes only: a config declaring a huge network allocates nothing
        expected = {k: tuple(v.shape) for k, v in LeNet(cfg.model).state_dict().items()}
    stored = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    problems = [f"missing {k}" for k in expected if k not in stored]
    problems += [f"{k}: file has {stored[k]}, config needs {shape}" for k, shape in expected.items()
                 if k in stored and stored[k] != shape]
    problems += [f"unexpected {k}" for k in stored if k not in expected]
    if problems:
        raise RunError(f"{path}: weights do not match the stored config: " + "; ".join(problems[:5]))
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise RunError(f"{path}: not a safetensors model file ({exc})") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise RunError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:3])}); "
                       "the model is broken (a diverged run?) and would predict nonsense")
    model = LeNet(cfg.model)
    model.load_state_dict(tensors)
    model.to(device).eval()
    return model, cfg, meta


@dataclass
class TrainedModel:
    """A trained model and what using it needs: its config, the preprocessing it was
    trained with, its class names and the metadata of its file."""

    model: torch.nn.Module  # in eval mode, on ``device``
    config: RunConfig
    meta: dict[str, Any]
    path: Path
    device: torch.device
    normalize: Normalizer  # uint8 pixels -> the float input the model trained on
    class_names: list[str]

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    @property
    def test_accuracy(self) -> float | None:
        return self.meta.get("test_accuracy")

    @property
    def name(self) -> str:
        """How figures name it: the run directory's name, else the recipe it came from."""
        if self.path.name == MODEL_FILE or self.path.suffix == ".safetensors":
            return self.path.parent.name if self.path.name == MODEL_FILE else self.path.stem
        if str(self.path) != IN_MEMORY:
            return self.path.name
        return self.config.name or self.config.preset or self.config.model.name

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Logits (N, classes) on the CPU for uint8 images (N, 1, 28, 28), in batches of
        ``batch_size`` (None: the device's default, speed.forward.eval_batch_size)."""
        batch_size = eval_batch_size(batch_size, self.device)
        self.model.eval()
        outputs = [self.model(self.normalize(images[s:s + batch_size].to(self.device))).float().cpu()
                   for s in range(0, len(images), batch_size)]
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.class_names))


def load_model(target: Any, device: str | torch.device = "cpu") -> TrainedModel:
    """A trained model, ready to use, from a TrainedModel (returned as it is), a lenet Run
    (``lenet.train``'s or ``lenet.load``'s, in memory or on disk), a run directory or a
    .safetensors file (read by read_model_file, every check first)."""
    if isinstance(target, TrainedModel):
        return target
    torch_device = resolve_device(device)
    if hasattr(target, "model") and hasattr(target, "config"):  # a lenet Run
        names = list(target.class_names) or list(data_spec(target.config).class_names)
        where = Path(target.run_dir) if target.run_dir is not None else Path(IN_MEMORY)
        layout = torch_device.type == "cpu" and bool((getattr(target, "speed", None) or {}).get("channels_last"))
        return TrainedModel(target.model.to(torch_device).eval(), target.config, {}, where, torch_device,
                            Normalizer.for_config(target.config, layout), names)
    model_path = resolve_model_path(target)
    model, cfg, meta = read_model_file(model_path, torch_device)
    names = meta.get("class_names") or data_spec(cfg).class_names
    # The layout it trained in, on the CPU: the same kernels give the same predictions
    # (and an accuracy equal to the one its training reported), and they are faster.
    layout = torch_device.type == "cpu" and bool((meta.get("speed") or {}).get("channels_last"))
    if layout:
        model.to(memory_format=torch.channels_last)
    return TrainedModel(model, cfg, meta, model_path, torch_device, Normalizer.for_config(cfg, layout), list(names))
