"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

Format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): two zero bytes, a type
code (0x08 = unsigned byte, the only one these datasets use), the number of
dimensions, then one big-endian uint32 per dimension, then the data, row-major.
Files may be gzip-compressed; we detect that by the gzip magic, not the name.
Any problem raises ``DataError`` naming the file: never a numpy or zlib traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
# type code -> numpy dtype (big-endian where it matters), from the format spec
_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 4  # images are 3-D, labels 1-D; more is not an IDX file we know


CHUNK = 1 << 20  # 1 MiB: bounded reads of uncompressed files
# Compressed reads are larger: each hands the GIL to the thread that imports the plotting
# module meanwhile (Recorder.plotting_imported_meanwhile) and back, so fewer reads decode
# sooner. The size bound is checked on the output, so it does not depend on this.
GZIP_CHUNK = 8 << 20


def decompressed_bytes(path: Path, max_bytes: int | None = None) -> bytearray:
    """The file's bytes, gunzipped when it is gzip; DataError if unreadable. Writable:
    arrays parsed from them need no copy to become tensors.

    ``max_bytes``: the most the (decompressed) content may hold, checked while reading:
    a small .gz that expands to gigabytes is refused after ``max_bytes``, not held whole.
    """
    path = Path(path)
    limit = max_bytes if max_bytes is not None else 1 << 40
    try:
        if not path.is_file():
            raise DataError(f"{path}: file not found" if not path.exists() else
                            f"{path}: cannot read: not a regular file (a folder, device or pipe)")
        with open(path, "rb") as handle:
            head = handle.read(2)
            if head != GZIP_MAGIC:
                data = bytearray(head)
                while chunk := handle.read(CHUNK):
                    data.extend(chunk)
                    if len(data) > limit:
                        raise DataError(f"{path}: over {limit:,} bytes, more than this file can hold; "
                                        "it is not the dataset file it is named after")
                return data
            handle.seek(0)
            return _gunzip_bounded(handle, limit, path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


# wbits for zlib: a gzip member, whose header and trailer (CRC-32 and length of the
# content) zlib checks itself
GZIP_WBITS = 16 + zlib.MAX_WBITS
# zlib's words for a failed trailer check, and for what follows a member that is no member
ZLIB_REASONS = {
    "incorrect data check": "CRC check failed: the content is not what was compressed",
    "incorrect length check": "length check failed: the content is not what was compressed",
    "incorrect header check": "not a gzip member where one should start",
}


def _gunzip_bounded(handle, limit: int, path: Path) -> bytearray:
    """The gzip file's content, of one member or several (gzip allows concatenating
    them). zlib directly, not gzip.GzipFile, which adds 1 MiB reads, a CRC in Python and
    copies of their bytes; the content comes back writable, so no copy is needed for torch."""
    pieces: list[bytes] = []
    size = 0
    inflate = zlib.decompressobj(GZIP_WBITS)
    try:
        while chunk := handle.read(GZIP_CHUNK):
            while chunk:
                if inflate.eof:  # a member ended: what follows must be another member
                    inflate = zlib.decompressobj(GZIP_WBITS)
                piece = inflate.decompress(chunk, limit + 1 - size)
                pieces.append(piece)
                size += len(piece)
                if size > limit:
                    raise DataError(f"{path}: decompresses to over {limit:,} bytes, more than this file can "
                                    "hold; it is not the dataset file it is named after (delete it)")
                chunk = inflate.unconsumed_tail or inflate.unused_data
    except zlib.error as exc:
        reason = str(exc).split(": ", 1)[-1]  # after "Error -3 while decompressing data"
        reason = ZLIB_REASONS.get(reason, reason)
        raise DataError(f"{path}: corrupt gzip data ({reason}); delete it and fetch it again") from None
    if not inflate.eof:
        raise DataError(
            f"{path}: truncated gzip file (the download was probably cut off); "
            "delete it and fetch it again"
        )
    return bytearray().join(pieces)


def parse_idx(data: bytes | bytearray, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload size; a
    view of ``data`` where the type needs no conversion (writable if ``data`` is)."""
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes is too short for an IDX header (needs 4)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _TYPES:
        raise DataError(
            f"{source}: not an IDX file (magic number {data[:4].hex()}; "
            "expected 0000 followed by a type code such as 08 and the number of dimensions)"
        )
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{source}: IDX header says {ndim} dimensions; expected 1 to {MAX_DIMS}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{source}: header truncated ({len(data)} bytes, needs {header_size})")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: 4 dims of 2**32 overflow int64
    payload = len(data) - header_size
    if payload != expected:
        raise DataError(
            f"{source}: header says shape {tuple(shape)} ({expected} data bytes) "
            f"but the file holds {payload} data bytes; the file is truncated or corrupt"
        )
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    except ValueError:  # e.g. (0, 2**32-1, 2**32-1): no data, yet too big a shape for numpy
        raise DataError(f"{source}: IDX header shape {tuple(shape)} is too large") from None
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path, max_bytes: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip or raw), of at most ``max_bytes`` decompressed."""
    return parse_idx(decompressed_bytes(path, max_bytes), source=str(path))


def sha256_of_decompressed(path: Path, max_bytes: int | None = None) -> str:
    """SHA-256 of the file's content after gunzip: independent of gzip settings."""
    return hashlib.sha256(decompressed_bytes(path, max_bytes)).hexdigest()


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write an uint8 array as IDX; gzip when the name ends in .gz (or ``compress``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
