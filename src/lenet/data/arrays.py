"""Readers of data that comes as arrays: Kaggle's CSV, Keras's .npz, IDX folders of any
size and class count (EMNIST, KMNIST), and CIFAR-10's binary batches.

Each returns ``sources.Arrays`` (uint8 images (N, C, H, W), integer labels (N,)) and
leaves splitting, resizing and the shared checks to ``sources.finish``. Nothing here
unpickles: .npz files are loaded with ``allow_pickle=False``, and CIFAR-10 is read from
its binary version only. Every size is bounded before it is read, and every problem is
one ``DataError`` line naming the file (and line or record) and what to do.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from .idx import GZIP_MAGIC, decompressed_bytes, read_idx
from .sources import MAX_CLASSES, PIXEL_BUDGET, Arrays

MAX_TEXT_BYTES = 4 << 30  # a CSV (after gunzip): 4 GiB of text is ~2 G pixels, far past any LeNet data
MAX_CLASSES_TXT_BYTES = 1 << 20  # classes.txt: 10,000 names fit in far less
SPLITS = ("train", "test", "val")


# --------------------------------------------------------------------------- class names


def class_names_for(place: Path, labels: list[np.ndarray], notes: list[str]) -> tuple[str, ...]:
    """Names from ``place/classes.txt`` when there is one, else "0".."K-1" with K = the
    largest label + 1 (over every split, so a class only the test set has still counts)."""
    top = max((int(y.max()) for y in labels if len(y)), default=-1)
    if top + 1 > MAX_CLASSES:
        raise DataError(f"{place}: label {top} means {top + 1:,} classes, over the {MAX_CLASSES:,} lenet trains; "
                        "labels must be class indices 0..K-1")
    seen = np.zeros(top + 1, dtype=bool)
    for y in labels:
        seen[y[y >= 0]] = True  # negative labels: finish names them
    if not seen.all():  # EMNIST's letters count from 1: class 0 is then empty, and says so
        empty = np.flatnonzero(~seen).tolist()
        notes.append(f"no pictures with label {', '.join(map(str, empty[:5]))}{' ...' if len(empty) > 5 else ''}"
                     f" (of 0..{top})")
    listing = place / "classes.txt"
    if not listing.is_file():
        return tuple(str(k) for k in range(top + 1))
    if listing.stat().st_size > MAX_CLASSES_TXT_BYTES:
        raise DataError(f"{listing}: over {MAX_CLASSES_TXT_BYTES:,} bytes; it should hold one class name a line")
    try:
        lines = [line.strip() for line in listing.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{listing}: cannot read as UTF-8 text ({exc})") from None
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise DataError(f"{listing}, line {lines.index('') + 1}: empty; write one non-empty class name a line")
    first_line: dict[str, int] = {}
    for number, name in enumerate(lines, 1):
        if name in first_line:
            raise DataError(f"{listing}, line {number}: {name!r} repeats line {first_line[name]}; "
                            "class names must differ")
        first_line[name] = number
    if len(lines) < top + 1:
        raise DataError(f"{listing}: names {len(lines)} classes, but the labels go up to {top}; "
                        f"write {top + 1} names, one a line, the name of label k on line k + 1")
    notes.append(f"class names from {listing}")
    return tuple(lines)


# --------------------------------------------------------------------------- CSV


def _role(name: str) -> str | None:
    """"train", "test" or "val" from a file name ("t10k" is MNIST's word for test); None
    when it names none, "?" when it names several (the caller reports that)."""
    lowered = name.lower()
    found = {word for word in SPLITS if word in lowered} | ({"test"} if "t10k" in lowered else set())
    return found.pop() if len(found) == 1 else ("?" if found else None)


def _is_csv_name(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(".csv") or lowered.endswith(".csv.gz")


def is_csv_folder(path: Path) -> bool:
    """A folder holding CSV files named for their split (``*train*.csv``, ``*test*.csv``)."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and _is_csv_name(p.name) and _role(p.name) for p in path.iterdir())


def read_csv(path: Path) -> Arrays:
    """One CSV in Kaggle's layout (``label,pixel1,...,pixelN``, N = side x side): one set,
    which ``finish`` splits into training and test."""
    path = Path(path)
    images, labels = _read_csv_file(path)
    notes: list[str] = []
    names = class_names_for(path.parent, [labels], notes)
    return Arrays({"all": (images, labels)}, names, "csv", notes)


def read_csv_folder(path: Path) -> Arrays:
    """A folder with one ``*train*.csv`` and one ``*test*.csv`` (and optionally one
    ``*val*.csv``), names case-insensitive, each maybe gzipped."""
    path = Path(path)
    notes: list[str] = []
    files = _split_files(path, [p for p in sorted(path.iterdir()) if p.is_file() and _is_csv_name(p.name)],
                         "CSV", "a *train*.csv and a *test*.csv", notes)
    splits = {role: _read_csv_file(file) for role, file in files.items()}
    names = class_names_for(path, [labels for _, labels in splits.values()], notes)
    return Arrays(splits, names, "csv", notes)


def _split_files(folder: Path, candidates: list[Path], what: str, wanted: str, notes: list[str]) -> dict[str, Path]:
    """{"train": file, "test": file[, "val": file]}: exactly one file of each role."""
    by_role: dict[str, list[Path]] = {}
    for file in candidates:
        role = _role(file.name)
        if role == "?":
            raise DataError(f"{file}: its name says more than one of train, test and val; "
                            "rename it so it says which split it holds")
        if role is None:
            notes.append(f"ignored {file.name} (its name says neither train, test nor val)")
            continue
        by_role.setdefault(role, []).append(file)
    for role, found in by_role.items():
        if len(found) > 1:
            raise DataError(f"{folder}: {len(found)} {role} {what} files ({', '.join(p.name for p in found)}); "
                            f"keep one, or move the others to folders of their own")
    for role in ("train", "test"):
        if role not in by_role:
            raise DataError(f"{folder}: no {role} {what} file (its name containing '{role}'); "
                            f"the folder needs {wanted}")
    return {role: found[0] for role, found in by_role.items()}


def _number(field: bytes) -> int | None:
    """The integer a CSV field holds (spaces and a sign allowed, as loadtxt allows), or None."""
    text = field.strip()
    digits = text[1:] if text[:1] in (b"+", b"-") else text
    return int(text) if digits.isdigit() else None  # isdigit on bytes: ASCII 0-9 only (int() takes "1_0")


_NON_SPACE = re.compile(rb"\S")


def _read_csv_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, side, side) uint8, labels (N,) int64) of one CSV file."""
    size = stat_size(path)
    if size > MAX_TEXT_BYTES:
        raise DataError(f"{path}: {size:,} bytes, over the {MAX_TEXT_BYTES:,} lenet reads as CSV; "
                        "save the data as .npz (uint8) or IDX instead")
    data = decompressed_bytes(path, MAX_TEXT_BYTES)
    bom = data.startswith(b"\xef\xbb\xbf")  # Excel writes a UTF-8 byte-order mark
    if bom:
        del data[:3]
    mac = b"\n" not in data and b"\r" in data.rstrip(b"\r")  # Excel's "CSV (Macintosh)" ends lines with CR alone
    if mac:
        data = bytearray(data.replace(b"\r", b"\n"))
    start = _NON_SPACE.search(data)
    if start is None:
        raise DataError(f"{path}: empty file; expected rows of label,pixel1,...,pixelN")
    begin = data.rfind(b"\n", 0, start.start()) + 1
    end = data.find(b"\n", begin)
    end = len(data) if end < 0 else end
    first = data.count(b"\n", 0, begin)  # blank lines before it (0-based index of the first line)
    fields = bytes(data[begin:end]).rstrip(b"\r").split(b",")
    header = _number(fields[0]) is None
    if len(fields) > 2 and not fields[-1].strip():  # else "a label and 785 pixels; 785 is not a square number"
        raise DataError(f"{path}, line {first + 1}: ends with a comma (an empty last value); write rows "
                        "label,pixel1,...,pixelN without the trailing comma")
    if header and _NON_SPACE.search(data, end) is None:
        raise DataError(f"{path}: only a header row; no data rows follow it")
    columns = len(fields)
    pixels = columns - 1
    side = math.isqrt(max(pixels, 0))
    first_name = fields[0].strip().strip(b'"').decode("utf-8", "replace")
    if header and first_name.lower().startswith("pixel") or side * side != pixels and _is_square(columns):
        because = (f"the header starts with {first_name!r}" if header else
                   f"rows hold {columns} values, {math.isqrt(columns)} x {math.isqrt(columns)} pixels and no label")
        raise DataError(f"{path}: no label column ({because}); lenet needs label,pixel1,...,pixelN rows to train "
                        "and to measure accuracy (Kaggle's test.csv is for submissions: hold out part of "
                        "train.csv instead)")
    if pixels < 1:
        other = next((sep for sep in (b";", b"\t") if sep in fields[0]), None)  # Excel in many locales writes ";"
        if other:
            raise DataError(f"{path}, line {first + 1}: values separated by {other.decode()!r}, not commas; "
                            "save it as comma-separated label,pixel1,...,pixelN")
        raise DataError(f"{path}, line {first + 1}: {columns} value(s); expected label,pixel1,...,pixelN")
    if side * side != pixels:
        raise DataError(f"{path}: rows hold a label and {pixels} pixels; {pixels} is not a square number, "
                        f"so they are not side x side grey pictures (e.g. 28 x 28 = 784 pixels)")
    skip = first + 1 if header else first
    reference = f"as the header on line {first + 1} names" if header else f"as line {first + 1} holds"
    with open(path, "rb") as handle:
        packed = handle.read(2) == GZIP_MAGIC
    # a plain file is read by loadtxt itself (no copy); it would gunzip by name, not by content
    plain = not (packed or bom or mac or path.name.lower().endswith(".gz"))
    values, failure = _parse(lambda: path if plain else io.BytesIO(data), skip)
    if values is None and _BLANK_LINE.search(data, end):  # loadtxt skips empty lines, not lines of spaces
        cleaned = data[:end] + _BLANK_LINE.sub(b"", data[end:])
        values, failure = _parse(lambda: io.BytesIO(cleaned), skip)
    if values is None or values.shape[1] != columns or not _in_range(values):
        raise _problem(path, data, skip, columns, reference, values, failure)
    n = len(values)
    images = values[:, 1:].astype(np.uint8, copy=False).reshape(n, 1, side, side)
    return images, values[:, 0].astype(np.int64)


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]+(?=\n|$)")  # a line of only spaces: blank, as an empty one is


def _parse(source: Callable[[], Any], skip: int) -> tuple[np.ndarray | None, Exception | None]:
    """(values, None), or (None, why loadtxt refused them)."""
    failure = None
    # loadtxt (C) reads Fashion-MNIST's 60,000 rows in about a second: as uint8 first (a
    # quarter of int32's memory), as int32 when labels go past 255 or a value is out of range
    for dtype in (np.uint8, np.int32):
        try:
            return np.loadtxt(source(), dtype=dtype, delimiter=",", skiprows=skip, comments=None, ndmin=2), None
        except (ValueError, OverflowError) as exc:
            failure = exc
    return None, failure


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _in_range(values: np.ndarray) -> bool:
    """Pixels 0..255, labels 0 or more."""
    if not len(values):
        return True
    pixels = values[:, 1:]
    return int(values[:, 0].min()) >= 0 and int(pixels.min()) >= 0 and int(pixels.max()) <= 255


_CLEAN = b"0123456789,"  # all a clean line holds; a line with anything else is looked at field by field


def _problem(path: Path, data: bytearray, skip: int, columns: int, reference: str,
             values: np.ndarray | None, failure: Exception | None) -> DataError:
    """What is wrong with a CSV that loadtxt refused (``values`` None) or read with values out
    of range: the first bad line's number and what is wrong with it, found line by line (only
    lines with more than digits and commas are split into fields in Python)."""
    if values is not None and values.shape[1] != columns:
        values = None  # every row agrees, but not with the first line: find the first that differs
    numbers = []  # the line number of each data row
    for number, line in enumerate(data.splitlines(), 1):
        if number <= skip or not line.strip():
            continue
        numbers.append(number)
        if values is not None:
            continue  # loadtxt read every line: only the values can be wrong
        if line.count(b",") + 1 != columns:
            return DataError(f"{path}, line {number}: {line.count(b',') + 1} values, expected {columns} "
                             f"(a label and {columns - 1} pixels, {reference})")
        fields = line.split(b",")
        if line.translate(None, _CLEAN) or max(map(len, fields)) > 3 or not min(map(len, fields)):
            problem = _field_problem(path, number, fields)
            if problem:
                return problem
    if not numbers:
        return DataError(f"{path}: no data rows")
    if values is not None:
        bad = values < 0
        bad[:, 1:] |= values[:, 1:] > 255
        row = int(np.argmax(bad.any(axis=1)))
        column = int(np.argmax(bad[row]))
        problem = _field_problem(path, numbers[row], [str(int(values[row, column])).encode()], column + 1)
        if problem:
            return problem
    return DataError(f"{path}: cannot read as CSV ({failure}); expected rows of integers label,pixel1,...,pixelN")


def _field_problem(path: Path, number: int, fields: list[bytes], first_column: int = 1) -> DataError | None:
    """The first field of line ``number`` that is not an integer in range, if any."""
    for column, field in enumerate(fields, first_column):
        value = _number(field)
        what = "label" if column == 1 else f"pixel {column - 1}"
        if value is None:
            shown = field.strip().decode("utf-8", "replace")[:20]
            kind = "a class index 0, 1, ... (names go in classes.txt)" if column == 1 else "an integer 0..255"
            return DataError(f"{path}, line {number}, column {column}: {what} {shown!r} is not {kind}")
        if value < 0 or column > 1 and value > 255:
            return DataError(f"{path}, line {number}, column {column}: {what} {value} is out of range "
                             f"({'0 or more' if column == 1 else '0..255'}); pixels are integers 0..255")
        if column == 1 and value >= MAX_CLASSES:
            return DataError(f"{path}, line {number}, column 1: label {value} is past the {MAX_CLASSES:,} classes "
                             "lenet trains; labels are class indices 0..K-1")
    return None


# --------------------------------------------------------------------------- .npz


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path) -> Arrays:
    """A .npz in Keras's layout: x_train, y_train, x_test, y_test (and x_val, y_val);
    images uint8 (N, H, W) or (N, H, W, C) with C 1 or 3, labels integer (N,) or (N, 1).
    Without x_test and y_test, the test set is held out of the training arrays, as of one CSV."""
    path = Path(path)
    arrays, held = _load_npz(path)
    notes: list[str] = []
    for split in ("test", "val"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            have, lack = (f"x_{split}", f"y_{split}") if f"x_{split}" in arrays else (f"y_{split}", f"x_{split}")
            raise DataError(f"{path}: holds {have} without {lack}; give both or neither")
    ignored = sorted(set(held) - set(arrays))
    if ignored:
        notes.append(f"ignored arrays {', '.join(ignored)} in {path.name}")
    splits = {}
    for split in SPLITS:
        if f"x_{split}" not in arrays:
            continue
        images = _npz_images(path, f"x_{split}", arrays[f"x_{split}"], notes)
        labels = _npz_labels(path, f"y_{split}", arrays[f"y_{split}"])
        if len(images) != len(labels):
            raise DataError(f"{path}: x_{split} holds {len(images)} pictures but y_{split} {len(labels)} labels; "
                            "they must pair up one to one")
        if len(images) == 0:
            leave = "" if split == "train" else f"; leave x_{split} and y_{split} out instead"
            raise DataError(f"{path}: x_{split} holds no pictures{leave}")
        splits[split] = (images, labels)
    if "test" not in splits:
        splits["all"] = splits.pop("train")  # split by --test-fraction, per class, as one CSV is
        notes.append(f"{path.name} has no x_test: the test set is held out of x_train (--test-fraction)")
    names = class_names_for(path.parent, [labels for _, labels in splits.values()], notes)
    return Arrays(splits, names, "npz", notes)


def _load_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the arrays lenet reads, the names of all it holds), each array checked by its
    header (dtype, size) before it is loaded."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not zipfile.is_zipfile(path):
        if head.startswith(b"\x93NUMPY"):
            what = "a single .npy array"
        elif head[:1] == b"\x80":
            what = "a Python pickle (lenet never unpickles files)"
        else:
            what = "not a zip file"
        raise DataError(f"{path}: {what}; --data reads a .npz (np.savez(path, x_train=..., y_train=..., "
                        "x_test=..., y_test=...))")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()
                       if info.filename.endswith(".npy")}
            missing = [key for key in NPZ_KEYS[:2] if key not in members]
            if missing:
                held = ", ".join(sorted(members)) or "no arrays"
                raise DataError(f"{path}: no {', '.join(missing)}; it holds {held}. lenet reads Keras's layout: "
                                "x_train, y_train (and optionally x_test, y_test, x_val, y_val)")
            wanted = [key for key in members if key in NPZ_KEYS or key in ("x_val", "y_val")]
            total = 0
            for key in wanted:
                with archive.open(members[key]) as member:
                    version = np.lib.format.read_magic(member)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = reader(member)
                if dtype.hasobject:
                    raise DataError(f"{path}: {key} holds Python objects, which only unpickling could read, and "
                                    "lenet never unpickles; save numeric arrays (uint8 pictures, integer labels)")
                total += math.prod(shape) * dtype.itemsize
            if total > PIXEL_BUDGET:
                raise DataError(f"{path}: its arrays hold {total:,} bytes, over the {PIXEL_BUDGET:,} lenet loads")
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in wanted}, list(members)
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc}); save it again with np.savez") from None


def _npz_images(path: Path, key: str, images: np.ndarray, notes: list[str]) -> np.ndarray:
    """(N, C, H, W) uint8 from (N, H, W), (N, H, W, C) or (N, C, H, W)."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif not (images.ndim == 4 and images.shape[1] in (1, 3)):
        raise DataError(f"{path}: {key} has shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind == "f":
        high = float(images.max()) if images.size else 0.0
        # x * 255 on pictures already in 0..255 would wrap round: say the fix for these values
        fix = "(x * 255).round().astype(np.uint8), for pictures in 0..1" if high <= 1.0 else \
            f"np.clip(x, 0, 255).round().astype(np.uint8), for pictures in 0..255 (its largest value is {high:g})"
        raise DataError(f"{path}: {key} is {images.dtype}; lenet reads pixels as uint8 0..255: scale them and "
                        f"save again with {fix}")
    if images.dtype.kind not in "iu":
        raise DataError(f"{path}: {key} is {images.dtype}; pixels must be uint8 0..255")
    low, high = (int(images.min()), int(images.max())) if images.size else (0, 0)
    if low < 0 or high > 255:
        raise DataError(f"{path}: {key} holds values {low}..{high}; pixels must be 0..255 (uint8)")
    notes.append(f"{key}: {images.dtype} pixels, all within 0..255, read as uint8")
    return images.astype(np.uint8)


def _npz_labels(path: Path, key: str, labels: np.ndarray) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2:
        raise DataError(f"{path}: {key} has shape {labels.shape}: one-hot? save class indices, y.argmax(axis=1)")
    elif labels.ndim != 1:
        raise DataError(f"{path}: {key} has shape {labels.shape}; expected labels (N,) or (N, 1)")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {key} is {labels.dtype}; labels must be integers (class indices 0..K-1)")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- IDX folders


def _idx_kind(name: str) -> str | None:
    """"images", "labels" or None, from an IDX file's name."""
    lowered = name.lower().removesuffix(".gz")
    if "images" in lowered or "idx3" in lowered:
        return "images"
    if "labels" in lowered or "idx1" in lowered:
        return "labels"
    return None


def _idx_files(path: Path) -> list[Path]:
    return [p for p in sorted(path.iterdir())
            if p.is_file() and re.search(r"idx\d|ubyte", p.name.lower()) and _idx_kind(p.name)]


def is_idx_folder(path: Path) -> bool:
    """A folder holding IDX files (named ``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte``...)."""
    path = Path(path)
    return path.is_dir() and bool(_idx_files(path))


def read_idx_folder(path: Path) -> Arrays:
    """IDX files of any picture size and class count (EMNIST, KMNIST): one images and one
    labels file each for training ("train") and test ("test" or "t10k")."""
    path = Path(path)
    notes: list[str] = []
    pairs: dict[str, dict[str, Path]] = {}
    for kind in ("images", "labels"):
        files = [p for p in _idx_files(path) if _idx_kind(p.name) == kind]
        for role, file in _split_files(path, files, f"IDX {kind}", "train and test (t10k) images and labels",
                                       notes).items():
            pairs.setdefault(role, {})[kind] = file
    splits = {}
    for role, pair in pairs.items():
        if len(pair) != 2:
            have = next(iter(pair))
            raise DataError(f"{path}: {pair[have].name} has no matching {role} "
                            f"{'labels' if have == 'images' else 'images'} file")
        images, labels = read_idx(pair["images"], PIXEL_BUDGET), read_idx(pair["labels"], PIXEL_BUDGET)
        for file, array, what, ndim in ((pair["images"], images, "pictures (N, H, W)", 3),
                                        (pair["labels"], labels, "labels (N,)", 1)):
            if array.dtype != np.uint8 or array.ndim != ndim:
                raise DataError(f"{file}: holds {array.dtype} {array.shape}; expected uint8 {what}")
        if len(images) != len(labels):
            raise DataError(f"{pair['images']} holds {len(images)} pictures but {pair['labels'].name} "
                            f"{len(labels)} labels; the files do not belong together")
        splits[role] = (images[:, None], labels.astype(np.int64))
    names = class_names_for(path, [labels for _, labels in splits.values()], notes)
    return Arrays(splits, names, "idx", notes)


def stat_size(path: Path) -> int:
    """Bytes of ``path``; DataError (not OSError) when it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
