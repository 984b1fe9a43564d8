"""Datasets: where they are, how they are checked, and how they sit in memory.

The whole dataset is held as uint8 tensors (N, 1, 28, 28) and batches are taken
by indexing with a permutation: no per-sample Python, no DataLoader. 60,000
Fashion-MNIST images are 47 MB as uint8, so this fits anywhere we run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .idx import read_idx

DEBIAN_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-fashion-mnist installs


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset and the checksums that identify it."""

    filename: str  # the official .gz name
    size: int  # decompressed bytes
    sha256: str  # of the decompressed bytes: independent of gzip settings and mirror
    md5_gz: str  # of the official .gz download, as the authors publish it


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    files: dict[str, FileSpec]  # keys: train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)  # lower-case alias -> class name
    # Per-pixel mean and std of the training images on a [0, 1] scale, for
    # normalize="standard"; computed from the training set (see test_data.py).
    mean: float = 0.0
    std: float = 1.0


# Checksums: ../shared/datasets/README.md (decompressed SHA-256) and the authors'
# published MD5 sums of the .gz files.
DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        files={
            "train_images": FileSpec(
                "train-images-idx3-ubyte.gz", 47040016,
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train_labels": FileSpec(
                "train-labels-idx1-ubyte.gz", 60008,
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "25c81989df183df01b3e8a0aad5dffbe"),
            "test_images": FileSpec(
                "t10k-images-idx3-ubyte.gz", 7840016,
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "bef4ecab320f06d8554ea6380940ec79"),
            "test_labels": FileSpec(
                "t10k-labels-idx1-ubyte.gz", 10008,
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                "bb300cfdad3c16e7a12a480ee83cd310"),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        aliases={
            "t-shirt": "T-shirt/top", "tshirt": "T-shirt/top", "top": "T-shirt/top",
            "trousers": "Trouser", "pants": "Trouser",
            "sweater": "Pullover", "jumper": "Pullover",
            "jacket": "Coat", "sneakers": "Sneaker", "boot": "Ankle boot",
            "handbag": "Bag", "sandals": "Sandal",
        },
        mean=0.2860,
        std=0.3530,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        files={
            "train_images": FileSpec(
                "train-images-idx3-ubyte.gz", 47040016,
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train_labels": FileSpec(
                "train-labels-idx1-ubyte.gz", 60008,
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "d53e105ee54ea40749a09fcbcd1e9432"),
            "test_images": FileSpec(
                "t10k-images-idx3-ubyte.gz", 7840016,
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "9fb629c4189551a2d022fa330f9573f3"),
            "test_labels": FileSpec(
                "t10k-labels-idx1-ubyte.gz", 10008,
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        aliases={"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"},
        mean=0.1307,
        std=0.3081,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def class_index(spec: DatasetSpec, name_or_index: str | int) -> int:
    """A class by index, name (case-insensitive) or alias ("sweater" -> Pullover)."""
    from .errors import UsageError

    text = str(name_or_index).strip()
    lowered = {n.lower(): i for i, n in enumerate(spec.class_names)}
    if text.lower() in lowered:
        return lowered[text.lower()]
    if text.lower() in spec.aliases:
        return spec.class_names.index(spec.aliases[text.lower()])
    if text.isdigit() and int(text) < len(spec.class_names):
        return int(text)
    raise UsageError(
        f"unknown class {text!r} for {spec.name}; classes: {', '.join(spec.class_names)}"
        + (f"; aliases: {', '.join(sorted(spec.aliases))}" if spec.aliases else "")
    )


# --------------------------------------------------------------------------- locating


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lenet" / "datasets"


def candidate_dirs(name: str, data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Where we look for dataset ``name``, in order, each with how it was chosen."""
    places: list[tuple[str, Path]] = []
    if data_dir:
        places.append(("--data-dir", Path(data_dir) / name))
    if os.environ.get("LENET_DATA_DIR"):
        places.append(("LENET_DATA_DIR", Path(os.environ["LENET_DATA_DIR"]) / name))
    places.append(("user cache", user_cache_dir() / name))
    places.append(("Debian package", DEBIAN_DATASETS / name))
    return places


def _find_file(folder: Path, filename: str) -> Path | None:
    """The .gz file or its decompressed twin, whichever is there."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def files_in(folder: Path, spec: DatasetSpec) -> dict[str, Path] | None:
    found = {key: _find_file(folder, f.filename) for key, f in spec.files.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    return None


def locate(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> dict[str, Path]:
    """Paths of the four IDX files of ``name``; downloads into the user cache if needed.

    ``download=None`` means "yes unless LENET_NO_DOWNLOAD is set" (CI and tests set it
    so a missing file fails at once instead of waiting on a network that is not there).
    """
    spec = get_spec(name)
    searched = []
    for how, folder in candidate_dirs(name, data_dir):
        found = files_in(folder, spec)
        if found:
            return found
        searched.append(f"  {how}: {folder}")
    if download is None:
        download = not os.environ.get("LENET_NO_DOWNLOAD")
    if download:
        from .download import download_dataset

        folder = download_dataset(spec, user_cache_dir() / name)
        return files_in(folder, spec)  # type: ignore[return-value]
    wanted = ", ".join(f.filename for f in spec.files.values())
    raise DataError(
        f"dataset {name!r} not found. Looked for {wanted} in:\n" + "\n".join(searched) + "\n"
        "To get it: run `lenet download " + name + "` (needs the internet), "
        + ("or `apt-get install dataset-fashion-mnist`, " if name == "fashion-mnist" else "")
        + "or point --data-dir / LENET_DATA_DIR at a folder holding a '" + name + "/' subfolder."
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Split:
    """A set of examples: images (N, 1, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    test: Split
    val: Split | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


def _load_pair(images_path: Path, labels_path: Path, spec: DatasetSpec) -> Split:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    # IDX allows signed and float types; a -1 label or unscaled float pixels would pass
    # every check below and fail (or silently mislearn) much later.
    for path, array, what in ((images_path, images, "pixels"), (labels_path, labels, "labels")):
        if array.dtype != np.uint8:
            raise DataError(f"{path}: expected uint8 {what} (IDX type 08); got {array.dtype}")
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected a 3-D image file (N, 28, 28); got shape {images.shape}")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected 28x28 images; got {images.shape[1]}x{images.shape[2]}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file; got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the files do not belong together"
        )
    if len(labels) and int(labels.max()) >= len(spec.class_names):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} out of range for "
            f"{len(spec.class_names)} classes"
        )
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, 28, 28) uint8
        torch.from_numpy(labels.astype(np.int64)),
    )


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> Dataset:
    spec = get_spec(name)
    paths = locate(name, data_dir, download)
    return Dataset(
        spec=spec,
        train=_load_pair(paths["train_images"], paths["train_labels"], spec),
        test=_load_pair(paths["test_images"], paths["test_labels"], spec),
    )


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): ``fraction`` of each class, chosen by a seeded shuffle.

    Stratified so every class keeps its share, seeded so a run is reproducible, and
    never "the last 10%" (Keras' validation_split), which depends on file order.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    val_parts = []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        rng.shuffle(members)
        n_val = int(round(fraction * len(members)))
        val_parts.append(members[:n_val])
    val_index = np.sort(np.concatenate(val_parts)) if val_parts else np.array([], dtype=np.int64)
    mask = np.ones(len(labels_np), dtype=bool)
    mask[val_index] = False
    train_index = np.flatnonzero(mask)
    if len(val_index) == 0 or len(train_index) == 0:
        raise DataError(
            f"a validation fraction of {fraction} of {len(labels_np)} examples leaves an empty split"
        )
    return torch.from_numpy(train_index), torch.from_numpy(val_index)


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val) Splits; see stratified_indices."""
    ti, vi = stratified_indices(split.labels, fraction, seed)
    return Split(split.images[ti], split.labels[ti]), Split(split.images[vi], split.labels[vi])
