"""Resumable checkpoints and the random states they carry.

checkpoint.pt holds everything needed to continue a run bit for bit (model, optimiser,
scheduler, epoch and step, metrics so far, every random state). It is loaded only with
``torch.load(weights_only=True)``, so a checkpoint cannot run code when loaded. Model
files (model.safetensors) are store/models.py's.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError
from .files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


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
