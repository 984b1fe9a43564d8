"""Download a dataset's four IDX files (or its one archive) into a folder, verified and
atomically; unpack an archive without letting it write outside its folder.

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

- An archive (CIFAR-10's) is verified by its size and SHA-256 as published, the same
  way, then unpacked with ``unpack_archive``: every member is checked before anything
  is written (plain files and folders under the one expected folder; no absolute
  paths, ``..``, links or devices), extracted into a temporary folder and renamed into
  place, so a folder under the real name is always complete.

Standard library only: this runs before anything else works, on machines where
installing one more package may be the very thing that is not possible.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .. import __version__
from .catalog import DEBIAN_DATASETS, ArchiveSpec, DatasetSpec, FileSpec
from ..errors import DataError
from ..store.files import fsync_dir
from .idx import decompressed_bytes, parse_idx

CHUNK_BYTES = 1 << 20  # 1 MiB reads: few syscalls, little memory


class TooLong(Exception):
    """A mirror sent more bytes than the file it should be has."""


# Everything a mirror (or the way to it) can do wrong; each just means "try the next one".
# URLError/HTTPError, timeouts and ConnectionError are all OSError; HTTPException covers
# malformed responses; ValueError is urllib's answer to a malformed mirror URL.
_MIRROR_ERRORS = (OSError, http.client.HTTPException, ValueError, TooLong)
MAX_MEMBERS = 1000  # an archive of a dataset lenet knows holds a handful of files
MAX_UNPACKED_BYTES = 1 << 30  # CIFAR-10's binary batches are 185 MB: a bomb stops long before the disk fills


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
    mirrors, progress = _prepare(spec, dest, mirrors, progress)
    apt = (f"; or `apt-get install dataset-fashion-mnist`, which installs the files into "
           f"{DEBIAN_DATASETS}/fashion-mnist, a place lenet searches" if spec.name == "fashion-mnist" else "")
    advice = (f"or fetch the four files elsewhere and point --data-dir / LENET_DATA_DIR at a folder "
              f"holding a '{spec.name}/' subfolder with them{apt}.")
    for file_spec in spec.files.values():
        target = dest / file_spec.filename
        if target.exists():
            problem = _problem_with(target, file_spec)
            if problem is None:
                continue
            _say(progress, f"replacing {target} ({problem})\n")
        _fetch(spec.name, file_spec.filename, target, mirrors, timeout, progress,
               partial(_problem_with, file_spec=file_spec), advice)
    return dest


def download_archive(
    spec: DatasetSpec,
    dest: Path,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Make ``dest`` hold ``spec``'s archive (CIFAR-10's cifar-10-binary.tar.gz), verified
    by its published size and SHA-256; the same mirrors, atomicity and errors as
    ``download_dataset``. Returns the archive's path; ``unpack_archive`` unpacks it."""
    archive = spec.archive
    if archive is None:
        raise DataError(f"{spec.name} comes as IDX files, not an archive; use download_dataset")
    dest = Path(dest)
    mirrors, progress = _prepare(spec, dest, mirrors, progress)
    target = dest / archive.filename
    if target.exists():
        problem = archive_problem(target, archive)
        if problem is None:
            return target
        _say(progress, f"replacing {target} ({problem})\n")
    advice = (f"or fetch {archive.filename} elsewhere (e.g. {spec.mirrors[0] + archive.filename} in a browser) "
              f"and put it in a '{spec.name}/' subfolder of a folder that --data-dir / LENET_DATA_DIR points at: "
              "lenet verifies and unpacks it there.")
    _fetch(spec.name, archive.filename, target, mirrors, timeout, progress,
           partial(archive_problem, archive=archive), advice, max_bytes=archive.size)
    return target


def _prepare(spec: DatasetSpec, dest: Path, mirrors: Sequence[str] | None,
             progress: bool | None) -> tuple[tuple[str, ...], bool]:
    """(mirrors, each ending in "/"; whether to print progress), with ``dest`` made."""
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
    return mirrors, progress


