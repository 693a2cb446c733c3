"""runtime.images.load_image: every mode a user's files come in, and one-line errors for bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.images import load_image


def _check_rgb(a: np.ndarray, h: int, w: int) -> None:
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (h, w, 3)
    assert a.flags["C_CONTIGUOUS"]


def _pattern(h: int = 48, w: int = 80) -> np.ndarray:
    """Four flat quadrants (JPEG-friendly) whose arrangement reveals any rotation or flip."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (220, 30, 30)
    a[: h // 2, w // 2 :] = (30, 220, 30)
    a[h // 2 :, : w // 2] = (30, 30, 220)
    a[h // 2 :, w // 2 :] = (230, 230, 30)
    return a


def _transformers_rgb(im: Image.Image) -> np.ndarray:
    """What the processors do to a PIL image (convert_to_rgb of the torchvision backend)."""
    from transformers.image_transforms import convert_to_rgb

    return convert_to_rgb(im, return_numpy=True)


# ---------------------------------------------------------------------------------------------
# Files and PIL images.


def test_rgb_png_from_str_and_path(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    p = tmp_path / "rgb.png"
    Image.fromarray(a).save(p)
    for src in (p, str(p)):
        out = load_image(src)
        _check_rgb(out, 17, 23)
        np.testing.assert_array_equal(out, a)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    a = _pattern()
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored image must be turned 90 degrees clockwise to display
    Image.fromarray(a).save(p, quality=95, exif=exif)
    expected = np.rot90(a, k=-1)  # clockwise
    for src in (p, Image.open(p)):
        out = load_image(src)
        _check_rgb(out, 80, 48)
        assert np.abs(out.astype(int) - expected).mean() < 4
        assert np.abs(out.astype(int) - np.rot90(a, k=1)).mean() > 50  # not the other way round


def test_grayscale_png(tmp_path):
    g = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    p = tmp_path / "gray.png"
    Image.fromarray(g, "L").save(p)
    out = load_image(p)
    _check_rgb(out, 6, 10)
    np.testing.assert_array_equal(out, np.repeat(g[:, :, None], 3, axis=2))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white_like_the_processors(tmp_path, mode):
    rng = np.random.default_rng(1)
    channels = 4 if mode == "RGBA" else 2
    a = rng.integers(0, 256, (9, 13, channels), dtype=np.uint8)
    a[0, 0, -1] = 0  # fully transparent: white, whatever colour it stores
    a[0, 1, -1] = 255  # opaque: its own colour
    p = tmp_path / f"{mode}.png"
    Image.fromarray(a, mode).save(p)
    out = load_image(p)
    _check_rgb(out, 9, 13)
    np.testing.assert_array_equal(out, _transformers_rgb(Image.open(p)))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    opaque = a[0, 1, :3] if mode == "RGBA" else np.repeat(a[0, 1, :1], 3)
    np.testing.assert_array_equal(out[0, 1], opaque)


def test_palette_png_with_transparency(tmp_path):
    idx = np.tile(np.arange(4, dtype=np.uint8), (5, 2))  # 5x8, palette indices 0..3
    im = Image.fromarray(idx, "P")
    im.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (256 * 3 - 12))
    p = tmp_path / "palette.png"
    im.save(p, transparency=1)  # index 1 (red) fully transparent
    reopened = Image.open(p)
    assert reopened.mode == "P" and reopened.info.get("transparency") is not None
    out = load_image(p)
    _check_rgb(out, 5, 8)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [0, 200, 0])
    np.testing.assert_array_equal(out, _transformers_rgb(Image.open(p)))


def test_16bit_grayscale_png_keeps_the_top_8_bits(tmp_path):
    v = np.array([[0, 255, 256, 1000, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "gray16.png"
    Image.fromarray(v).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    out = load_image(p)
    _check_rgb(out, 1, 6)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 3, 128, 255])  # v >> 8, never clipped to 255
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def _png_rgb16(path: Path, a: np.ndarray) -> None:
    """Write a 16-bit RGB PNG by hand (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_png(tmp_path):
    a = np.random.default_rng(2).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    _png_rgb16(p, a)
    out = load_image(p)
    _check_rgb(out, 4, 5)
    np.testing.assert_array_equal(out, (a >> 8).astype(np.uint8))


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 24, 4), np.uint8)
    cmyk[:, :12, 0] = 255  # cyan on the left
    cmyk[:, 12:, 3] = 255  # black on the right
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    _check_rgb(out, 16, 24)
    np.testing.assert_array_equal(out, np.asarray(Image.open(p).convert("RGB")))
    left, right = out[:, :10].reshape(-1, 3).mean(0), out[:, 14:].reshape(-1, 3).mean(0)
    assert left[0] < 30 and left[1] > 220 and left[2] > 220  # cyan
    assert right.max() < 30  # black


def test_pil_image_input(tmp_path):
    a = _pattern(10, 12)
    out = load_image(Image.fromarray(a))
    _check_rgb(out, 10, 12)
    np.testing.assert_array_equal(out, a)
    _check_rgb(load_image(Image.fromarray(a).convert("L")), 10, 12)


def test_rgba_pil_gives_the_processors_pixel_values():
    """End to end: an RGBA PIL image through load_image + preprocess_owl equals the processor fed the
    PIL image itself (which composites on white too)."""
    transformers = pytest.importorskip("transformers")
    from runtime.preprocessing import OwlPreprocessing, preprocess_owl

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    im = Image.fromarray(a, "RGBA")
    proc = transformers.Owlv2ImageProcessor(size={"height": 32, "width": 32})
    ref = proc(images=[im], return_tensors="np")["pixel_values"]
    cfg = OwlPreprocessing(image_size=32, mean=proc.image_mean, std=proc.image_std, rescale_factor=proc.rescale_factor)
    assert np.abs(preprocess_owl([load_image(im)], cfg) - ref).max() <= 1e-5


# ---------------------------------------------------------------------------------------------
# Arrays.


def test_array_inputs():
    rgb = np.random.default_rng(4).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgb), rgb)
    flipped = rgb[:, ::-1]  # not C-contiguous
    out = load_image(flipped)
    _check_rgb(out, 7, 9)
    np.testing.assert_array_equal(out, flipped)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, axis=2))


def test_rgba_array_matches_the_processors_array_path():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.image_utils import ChannelDimension

    a = np.random.default_rng(5).integers(0, 256, (6, 11, 4), dtype=np.uint8)
    a[0, 0, 3], a[0, 1, 3] = 0, 255
    proc = transformers.Owlv2ImageProcessor()
    ref = proc.convert_to_rgb(torch.from_numpy(a).permute(2, 0, 1).contiguous(), input_data_format=ChannelDimension.FIRST)
    out = load_image(a)
    _check_rgb(out, 6, 11)
    np.testing.assert_array_equal(out, ref.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])


# ---------------------------------------------------------------------------------------------
# Errors: UserError, one line, naming the file or the problem.


def _one_line_error(src, *needles: str) -> str:
    with pytest.raises(UserError) as e:
        load_image(src)
    msg = str(e.value)
    assert "\n" not in msg and msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_file_and_folder(tmp_path):
    _one_line_error(tmp_path / "nope.jpg", str(tmp_path / "nope.jpg"), "no such file")
    _one_line_error(tmp_path, str(tmp_path), "folder")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a JPEG\n" * 20)
    _one_line_error(p, str(p), "not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _one_line_error(empty, str(empty))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_file(tmp_path, fmt):
    a = np.random.default_rng(6).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(a).save(full, format=fmt.upper())
    data = full.read_bytes()
    p = tmp_path / f"truncated.{fmt}"
    p.write_bytes(data[: len(data) // 2])
    _one_line_error(p, str(p), "truncated or corrupt")


def test_corrupt_png_data(tmp_path):
    a = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    full = tmp_path / "full.png"
    Image.fromarray(a).save(full)
    data = bytearray(full.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)  # zero out compressed data: zlib error (bad CRC too)
    p = tmp_path / "corrupt.png"
    p.write_bytes(bytes(data))
    _one_line_error(p, str(p))


@pytest.mark.parametrize(
    "arr,needle",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4, 3), np.uint16), "dtype uint16"),
        (np.zeros((4, 4, 3), bool), "dtype bool"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((1, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
    ],
)
def test_bad_arrays(arr, needle):
    _one_line_error(arr, needle)


def test_bad_types():
    _one_line_error([[1, 2, 3]], "list")
    _one_line_error(12, "int")
    _one_line_error(Image.new("RGB", (0, 0)), "empty")


# ---------------------------------------------------------------------------------------------
# Encoded bytes (what a server receives).


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_decode_image_equals_load_image_of_the_file(tmp_path, fmt):
    from runtime.images import decode_image

    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(_pattern()).rotate(90, expand=True).save(path, format=fmt)
    expected = load_image(path)
    got = decode_image(path.read_bytes())
    _check_rgb(got, *expected.shape[:2])
    np.testing.assert_array_equal(got, expected)


def test_decode_image_refuses_other_formats_empty_data_and_too_many_pixels(tmp_path):
    from runtime.images import decode_image

    path = tmp_path / "a.gif"
    Image.fromarray(_pattern()).save(path, format="GIF")
    assert load_image(path).shape == (48, 80, 3)  # a file PIL reads...
    with pytest.raises(UserError, match=r"^upload: not an image file PIL can read; pass a JPEG, PNG, BMP, TIFF or WebP image$"):
        decode_image(path.read_bytes(), "upload")  # ...but not among the formats a server takes
    with pytest.raises(UserError, match=r"^image: no image data \(0 bytes\); send the bytes of a JPEG"):
        decode_image(b"")
    png = tmp_path / "a.png"
    Image.fromarray(_pattern()).save(png)
    assert decode_image(png.read_bytes(), max_pixels=48 * 80).shape == (48, 80, 3)
    with pytest.raises(UserError, match=r"^image: 80x48 is 3840 pixels, more than the limit of 3839; downscale it first$"):
        decode_image(png.read_bytes(), max_pixels=48 * 80 - 1)
