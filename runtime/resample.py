"""The resampling tables the pixel graphs take, computed on the host from the sizes alone.

A processor's resize is a fixed linear map per axis for a given (input, output) size: output ``i``
is ``sum_t weight[i, t] * x[index[i, t]]``. The graphs (``owl_pixels``, ``sam2_pixels``,
``sam2_masks``) apply the tables to the pixels on the device; the tables themselves are built here
by the functions that reproduce the processors (``runtime.imageops``), once per image size (an LRU
cache: a video or a camera gives one size).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from runtime import imageops
from runtime.errors import UserError
from runtime.graphs import OWL_PIXELS, SAM2_MASKS, SAM2_PIXELS
from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

#: image sizes whose tables are kept (a few hundred KB each at full size)
TABLE_CACHE_SIZE = 32

Tables = dict[str, np.ndarray]


def _tables(names: list[str], rows: imageops.Taps, columns: imageops.Taps) -> Tables:
    out = {}
    for (index_name, weight_name), taps in zip((names[:2], names[2:]), (rows, columns), strict=True):
        out[index_name] = np.ascontiguousarray(taps.index, dtype=np.int64)
        out[weight_name] = np.ascontiguousarray(taps.weights, dtype=np.float32)
    return _read_only(out)


def _read_only(tables: Tables) -> Tables:
    for array in tables.values():
        array.flags.writeable = False  # shared by every call of this size
    return tables


@lru_cache(maxsize=TABLE_CACHE_SIZE)
def owl_tables(height: int, width: int, cfg: OwlPreprocessing) -> Tables:
    """``owl_pixels``' tables: pad to the square of side max(H, W) with zeros, blur, resize."""
    if cfg.pad_value != 0:
        raise UserError(f"OWLv2 padding with {cfg.pad_value} is not implemented by the pixel graph (the processor "
                        "pads with 0); re-export the artifact")
    side = max(height, width)
    sigma, ksize = imageops.owl_blur_sigma_and_ksize(side, cfg.image_size) if cfg.anti_alias_blur else (0.0, 1)
    rows = imageops.blurred_bilinear_taps(side, height, cfg.image_size, sigma, ksize)
    columns = imageops.blurred_bilinear_taps(side, width, cfg.image_size, sigma, ksize)
    return _tables(OWL_PIXELS.input_names[1:], _nonempty(rows), _nonempty(columns))


@lru_cache(maxsize=TABLE_CACHE_SIZE)
def sam2_tables(height: int, width: int, cfg: Sam2Preprocessing) -> Tables:
    """``sam2_pixels``' tables: torch's antialiased uint8 bilinear, its fixed-point weights and their
    scale 2**precision; an axis that keeps its size gets the identity, as torch skips it."""
    s = cfg.image_size
    out = {}
    names = SAM2_PIXELS.input_names[1:]
    for (index, weight, scale), n in zip((names[:3], names[3:]), (height, width), strict=True):
        taps = _identity(s) if n == s else imageops.aa_bilinear_taps_int16(n, s)
        out[index] = np.ascontiguousarray(taps.index, dtype=np.int64)
        out[weight] = np.ascontiguousarray(taps.weights, dtype=np.int32)
        out[scale] = np.array([1 << taps.precision], np.int32)
    return _read_only(out)


@lru_cache(maxsize=TABLE_CACHE_SIZE)
def mask_tables(height: int, width: int, mask_size: int) -> Tables:
    """``sam2_masks``' tables: plain bilinear (align_corners=False) from the low-res side to H and W."""
    return _tables(SAM2_MASKS.input_names[1:], imageops.bilinear_taps(mask_size, height),
                   imageops.bilinear_taps(mask_size, width))


def _identity(n: int) -> imageops.Taps:
    return imageops.Taps(np.arange(n, dtype=np.int64)[:, None], np.ones((n, 1), np.int32), precision=0)


def _nonempty(taps: imageops.Taps) -> imageops.Taps:
    """At least one tap per row (an all-zero row is the padding: index 0 with weight 0)."""
    if taps.index.shape[1]:
        return taps
    n = taps.index.shape[0]
    return imageops.Taps(np.zeros((n, 1), np.int64), np.zeros((n, 1), np.float32))


def fitted_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The size an image larger than the graphs' profile is downscaled to: aspect kept, within both maxima."""
    scale = min(max_height / height, max_width / width, 1.0)
    return max(1, min(max_height, round(height * scale))), max(1, min(max_width, round(width * scale)))


def image_batch(images) -> np.ndarray:
    """Same-size HxWx3 uint8 images as the pixel graphs' [B, H, W, 3] input (one image: no copy)."""
    if len(images) == 1:
        return images[0][None]
    if len({im.shape for im in images}) != 1:
        raise ValueError(f"a pixel graph takes images of one size per call, got {sorted({im.shape for im in images})}")
    return np.stack(images)


def size_groups(shapes, max_batch: int) -> list[list[int]]:
    """Indices of ``shapes`` grouped by size (first appearance order), in calls of at most ``max_batch``."""
    by_size: dict = {}
    for i, shape in enumerate(shapes):
        by_size.setdefault(tuple(shape[:2]), []).append(i)
    return [idx[s : s + max_batch] for idx in by_size.values() for s in range(0, len(idx), max_batch)]
