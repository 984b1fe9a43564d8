"""Image folders: ``PATH/<class>/<pictures>``, or ``PATH/train/<class>/...`` and
``PATH/test/<class>/...`` (and ``PATH/val/<class>/...``), read into uint8 arrays.

Passes, so memory stays proportional to the decoded pixels even for a million files: list
the files (nothing opened); hash each file's bytes, which names the decoded array in the
cache (cache.py), so a second run stops here; read each header (size, mode; no decoding);
then decode in threads into one preallocated (N, C, H, W) array.

Rules (docs/data.md, "Image folders"): classes are the class folders' names, sorted;
pictures are found at any depth inside a class folder, in sorted order; other files are
ignored and counted. Grey pictures give 1 channel unless one picture has colour; alpha is
dropped; EXIF orientation is applied; 16-bit pictures are scaled to 8 bits.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from . import cache
from .listing import Listing, list_pictures, plural
from .sources import MAX_SIDE, PIXEL_BUDGET, Arrays, ReadOptions

# Pillow decodes only these, whatever a file is named: no EPS (Ghostscript) or other plugin
# runs on a file that merely claims to be a picture (cameras' multi-picture MPO opens as JPEG).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
MAX_PICTURE_PIXELS = 1 << 24  # width x height read from the header, before decoding (4096 x 4096)
MAX_PICTURE_BYTES = 64 << 20  # a file's size, checked before it is read
BLOCK = 256  # pictures per thread task: a few thousand tasks for a million files
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
DIGEST_BYTES = 16  # BLAKE2b-128 of a file's bytes: its identity in the cache key
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


@dataclass
class Headers:
    """What each picture's file and header say, read without decoding."""

    digests: np.ndarray  # uint8 (N, DIGEST_BYTES), from hash_files
    widths: np.ndarray  # int64 (N,), upright (after EXIF orientation)
    heights: np.ndarray
    colour: np.ndarray  # bool (N,)
    orientation: np.ndarray  # uint8 (N,), EXIF's 1..8
    bad: dict[int, str]  # picture -> why it cannot be read


def read_folder(path: Path, options: ReadOptions) -> Arrays:
    """The pictures under ``path`` (see the module's docstring); the split named "all" where
    the folder has no train/ and test/."""
    if options.channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB); got {options.channels}")
    if options.image_size is not None and not 1 <= options.image_size <= MAX_SIDE:
        raise DataError(f"--image-size must be 1 to {MAX_SIDE}; got {options.image_size}")
    listing = list_pictures(Path(path))
    digests, unreadable = hash_files(listing, options)
    settings = {"image_size": options.image_size, "channels": options.channels, "skip_bad": options.skip_bad}
    key = cache.content_key(settings, listing.class_names,
                            ((listing.relative[i], int(listing.labels[i]), digests[i].tobytes())
                             for i in range(len(listing.relative))))
    if options.cache and (entry := cache.load(key)) is not None:
        images, labels, meta = entry
        notes = [*listing.notes, *meta["notes"],
                 f"decoded pictures read from the cache ({cache.entry_path(key)}; delete it to decode again)"]
        return Arrays(split_rows(images, labels, meta["splits"]), tuple(meta["class_names"]), "image folder", notes)

    headers = read_headers(listing, digests, unreadable, options)
    keep = np.ones(len(listing.relative), dtype=bool)
    keep[list(headers.bad)] = False
    rows = np.flatnonzero(keep)
    channels = options.channels or (3 if headers.colour[rows].any() else 1)
    height, width = picture_size(listing, headers, rows, options.image_size)
    decoded_bytes = len(rows) * channels * height * width
    if decoded_bytes > PIXEL_BUDGET:
        raise DataError(f"{listing.shown}: {len(rows):,} pictures of {channels} x {height} x {width} would take "
                        f"{decoded_bytes / 2**30:,.1f} GiB decoded, over the {PIXEL_BUDGET / 2**30:.0f} GiB lenet "
                        "holds; pass a smaller --image-size N, or use fewer pictures")
    images = np.empty((len(rows), channels, height, width), dtype=np.uint8)  # (N, C, H, W)
    failed = decode_all(listing, headers, rows, images, options)
    if (headers.bad or failed) and not options.skip_bad:  # all of them in one message, not one round each
        raise bad_pictures_error(listing, {**headers.bad, **{int(rows[at]): why for at, why in failed.items()}})
    if failed:
        survivors = np.ones(len(rows), dtype=bool)
        survivors[list(failed)] = False
        images = compact(images, survivors)
        keep[rows[~survivors]] = False
        rows = rows[survivors]
    labels = listing.labels[rows]
    sizes = np.bincount(listing.split_of[rows], minlength=len(listing.split_names))
    splits = [[name, int(count)] for name, count in zip(listing.split_names, sizes)]
    check_training_classes(listing, labels, sizes)

    decode_notes = []
    if not keep.all():
        skipped = np.flatnonzero(~keep)
        decode_notes.append(f"skipped {len(skipped):,} picture{plural(len(skipped))} that cannot be read "
                            f"(--skip-bad), e.g. {', '.join(listing.relative[i] for i in skipped[:3])}")
    notes = [*listing.notes, *decode_notes]
    if options.cache:
        meta = {"class_names": list(listing.class_names), "splits": splits, "notes": decode_notes}
        why_not = cache.store(key, images, labels, meta)
        if why_not is not None:
            notes.append(f"decoded pictures not cached in {cache.cache_dir()} ({why_not})")
    return Arrays(split_rows(images, labels, splits), listing.class_names, "image folder", notes)


