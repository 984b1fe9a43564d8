"""IDX reading and writing: round trips, every error path, and fuzzing.

Every way a file can be wrong must end in a DataError naming the file, never a
numpy, struct or zlib traceback: the CLI turns DataError into a message.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lenet.data.idx
from lenet.errors import DataError
from lenet.data.idx import (
    GZIP_MAGIC,
    decompressed_bytes,
    parse_idx,
    read_idx,
    sha256_of_decompressed,
    write_idx,
)

TYPE_CODES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # -> bytes per item


def header(shape: tuple[int, ...], type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["images.gz", "images"])
@pytest.mark.parametrize("shape", [(5, 28, 28), (7,), (2, 3, 4, 5), (0, 28, 28)])
def test_round_trip(tmp_path, name, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = write_idx(tmp_path / name, array)

    assert (path.read_bytes()[:2] == GZIP_MAGIC) == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    assert np.array_equal(back, array)


def test_compress_flag_overrides_the_name(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    assert write_idx(tmp_path / "a", array, compress=True).read_bytes()[:2] == GZIP_MAGIC
    assert write_idx(tmp_path / "b.gz", array, compress=False).read_bytes()[:4] == b"\x00\x00\x08\x01"
    assert np.array_equal(read_idx(tmp_path / "a"), read_idx(tmp_path / "b.gz"))


def test_sha256_is_of_the_content_not_the_gzip_bytes(tmp_path):
    array = np.arange(1000, dtype=np.uint8) % 7
    fast = tmp_path / "fast.gz"
    fast.write_bytes(gzip.compress(header((1000,)) + array.tobytes(), compresslevel=1))
    best = write_idx(tmp_path / "best.gz", array)
    raw = write_idx(tmp_path / "raw", array)
    assert fast.read_bytes() != best.read_bytes()
    assert sha256_of_decompressed(fast) == sha256_of_decompressed(best) == sha256_of_decompressed(raw)


@pytest.mark.parametrize("type_code, dtype", [(0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"),
                                              (0x0D, ">f4"), (0x0E, ">f8")])
def test_wider_types_are_read_big_endian_into_native_order(type_code, dtype):
    values = np.array([-2, 0, 3], dtype=dtype)
    array = parse_idx(header((3,), type_code) + values.tobytes())
    assert array.dtype.isnative
    assert array.tolist() == [-2, 0, 3]


# --------------------------------------------------------------------------- error paths


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gz"
    with pytest.raises(DataError, match="not found") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unreadable_path(tmp_path):
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(tmp_path)  # a folder
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_gzip_members_and_chunk_edges(tmp_path, monkeypatch, chunk):
    """Concatenated members (gzip allows them) read as one content, wherever the reads
    cut the stream: inside a header, a member's data or its trailer."""
    monkeypatch.setattr(lenet.data.idx, "CHUNK", chunk)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    data = header(images.shape) + images.tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    cut = [0, 3, 5000, len(data)]
    path.write_bytes(b"".join(gzip.compress(data[a:b], mtime=0) for a, b in zip(cut, cut[1:])))
    assert decompressed_bytes(path) == gzip.decompress(path.read_bytes()) == data
    array = read_idx(path)
    np.testing.assert_array_equal(array, images)
    assert array.flags.writeable  # parsed in place: no copy before it becomes a tensor


