"""The pixel graphs: the processors' arithmetic around the networks, as torch modules to export.

Each applies resampling tables (``runtime.resample`` computes them from the sizes) with Gather,
multiply and sum, so TensorRT's parser takes every operator and an image of any size within the
profile runs through one engine. Their parity inputs are exactly representable (weights and logits
on a 1/256 grid, sums far below 2**24), so ONNX Runtime and torch agree to the bit whatever order
they sum in; parity with the transformers processors on real tables is tested in
tests/export/test_pixel_graphs.py.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn

from export.graph_export import GraphExport
from runtime import imageops
from runtime.graphs import (BATCH, COLUMN_TAPS, DYNAMIC_DIMS, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_MASKS, OWL_PIXELS,
                            ROW_TAPS, SAM2_MASKS, SAM2_PIXELS, DimRange, with_max)
from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

BILINEAR_TAPS = 2


def resample(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
    """``out[.., i, ..] = sum_t weight[i, t] * x[.., index[i, t], ..]`` along ``axis``. Callers put
    ``axis`` before long trailing dims: a Gather copies one block of the trailing dims per index, so
    on a CPU it runs at memory speed only where those blocks are long (not over the last axis)."""
    n, taps = index.shape
    picked = torch.index_select(x, axis, index.reshape(-1))
    shape = list(x.shape)
    shape[axis : axis + 1] = [n, taps]
    picked = picked.reshape(shape)
    w_shape = [1] * len(shape)
    w_shape[axis : axis + 2] = [n, taps]
    product = picked * weight.reshape(w_shape)
    return product.sum(dim=axis + 1, dtype=product.dtype)  # int32 stays int32 (torch would widen to int64)


class OwlPixels(nn.Module):
    def __init__(self, cfg: OwlPreprocessing) -> None:
        super().__init__()
        self.rescale = float(np.float32(cfg.rescale_factor))
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32))

    def forward(self, image, row_index, row_weight, column_index, column_weight):
        x = _columns_first(image.to(torch.float32))  # [B, W, 3, H]
        x = resample(x, column_index, column_weight, 1)  # [B, S, 3, H]
        x = resample(_rows_first(x), row_index, row_weight, 1) * self.rescale  # [B, S, S * 3]
        return (_channels_first(x) - self.mean[:, None, None]) / self.std[:, None, None]


def _columns_first(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] as [B, W, 3, H]: a gather over columns then copies long rows. Written as a 2-D
    transpose of [B, H, W * 3]: ONNX Runtime's 4-D permutation of the same data is 10-30x slower.
    Callers cast to float32 first: TensorRT's layers other than Cast take no uint8."""
    b, h, w, c = image.shape
    return image.reshape(b, h, w * c).transpose(1, 2).reshape(b, w, c, h)


