"""Listing an image folder: its pictures by split and class, found without opening one;
links that lead out of the folder, and anything that is not a picture, said with a count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sources import MAX_CLASSES

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
SPLIT_FOLDERS = ("train", "test", "val")
LAYOUT = "PATH/<class>/<pictures>, or PATH/train/<class>/<pictures> and PATH/test/<class>/<pictures>"


@dataclass
class Listing:
    """The pictures of a folder, grouped by split then class, each group in sorted order."""

    root: str  # the folder, resolved: no link may lead out of it
    shown: Path  # the folder as the user wrote it, for messages
    split_names: list[str]  # "train", "test", "val" in that order, or ["all"]
    class_names: tuple[str, ...]
    relative: list[str]  # each picture's path inside root, e.g. "train/cat/001.png"
    labels: np.ndarray  # int64 (N,)
    split_of: np.ndarray  # uint8 (N,): index into split_names
    notes: list[str]

    def full(self, index: int) -> str:
        return os.path.join(self.root, self.relative[index])

    def name(self, index: int) -> str:
        return os.path.join(str(self.shown), self.relative[index])


def plural(count: int) -> str:
    return "" if count == 1 else "s"


class Ignored:
    """Files and folders that are no pictures: counted, one example each, said once."""

    WORDS = {  # kind: (one, many)
        "not a picture": ("file that is not a picture", "files that are not pictures"),
        "outside": ("file outside the class folders", "files outside the class folders"),
        "hidden folder": ("hidden folder", "hidden folders"),
        "other folder": ("folder other than train/, test/ and val/", "folders other than train/, test/ and val/"),
    }

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, kind: str, relative: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, relative)

    def notes(self) -> list[str]:
        out = []
        for kind, (one, many) in self.WORDS.items():
            if n := self.counts.get(kind, 0):
                out.append(f"ignored {n:,} {one if n == 1 else many} (e.g. {self.examples[kind]})")
        return out


def inside(target: str, root: str) -> bool:
    return os.path.commonpath([target, root]) == root


def is_folder(entry: os.DirEntry, root: str, shown: Path) -> bool:
    """Whether ``entry`` is a folder, through a link; DataError for a link that leads out of
    the folder (a dangling one included)."""
    if not entry.is_symlink():
        return entry.is_dir(follow_symlinks=False)  # the listing's file type: no stat per file
    target = os.path.realpath(entry.path)
    if not inside(target, root):
        raise DataError(f"{os.path.join(str(shown), relative_to(root, entry.path))}: a link to {target}, outside "
                        f"{shown}; --data reads only what is inside its folder: copy the file or folder in, "
                        "or remove the link")
    return os.path.isdir(target)


def relative_to(root: str, path: str) -> str:
    """``path`` inside ``root``, by its prefix: every path walked is built from root."""
    return path[len(root.rstrip(os.sep)) + 1:]


def scan(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def subfolders(folder: str, root: str, shown: Path, ignored: Ignored) -> list[tuple[str, str]]:
    """(name, path) of the folders in ``folder``, sorted; its files and hidden folders are
    counted as ignored."""
    out = []
    for entry in scan(folder):
        relative = relative_to(root, entry.path)
        if entry.name.startswith("."):  # never followed: a hidden link is ignored wherever it leads
            ignored.add("hidden folder" if entry.is_dir(follow_symlinks=False) else "outside", relative)
            continue
        if is_folder(entry, root, shown):
            out.append((entry.name, entry.path))
        else:
            ignored.add("outside", relative)
    return out


def walk_class(folder: str, root: str, shown: Path, ignored: Ignored) -> list[str]:
    """Pictures at any depth in ``folder``, relative to root, sorted. Links are followed
    within the folder; a folder reached twice (a link loop) is read once."""
    pictures = []
    seen = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        for entry in scan(current):
            relative = relative_to(root, entry.path)
            if entry.name.startswith("."):  # .DS_Store, ._x.png (macOS), .ipynb_checkpoints/; never followed
                ignored.add("hidden folder" if entry.is_dir(follow_symlinks=False) else "not a picture", relative)
                continue
            if is_folder(entry, root, shown):
                pending.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in PICTURE_SUFFIXES:
                # a dangling link or a pipe named .png is a picture that cannot be read, said as such
                pictures.append(relative)
            else:
                ignored.add("not a picture", relative)
    return sorted(pictures)


def split_folders(top: list[tuple[str, str]], shown: Path) -> dict[str, str]:
    """{"train": folder, ...} of the split folders in PATH, by name in any case (Windows'
    Train/ and Test/ are splits, not two classes); DataError where the names only look like
    splits (Training/ and Testing/, which would otherwise train a 2-class model on them)."""
    given: dict[str, str] = {}
    for name, folder in top:
        split = name.lower()
        if split in given:
            raise DataError(f"{shown}: two {split} folders ({os.path.basename(given[split])}/ and {name}/); "
                            "keep one")
        if split in SPLIT_FOLDERS:
            given[split] = folder
    lowered = {name.lower(): name for name, _ in top}
    alike = [lowered[word] for word in ("training", "testing", "validation") if word in lowered]
    if "train" not in given and len(alike) >= 2:
        raise DataError(f"{shown}: folders {', '.join(f'{name}/' for name in alike)} look like splits, not "
                        "classes; rename them train/, test/ (and val/)")
    return given


def list_pictures(path: Path) -> Listing:
    """Every picture under ``path`` with its class and split; no file is opened."""
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (an image folder holds {LAYOUT})")
    root = os.path.realpath(path)
    ignored = Ignored()
    top = subfolders(root, root, path, ignored)
    given = split_folders(top, path)
    if "train" in given:
        if "test" not in given:
            raise DataError(f"{path}: has train/ but no test/; add PATH/test/<class>/<pictures>, or put the class "
                            "folders directly in PATH to have a test set split off")
        for name, _ in top:
            if name.lower() not in SPLIT_FOLDERS:
                ignored.add("other folder", name)
        splits = [(split, subfolders(given[split], root, path, ignored)) for split in SPLIT_FOLDERS if split in given]
    else:
        splits = [("all", top)]
    if splits[0][0] == "train" and not splits[1][1]:
        raise DataError(f"{path}/test: no class folders; add {path}/test/<class>/<pictures> for the classes of train/")
    class_names = tuple(sorted(name for name, _ in splits[0][1]))
    if not class_names:
        pictures = sum(os.path.splitext(entry.name)[1].lower() in PICTURE_SUFFIXES for entry in scan(root))
        found = f"{pictures:,} pictures directly in it, none in a class folder" if pictures else "no class folders"
        raise DataError(f"{path}{'/train' if splits[0][0] == 'train' else ''}: {found}; an image folder holds "
                        f"{LAYOUT} (one folder per class)")
    if len(class_names) > MAX_CLASSES:
        raise DataError(f"{path}: {len(class_names):,} class folders, over the {MAX_CLASSES:,} lenet trains; "
                        "is each picture in a folder of its own?")
    label_of = {name: label for label, name in enumerate(class_names)}
    relative: list[str] = []
    group_labels, group_splits, group_sizes = [], [], []
    for split_index, (split, classes) in enumerate(splits):
        for name, folder in classes:
            if name not in label_of:
                raise DataError(f"{path}/{split}/{name}: a class that train/ does not have; add "
                                f"{path}/train/{name}/ with pictures, or remove this folder")
            pictures = walk_class(folder, root, path, ignored)
            if not pictures:
                raise DataError(f"{os.path.join(str(path), relative_to(root, folder))}: a class folder with no "
                                "pictures (png, jpg, jpeg, bmp, gif, webp, tif, tiff, pgm, ppm); "
                                "remove the folder or add pictures")
            relative.extend(pictures)
            group_labels.append(label_of[name])
            group_splits.append(split_index)
            group_sizes.append(len(pictures))
    return Listing(root=root, shown=path, split_names=[split for split, _ in splits], class_names=class_names,
                   relative=relative, labels=np.repeat(np.array(group_labels, dtype=np.int64), group_sizes),
                   split_of=np.repeat(np.array(group_splits, dtype=np.uint8), group_sizes), notes=ignored.notes())
