"""The datasets lenet knows: names, class names, files, checksums, mirrors, statistics.

A catalogue only: no I/O. ``data`` (finding and loading files) and ``download``
(fetching them) both read it, so neither has to import the other's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, UsageError

DEBIAN_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-fashion-mnist installs


@dataclass(frozen=True)
class FileSpec:
    """One IDX file of a dataset and the checksums that identify it."""

    filename: str  # the official .gz name
    size: int  # decompressed bytes
    sha256: str  # of the decompressed bytes: independent of gzip settings and mirror
    md5_gz: str  # of the official .gz download, as the authors publish it


@dataclass(frozen=True)
class ArchiveSpec:
    """A dataset published as one archive (CIFAR-10's binary version), and what it holds."""

    filename: str  # the published archive's name
    size: int  # its bytes
    sha256: str  # of the archive as published
    folder: str  # the folder it unpacks into


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    files: dict[str, FileSpec]  # IDX: keys train_images, train_labels, test_images, test_labels
    mirrors: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)  # lower-case alias -> class name
    # Per-pixel mean and std of the training images on a [0, 1] scale, for
    # normalize="standard"; computed from the training set (see test_datasets.py).
    # Datasets without them here (CIFAR-10, your own) have them measured at load and
    # recorded in the run's config (data.mean, data.std).
    mean: float = 0.0
    std: float = 1.0
    channels: int = 1  # 1 grey, 3 RGB
    size: int = 28  # pictures are size x size
    flips: bool = True  # mirror images are still of their class (not digits)
    framing: str = "resize"  # how predict fits a picture: a key of use.predict.FRAMINGS
    archive: ArchiveSpec | None = None  # instead of IDX files


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
        framing="fashion-mnist",
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
        flips=False,
        framing="mnist",
    ),
    # The binary version (no Python pickles): data_batch_1..5.bin and test_batch.bin of
    # 10,000 records each, a record = 1 label byte + 3,072 pixel bytes (R, G, B planes of
    # 32x32), and batches.meta.txt with the class names. Checksum: the archive's published
    # SHA-256, as other projects record it (https://www.cs.toronto.edu/~kriz/cifar.html
    # gives its MD5, c32a1d4ab5d03f1284b67883e8d87530).
    "cifar10": DatasetSpec(
        name="cifar10",
        class_names=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
        files={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        aliases={"plane": "airplane", "car": "automobile", "aeroplane": "airplane"},
        mean=0.0,
        std=0.0,  # measured at load (see above)
        channels=3,
        size=32,
        archive=ArchiveSpec("cifar-10-binary.tar.gz", 170052171,
                            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                            "cifar-10-batches-bin"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def class_index(spec: DatasetSpec, name_or_index: str | int) -> int:
    """A class by index, name (case-insensitive) or alias ("sweater" -> Pullover)."""
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
