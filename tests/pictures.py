"""Pictures made by the tests: a drawn digit, encoded files, a PNG that only claims a size."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw


def seven(size: int = 120, ink: int = 255, paper: int = 0, width: int = 12, offset: tuple[int, int] = (0, 0),
          canvas: tuple[int, int] | None = None) -> Image.Image:
    """A "7" drawn with a thick pen: ink on paper, in a canvas (W, H), shifted by offset."""
    w, h = canvas or (size, size)
    image = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(image)
    ox, oy = offset
    s = size
    draw.line([(ox + 0.25 * s, oy + 0.2 * s), (ox + 0.75 * s, oy + 0.2 * s), (ox + 0.45 * s, oy + 0.85 * s)],
              fill=ink, width=width, joint="curve")
    return image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes (IHDR, an empty IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
