"""Files that are never torn: every write goes to a temporary name, is flushed,
fsynced and renamed, so a kill at any moment leaves the old version or the new one.

Standard library only: the downloader uses it before anything else works.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import RunError

# mkstemp creates 0600 files; run files should get what open() gives (0666 less the
# umask), or a run directory cannot be shared. The umask can only be read by setting it.
UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        # Inside the try: a full disk or a read-only folder can fail the create too.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            try:
                os.fchmod(handle.fileno(), 0o666 & ~UMASK)
            except OSError:
                pass  # a filesystem without Unix modes: the file is still written
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise RunError(f"cannot write {path}: {exc.strerror or exc}; files saved before are intact") from None
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); best effort where that is impossible."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A small JSON file of a run (status, eval) or {} when absent or unreadable:
    these files describe a run, and a run without them is still a run."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
