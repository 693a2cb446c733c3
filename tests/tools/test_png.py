"""tools.png: the banded PNG encoder decodes to its pixels in PIL and OpenCV, its zlib stream and
chunk CRCs are valid, and an edited encoding equals encoding the edited image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tools.png import PngCanvas, adler32_combine, encode_png

SHAPES = [(1, 1), (1, 7, 3), (5, 1), (33, 17, 3), (64, 90), (7, 300, 3)]


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), kind
        yield kind, body
        pos += 12 + n


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("band_rows", [None, 1, 3])
def test_round_trip_and_stream_validity(shape, band_rows):
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = PngCanvas(a, band_rows=band_rows).png()
    np.testing.assert_array_equal(decode(data), a)
    cv2 = pytest.importorskip("cv2")
    other = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(other[:, :, ::-1] if a.ndim == 3 else other, a)
    stream = b"".join(body for kind, body in chunks(data) if kind == b"IDAT")
    raw = zlib.decompress(stream)  # checks the Adler-32 of the whole stream
    row = 1 + a[0].size
    assert len(raw) == a.shape[0] * row and all(raw[i * row] == 1 for i in range(a.shape[0]))  # Sub filter


@pytest.mark.parametrize("shape", SHAPES)
def test_edited_rows_equal_encoding_the_edited_image(shape):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    canvas = PngCanvas(a, band_rows=2)
    canvas.png()  # every band cached: the edits must not leak into them
    h = a.shape[0]
    for y0, y1 in {(0, 1), (h // 2, h), (0, h), (h - 1, h)}:
        def edit(block, top):
            lo, hi = max(y0, top), min(y1, top + len(block))
            block[lo - top : hi - top] = 255 - block[lo - top : hi - top]

        expected = a.copy()
        expected[y0:y1] = 255 - expected[y0:y1]
        np.testing.assert_array_equal(decode(canvas.png(y0, y1, edit)), expected)
    np.testing.assert_array_equal(decode(canvas.png()), a)


def test_blank_canvas_and_bad_pixels():
    np.testing.assert_array_equal(decode(PngCanvas.blank(37, 11).png()), np.zeros((37, 11), np.uint8))
    np.testing.assert_array_equal(decode(encode_png(np.full((3, 4, 3), 9, np.uint8))), np.full((3, 4, 3), 9))
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            PngCanvas(bad)


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(1)
    for n1, n2 in [(0, 5), (5, 0), (1, 1), (1000, 70000), (65521, 65522)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), n2) == zlib.adler32(a + b)
