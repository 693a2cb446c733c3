"""Numpy image building blocks that reproduce the torch/torchvision kernels the HF processors call.

No torch here (``runtime`` stays light). Every resampling step is a 1-D tap table per axis, built once
from the sizes and applied with one row gather and multiply-add per tap. What each function mirrors,
and how exactly: docs/ARCHITECTURE.md ("Pre- and post-processing without torch").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Taps",
    "apply_taps",
    "bilinear_taps",
    "resize_bilinear",
    "BilinearThreshold",
    "gaussian_kernel1d",
    "gaussian_blur",
    "owl_blur_sigma_and_ksize",
    "blurred_bilinear_taps",
    "aa_bilinear_taps_int16",
    "resize_bilinear_aa_uint8",
    "reflect_index",
]


@dataclass(frozen=True)
class Taps:
    """A 1-D resampling operator: ``out[i] = sum_t weights[i, t] * x[index[i, t]]``.

    ``index`` is ``int64 [out, T]`` (always a valid input index; unused taps carry weight 0),
    ``weights`` is ``[out, T]`` (float32 for float kernels, int32 for the uint8 kernel).
    ``precision`` is the fixed-point shift of integer weights (0 for float weights).
    """

    index: np.ndarray
    weights: np.ndarray
    precision: int = 0

    @property
    def out_size(self) -> int:
        return int(self.index.shape[0])


def apply_taps(x: np.ndarray, taps: Taps, *, out_dtype=np.float32, rows: np.ndarray | None = None) -> np.ndarray:
    """Apply ``taps`` along axis 0 of ``x`` (any trailing shape); float result in ``out_dtype``.

    Axis 0 is used because gathering whole rows of a C-contiguous array is a plain memory copy.
    ``rows`` optionally restricts the computation to those output indices (others are not
    returned). For integer weights use :func:`_apply_taps_int`.
    """
    index, weights = taps.index, taps.weights
    if rows is not None:
        index, weights = index[rows], weights[rows]
    n_out, n_taps = index.shape
    out = np.zeros((n_out,) + x.shape[1:], dtype=out_dtype)
    if n_out == 0:
        return out
    tmp = np.empty_like(out)
    wshape = (n_out,) + (1,) * (x.ndim - 1)
    for t in range(n_taps):
        w = weights[:, t]
        if not np.any(w):
            continue
        wt = w.reshape(wshape).astype(out_dtype, copy=False)
        if x.dtype == out_dtype:
            np.take(x, index[:, t], axis=0, out=tmp)
            np.multiply(tmp, wt, out=tmp)
        else:
            np.multiply(np.take(x, index[:, t], axis=0), wt, out=tmp)
        np.add(out, tmp, out=out)
    return out


def _apply_taps_int(x: np.ndarray, taps: Taps) -> np.ndarray:
    """Integer version of :func:`apply_taps` for uint8 ``x`` and int16-valued weights.

    Mirrors torch's uint8 kernel: ``clip((2**(p-1) + sum_t w_t * x_t) >> p, 0, 255)`` in int32
    (exact: every partial sum is far below 2**31).
    """
    index, weights, p = taps.index, taps.weights, taps.precision
    n_out, n_taps = index.shape
    acc = np.full((n_out,) + x.shape[1:], 1 << (p - 1), dtype=np.int32)
    tmp = np.empty(acc.shape, dtype=np.int32)
    wshape = (n_out,) + (1,) * (x.ndim - 1)
    for t in range(n_taps):
        w = weights[:, t]
        if not np.any(w):
            continue
        np.multiply(np.take(x, index[:, t], axis=0), w.reshape(wshape), out=tmp, casting="unsafe")
        np.add(acc, tmp, out=acc)
    np.right_shift(acc, p, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Plain bilinear (antialias=False), float32.


def bilinear_taps(in_size: int, out_size: int) -> Taps:
    """torch's ``compute_source_index_and_lambda`` for bilinear, align_corners=False, float32."""
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in={in_size} out={out_size}")
    i = np.arange(out_size, dtype=np.int64)
    if in_size == out_size:
        index = np.stack([i, i], axis=1)
        weights = np.zeros((out_size, 2), dtype=np.float32)
        weights[:, 0] = 1.0
        return Taps(index, weights)
    scale = np.float32(in_size) / np.float32(out_size)
    # torch evaluates ``scale * (i + 0.5) - 0.5`` in float32 as one fused multiply-add (a single
    # rounding). The product of two float32 values is exact in float64, so evaluating in float64
    # and rounding once reproduces it bit for bit. A plain float32 evaluation is off by up to one
    # ulp of the source index (7.6e-6 at index 256), which moved pixel values by ~3e-5.
    real = (np.float64(scale) * (i.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
    real = np.maximum(real, np.float32(0.0))  # area_pixel_compute_source_index: negative -> 0
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    lam1 = np.clip(real - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return Taps(np.stack([i0, i1], axis=1), np.stack([lam0, lam1], axis=1))


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)`` on the last two axes.

    ``x`` is float32 of shape ``(..., H, W)``; returns float32 ``(..., out_h, out_w)``. Width first,
    then height, each as ``v0 * w0 + v1 * w1`` in float32, as torch's CPU kernel evaluates it.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"resize_bilinear expects float32, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear needs at least 2 dims, got shape {x.shape}")
    in_h, in_w = x.shape[-2:]
    lead = x.shape[:-2]
    if (in_h, in_w) == (out_h, out_w):
        return x.copy()
    flat = x.reshape((-1, in_h, in_w))
    tw = bilinear_taps(in_w, out_w)
    th = bilinear_taps(in_h, out_h)
    # Width: gather columns (small: input rows only).
    a = flat[:, :, tw.index[:, 0]]
    a *= tw.weights[:, 0]
    b = flat[:, :, tw.index[:, 1]]
    b *= tw.weights[:, 1]
    a += b
    # Height: gather rows.
    out = np.take(a, th.index[:, 0], axis=1)
    out *= th.weights[:, 0][:, None]
    b = np.take(a, th.index[:, 1], axis=1)
    b *= th.weights[:, 1][:, None]
    out += b
    return out.reshape(lead + (out_h, out_w))


class BilinearThreshold:
    """``F.interpolate(x, (out_h, out_w), mode="bilinear") > threshold`` for one 2-D plane at a time.

    Built once per (input size, output size) with reusable full-size buffers, so thresholding many
    masks allocates nothing per mask. Bit-exact with torch's float32 CPU kernel (AVX2/AVX512 builds):
    the kernel evaluates each 1-D step as ``fma(v0, w0, v1 * w1)``; the width step (on the low-res
    rows, cheap) is emulated exactly in float64, the full-size height step runs in float32 and only
    the pixels within a rounding error of the threshold are re-evaluated exactly.
    """

    def __init__(self, in_h: int, in_w: int, out_h: int, out_w: int) -> None:
        self.in_shape = (in_h, in_w)
        self.out_shape = (out_h, out_w)
        tw = bilinear_taps(in_w, out_w)
        th = bilinear_taps(in_h, out_h)
        self._w_idx0, self._w_idx1 = tw.index[:, 0], tw.index[:, 1]
        self._w_w0 = tw.weights[:, 0].astype(np.float64)
        self._w_w1 = tw.weights[:, 1]
        self._h_idx0, self._h_idx1 = th.index[:, 0], th.index[:, 1]
        self._h_w0 = th.weights[:, 0][:, None]
        self._h_w1 = th.weights[:, 1][:, None]
        self._a = np.empty((out_h, out_w), dtype=np.float32)
        self._b = np.empty((out_h, out_w), dtype=np.float32)

    def width_pass(self, x: np.ndarray) -> np.ndarray:
        prod1 = x[:, self._w_idx1] * self._w_w1  # float32 product, rounded as torch rounds it
        r = x[:, self._w_idx0].astype(np.float64) * self._w_w0 + prod1.astype(np.float64)
        return r.astype(np.float32)

    def __call__(self, x: np.ndarray, threshold: float, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.in_shape:
            raise ValueError(f"expected a plane of shape {self.in_shape}, got {x.shape}")
        thr = np.float32(threshold)
        if out is None:
            out = np.empty(self.out_shape, dtype=bool)
        r = self.width_pass(x)  # (in_h, out_w)
        a, b = self._a, self._b
        np.take(r, self._h_idx1, axis=0, out=b)
        np.multiply(b, self._h_w1, out=b)  # exact torch product
        np.take(r, self._h_idx0, axis=0, out=a)
        np.multiply(a, self._h_w0, out=a)
        np.add(a, b, out=a)  # float32 (two roundings instead of torch's one)
        np.greater(a, thr, out=out)
        # Pixels whose float32 value lies within the rounding gap of the threshold are recomputed as
        # the fused multiply-add torch performs. |a - exact| <= ulp(max|r|) < max|r| * 2**-22.
        finite = r[np.isfinite(r)]
        bound = np.float32(float(np.abs(finite).max(initial=0.0)) * 2.0**-21 + 1e-30)
        np.subtract(a, thr, out=a)
        np.abs(a, out=a)
        near = a <= bound
        if near.any():  # np.nonzero alone scans slowly even when nothing is set
            rows, cols = np.nonzero(near)
            v0 = r[self._h_idx0[rows], cols].astype(np.float64) * self._h_w0[rows, 0].astype(np.float64)
            v1 = (r[self._h_idx1[rows], cols] * self._h_w1[rows, 0]).astype(np.float64)
            out[rows, cols] = (v0 + v1).astype(np.float32) > thr
        return out


# --------------------------------------------------------------------------------------------
# Gaussian blur (torchvision), float32.


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32 (symmetric evaluation: ``start + i*step`` for the first half,
    ``end - (steps-1-i)*step`` for the second)."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps)
    half = steps // 2
    out = np.empty(steps, dtype=np.float32)
    out[:half] = start32 + step * i[:half].astype(np.float32)
    out[half:] = end32 - step * (steps - 1 - i[half:]).astype(np.float32)
    return out


def gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """torchvision's ``_get_gaussian_kernel1d`` in float32: softmax(-(linspace / sigma)^2)."""
    if ksize < 1 or ksize % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {ksize}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    lim = (ksize - 1) / (2.0 * math.sqrt(2.0))
    x = _linspace_f32(-lim, lim, ksize)
    x = np.square(x / np.float32(sigma)).astype(np.float32)
    x = -x
    e = np.exp(x - x.max()).astype(np.float32)
    return (e / e.sum(dtype=np.float32)).astype(np.float32)


def reflect_index(u: np.ndarray, size: int) -> np.ndarray:
    """Map indices outside ``[0, size)`` like ``F.pad(mode="reflect")`` (edge not repeated)."""
    if size == 1:
        return np.zeros_like(u)
    period = 2 * (size - 1)
    u = np.abs(u) % period
    return np.where(u >= size, period - u, u)


def _blur_taps(size: int, ksize: int, sigma: float) -> Taps:
    if ksize // 2 >= size and ksize > 1:
        raise ValueError(f"blur kernel {ksize} too large for an axis of {size} (reflect padding)")
    k = gaussian_kernel1d(ksize, sigma)
    p = ksize // 2
    u = np.arange(size)[:, None] + np.arange(-p, p + 1)[None, :]
    return Taps(reflect_index(u, size), np.broadcast_to(k, (size, ksize)).copy())


def gaussian_blur(x: np.ndarray, sigma_h: float, sigma_w: float, ksize_h: int | None = None, ksize_w: int | None = None) -> np.ndarray:
    """torchvision ``gaussian_blur`` on a float32 ``(..., H, W)`` array, reflect padding.

    ``ksize_*`` default to the size OWLv2's processor uses: ``2 * ceil(3 * sigma) + 1``. Applied
    separably (the 2-D kernel torchvision builds is the outer product of the two 1-D kernels).
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"gaussian_blur expects float32, got {x.dtype}")
    if ksize_h is None:
        ksize_h = _owl_ksize(np.float32(sigma_h))
    if ksize_w is None:
        ksize_w = _owl_ksize(np.float32(sigma_w))
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    flat = x.reshape((-1, h, w))
    th = _blur_taps(h, ksize_h, sigma_h)
    tw = _blur_taps(w, ksize_w, sigma_w)
    y = apply_taps(np.moveaxis(flat, 1, 0), th)  # (H, N, W)
    y = apply_taps(np.ascontiguousarray(np.moveaxis(y, 2, 0)), tw)  # (W, H, N)
    return np.ascontiguousarray(np.transpose(y, (2, 1, 0))).reshape(lead + (h, w))


def _owl_ksize(sigma32: np.float32) -> int:
    return int(2 * math.ceil(float(np.float32(3.0) * np.float32(sigma32))) + 1)


def owl_blur_sigma_and_ksize(in_size: int, out_size: int) -> tuple[float, int]:
    """OWLv2's anti-aliasing sigma ``max((in/out - 1) / 2, 0)`` and kernel ``2*ceil(3*sigma)+1``.

    Evaluated in float32 as the processor does with torch tensors, so the kernel size flips at
    exactly the same ratios. Returns ``(sigma, ksize)``; ``sigma == 0`` means no blur.
    """
    factor = np.float32(np.float32(in_size) / np.float32(out_size))
    sigma = np.float32(max(np.float32((factor - np.float32(1.0)) / np.float32(2.0)), np.float32(0.0)))
    if sigma == 0:
        return 0.0, 1
    return float(sigma), _owl_ksize(sigma)


def blurred_bilinear_taps(
    padded_size: int,
    valid_size: int,
    out_size: int,
    sigma: float,
    ksize: int,
) -> Taps:
    """One axis of OWLv2's ``pad -> gaussian blur -> bilinear resize`` as a single tap table.

    The axis has ``padded_size`` samples of which the first ``valid_size`` come from the image and
    the rest are the zero padding; the returned taps index the *unpadded* image only (padding
    contributes nothing because its value is 0). ``sigma == 0`` means no blur. Weights are combined
    in float64 from the float32 kernels torchvision uses, then stored as float32.
    """
    bil = bilinear_taps(padded_size, out_size)
    if sigma > 0 and ksize > 1:
        if ksize // 2 >= padded_size:
            raise ValueError(f"blur kernel {ksize} too large for an axis of {padded_size}")
        k = gaussian_kernel1d(ksize, sigma).astype(np.float64)
    else:
        ksize, k = 1, np.ones(1, dtype=np.float64)
    p = ksize // 2
    i0 = bil.index[:, 0]
    # Unreflected source positions u = i0 - p + off, off in [0, ksize]; bilinear tap 1 sits at
    # i0 + 1 (or i0 at the last row, where its weight goes to the same positions as tap 0).
    w = np.zeros((out_size, ksize + 1), dtype=np.float64)
    w0 = bil.weights[:, 0].astype(np.float64)
    w1 = bil.weights[:, 1].astype(np.float64)
    shift1 = bil.index[:, 1] - i0  # 0 or 1
    rows = np.arange(out_size)
    for t in range(ksize):
        w[rows, t] += w0 * k[t]
        w[rows, t + shift1] += w1 * k[t]
    u = i0[:, None] - p + np.arange(ksize + 1)[None, :]
    src = reflect_index(u, padded_size)
    w[src >= valid_size] = 0.0
    src = np.where(src >= valid_size, 0, src)
    keep = np.any(w != 0, axis=0)
    return Taps(src[:, keep].astype(np.int64), w[:, keep].astype(np.float32))


# --------------------------------------------------------------------------------------------
# Antialiased bilinear on uint8 (torch native kernel), exact integer arithmetic.


def aa_bilinear_taps_int16(in_size: int, out_size: int) -> Taps:
    """torch's ``_compute_index_ranges_int16_weights`` for bilinear with antialias=True.

    Triangle filter of support ``max(scale, 1)``, weights normalised per output in float64, then
    scaled by ``2**precision`` (the largest precision < 22 at which the largest weight still fits
    int16) and rounded half up.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got in={in_size} out={out_size}")
    scale = float(in_size) / float(out_size)
    support = scale if scale >= 1.0 else 1.0
    max_taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    i = np.arange(out_size, dtype=np.float64)
    center = scale * (i + 0.5)
    # static_cast<int64_t> truncates toward zero.
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    xsize = np.clip(xsize, 0, max_taps)
    j = np.arange(max_taps)
    arg = (j[None, :] + xmin[:, None] - center[:, None] + 0.5) * invscale
    wts = np.maximum(1.0 - np.abs(arg), 0.0)
    wts[j[None, :] >= xsize[:, None]] = 0.0
    # Sequential sum, as the C loop does (float64; differences would only be in the last bit).
    total = np.zeros(out_size, dtype=np.float64)
    for t in range(max_taps):
        total = total + wts[:, t]
    nz = total != 0.0
    wts[nz] = wts[nz] / total[nz, None]
    wt_max = float(wts.max()) if wts.size else 0.0
    precision = 0
    while precision < 22:
        if int(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15):
            break
        precision += 1
    v = wts * float(1 << precision)
    iw = np.where(v < 0, np.trunc(-0.5 + v), np.trunc(0.5 + v)).astype(np.int32)
    index = np.minimum(xmin[:, None] + j[None, :], in_size - 1)
    n_used = int(xsize.max()) if xsize.size else 0
    return Taps(index[:, :n_used].astype(np.int64), iw[:, :n_used], precision)


def resize_bilinear_aa_uint8(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torchvision ``resize(uint8, BILINEAR, antialias=True)`` on an ``(H, W, C)`` uint8 array.

    Horizontal pass first (skipped when the width does not change), result rounded/clipped to
    uint8, then the vertical pass; integer arithmetic throughout, so the output is bit-identical
    to torch's native uint8 kernel. Returns ``(out_h, out_w, C)`` uint8.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise TypeError(f"expected (H, W, C) uint8, got {image.dtype} {image.shape}")
    in_h, in_w = image.shape[:2]
    x = image
    if out_w != in_w:
        xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # (W, H, C): columns become rows
        xt = _apply_taps_int(xt, aa_bilinear_taps_int16(in_w, out_w))
        x = np.ascontiguousarray(np.swapaxes(xt, 0, 1))
    if out_h != in_h:
        x = _apply_taps_int(np.ascontiguousarray(x), aa_bilinear_taps_int16(in_h, out_h))
    return np.ascontiguousarray(x)