def split_rows(images: np.ndarray, labels: np.ndarray, splits: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each split's rows: consecutive, in ``splits``' order (views, no copies)."""
    out, start = {}, 0
    for name, count in splits:
        if count or name != "val":  # an empty val/ is no split; an empty test/ is finish()'s to refuse
            out[name] = (images[start:start + count], labels[start:start + count])
        start += count
    return out


# --------------------------------------------------------------------------- reading


def read_bytes(path: str, name: str) -> bytes:
    """The file's bytes, at most MAX_PICTURE_BYTES (DataError beyond, before reading them)."""
    # O_NONBLOCK: a pipe named x.png must not hang the read (it is refused just below)
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        data = b""
        if info.st_size <= MAX_PICTURE_BYTES:
            # read(n) allocates n bytes up front: ask for the size, and more only if it grew meanwhile
            data = handle.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += handle.read(MAX_PICTURE_BYTES + 1 - len(data))
    if info.st_size > MAX_PICTURE_BYTES or len(data) > MAX_PICTURE_BYTES:
        size = max(info.st_size, len(data))
        raise DataError(f"{name}: {size / 2**20:,.1f} MiB, over the {MAX_PICTURE_BYTES / 2**20:,.0f} MiB lenet "
                        "reads as one picture; shrink it or move it out of the folder")
    return data


def digest_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def too_many_pixels(name: str, size: str) -> DataError:
    return DataError(f"{name}: {size} pixels, over the {MAX_PICTURE_PIXELS:,} lenet decodes as one picture; "
                     "shrink it or move it out of the folder")


def open_picture(data: bytes, name: str) -> Image.Image:
    """Pillow's lazy view of ``data`` (the header is read, the pixels are not)."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (about 89 M pixels) fires inside open(), before ours could
        raise too_many_pixels(name, "far more than 16 million") from None


def is_colour(image: Image.Image) -> bool:
    """Whether the picture's mode holds colour; a palette counts as grey if every entry is."""
    if image.mode in GREY_MODES:
        return False
    if image.mode in ("P", "PA") and image.palette is not None:
        try:
            step = len(image.palette.mode)
            entries = np.frombuffer(bytes(image.palette.palette), dtype=np.uint8)
            entries = entries[: len(entries) // step * step].reshape(-1, step)[:, :3]
            return bool((entries != entries[:, :1]).any())
        except Exception:
            return True
    return True


def orientation_of(image: Image.Image) -> int:
    """EXIF orientation (1 = upright) from what the header holds."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow's PNG getexif() would decode the whole picture looking for a late eXIf chunk
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # damaged EXIF: the picture as stored
        return 1
    return value if value in UPRIGHT else 1


def reason(exc: BaseException) -> str:
    """One short clause for why a picture cannot be read."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a PNG, JPEG, BMP, GIF, WebP, TIFF, PGM or PPM picture"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).split("\n")[0] or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def changed(name: str) -> DataError:
    return DataError(f"{name}: changed while lenet was reading the folder; run again once nothing writes to it")


def hash_files(listing: Listing, options: ReadOptions) -> tuple[np.ndarray, dict[int, str]]:
    """(BLAKE2b of each file, (N, DIGEST_BYTES) uint8, zeros where unreadable; {picture: why}
    for the files that cannot be read), in threads. All a cached folder needs."""
    n = len(listing.relative)
    digests = np.zeros((n, DIGEST_BYTES), dtype=np.uint8)

    def hash_block(start: int, stop: int) -> dict[int, str]:
        unreadable = {}
        for index in range(start, stop):
            try:
                digests[index] = np.frombuffer(digest_of(read_bytes(listing.full(index), listing.name(index))),
                                               dtype=np.uint8)
            except OSError as exc:  # no permission, a dangling link, not a regular file
                unreadable[index] = reason(exc)
        return unreadable

    return digests, in_threads(hash_block, n, "hashing pictures", options.progress)


def read_headers(listing: Listing, digests: np.ndarray, unreadable: dict[int, str], options: ReadOptions) -> Headers:
    """Each picture's size, mode and orientation from its header (nothing decoded), in threads."""
    n = len(listing.relative)
    headers = Headers(digests=digests, widths=np.zeros(n, dtype=np.int64), heights=np.zeros(n, dtype=np.int64),
                      colour=np.zeros(n, dtype=bool), orientation=np.ones(n, dtype=np.uint8), bad={})

    def header_block(start: int, stop: int) -> dict[int, str]:
        bad = {}
        for index in range(start, stop):
            if index in unreadable:
                continue
            name = listing.name(index)
            try:
                data = read_bytes(listing.full(index), name)
            except OSError as exc:
                bad[index] = reason(exc)
                continue
            if digest_of(data) != digests[index].tobytes():
                raise changed(name)
            try:
                with open_picture(data, name) as image:
                    width, height = image.size
                    colour = is_colour(image)
                    orientation = orientation_of(image)
            except DataError:
                raise
            except Exception as exc:  # a hostile file may make Pillow raise anything
                bad[index] = reason(exc)
                continue
            if width * height > MAX_PICTURE_PIXELS:
                raise too_many_pixels(name, f"{width} x {height}")
            if width == 0 or height == 0:
                bad[index] = f"{width} x {height} pixels"
                continue
            if orientation >= 5:  # stored on its side
                width, height = height, width
            headers.widths[index], headers.heights[index] = width, height
            headers.colour[index] = colour
            headers.orientation[index] = orientation
        return bad

    headers.bad = {**unreadable, **in_threads(header_block, n, "reading headers", options.progress)}
    return headers


def picture_size(listing: Listing, headers: Headers, rows: np.ndarray, image_size: int | None) -> tuple[int, int]:
    """(height, width) of the output: ``image_size`` square, else the one size all pictures share."""
    if image_size is not None:
        return image_size, image_size
    if len(rows) == 0:
        raise DataError(f"{listing.shown}: no picture can be read")
    widths, heights = headers.widths[rows], headers.heights[rows]
    differ = np.flatnonzero((widths != widths[0]) | (heights != heights[0]))
    if len(differ):
        first, other = int(rows[0]), int(rows[differ[0]])
        kinds = len(np.unique(widths * (1 << 32) + heights))
        raise DataError(f"{listing.shown}: pictures of {kinds:,} different sizes, e.g. {listing.relative[first]} is "
                        f"{widths[0]} x {heights[0]} and {listing.relative[other]} is {widths[differ[0]]} x "
                        f"{heights[differ[0]]}; pass --image-size N to resize them all to N x N")
    return int(heights[0]), int(widths[0])


def bad_pictures_error(listing: Listing, bad: dict[int, str]) -> DataError:
    first = sorted(bad)[:3]
    examples = ", ".join(listing.relative[i] for i in first)
    return DataError(f"{listing.shown}: {len(bad):,} picture{plural(len(bad))} cannot be read, e.g. {examples} "
                     f"({listing.relative[first[0]]}: {bad[first[0]]}); fix or remove "
                     f"{'them' if len(bad) > 1 else 'it'}, or pass --skip-bad to leave them out")


# --------------------------------------------------------------------------- decoding


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey as 8 bits ("L"), scaled by the range (Pillow's convert("L")
    clips them: a 16-bit picture would come out nearly white)."""
    values = np.asarray(image, dtype=np.float32)  # 4 bytes a pixel per thread, at most 64 MiB
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257.0  # 65535 -> 255
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0  # floats in [0, 1]
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # (H, W) uint8: mode "L"


def decode_into(row: np.ndarray, path: str, name: str, digest: bytes, orientation: int) -> None:
    """Decode one picture into ``row`` (C, H, W): upright, converted, resized to fit."""
    channels, height, width = row.shape
    data = read_bytes(path, name)
    if digest_of(data) != digest:  # the cache key says these bytes: never cache others under it
        raise changed(name)
    image = as_trained(upright(open_picture(data, name), orientation, width, height), channels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)  # antialiased when reducing
    pixels = np.asarray(image)  # (H, W) or (H, W, 3)
    row[...] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def as_trained(image: Image.Image, channels: int) -> Image.Image:
    """Any mode as "L" (``channels`` 1) or "RGB": 8 bits, alpha dropped. predict makes a
    picture for a model of own data with this too, so it sees what training saw."""
    if image.mode.startswith("I") or image.mode == "F":
        image = eight_bit(image)
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette's transparency would make Pillow warn on convert("L")
    elif image.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, ...
    return image.convert("L" if channels == 1 else "RGB")  # alpha dropped; RGB -> L by ITU-R 601-2 luma


def upright(image: Image.Image, orientation: int, width: int, height: int) -> Image.Image:
    """The decoded picture as EXIF says it is seen (a big JPEG decoded at no less than
    ``width`` x ``height``)."""
    if image.format in ("JPEG", "MPO"):
        # DCT scaling: a big JPEG decodes at 1/2 to 1/8 size directly, never below the output
        image.draft(image.mode, (height, width) if orientation >= 5 else (width, height))
    image.load()
    return image.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else image


def decode_all(listing: Listing, headers: Headers, rows: np.ndarray, images: np.ndarray,
               options: ReadOptions) -> dict[int, str]:
    """Decode picture ``rows[i]`` into ``images[i]`` for all i, in threads; {i: why} for
    those that fail (truncated, corrupt past the header)."""
    def decode_block(start: int, stop: int) -> dict[int, str]:
        bad = {}
        for at in range(start, stop):
            index = int(rows[at])
            try:
                decode_into(images[at], listing.full(index), listing.name(index), headers.digests[index].tobytes(),
                            int(headers.orientation[index]))
            except DataError:
                raise
            except Exception as exc:  # a hostile file may make Pillow raise anything
                bad[at] = reason(exc)
        return bad

    return in_threads(decode_block, len(rows), "decoding pictures", options.progress)


def compact(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows ``keep`` marks, in order, moved down in place: no second copy of the pixels.
    Safe block by block: row m's source is at m or later, so no later source is overwritten."""
    rows = np.flatnonzero(keep)
    step = 16 * BLOCK
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        images[start:start + len(block)] = images[block]
    return images[:len(rows)]


def check_training_classes(listing: Listing, labels: np.ndarray, sizes: np.ndarray) -> None:
    """Every class keeps a training picture, and the test set one picture, once unreadable
    ones are skipped (the split of one-set data is finish()'s to check)."""
    if listing.split_names[0] != "train":
        return
    counts = np.bincount(labels[: sizes[0]], minlength=len(listing.class_names))
    if (empty := np.flatnonzero(counts == 0)).size:
        raise DataError(f"{listing.shown}/train/{listing.class_names[empty[0]]}: no picture left that can be read; "
                        "add pictures, or remove the class from every split")
    if sizes[1] == 0:
        raise DataError(f"{listing.shown}/test: no picture {'left that can be read' if sizes.sum() else 'in it'}; "
                        "add PATH/test/<class>/<pictures>")


# --------------------------------------------------------------------------- threads


def in_threads(work: Callable[[int, int], dict[int, str]], n: int, label: str, progress: bool) -> dict[int, str]:
    """``work(start, stop)`` over [0, n) in blocks of BLOCK on os.cpu_count() threads (Pillow
    and hashlib release the GIL); the union of what the blocks return. The first exception
    stops the rest and is raised."""
    bar = Bar(label, n, progress)
    found: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = {pool.submit(work, start, min(start + BLOCK, n)): min(BLOCK, n - start)
                 for start in range(0, n, BLOCK)}
        try:
            for future in as_completed(sizes):
                found.update(future.result())
                bar.update(sizes[future])
        finally:  # an error or Ctrl-C: the blocks not started never start
            for future in sizes:
                future.cancel()
            bar.close()
    return found


class Bar:
    """``label: done/total (rate/s)`` on one stderr line, where stderr is a terminal."""

    def __init__(self, label: str, total: int, show: bool):
        self.label, self.total, self.done = label, total, 0
        self.show = show and total > 0 and sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.show and (now - self.last >= 0.1 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-6)
            sys.stderr.write(f"\r{self.label}: {self.done:,}/{self.total:,} ({rate:,.0f}/s)")
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
