"""Datasets: where they are, how they are checked, how they sit in memory, and how
their pixels become the network's input.

The whole dataset is held as uint8 tensors (N, 1, 28, 28) and batches are taken
by indexing with a permutation: no per-sample Python, no DataLoader. 60,000
Fashion-MNIST images are 47 MB as uint8, so this fits anywhere we run. The
``Normalizer`` turns uint8 batches into float input, the same way in training,
evaluation, prediction and export. What the datasets are (files, checksums,
classes) is in ``catalog``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .catalog import DATASETS, DEBIAN_DATASETS, DatasetSpec, class_index, get_spec  # noqa: F401 (re-exported)
from ..errors import DataError, UsageError
from .download import archive_problem, download_archive, download_dataset, unpack_archive
from . import reading, sources
from .cache import lenet_cache
from .cifar import CIFAR_BATCHES, read_cifar10
from .idx import read_idx

# --------------------------------------------------------------------------- locating


def user_cache_dir() -> Path:
    return lenet_cache() / "datasets"


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
    """The IDX files of ``spec`` in ``folder``; None when one is missing, or when ``spec``
    has none (an archive dataset: see unpacked_in)."""
    if not spec.files:
        return None  # all() of nothing is True: an archive dataset would be "found" anywhere
    found = {key: _find_file(folder, f.filename) for key, f in spec.files.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    return None


def unpacked_in(folder: Path, spec: DatasetSpec) -> Path | None:
    """The unpacked folder of an archive dataset (CIFAR-10's cifar-10-batches-bin/) in
    ``folder`` when it holds every batch; None otherwise. unpack_archive renames a folder
    into place only when complete, so a complete one is trusted as the IDX files are."""
    if spec.archive is None:
        return None
    unpacked = folder / spec.archive.folder
    if all((unpacked / name).is_file() for names in CIFAR_BATCHES.values() for name in names):
        return unpacked
    return None


def locate(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> dict[str, Path]:
    """Paths of the four IDX files of ``name`` (for an archive dataset, {"folder": its
    unpacked folder}); downloads into the user cache if needed.

    ``download=None`` means "yes unless LENET_NO_DOWNLOAD is set" (CI and tests set it
    so a missing file fails at once instead of waiting on a network that is not there).
    """
    spec = get_spec(name)
    if spec.archive is not None:
        return {"folder": _locate_archive(spec, data_dir, download)}
    searched = []
    for how, folder in candidate_dirs(name, data_dir):
        found = files_in(folder, spec)
        if found:
            return found
        searched.append(f"  {how}: {folder}")
    if download is None:
        download = not os.environ.get("LENET_NO_DOWNLOAD")
    if download:
        folder = download_dataset(spec, user_cache_dir() / name)
        return files_in(folder, spec)  # type: ignore[return-value]
    wanted = ", ".join(f.filename for f in spec.files.values())
    raise DataError(
        f"dataset {name!r} not found. Looked for {wanted} in:\n" + "\n".join(searched) + "\n"
        "To get it: run `lenet download " + name + "` (needs the internet), "
        + ("or `apt-get install dataset-fashion-mnist`, " if name == "fashion-mnist" else "")
        + "or point --data-dir / LENET_DATA_DIR at a folder holding a '" + name + "/' subfolder."
    )


def _locate_archive(spec: DatasetSpec, data_dir: str | Path | None, download: bool | None) -> Path:
    """The unpacked folder of an archive dataset: found unpacked, or unpacked from its
    verified archive where that lies, or downloaded into the user cache and unpacked."""
    archive = spec.archive
    assert archive is not None
    searched = []
    for how, folder in candidate_dirs(spec.name, data_dir):
        unpacked = unpacked_in(folder, spec)
        if unpacked:
            return unpacked
        packed = folder / archive.filename
        if packed.is_file():
            problem = archive_problem(packed, archive)
            if problem:
                raise DataError(f"{packed}: not {spec.name}'s published archive ({problem}); delete it and run "
                                f"`lenet download {spec.name}`, or put the right file there")
            return unpack_archive(packed, folder, archive.folder)
        searched.append(f"  {how}: {folder}")
    if download is None:
        download = not os.environ.get("LENET_NO_DOWNLOAD")
    if download:
        dest = user_cache_dir() / spec.name
        return unpack_archive(download_archive(spec, dest), dest, archive.folder)
    raise DataError(
        f"dataset {spec.name!r} not found. Looked for {archive.folder}/ or {archive.filename} in:\n"
        + "\n".join(searched) + "\n"
        f"To get it: run `lenet download {spec.name}` (needs the internet, {archive.size / 1e6:.0f} MB), "
        f"or put {archive.filename} (from {spec.mirrors[0]}{archive.filename}) in a '{spec.name}/' subfolder "
        "of a folder that --data-dir / LENET_DATA_DIR points at: lenet verifies and unpacks it there."
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Split:
    """A set of examples: images (N, C, H, W) uint8 and labels (N,) int64."""

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
    notes: tuple[str, ...] = ()  # what reading it skipped or ignored, said in the run's log

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


def _load_pair(images_path: Path, labels_path: Path, spec: DatasetSpec, which: str) -> Split:
    # Each file may hold at most what the published file holds: a file that says (or
    # expands to) more is refused while it is read, not after filling memory.
    images = read_idx(images_path, spec.files[f"{which}_images"].size)
    labels = read_idx(labels_path, spec.files[f"{which}_labels"].size)
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
        torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28) uint8, in read_idx's own writable buffer
        torch.from_numpy(labels.astype(np.int64)),
    )


def load_dataset(name: str | Path, data_dir: str | Path | None = None, download: bool | None = None,
                 **options: Any) -> Dataset:
    """A catalogue dataset by name (located, downloaded where allowed), or your own data at
    a path in any format ``--data`` reads, with ``options`` as sources.ReadOptions has them
    (image_size, channels, test_fraction, skip_bad, progress, cache). A string that names a
    catalogue dataset is that dataset: pass a Path for a folder of the same name."""
    if isinstance(name, Path) or name not in DATASETS:
        path = Path(name)
        if not path.exists():
            raise DataError(f"unknown dataset {str(name)!r}, and no such path: choose one of {', '.join(DATASETS)}, "
                            "or give the path of your own data (see docs/data.md)")
        try:
            read = sources.ReadOptions(**options)
        except TypeError:
            raise UsageError(f"load_dataset takes these read options: {', '.join(sources.ReadOptions.__annotations__)}"
                             f"; got {', '.join(options)}") from None
        return from_arrays(reading.read_path(path, read), path.name or str(path))
    if options:
        raise UsageError(f"read options ({', '.join(options)}) are for your own data at a path; "
                         f"{name} is read as the catalogue has it (use lenet.load_data(cfg) to resize it)")
    spec = get_spec(name)
    paths = locate(name, data_dir, download)
    if spec.archive is not None:
        found = read_cifar10(paths["folder"])  # (N, 3, 32, 32) uint8, read with numpy: no pickles
        train, test = (Split(torch.from_numpy(images), torch.from_numpy(labels))
                       for images, labels in (found.splits["train"], found.splits["test"]))
        return Dataset(spec=spec, train=train, test=test)
    return Dataset(
        spec=spec,
        train=_load_pair(paths["train_images"], paths["train_labels"], spec, "train"),
        test=_load_pair(paths["test_images"], paths["test_labels"], spec, "test"),
    )


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): ``fraction`` of each class, chosen by a seeded shuffle.

    Stratified so every class keeps its share, seeded so a run is reproducible; "the last
    10%" (Keras' validation_split, last_indices) depends on the file's order.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1); got {fraction}")
    train_index, val_index = sources.held_out_per_class(labels.numpy(), seed, lambda n: int(round(fraction * n)))
    if len(val_index) == 0 or len(train_index) == 0:
        raise DataError(
            f"a validation fraction of {fraction} of {len(labels)} examples leaves an empty split"
        )
    return torch.from_numpy(train_index), torch.from_numpy(val_index)


def last_indices(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): the last ``fraction`` of ``n`` rows, in file order,
    as Keras' validation_split takes them (train_validation_split: floor(n * (1 - fraction)))."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1); got {fraction}")
    split_at = int(math.floor(n * (1.0 - fraction)))
    if split_at in (0, n):
        raise DataError(f"a validation fraction of {fraction} of {n} examples leaves an empty split")
    return torch.arange(split_at), torch.arange(split_at, n)


def validation_indices(labels: torch.Tensor, fraction: float, seed: int,
                       select: str = "stratified") -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) as data.val_select says: "stratified" (stratified_indices)
    or "last" (last_indices, the same rows whatever the seed)."""
    if select == "last":
        return last_indices(len(labels), fraction)
    return stratified_indices(labels, fraction, seed)


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val) Splits; see stratified_indices."""
    ti, vi = stratified_indices(split.labels, fraction, seed)
    return Split(split.images[ti], split.labels[ti]), Split(split.images[vi], split.labels[vi])


# --------------------------------------------------------------------------- model input


class Normalizer:
    """uint8 (..., 1, 28, 28) -> float32 as in training: [0, 1], standardised, or raw
    (0..255, as the Keras chapter feeds them); in channels-last layout when the model is
    (--channels-last). Input = pixels * scale - shift, in every mode."""

    def __init__(self, mode: str, mean: float, std: float, channels_last: bool = False):
        self.scale = 1.0 / 255.0
        self.shift = 0.0
        if mode == "standard" and not std:
            raise DataError("normalize=standard, but the data's pixel statistics are not known yet "
                            "(a config not fitted to its data: configuration.fitting.fit_to_data)")
        if mode == "standard":
            self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        elif mode == "raw":
            self.scale = 1.0
        elif mode == "signed":
            self.scale, self.shift = 1.0 / 127.5, 1.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def for_config(cls, cfg, channels_last: bool = False) -> "Normalizer":
        """The normaliser a run config trained with (``cfg``: a RunConfig)."""
        spec = data_spec(cfg)
        return cls(cfg.data.normalize, spec.mean, spec.std, channels_last)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale
        x = x - self.shift if self.shift else x
        return x.contiguous(memory_format=self.memory_format)


# --------------------------------------------------------------------------- on the device


@dataclass
class DeviceData:
    """A dataset on the device, and which of its training rows each split uses.

    ``train_index``/``val_index``: rows of ``dataset.train`` ((N,), or (K, N) for K
    models that each hold out their own validation split); None = every row, no split.
    """

    dataset: Dataset
    train_index: torch.Tensor | None = None
    val_index: torch.Tensor | None = None

    @property
    def n_train(self) -> int:
        return len(self.dataset.train) if self.train_index is None else self.train_index.shape[-1]

    @property
    def n_val(self) -> int:
        return 0 if self.val_index is None else self.val_index.shape[-1]

    def order(self, permutation: torch.Tensor) -> torch.Tensor:
        """Training rows in the order a permutation of 0..n_train-1 ((N,) or (K, N)) visits them."""
        return permutation if self.train_index is None else torch.gather(self.train_index, -1, permutation)


def as_dataset(data: Any, cfg: Any) -> Dataset:
    """A Dataset from what a caller passes to train(): None (the config's data, found as
    the CLI finds it: a path given to train() is already its data.path), a Dataset, or a mapping
    {"train": (images, labels), "test": (images, labels)} of arrays or tensors: uint8
    images (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3, integer labels (N,)."""
    if data is None:
        dataset = load_data(cfg)
    elif isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, dict) and {"train", "test"} <= set(data):
        pairs = {name: _pair(data[name], name) for name in ("train", "test", "val") if name in data}
        classes = 1 + max((int(labels.max()) for _, labels in pairs.values() if len(labels)), default=1)
        spec = get_spec(cfg.data.dataset)
        names = tuple(str(i) for i in range(classes))
        if cfg.data.classes:
            names = tuple(cfg.data.classes)
        elif classes <= len(spec.class_names) and pairs["train"][0].shape[1:] == (spec.channels, spec.size, spec.size):
            names = spec.class_names  # arrays in the catalogue dataset's shape: its classes
        found = sources.finish(sources.Arrays(pairs, names, "arrays"), read_options(cfg), Path("data"))
        dataset = from_arrays(found, "arrays")
        if names == spec.class_names:  # the catalogue's dataset, given as arrays (and perhaps resized)
            dataset.spec = replace(spec, channels=dataset.spec.channels, size=dataset.spec.size)
    else:
        raise UsageError("data= takes a path, a lenet Dataset (lenet.load_dataset) or "
                         '{"train": (images, labels), "test": (images, labels)}')
    dataset = with_statistics(dataset, cfg)
    for name, split in (("training", dataset.train), ("test", dataset.test)):
        if len(split) == 0:
            raise DataError(f"the {name} set is empty: there is nothing to "
                            f"{'train on' if name == 'training' else 'measure accuracy on'}")
    return dataset


def _pair(pair: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, labels = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a) for a in pair)
    except (TypeError, ValueError):
        raise UsageError(f'data["{name}"] must be (images, labels)') from None
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # (N, H, W, C), as Keras and PIL hold pictures
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UsageError(f'data["{name}"]: images must be uint8 (N, H, W), (N, C, H, W) or (N, H, W, C); '
                         f"got {images.dtype} {tuple(images.shape)}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f'data["{name}"]: labels must be integers (N,) = ({len(images)},); '
                         f"got {labels.dtype} {tuple(labels.shape)}")
    return images, labels.astype(np.int64)


def read_options(cfg: Any) -> sources.ReadOptions:
    d = cfg.data
    return sources.ReadOptions(d.image_size, d.channels, d.test_fraction, d.skip_bad)


def from_arrays(found: sources.Arrays, name: str) -> Dataset:
    """A Dataset of what sources.read_path found (val: the data's own validation set)."""
    splits = {k: Split(torch.from_numpy(images), torch.from_numpy(labels)) for k, (images, labels)
              in found.splits.items()}
    channels, size = splits["train"].images.shape[1:3]
    spec = DatasetSpec(name=name, class_names=found.class_names, files={}, mirrors=(), mean=0.0, std=0.0,
                       channels=int(channels), size=int(size))
    return Dataset(spec, splits["train"], splits["test"], splits.get("val"), tuple(found.notes))


def load_data(cfg: Any, data_dir: str | Path | None = None) -> Dataset:
    """The data a run config names (``cfg``: a RunConfig): its data.path, else the catalogue's
    data.dataset (searched in ``data_dir`` first), resized and converted as data.image_size
    and data.channels say; with the pixel statistics where the catalogue has none."""
    d = cfg.data
    if d.path:
        found = reading.read_path(d.path, read_options(cfg))
        sources.check_as_trained(found.class_names, found.splits["train"][0], cfg)
        dataset = from_arrays(found, data_spec(cfg).name)
    else:
        dataset = load_dataset(d.dataset, data_dir or d.data_dir)
        if d.image_size is not None or d.channels is not None:
            options = read_options(cfg)
            found = sources.finish(sources.Arrays(
                {k: (s.images.numpy(), s.labels.numpy()) for k, s in (("train", dataset.train),
                                                                     ("test", dataset.test))},
                dataset.spec.class_names, "catalogue"), options, Path(d.dataset))
            images = {k: torch.from_numpy(a[0]) for k, a in found.splits.items()}
            dataset = Dataset(replace(dataset.spec, channels=int(images["train"].shape[1]),
                                      size=int(images["train"].shape[2])),
                              Split(images["train"], dataset.train.labels), Split(images["test"], dataset.test.labels))
    return with_statistics(dataset, cfg)


def with_statistics(dataset: Dataset, cfg: Any) -> Dataset:
    """``dataset`` with pixel statistics where its spec has none: those the run's config
    recorded when it started, else measured on the training pictures."""
    if dataset.spec.std or not len(dataset.train):
        return dataset
    d = cfg.data
    mean, std = (d.mean, d.std) if d.mean is not None and d.std is not None else pixel_statistics(dataset.train.images)
    return replace(dataset, spec=replace(dataset.spec, mean=mean, std=std))


def pixel_statistics(images: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Mean and standard deviation of every pixel on a [0, 1] scale, in float64 chunks."""
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].to(torch.float64)
        total += float(block.sum())
        squares += float((block * block).sum())
        count += block.numel()
    if count == 0:
        return 0.0, 1.0
    mean = total / count
    std = math.sqrt(max(squares / count - mean * mean, 0.0))
    return round(mean / 255.0, 6), round(max(std, 1e-3) / 255.0, 6)


def data_spec(cfg: Any) -> DatasetSpec:
    """What a run's data is, from its config alone (``cfg``: a RunConfig fitted to its data
    by fit_to_data): class names, statistics, shape, flips, framing; what prediction,
    export and figures need without loading the data."""
    d = cfg.data
    if d.path is None:
        spec = get_spec(d.dataset)
    else:
        path = Path(d.path)
        spec = DatasetSpec(name=path.name or d.path, class_names=(), files={}, mirrors=(), mean=0.0, std=0.0)
    if d.classes:
        spec = replace(spec, class_names=tuple(d.classes))
    if d.mean is not None and d.std is not None:
        spec = replace(spec, mean=d.mean, std=d.std)
    return replace(spec, channels=cfg.model.in_channels, size=cfg.model.input_size)


def prepare_data(cfg: Any, device: torch.device, data: Any = None) -> DeviceData:
    """The run's data on ``device`` (``cfg``: a RunConfig), with its validation rows held out:
    the data's own validation set (a val/ folder), or data.val_split of the training rows."""
    dataset = as_dataset(data, cfg)
    if dataset.val is not None and len(dataset.val):
        if cfg.data.val_split:
            raise DataError(f"the data has its own validation set ({len(dataset.val):,} pictures) and the config "
                            f"asks for data.val_split={cfg.data.val_split} as well; drop one")
        n = len(dataset.train)
        train = Split(torch.cat([dataset.train.images, dataset.val.images]),
                      torch.cat([dataset.train.labels, dataset.val.labels]))
        return DeviceData(Dataset(dataset.spec, train.to(device), dataset.test.to(device)),
                          torch.arange(n, device=device), torch.arange(n, len(train), device=device))
    on_device = Dataset(dataset.spec, dataset.train.to(device), dataset.test.to(device))
    if cfg.data.val_split == 0:
        return DeviceData(on_device)
    # The split is a pure function of the seed, so a resumed run gets the same one.
    train_index, val_index = validation_indices(dataset.train.labels, cfg.data.val_split, cfg.seed,
                                                cfg.data.val_select)
    return DeviceData(on_device, train_index.to(device), val_index.to(device))