def _fetch(name: str, filename: str, target: Path, mirrors: tuple[str, ...], timeout: float,
           progress: bool, problem_with: Callable[[Path], str | None], advice: str,
           max_bytes: int | None = None) -> None:
    """Put a verified copy of one file at ``target``, trying each mirror in order;
    ``problem_with(path)`` says why a download is not the file (None: it is)."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror + filename
        _say(progress, f"downloading {filename} from {url} ... ")
        try:
            # Unique name: two processes filling the same cache must not share a .part file.
            fd, part_name = tempfile.mkstemp(prefix=filename + ".", suffix=".part", dir=target.parent)
        except OSError as exc:
            raise DataError(f"cannot write into {target.parent} ({exc.strerror or exc})") from None
        part = Path(part_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    n_bytes = _stream(url, out, timeout, max_bytes)
                except _MIRROR_ERRORS as exc:
                    problem = _describe(exc)
                else:
                    problem = None
                    # Durable before it gets the real name: a crash after the rename must
                    # not leave a real name pointing at data still in the page cache.
                    out.flush()
                    os.fsync(out.fileno())
            if problem is None:
                problem = problem_with(part)
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

    raise DataError(
        f"could not download {filename} of {name} into {target.parent}; tried:\n"
        + "\n".join(failures) + "\n"
        "What to do: check the network connection (and any proxy) and run the command again; " + advice
    )


def _stream(url: str, out: BinaryIO, timeout: float, max_bytes: int | None = None) -> int:
    """Copy the body at ``url`` into ``out``; the number of bytes written. More than
    ``max_bytes`` is refused as it arrives, not after filling the disk."""
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
            if max_bytes is not None and n_bytes > max_bytes:
                raise TooLong(f"sent over {max_bytes:,} bytes, more than the file has")
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
    if isinstance(exc, TooLong):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _say(progress: bool, text: str) -> None:
    if progress:
        sys.stderr.write(text)
        sys.stderr.flush()


def archive_problem(path: Path, archive: ArchiveSpec) -> str | None:
    """Why ``path`` is not the published archive (size, then SHA-256); None when it is."""
    try:
        size = path.stat().st_size
        if size != archive.size:
            return f"size is {size} bytes, expected {archive.size}"
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if digest.hexdigest() != archive.sha256:
        return (f"sha256 is {digest.hexdigest()}, expected {archive.sha256} "
                "(the mirror serves a different or damaged file)")
    return None


def unpack_archive(archive_path: Path, dest: Path, folder: str = "cifar-10-batches-bin") -> Path:
    """Unpack a .tar.gz whose content is one ``folder/`` into ``dest``; returns ``dest/folder``.

    Every member is checked before anything is written: plain files and folders under
    ``folder/`` only (no absolute paths, ``..``, links, devices), at most MAX_MEMBERS of
    them and MAX_UNPACKED_BYTES in all; tarfile's "data" filter checks again as it
    extracts. The files go into a temporary folder in ``dest``, are fsynced, and the
    folder is renamed to ``dest/folder``, replacing what was there.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    final = dest / folder
    try:
        tar = tarfile.open(archive_path, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive_path}: not a readable .tar.gz ({exc}); delete it and download it again") from None
    with tar:
        members = []
        total = 0
        try:
            for member in tar:
                problem = _member_problem(member, folder)
                if problem is None and len(members) >= MAX_MEMBERS:
                    problem = f"is past the {MAX_MEMBERS} files this archive should hold"
                total += member.size
                if problem is None and total > MAX_UNPACKED_BYTES:
                    problem = f"takes the content past {MAX_UNPACKED_BYTES:,} bytes"
                if problem:
                    raise DataError(f"{archive_path}: refused: member {member.name!r} {problem}; nothing was "
                                    "unpacked (this is not the dataset's archive: delete it)")
                members.append(member)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive_path}: damaged archive ({exc}); delete it and download it again") from None
        if not any(m.isfile() for m in members):
            raise DataError(f"{archive_path}: holds no files under {folder}/; it is not the dataset's archive")
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".unpacking", dir=dest))
        except OSError as exc:
            raise DataError(f"cannot unpack into {dest} ({exc.strerror or exc}); put the archive in a "
                            "folder you can write to") from None
        try:
            # filter="data" (Python 3.12, and 3.8.17+ etc.) refuses what the checks above refuse, again
            safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(scratch, members=members, **safety)
            for file in (scratch / folder).rglob("*"):
                if file.is_file():  # durable before the folder gets its real name (see _fetch)
                    with open(file, "rb") as handle:
                        os.fsync(handle.fileno())
            if final.exists():  # an incomplete or damaged copy: moved aside, deleted below
                os.replace(final, scratch / "replaced")
            os.replace(scratch / folder, final)
            fsync_dir(dest)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot unpack {archive_path} into {dest} ({exc})") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def _member_problem(member: tarfile.TarInfo, folder: str) -> str | None:
    """Why an archive member may not be unpacked; None when it may."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in parts or "\\" in name:
        return "climbs out of its folder ('..' or a backslash)"
    if not parts or parts[0] != folder:
        return f"lies outside {folder}/"
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r}); only plain files are unpacked"
    if not (member.isfile() or member.isdir()):
        return "is a device, pipe or other special file; only plain files are unpacked"
    return None
