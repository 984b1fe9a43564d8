"""CIFAR-10's binary version, read with numpy: ``data_batch_1..5.bin`` and ``test_batch.bin``,
records of a label byte and the R, G and B planes of 32x32, and ``batches.meta.txt``. The
Python version's pickles are never read: unpickling runs whatever the file says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import MAX_CLASSES_TXT_BYTES, stat_size
from .catalog import DATASETS
from .sources import PIXEL_BUDGET, Arrays

CIFAR_FOLDER = "cifar-10-batches-bin"
CIFAR_BATCHES = {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR_RECORD = 1 + 3 * 32 * 32  # a label byte, then the R, G and B planes of 32x32
CIFAR_CLASSES = 10
CIFAR_HOW = ("lenet reads the binary version: `lenet download cifar10`, or cifar-10-binary.tar.gz from "
             "https://www.cs.toronto.edu/~kriz/cifar.html unpacked, and --data pointing at its "
             "cifar-10-batches-bin folder")


def _cifar_python_version(path: Path) -> bool:
    return path.name == "cifar-10-batches-py" or (path / "cifar-10-batches-py").is_dir() or (
        (path / "data_batch_1").is_file() and (path / "batches.meta").is_file())


def is_cifar10_folder(path: Path) -> bool:
    """CIFAR-10's binary batches (the folder, or one holding ``cifar-10-batches-bin/``),
    or its Python version, which read_cifar10 refuses with what to get instead."""
    path = Path(path)
    if not path.is_dir():
        return False
    return ((path / CIFAR_FOLDER).is_dir() or (path / "data_batch_1.bin").is_file()
            or (path / "test_batch.bin").is_file() or _cifar_python_version(path))


def read_cifar10(path: Path) -> Arrays:
    """CIFAR-10's binary version: (N, 3, 32, 32) uint8 pictures, class names from
    batches.meta.txt. Read with numpy alone: never a pickle."""
    path = Path(path)
    folder = path / CIFAR_FOLDER if (path / CIFAR_FOLDER).is_dir() else path
    if not (folder / "test_batch.bin").exists() and _cifar_python_version(path):
        raise DataError(f"{path}: CIFAR-10's Python version, pickled batches, which lenet never unpickles; {CIFAR_HOW}")
    missing = [name for names in CIFAR_BATCHES.values() for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: no {', '.join(missing)}; the folder is incomplete: unpack "
                        "cifar-10-binary.tar.gz again (or run `lenet download cifar10`)")
    sizes = {name: stat_size(folder / name) for names in CIFAR_BATCHES.values() for name in names}
    for name, size in sizes.items():
        if size == 0 or size % CIFAR_RECORD:
            raise DataError(f"{folder / name}: {size:,} bytes is not a whole number of {CIFAR_RECORD:,}-byte "
                            "records (1 label byte + 32x32x3 pixels); the file is truncated or not a CIFAR-10 batch")
    if sum(sizes.values()) > PIXEL_BUDGET:
        raise DataError(f"{folder}: the batches hold {sum(sizes.values()):,} bytes, over the {PIXEL_BUDGET:,} "
                        "lenet loads")
    notes: list[str] = []
    names = _cifar_class_names(folder, notes)
    splits = {}
    for split, files in CIFAR_BATCHES.items():
        n = sum(sizes[name] for name in files) // CIFAR_RECORD
        # (N, 3, 32, 32): each record stores the R, G and B planes one after another
        images = np.empty((n, 3, 32, 32), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        at = 0
        for name in files:  # one batch's records at a time: memory is the pictures plus one batch
            records = np.fromfile(folder / name, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
            bad = np.flatnonzero(records[:, 0] >= len(names))
            if len(bad):
                raise DataError(f"{folder / name}: record {int(bad[0])} has label {int(records[bad[0], 0])}; "
                                f"CIFAR-10's labels are 0..{len(names) - 1}: the file is not a CIFAR-10 batch")
            images[at:at + len(records)] = records[:, 1:].reshape(-1, 3, 32, 32)
            labels[at:at + len(records)] = records[:, 0]
            at += len(records)
        splits[split] = (images, labels)
    return Arrays(splits, names, "cifar10", notes)


def _cifar_class_names(folder: Path, notes: list[str]) -> tuple[str, ...]:
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        notes.append(f"no {meta.name} in {folder}: CIFAR-10's published class names")
        return DATASETS["cifar10"].class_names
    if meta.stat().st_size > MAX_CLASSES_TXT_BYTES:
        raise DataError(f"{meta}: over {MAX_CLASSES_TXT_BYTES:,} bytes; CIFAR-10's holds 10 class names")
    names = tuple(line.strip() for line in meta.read_text(encoding="utf-8", errors="replace").splitlines()
                  if line.strip())
    if len(names) != CIFAR_CLASSES or len(set(names)) != len(names):
        raise DataError(f"{meta}: {len(names)} class names ({len(set(names))} different); CIFAR-10's lists 10, "
                        "one a line")
    return names