def _rows_first(x: torch.Tensor) -> torch.Tensor:
    """[B, S, 3, H] as [B, H, S * 3], a 2-D transpose again."""
    b, s, c, h = x.shape
    return x.reshape(b, s * c, h).transpose(1, 2)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """[B, S, S * 3] (rows of RGB pixels) as [B, 3, S, S]."""
    b, s, sc = x.shape
    return x.reshape(b, s, sc // 3, 3).permute(0, 3, 1, 2)


class Sam2Pixels(nn.Module):
    """torch's uint8 antialiased kernel in its own integer arithmetic: width then height, each pass
    ``(scale / 2 + sum w * x) // scale`` clamped to 255 (sums stay below 2**31: 255 * 2**22)."""

    def __init__(self, cfg: Sam2Preprocessing) -> None:
        super().__init__()
        inv = np.float32(1.0 / cfg.rescale_factor)  # as the processor fuses rescale into normalisation
        self.register_buffer("mean", torch.from_numpy(np.asarray(cfg.mean, np.float32) * inv))
        self.register_buffer("std", torch.from_numpy(np.asarray(cfg.std, np.float32) * inv))

    def forward(self, image, row_index, row_weight, row_scale, column_index, column_weight, column_scale):
        x = _columns_first(image.to(torch.float32)).to(torch.int32)  # [B, W, 3, H], as OwlPixels
        x = _fixed_point(resample(x, column_index, column_weight, 1), column_scale)  # [B, S, 3, H]
        x = _rows_first(x.to(torch.float32)).to(torch.int32)  # 0..255, exact: ORT transposes float 6x faster
        x = _fixed_point(resample(x, row_index, row_weight, 1), row_scale)  # [B, S, S * 3]
        x = _channels_first(x.to(torch.float32))
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def _fixed_point(total: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``min((total + scale / 2) >> precision, 255)`` for a power-of-two ``scale``. The exporter writes
    integer division through float32, inexact above 2**24: the quotient comes from float32 (off by
    at most one) and is corrected with the exact int32 remainder. Min, not Clip: TensorRT's Clip
    takes floats only."""
    scale_f = scale.to(torch.float32)
    total = total + (scale_f * 0.5).to(torch.int32)
    q = torch.floor(total.to(torch.float32) / scale_f).to(torch.int32)
    r = total - q * scale
    q = q + (r >= scale).to(torch.int32) - (r < 0).to(torch.int32)
    return torch.minimum(q, torch.full_like(scale, 255))


class Sam2Masks(nn.Module):
    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = float(np.float32(threshold))

    def forward(self, mask_logits, row_index, row_weight, column_index, column_weight):
        x = resample(mask_logits.transpose(1, 2), column_index, column_weight, 1).transpose(1, 2)  # [N, m, W]
        return resample(x, row_index, row_weight, 1) > self.threshold


def pixel_sizes() -> dict[str, int]:
    return {"bilinear_taps": BILINEAR_TAPS}


def image_ranges(profiles: Mapping[str, DimRange], owl: OwlPreprocessing, sam: Sam2Preprocessing,
                 max_side: int | None = None) -> dict[str, DimRange]:
    """The image dims' maxima (``max_side``, default the registry's) and the taps they need: the
    most an axis of up to ``max_side`` pixels takes in either processor's tables."""
    out = with_max(profiles, image_height=max_side, image_width=max_side)
    side = max(out[IMAGE_HEIGHT].max, out[IMAGE_WIDTH].max)
    taps = max(max_owl_taps(side, owl.image_size), max_sam2_taps(side, sam.image_size))
    for d in (ROW_TAPS, COLUMN_TAPS):
        r = DYNAMIC_DIMS[d]
        out[d] = DimRange(min=1, opt=min(r.opt, taps), max=taps,
                          parity_sizes=tuple(sorted({min(s, taps) for s in r.parity_sizes})))
    return out


def max_owl_taps(side: int, size: int) -> int:
    """Taps of OWLv2's blur + bilinear table at the largest side (the blur widens with the factor)."""
    sigma, ksize = imageops.owl_blur_sigma_and_ksize(side, size)
    return ksize + 1 if sigma > 0 else BILINEAR_TAPS


def max_sam2_taps(side: int, size: int) -> int:
    """Taps of torch's antialiased bilinear table: 2 * ceil(support) + 1, support = max(side / size, 1)."""
    return 2 * math.ceil(max(side / size, 1.0)) + 1


def _exact_tables(rng: np.random.Generator, n_out: int, taps: int, n_in: int,
                  grid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Random tables whose products and sums are exact in float32 (weights on a 1/grid grid, <= 1/4)."""
    index = rng.integers(0, n_in, (n_out, taps)).astype(np.int64)
    weight = (rng.integers(0, grid // 4 + 1, (n_out, taps)) / grid).astype(np.float32)
    return index, weight


def pixel_graph_exports(owl: OwlPreprocessing | None, sam: Sam2Preprocessing, sizes: Mapping[str, int],
                        ranges: Mapping[str, DimRange]) -> list[GraphExport]:
    """The three pixel graphs (without ``owl``: SAM2's two, for tracking alone)."""
    def owl_inputs(dims, rng):
        h, w, square = dims[IMAGE_HEIGHT], dims[IMAGE_WIDTH], sizes["owl_image_size"]
        ri, rw = _exact_tables(rng, square, dims[ROW_TAPS], h)
        ci, cw = _exact_tables(rng, square, dims[COLUMN_TAPS], w)
        image = rng.integers(0, 256, (dims[BATCH], h, w, 3), dtype=np.uint8)
        return dict(zip(OWL_PIXELS.input_names, (image, ri, rw, ci, cw), strict=True))

    def sam_inputs(dims, rng):
        h, w, square = dims[IMAGE_HEIGHT], dims[IMAGE_WIDTH], sizes["sam_image_size"]
        scale = np.array([1 << 14], np.int32)  # weights below 2**14 / taps: rounding and the clamp both happen
        tables = []
        for n, taps in ((h, dims[ROW_TAPS]), (w, dims[COLUMN_TAPS])):
            index = rng.integers(0, n, (square, taps)).astype(np.int64)
            tables += [index, rng.integers(0, 2 * scale[0] // taps + 1, (square, taps)).astype(np.int32), scale]
        image = rng.integers(0, 256, (dims[BATCH], h, w, 3), dtype=np.uint8)
        return dict(zip(SAM2_PIXELS.input_names, (image, *tables), strict=True))

    def mask_inputs(dims, rng):
        h, w, m = dims[IMAGE_HEIGHT], dims[IMAGE_WIDTH], sizes["sam_mask_size"]
        logits = (rng.integers(-2048, 2048, (dims[NUM_MASKS], m, m)) / 256.0).astype(np.float32)
        ri, rw = _exact_tables(rng, h, BILINEAR_TAPS, m, grid=16)
        ci, cw = _exact_tables(rng, w, BILINEAR_TAPS, m, grid=16)
        return dict(zip(SAM2_MASKS.input_names, (logits, ri, rw, ci, cw), strict=True))

    owl_export = [] if owl is None else [
        GraphExport(OWL_PIXELS, OwlPixels(owl).eval(), owl_inputs, dict(ranges))]
    return owl_export + [
        GraphExport(SAM2_PIXELS, Sam2Pixels(sam).eval(), sam_inputs, dict(ranges)),
        GraphExport(SAM2_MASKS, Sam2Masks(sam.mask_threshold).eval(), mask_inputs, dict(ranges)),
    ]
