"""Saving and loading: resumable checkpoints and portable model files.

- checkpoint.pt: everything needed to continue a run bit for bit (model, optimiser,
  scheduler, epoch and step, metrics so far, every random state). Loaded only with
  ``torch.load(weights_only=True)``, so a checkpoint cannot run code when loaded.
- model.safetensors: the weights, with the resolved config, class names, dataset
  and accuracy in the metadata. Nothing else is needed to use the model:
  ``load_trained`` gives the model with its preprocessing, for every command that
  uses a trained model (evaluate, predict, export, inspect, serve).
"""

from __future__ import annotations

import io
import json
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ConfigError, RunError
from .files import atomic_write_bytes
from ..configuration.run import RunConfig, validate

CHECKPOINT = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
FORMAT = "lenet-model/1"
IN_MEMORY = "(in memory)"  # TrainedModel.path of a model that was never saved


# --------------------------------------------------------------------------- random state


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": _python_state(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
            "has_gauss": has_gauss, "cached": cached}


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / CHECKPOINT
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(run_dir: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """A run's checkpoint.pt, loaded safely (weights_only). ``max_bytes``: the most it
    may hold (what the run's model and optimiser state need), checked before loading."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{run_dir}: no {CHECKPOINT} to resume from; start a new run instead")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise RunError(f"{path}: {path.stat().st_size:,} bytes, more than a checkpoint of this run's model "
                       f"can hold ({max_bytes:,}); it is not this run's checkpoint")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message here advises weights_only=False: the one thing not to do with
        # a file that may have been made to run code, so it is not passed on.
        raise RunError(f"{path}: not a readable lenet checkpoint: the safe loader (weights_only=True) "
                       "refused it, as it refuses damaged files and any that could run code; "
                       "it was not loaded") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        first_line = str(exc).strip().split("\n")[0]
        raise RunError(f"{path}: not a readable lenet checkpoint ({type(exc).__name__}: {first_line})") from None
    # A checkpoint that loaded but holds something else (None, a list) must not be taken
    # for "no checkpoint": that would restart the run and overwrite what it saved.
    if not isinstance(saved, dict):
        raise RunError(f"{path}: not a lenet checkpoint (it holds a {type(saved).__name__}); the run cannot "
                       "continue from it. Its other files are untouched: restore the checkpoint, or start the "
                       "run again with --exist-ok")
    return saved


# --------------------------------------------------------------------------- model files


def save_model(path: Path, model: torch.nn.Module, cfg: RunConfig, class_names: tuple[str, ...],
               extra: dict[str, Any] | None = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(cfg.to_dict()),
        "class_names": json.dumps(list(class_names)),
        "dataset": cfg.data.dataset,
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


MAX_HEADER_BYTES = 1 << 20  # a lenet model's safetensors header: names, shapes, config (a few kB)


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


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, RunConfig, metadata) from a run directory or .safetensors file.

    Everything the file declares is checked before anything is built: the stored config,
    the class names, and every weight's shape against the architecture the config
    describes (worked out on the meta device, which allocates nothing); the file's
    tensors are read only then, and must be finite.
    """
    from ..model.network import LeNet

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
    normalize: Any  # data.Normalizer: uint8 pixels -> the float input the model trained on
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
        ``batch_size`` (None: the device's default, runtime.eval_batch_size)."""
        from ..speed.forward import eval_batch_size

        batch_size = eval_batch_size(batch_size, self.device)
        self.model.eval()
        outputs = [self.model(self.normalize(images[s:s + batch_size].to(self.device))).float().cpu()
                   for s in range(0, len(images), batch_size)]
        return torch.cat(outputs) if outputs else torch.empty(0, len(self.class_names))


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """A run directory or .safetensors file, ready to use (see TrainedModel)."""
    from ..data.datasets import Normalizer, get_spec
    from ..device import resolve_device

    torch_device = resolve_device(device)
    model_path = resolve_model_path(path)
    model, cfg, meta = load_model(model_path, torch_device)
    names = meta.get("class_names") or get_spec(cfg.data.dataset).class_names
    # The layout it trained in, on the CPU: the same kernels give the same predictions
    # (and an accuracy equal to the one its training reported), and they are faster.
    layout = torch_device.type == "cpu" and bool((meta.get("speed") or {}).get("channels_last"))
    if layout:
        model.to(memory_format=torch.channels_last)
    return TrainedModel(model, cfg, meta, model_path, torch_device, Normalizer.for_config(cfg, layout), list(names))


def as_trained(target: Any, device: str | torch.device = "cpu") -> TrainedModel:
    """A TrainedModel from a Run (lenet.train's or lenet.load's, in memory or on disk), a
    TrainedModel, or a path (run directory or .safetensors file)."""
    if isinstance(target, TrainedModel):
        return target
    if hasattr(target, "model") and hasattr(target, "config"):  # a lenet Run
        from ..data.datasets import Normalizer, get_spec
        from ..device import resolve_device

        torch_device = resolve_device(device)
        names = list(target.class_names) or list(get_spec(target.config.data.dataset).class_names)
        where = Path(target.run_dir) if target.run_dir is not None else Path(IN_MEMORY)
        layout = torch_device.type == "cpu" and bool((getattr(target, "speed", None) or {}).get("channels_last"))
        return TrainedModel(target.model.to(torch_device).eval(), target.config, {}, where, torch_device,
                            Normalizer.for_config(target.config, layout), names)
    return load_trained(target, device)
