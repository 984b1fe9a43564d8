"""Your own data: what a ``--data PATH`` holds, read into uint8 arrays.

A path is one of (``read_path`` tells them apart by what is there, not by flags):

- an image folder: ``PATH/train/<class>/*``, ``PATH/test/<class>/*`` (and ``val/``),
  or one ``PATH/<class>/*`` that is split (folder.py, with its decode cache);
- a CSV in Kaggle's layout ``label,pixel1,...,pixelN`` (one file, or a folder holding
  a ``*train*.csv`` and a ``*test*.csv``), a ``.npz`` in Keras's layout, a folder of
  IDX files of any size and class count, CIFAR-10's binary batches (arrays.py).

Every reader returns ``Arrays``; ``finish`` then does what all formats share: the
seeded, stratified split of data that came as one set, resizing to ``--image-size``,
the channel count, and the checks of labels and classes. reading.read_path tells the formats apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .cache import wanted as cache_wanted

MAX_CLASSES = 10_000
MAX_SIDE = 1024  # --image-size and a picture's side as trained: LeNet-sized inputs, not photographs
SPLIT_SEED = 0  # the test split of one-set data: a function of the data, never of a run's seed
PIXEL_BUDGET = 1 << 34  # decoded bytes of one dataset (16 GiB): refused before it is allocated


@dataclass(frozen=True)
class ReadOptions:
    """How to read a path (the config's data section says; see configuration/run.py)."""

    image_size: int | None = None  # resize every picture to this side; None: keep (all must agree)
    channels: int | None = None  # 1 or 3; None: what the pictures are (3 if any has colour)
    test_fraction: float = 0.2  # of data that comes as one set, held out as the test set
    skip_bad: bool = False  # unreadable pictures: skipped with a count instead of refused
    progress: bool = True  # a progress bar on stderr while decoding (where it is a terminal)
    # Decoded image folders are kept in the user cache, keyed by content (LENET_DECODE_CACHE=0: not).
    cache: bool = field(default_factory=cache_wanted)


@dataclass
class Arrays:
    """What a reader found: per split (``train``, ``test``, ``val``; or ``all`` for data
    that came as one set), uint8 images (N, C, H, W) and int64 labels (N,). finish() splits
    ``all`` in place: a reader hands over an array that is its own."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]
    kind: str  # "image folder", "csv", "npz", "idx", "cifar10": said in the run's header
    notes: list[str] = field(default_factory=list)  # what was skipped or ignored, said once


def finish(found: Arrays, options: ReadOptions, path: Path) -> Arrays:
    """Split, resize and convert ``found`` as ``options`` say, then check it."""
    classes = len(found.class_names)
    if classes > MAX_CLASSES:
        raise DataError(f"{path}: {classes:,} classes, over the {MAX_CLASSES:,} lenet trains; "
                        "is each picture in a folder of its own?")
    if classes < 2:
        raise DataError(f"{path}: {classes} class{'es' if classes != 1 else ''}; a classifier needs at least 2")
    splits = dict(found.splits)
    for name, (images, labels) in splits.items():
        check_labels(labels, len(images), classes, f"{path} ({name})")
    if "all" in splits:
        images, labels = splits.pop("all")
        train_index, test_index = split_indices(labels, options.test_fraction, found.class_names, path)
        test = (images[test_index], labels[test_index])
        splits = {"train": (to_front(images, train_index), labels[train_index]), "test": test, **splits}
    out = {}
    for name, (images, labels) in splits.items():
        images = convert_channels(images, options.channels)
        if options.image_size is not None:
            images = resize(images, options.image_size)
        out[name] = (np.ascontiguousarray(images), labels.astype(np.int64, copy=False))
    shapes = {tuple(images.shape[1:]) for images, _ in out.values()}
    if len(shapes) != 1:
        raise DataError(f"{path}: the splits hold pictures of different shapes {sorted(shapes)}; "
                        "pass --image-size N to resize them all to N x N")
    channels, height, width = shapes.pop()
    if height != width:
        raise DataError(f"{path}: the pictures are {width} x {height}; LeNet takes square input: "
                        f"pass --image-size N to resize them to N x N (e.g. --image-size {max(height, width)})")
    if channels not in (1, 3):
        raise DataError(f"{path}: pictures of {channels} channels; lenet trains on 1 (grey) or 3 (RGB)")
    if "train" not in out or "test" not in out:
        raise DataError(f"{path}: no {'training' if 'train' not in out else 'test'} set")
    return Arrays(out, found.class_names, found.kind, [*found.notes, *untrained_note(out, found.class_names)])


def to_front(rows: np.ndarray, keep: np.ndarray, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """``rows[keep]`` for ascending ``keep``, moved to the front of ``rows`` itself (a view of
    it): one-set data is the reader's own array, and a copy would hold its pixels twice.
    Row keep[j] >= j, so a chunk's sources lie at or past where it is written."""
    if not rows.flags.writeable:
        return rows[keep]
    chunk = max(1, chunk_bytes // max(1, rows[:1].nbytes))
    for start in range(0, len(keep), chunk):
        end = min(start + chunk, len(keep))
        rows[start:end] = rows[keep[start:end]]  # the right side is a copy first
    return rows[:len(keep)]


def untrained_note(splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: tuple[str, ...]) -> list[str]:
    """A note naming the classes that only the test or validation set has: the model never
    learns them, and every such picture counts as an error (an image folder refuses them)."""
    trained = np.bincount(splits["train"][1], minlength=len(class_names)) > 0
    others = [labels for name, (_, labels) in splits.items() if name != "train"]
    untrained = sorted(set(np.concatenate(others).tolist()) - set(np.flatnonzero(trained).tolist())) if others else []
    if not untrained:
        return []
    shown = ", ".join(repr(class_names[k]) for k in untrained[:5]) + (" ..." if len(untrained) > 5 else "")
    return [f"class{'es' if len(untrained) > 1 else ''} {shown} only in the test or validation set, with no "
            "training pictures: the model cannot learn them"]


def check_as_trained(class_names: tuple[str, ...], images: Any, cfg: Any) -> None:
    """A run's data, read again (resume, eval, export), must be what it trained on: the same
    classes (a class folder added since shifts every label, and eval would score the model
    against the wrong names) and the same picture shape (else torch fails inside the model).
    ``images``: its training pictures (N, C, H, W)."""
    recorded, model = cfg.data.classes, cfg.model
    if not recorded:  # not yet trained: fit_to_data takes whatever the data is
        return
    then = None
    if list(class_names) != list(recorded):
        now, then = f"the classes {list(class_names)[:12]}", f"{list(recorded)[:12]}"
    else:
        channels, side = images.shape[1:3]
        if (channels, side) != (model.in_channels, model.input_size):
            now = f"pictures of {channels} x {side} x {side}"
            then = f"{model.in_channels} x {model.input_size} x {model.input_size}"
    if then:
        raise DataError(f"the data at {cfg.data.path or cfg.data.dataset} now has {now} but this run trained on "
                        f"{then}; the data changed since the run started: restore it, or train anew")


def check_labels(labels: np.ndarray, n_images: int, classes: int, where: str) -> None:
    if labels.ndim != 1 or len(labels) != n_images:
        raise DataError(f"{where}: {n_images} pictures but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers; got {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DataError(f"{where}: label {bad} is out of range for {classes} classes (0..{classes - 1})")


def split_indices(labels: np.ndarray, fraction: float, class_names: tuple[str, ...],
                  path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): ``fraction`` of each class held out, by a seeded shuffle
    (SPLIT_SEED), so every run on this data tests on the same pictures."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1); got {fraction}")
    counts = np.bincount(labels, minlength=len(class_names)) if len(labels) else np.zeros(len(class_names), int)
    for cls, count in enumerate(counts):
        if count == 0:
            raise DataError(f"{path}: class {class_names[cls]!r} has no pictures; remove its folder or add some")
        if count == 1:
            raise DataError(f"{path}: class {class_names[cls]!r} has one picture, which cannot be split into "
                            "training and test; add pictures, or give train/ and test/ folders")
    # Every class keeps a picture on each side.
    return held_out_per_class(labels, SPLIT_SEED, lambda n: min(max(1, int(round(fraction * n))), n - 1))


def held_out_per_class(labels: np.ndarray, seed: int, how_many: Callable[[int], int]) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, held-out rows): ``how_many(class size)`` rows of each class present, in
    label order, chosen by a shuffle seeded with ``seed``. The test split of one-set data
    and the validation split (datasets.stratified_indices) are both this."""
    rng = np.random.default_rng(seed)
    parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        parts.append(members[:how_many(len(members))])
    held = np.sort(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 with ``channels`` channels: grey repeated into RGB, RGB to grey by
    ITU-R 601-2 luma (as PIL's convert("L")); None: as it is."""
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=1)
    if have == 3 and channels == 1:
        weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
        grey = (images.astype(np.uint32) * weights).sum(axis=1, keepdims=True)
        return ((grey + 500) // 1000).astype(np.uint8)
    raise DataError(f"cannot turn pictures of {have} channels into {channels}")


def resize(images: np.ndarray, side: int, chunk: int = 4096) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C, side, side), antialiased bilinear, in chunks so the float
    copies stay small; unchanged if already that size."""
    if images.shape[2] == side and images.shape[3] == side:
        return images
    out = np.empty((images.shape[0], images.shape[1], side, side), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).float()
        scaled = F.interpolate(block, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = scaled.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out
