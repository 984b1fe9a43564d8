"""Download a dataset's four IDX files into a folder, verified and atomically.

Why it is written this way:

- Verified by the SHA-256 of the *decompressed* bytes (and their size), not by the
  authors' published .gz MD5: mirrors and Debian recompress the files, so the .gz
  bytes differ while the content is identical (../shared/datasets/README.md).
  Each file is also parsed as IDX, so nothing structurally broken gets a real name.
- Atomic: a file streams into a uniquely named ``*.part`` file in the destination
  folder and is renamed to its real name (``os.replace``) only after it verified
  and was fsynced. ``locate()`` trusts any file under a real name, so a kill, a
  full disk or a bad mirror must never leave a half file there.
- One bad answer (network error, HTTP error, a cut-off transfer, truncated or
  corrupt gzip, different content) only moves on to the next mirror; when every
  mirror fails, one ``DataError`` lists each URL with its reason and what to do.

Standard library only: this runs before anything else works, on machines where
installing one more package may be the very thing that is not possible.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from .. import __version__
from .catalog import DEBIAN_DATASETS, DatasetSpec, FileSpec
from ..errors import DataError
from ..store.files import fsync_dir
from .idx import decompressed_bytes, parse_idx

CHUNK_BYTES = 1 << 20  # 1 MiB reads: few syscalls, little memory
# Everything a mirror (or the way to it) can do wrong; each just means "try the next one".
# URLError/HTTPError, timeouts and ConnectionError are all OSError; HTTPException covers
# malformed responses; ValueError is urllib's answer to a malformed mirror URL.
_MIRROR_ERRORS = (OSError, http.client.HTTPException, ValueError)


def download_dataset(
    spec: DatasetSpec,
    dest: Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Make ``dest`` hold the four verified files of ``spec`` (by their .gz names).

    Files already in ``dest`` that verify are kept; others are fetched from each of
    ``mirrors`` (default ``spec.mirrors``) in turn. ``timeout`` is in seconds per
    network operation; ``progress=None`` prints progress only when stderr is a TTY.
    Returns ``dest``; raises ``DataError`` when a file cannot be had from any mirror.
    """
    dest = Path(dest)
    if mirrors is None:
        mirrors = spec.mirrors
    if isinstance(mirrors, str):  # a lone URL would otherwise be iterated by character
        mirrors = (mirrors,)
    mirrors = tuple(m if m.endswith("/") else m + "/" for m in mirrors)
    if not mirrors:
        raise DataError(f"no download mirrors given for {spec.name}")
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()  # None under pythonw
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest} ({exc.strerror or exc})") from None

    for file_spec in spec.files.values():
        target = dest / file_spec.filename
        if target.exists():
            problem = _problem_with(target, file_spec)
            if problem is None:
                continue
            _say(progress, f"replacing {target} ({problem})\n")
        _fetch(spec, file_spec, target, mirrors, timeout, progress)
    return dest


def _fetch(spec: DatasetSpec, file_spec: FileSpec, target: Path, mirrors: tuple[str, ...],
           timeout: float, progress: bool) -> None:
    """Put a verified copy of one file at ``target``, trying each mirror in order."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror + file_spec.filename
        _say(progress, f"downloading {file_spec.filename} from {url} ... ")
        try:
            # Unique name: two processes filling the same cache must not share a .part file.
            fd, part_name = tempfile.mkstemp(prefix=file_spec.filename + ".", suffix=".part",
                                             dir=target.parent)
        except OSError as exc:
            raise DataError(f"cannot write into {target.parent} ({exc.strerror or exc})") from None
        part = Path(part_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    n_bytes = _stream(url, out, timeout)
                except _MIRROR_ERRORS as exc:
                    problem = _describe(exc)
                else:
                    problem = None
                    # Durable before it gets the real name: a crash after the rename must
                    # not leave a real name pointing at data still in the page cache.
                    out.flush()
                    os.fsync(out.fileno())
            if problem is None:
                problem = _problem_with(part, file_spec)
            if problem is None:
                os.replace(part, target)
                fsync_dir(target.parent)
                _say(progress, f"{n_bytes / 1e6:.1f} MB, verified\n")
                return
        except OSError as exc:  # only local I/O gets here: network errors are caught above
            raise DataError(f"cannot write {target} ({exc.strerror or exc})") from None
        finally:
            part.unlink(missing_ok=True)
        failures.append(f"  {url}: {problem}")
        _say(progress, f"failed: {problem}\n")

    apt = (f"; or `apt-get install dataset-fashion-mnist`, which installs the files into "
           f"{DEBIAN_DATASETS}/fashion-mnist, a place lenet searches" if spec.name == "fashion-mnist" else "")
    raise DataError(
        f"could not download {file_spec.filename} of {spec.name} into {target.parent}; tried:\n"
        + "\n".join(failures) + "\n"
        "What to do: check the network connection (and any proxy) and run the command again; "
        f"or fetch the four files elsewhere and point --data-dir / LENET_DATA_DIR at a folder "
        f"holding a '{spec.name}/' subfolder with them{apt}."
    )


def _stream(url: str, out: BinaryIO, timeout: float) -> int:
    """Copy the body at ``url`` into ``out``; the number of bytes written."""
    request = urllib.request.Request(url, headers={"User-Agent": f"lenet/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        expected = response.headers.get("Content-Length")
        n_bytes = 0
        while chunk := response.read(CHUNK_BYTES):
            try:
                out.write(chunk)
            except OSError as exc:  # a local failure (disk full): no other mirror will help
                raise DataError(f"cannot write {out.name} ({exc.strerror or exc})") from None
            n_bytes += len(chunk)
    # http.client ends a body that stops early without an error when read in chunks;
    # saying so beats the "truncated gzip" that verification would report instead.
    if expected is not None and expected.isdigit() and n_bytes != int(expected):
        raise http.client.IncompleteRead(b"", int(expected) - n_bytes)
    return n_bytes


def _problem_with(path: Path, file_spec: FileSpec) -> str | None:
    """Why ``path`` is not the file ``file_spec`` describes; None when it is."""
    try:
        data = decompressed_bytes(path, file_spec.size)
    except DataError as exc:
        # Drop the "<path>: " prefix (for a .part file it names a temporary) and the
        # "delete it and fetch it again" advice (we do that ourselves).
        return str(exc).removeprefix(f"{path}: ").split(";")[0]
    if len(data) != file_spec.size:
        return f"decompressed size is {len(data)} bytes, expected {file_spec.size}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != file_spec.sha256:
        return (f"sha256 of the decompressed content is {digest}, expected {file_spec.sha256} "
                "(the mirror serves a different or damaged file)")
    try:
        parse_idx(data, source=file_spec.filename)
    except DataError as exc:
        return str(exc)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()  # it holds the response's socket
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"transfer cut off ({exc.expected} bytes missing)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _say(progress: bool, text: str) -> None:
    if progress:
        sys.stderr.write(text)
        sys.stderr.flush()
