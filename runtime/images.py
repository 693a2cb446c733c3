"""Load an image from a path, a PIL image or an array into the one form the runtime uses.

``load_image`` returns an ``(H, W, 3)`` uint8 RGB C-contiguous array. It applies the EXIF
orientation of files and PIL images, and converts every common mode the way transformers'
processors see it, so that what the runtime feeds its graphs is what PyTorch users get:

- grayscale (``L``, ``1``), ``CMYK`` (PIL's conversion; Adobe-inverted JPEGs are handled by PIL's
  decoder), ``YCbCr``, palette without transparency: ``PIL.Image.convert("RGB")``;
- anything with transparency (``RGBA``, ``LA``, ``PA``, palette or RGB/L with a ``transparency``
  entry): composited onto **white**, exactly as the processors' ``convert_to_rgb`` does for PIL
  images (``alpha_composite`` over an opaque white RGBA, then ``convert("RGB")``). Note that a plain
  ``convert("RGB")`` would instead drop the alpha channel and expose whatever colour transparent
  pixels happen to store;
- 16-bit grayscale (``I;16*``, or ``I`` as older Pillow opens 16-bit PNGs): the top 8 bits
  (``v >> 8``); PIL's own conversion would clip everything above 255 to white;
- arrays: ``HxWx3`` uint8 as is, ``HxW`` / ``HxWx1`` grayscale repeated to 3 channels, ``HxWx4``
  RGBA composited onto white with the float32 arithmetic of the processors' array path.

``decode_image`` does the same for the encoded bytes of a file (what a server receives), limited to
the formats named in ``ENCODED_FORMATS`` and, optionally, to a number of pixels checked before decoding.

Errors a user can cause (missing file, not an image, truncated or corrupt data, wrong array dtype or
shape, empty image) raise ``UserError`` with one line naming the file or the problem and the fix.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.errors import UserError, one_line

__all__ = ["load_image", "decode_image", "to_rgb_array", "ENCODED_FORMATS"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: What ``decode_image`` accepts (PIL format names): the common photo formats, nothing exotic.
ENCODED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")


def load_image(image: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB C-contiguous array from a path, a PIL image or a numpy array."""
    if isinstance(image, (str, os.PathLike)):
        return _load_path(Path(image))
    if isinstance(image, Image.Image):
        return _from_pil(image, "the PIL image")
    if isinstance(image, np.ndarray):
        return to_rgb_array(image)
    raise UserError(
        f"cannot read an image from a {type(image).__name__}; pass a file path, a PIL image or an HxWx3 uint8 numpy array"
    )


def _load_path(path: Path) -> np.ndarray:
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file; pass an image file (or use the folder input of the CLI)")
    return _open(path, str(path))


def decode_image(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """:func:`load_image` of the encoded bytes of a JPEG, PNG, BMP, TIFF or WebP file; with
    ``max_pixels``, an image of more pixels is refused from its header, before it is decoded."""
    if not len(data):
        raise UserError(f"{name}: no image data (0 bytes); send the bytes of a JPEG, PNG, BMP, TIFF or WebP file")
    return _open(io.BytesIO(data), name, ENCODED_FORMATS, max_pixels)


def _open(source: Any, name: str, formats: tuple[str, ...] | None = None, max_pixels: int | None = None) -> np.ndarray:
    try:
        with Image.open(source, formats=formats) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise UserError(f"{name}: {im.width}x{im.height} is {im.width * im.height} pixels, more than the "
                                f"limit of {max_pixels}; downscale it first")
            return _from_pil(im, name)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image file PIL can read; pass a JPEG, PNG, BMP, TIFF or WebP image") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{name}: image too large to decode safely ({one_line(e)}); downscale it first") from None
    except PermissionError:
        raise UserError(f"{name}: permission denied; make the file readable") from None
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        # PIL reports truncated/corrupt data with any of these depending on the codec.
        raise UserError(f"{name}: the image data is truncated or corrupt ({one_line(e)}); re-save or re-download the file") from None


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL's "truncated EXIF" style warnings
            im.load()
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as e:
        raise UserError(f"{name}: the image data is truncated or corrupt ({one_line(e)}); re-save or re-download the file") from None
    if im.width == 0 or im.height == 0:
        raise UserError(f"{name}: the image is empty ({im.width}x{im.height}); pass an image with at least one pixel")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # malformed EXIF: PIL raises assorted types
        raise UserError(f"{name}: cannot apply its EXIF orientation ({one_line(e)}); strip or fix the EXIF data") from None
    return _pil_to_rgb(im, name)


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    if mode in _SIXTEEN_BIT_MODES:
        v = np.asarray(im).astype(np.int64)
        gray = (np.clip(v, 0, 65535) >> 8).astype(np.uint8)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        t = im.info.get("transparency")
        if isinstance(t, int) and not isinstance(t, bool):
            rgb[v == t] = 255  # fully transparent pixels on the white background
        return np.ascontiguousarray(rgb)
    if mode == "F":
        raise UserError(f"{name}: 32-bit float images are not supported; save it as an 8- or 16-bit image")
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    try:
        if has_alpha:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
        else:
            rgb = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise UserError(f"{name}: cannot convert mode {mode} to RGB ({one_line(e)}); save it as an RGB image") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def to_rgb_array(a: np.ndarray) -> np.ndarray:
    """Validate an array image and return it as ``(H, W, 3)`` uint8 RGB, C-contiguous."""
    if a.dtype != np.uint8:
        hint = " (scale a float image in [0, 1] with (x * 255).round().astype(np.uint8))" if a.dtype.kind == "f" else ""
        raise UserError(f"image array has dtype {a.dtype}; expected uint8 values 0..255{hint}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise UserError(f"image array has shape {a.shape}; expected HxWx3 RGB (or HxW grayscale, HxWx4 RGBA), channels last")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise UserError(f"image array is empty ({a.shape[0]}x{a.shape[1]}); pass an image with at least one pixel")
    c = a.shape[2]
    if c == 3:
        return np.ascontiguousarray(a)
    if c == 1:
        return np.ascontiguousarray(np.repeat(a, 3, axis=2))
    # RGBA -> RGB over white, as the processors' torchvision path does for 4-channel tensors:
    # to float32 by * (1/255), rgb * a + (1 - a), back to uint8 by * 255.999 and truncation.
    f = a.astype(np.float32) * np.float32(1.0 / 255)
    alpha = f[:, :, 3:]
    comp = f[:, :, :3] * alpha + (np.float32(1.0) - alpha)
    return np.ascontiguousarray((comp * np.float32(255.0 + 1.0 - 1e-3)).astype(np.uint8))
