"""The decoded-pixel cache of image folders: a second run on the same pictures reads one
file instead of decoding every picture again.

An entry is named by a hash of everything that decides its pixels: this format's version,
Pillow's, the read options that change pixels, the class names, and every picture's
relative path, label and content hash (BLAKE2b of its bytes). Any changed, added, removed
or renamed file makes a new name, so an entry can never be stale; nothing is keyed by
modification times.

Each entry is one uncompressed ``<key>.npz`` (images, labels, and a JSON of class names,
split sizes and notes), written to a temporary file beside it and renamed into place: a
killed run leaves no half entry that is trusted. An entry that does not load or does not
agree with its JSON is deleted and rewritten, never an error. The folder keeps the
KEEP_ENTRIES most recently used entries within KEEP_BYTES; delete it to clear the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

FORMAT = "lenet-decoded-1"  # bump when the decoding changes what a picture's pixels are
KEEP_ENTRIES = 8  # most recently used entries kept; older ones are deleted after each write
KEEP_BYTES = 32 << 30  # and at most this much together (the newest entry is always kept)
FREE_MARGIN = 1 << 30  # an entry is not written if it would leave less free disk than this
STALE_TEMP_SECONDS = 24 * 3600  # a temporary file this old belongs to a run that was killed


ENVIRONMENT = "LENET_DECODE_CACHE"  # 0 turns the cache off for every read (ReadOptions.cache's default)


def wanted() -> bool:
    """Whether reads use the cache unless told: LENET_DECODE_CACHE (0 or 1), else yes."""
    value = os.environ.get(ENVIRONMENT, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def lenet_cache() -> Path:
    """``$XDG_CACHE_HOME/lenet`` (``~/.cache/lenet`` by default): downloads and decoded pictures."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lenet"


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lenet/decoded`` (``~/.cache/lenet/decoded`` by default)."""
    return lenet_cache() / "decoded"


def content_key(settings: dict, class_names: Sequence[str], pictures: Iterable[tuple[str, int, bytes]]) -> str:
    """The entry name for these pictures, each (relative path, label, content hash), read
    with ``settings`` (the options that change pixels)."""
    from PIL import __version__ as pillow_version  # decoders change between releases

    digest = hashlib.blake2b(digest_size=20)
    header = {"format": FORMAT, "pillow": pillow_version, "settings": settings, "classes": list(class_names)}
    digest.update(json.dumps(header, sort_keys=True).encode("utf-8", "surrogateescape"))
    for relative, label, content in pictures:
        # lengths first: no two different lists of records hash the same bytes
        name = os.fsencode(relative)
        digest.update(b"%d:%d:" % (len(name), label) + name + content)
    return digest.hexdigest()


def entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.npz"


def load(key: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(images, labels, meta) of the entry ``key``; None if there is none, or it is damaged
    (then it is deleted, so the caller's store() rewrites it)."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as entry:
            meta = json.loads(bytes(entry["meta"]).decode("utf-8", "surrogateescape"))
            images = entry["images"]
            labels = entry["labels"]
        check_entry(images, labels, meta)
    except Exception:  # any damage at all: a cache is never a reason to fail
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)  # its mtime says when it was last used, for the eviction
    except OSError:
        pass
    return images, labels, meta


def check_entry(images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    """ValueError unless the arrays are what the JSON says they are."""
    sizes = [int(count) for _, count in meta["splits"]]
    classes = meta["class_names"]
    if (images.dtype != np.uint8 or images.ndim != 4 or list(images.shape) != meta["shape"]
            or labels.dtype != np.int64 or labels.shape != (images.shape[0],) or sum(sizes) != len(labels)
            or not all(isinstance(name, str) for name in classes)
            or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)))):
        raise ValueError("entry does not match its description")


def store(key: str, images: np.ndarray, labels: np.ndarray, meta: dict) -> str | None:
    """Write the entry ``key``; None once written, else why not (a full disk or a read-only
    home only costs the next run its decoding)."""
    folder = cache_dir()
    meta = {**meta, "shape": list(images.shape)}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8", "surrogateescape"), dtype=np.uint8)
    temp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        needed = images.nbytes + labels.nbytes + (1 << 20)
        free = shutil.disk_usage(folder).free
        if free < needed + FREE_MARGIN:
            return f"{needed / 2**20:,.0f} MiB needed, {free / 2**20:,.0f} MiB free"
        handle, temp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        with os.fdopen(handle, "wb") as out:
            np.savez(out, images=images, labels=labels, meta=blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, entry_path(key))
        temp = None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
    evict(keep=entry_path(key))
    return None


def evict(keep: Path) -> None:
    """Delete all but the KEEP_ENTRIES most recently used entries within KEEP_BYTES (never
    ``keep``), and temporary files left by killed runs."""
    now = time.time()
    entries = []
    try:
        for item in os.scandir(cache_dir()):
            stat = item.stat(follow_symlinks=False)
            if item.name.endswith(".tmp"):
                if now - stat.st_mtime > STALE_TEMP_SECONDS:
                    Path(item.path).unlink(missing_ok=True)
            elif item.name.endswith(".npz"):
                entries.append((Path(item.path) != keep, -stat.st_mtime, stat.st_size, item.path))
    except OSError:
        return
    entries.sort()  # ``keep`` first, then the most recently used
    total = 0
    for count, (_, _, size, path) in enumerate(entries):
        total += size
        if count > 0 and (count >= KEEP_ENTRIES or total > KEEP_BYTES):
            Path(path).unlink(missing_ok=True)
