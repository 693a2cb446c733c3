"""PNG encoding fast enough for tens of megapixels per output file (``tools.outputs``).

Rows get PNG's Sub filter in numpy and are deflated in bands of rows, each band its own flushed
deflate segment (the way pigz splits a stream), so the segments of a base image are computed once
and reused by every image that differs from it in a few rows only: an object's overlay re-encodes
the rows its mask touches, a mask PNG the rows of its mask. Deflate and the chunks' CRC-32 are
ISA-L's (``isal``, about 4x zlib's speed at level 1, 10x its CRC) when installed, else zlib's: the
same file format either way.
"""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Callable

import numpy as np

try:
    from isal import isal_zlib as _deflate
except ImportError:  # the format is the same; only slower
    _deflate = zlib

DEFLATE = "isal" if _deflate is not zlib else "zlib"
SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary
_FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block: ends the deflate stream
_SUB = 1  # PNG filter type: each byte minus the byte one pixel to its left
_BAND_BYTES = 1 << 20  # rows per band: about 1 MiB of pixels (fits in cache)
_ADLER_BASE = 65521

#: ``edit(block, top)``: change ``block`` (a copy of the base rows from row ``top`` on) in place.
Edit = Callable[[np.ndarray, int], None]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _deflate.crc32(data, _deflate.crc32(kind)))


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """Adler-32 of ``a + b`` from those of ``a`` and ``b`` (``len2`` = len(b)), as zlib's adler32_combine."""
    rem = len2 % _ADLER_BASE
    s1 = adler1 & 0xFFFF
    s2 = (rem * s1) % _ADLER_BASE
    s1 = (s1 + (adler2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    s2 = (s2 + (adler1 >> 16) + (adler2 >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return s1 | (s2 << 16)


def sub_filtered(rows: np.ndarray) -> np.ndarray:
    """``(n, W)`` or ``(n, W, C)`` uint8 rows as PNG scanlines with the Sub filter: ``(n, 1 + W*C)``."""
    n = rows.shape[0]
    bpp = rows.shape[2] if rows.ndim == 3 else 1
    flat = rows.reshape(n, -1)
    out = np.empty((n, 1 + flat.shape[1]), np.uint8)
    out[:, 0] = _SUB
    out[:, 1 : 1 + bpp] = flat[:, :bpp]
    np.subtract(flat[:, bpp:], flat[:, :-bpp], out=out[:, 1 + bpp :])  # uint8: wraps modulo 256, as PNG
    return out


class PngCanvas:
    """A base image (H x W gray or H x W x 3 RGB, uint8) whose PNG encoding is kept per band of rows.

    ``png()`` is the base image's PNG; ``png(y0, y1, edit)`` the PNG of the base image with rows
    ``y0:y1`` changed by ``edit``, called on a copy of each band of rows that covers them (with the
    band's first row index), re-encoding only those bands. Thread-safe: writers share one canvas per image.
    """

    def __init__(self, pixels: np.ndarray, band_rows: int | None = None, uniform: bool = False) -> None:
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
            raise ValueError(f"PNG canvas needs H x W or H x W x 3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]
        row_bytes = pixels[0].nbytes if self.height else 1
        self.band_rows = int(band_rows or max(1, _BAND_BYTES // max(row_bytes, 1)))
        self.uniform = uniform  # every row the same: one encoding serves every band of a height
        self._bands: dict[int, tuple[bytes, int, int]] = {}
        self._lock = threading.Lock()
        color_type = 2 if pixels.ndim == 3 else 0
        self._head = SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, color_type, 0, 0, 0))

    @classmethod
    def blank(cls, height: int, width: int) -> "PngCanvas":
        """An all-zero gray canvas (the background of a mask PNG)."""
        return cls(np.zeros((height, width), np.uint8), uniform=True)

    def _encode_band(self, rows: np.ndarray) -> tuple[bytes, int, int]:
        data = sub_filtered(rows)
        c = _deflate.compressobj(1, _deflate.DEFLATED, -15)
        body = c.compress(data) + c.flush(_deflate.Z_SYNC_FLUSH)
        return chunk(b"IDAT", body), _deflate.adler32(data), data.nbytes

    def _base_band(self, i: int) -> tuple[bytes, int, int]:
        top = i * self.band_rows
        bottom = min(self.height, top + self.band_rows)
        key = bottom - top if self.uniform else i
        band = self._bands.get(key)
        if band is None:
            band = self._encode_band(self.pixels[top:bottom])
            with self._lock:
                band = self._bands.setdefault(key, band)
        return band

    def png(self, y0: int = 0, y1: int = 0, edit: Edit | None = None) -> bytes:
        """The PNG file's bytes; with ``edit``, rows ``y0:y1`` as ``edit`` leaves them."""
        b = self.band_rows
        n_bands = -(-self.height // b)
        changed: dict[int, tuple[bytes, int, int]] = {}
        if edit is not None and y1 > y0:
            for i in range(max(0, y0) // b, (min(y1, self.height) - 1) // b + 1):
                band = self.pixels[i * b : (i + 1) * b].copy()  # band by band: stays in cache
                edit(band, i * b)
                changed[i] = self._encode_band(band)
        parts = [self._head, chunk(b"IDAT", _ZLIB_HEADER)]
        adler = 1
        for i in range(n_bands):
            idat, band_adler, length = changed.get(i) or self._base_band(i)
            parts.append(idat)
            adler = adler32_combine(adler, band_adler, length)
        parts.append(chunk(b"IDAT", _FINAL_BLOCK + struct.pack(">I", adler)))
        parts.append(chunk(b"IEND", b""))
        return b"".join(parts)


def encode_png(pixels: np.ndarray) -> bytes:
    """One PNG (H x W gray or H x W x 3 RGB uint8), encoded as ``PngCanvas`` does."""
    return PngCanvas(np.ascontiguousarray(pixels)).png()