def test_data_after_a_gzip_member_that_is_not_one(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(header((3,)) + b"abc") + b"trailing garbage")
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_the_size_bound_holds_inside_one_read(tmp_path):
    """A 1 MB read can expand to 1 GB: the bound stops the expansion itself."""
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes(10_000_000)))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match=r"decompresses to over 1,000 bytes"):
        decompressed_bytes(path, max_bytes=1000)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.arange(3000, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path):
    rng = np.random.default_rng(0)
    path = write_idx(tmp_path / "x.gz", rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 32] = bytes(b ^ 0xFF for b in raw[middle : middle + 32])
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_crc_mismatch(tmp_path):
    """Same length, valid deflate stream, wrong CRC in the trailer."""
    path = write_idx(tmp_path / "x.gz", np.arange(100, dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt gzip") as info:
        decompressed_bytes(path)
    assert str(path) in str(info.value)


BROKEN = {
    "empty": (b"", "too short"),
    "shorter than a header": (b"\x00\x00\x08", "too short"),
    "wrong magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    "text file": (b"<html>404 Not Found</html>", "not an IDX file"),
    "unknown type code": (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
    "zero dimensions": (b"\x00\x00\x08\x00", "0 dimensions"),
    "too many dimensions": (header((1, 1, 1, 1, 1)) + b"\x00", "5 dimensions"),
    "header truncated": (header((2, 2, 2))[:-2], "header truncated"),
    "payload shorter": (header((2, 3)) + b"\x00" * 5, "holds 5 data bytes"),
    "payload longer": (header((2, 3)) + b"\x00" * 7, "holds 7 data bytes"),
    "payload shorter, wide type": (header((2,), 0x0C) + b"\x00" * 7, "holds 7 data bytes"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_names_itself(tmp_path, case, compress):
    data, expected = BROKEN[case]
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match=expected) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: ")


def test_parse_idx_names_its_source():
    with pytest.raises(DataError, match="^somewhere.gz: "):
        parse_idx(b"\x00\x00\x08\x01", source="somewhere.gz")


def test_header_whose_size_overflows_int64():
    # 65536**4 == 2**64, which wraps to 0 in int64 and "matches" the empty payload.
    with pytest.raises(DataError, match="header says shape"):
        parse_idx(header((65536,) * 4))


def test_empty_header_too_big_for_numpy():
    # Zero bytes of data, correctly, but numpy cannot describe a (0, 2**32-1, 2**32-1) array.
    with pytest.raises(DataError, match="too large"):
        parse_idx(header((0, 2**32 - 1, 2**32 - 1)))


# --------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=200, deadline=None,
                # The autouse isolation fixture is function-scoped but holds no per-example state.
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_header_agrees(data: bytes, array: np.ndarray) -> None:
    """A parsed array must be exactly what its header announces, nothing more or less."""
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    assert array.shape == shape
    assert array.dtype.isnative
    assert array.nbytes == len(data) - 4 - 4 * ndim


def read_or_data_error(read, data: bytes, source: str) -> None:
    """``read()`` (which reads ``data`` from ``source``) raises DataError or agrees with the header."""
    try:
        array = read()
    except DataError as exc:
        assert str(exc).startswith(f"{source}: ")
    else:
        check_header_agrees(data, array)


def parse_or_data_error(data: bytes) -> None:
    read_or_data_error(lambda: parse_idx(data, source="fuzz"), data, "fuzz")


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data):
    parse_or_data_error(data)


# Dimensions mostly small (so the payload sometimes fits) plus some near 2**32.
dims = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1))


@st.composite
def idx_like(draw) -> bytes:
    """A plausible header with a payload of exactly, about, or nothing like the right size."""
    type_code = draw(st.sampled_from(sorted(TYPE_CODES)))
    shape = tuple(draw(st.lists(dims, min_size=1, max_size=4)))
    right = int(np.prod(shape, dtype=object)) * TYPE_CODES[type_code]
    size = draw(st.one_of(st.just(right), st.integers(max(0, right - 3), right + 3),
                          st.integers(0, 64)))
    payload = draw(st.binary(min_size=min(size, 4096), max_size=min(size, 4096)))
    return header(shape, type_code) + payload


@FUZZ
@given(idx_like())
def test_fuzz_valid_looking_header(data):
    parse_or_data_error(data)


@FUZZ
@given(st.one_of(idx_like(), st.binary(max_size=200)), st.integers(0, 9))
def test_fuzz_gzip_of_arbitrary_bytes(data, level):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.gz"
        path.write_bytes(gzip.compress(data, compresslevel=level))
        read_or_data_error(lambda: read_idx(path), data, str(path))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_behind_gzip_magic(tail):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.gz"
        path.write_bytes(GZIP_MAGIC + tail)
        try:
            read_idx(path)
        except DataError as exc:
            assert str(exc).startswith(f"{path}: ")


@FUZZ
@given(idx_like(), st.data())
def test_fuzz_damaged_gzip_of_idx(data, draw):
    """Truncate or flip a byte of a real gzip stream: DataError or the exact payload."""
    gz = bytearray(gzip.compress(data))
    if draw.draw(st.booleans(), label="truncate"):
        gz = gz[: draw.draw(st.integers(0, len(gz) - 1), label="keep")]
    else:
        at = draw.draw(st.integers(0, len(gz) - 1), label="at")
        gz[at] ^= draw.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.gz"
        path.write_bytes(bytes(gz))
        # The gzip CRC makes an undetected change to the content vanishingly unlikely;
        # header-only flips (mtime, OS byte) decompress to the same bytes.
        read_or_data_error(lambda: read_idx(path), data, str(path))
