"""Torch-free pre- and post-processing that reproduces transformers' OWLv2 and SAM2 processors.

``preprocess_owl`` / ``postprocess_owl``, ``preprocess_sam2`` / ``boxes_to_sam2_input`` /
``postprocess_sam2_masks``: the numbers of ``Owlv2Processor`` and ``Sam2Processor`` with torchvision
installed (the parity references), from the constants the manifest records. Step by step, and how
they are reproduced: docs/ARCHITECTURE.md ("Pre- and post-processing without torch").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from runtime import imageops
from runtime.errors import UserError

__all__ = [
    "OwlPreprocessing",
    "Sam2Preprocessing",
    "preprocess_owl",
    "postprocess_owl",
    "preprocess_sam2",
    "boxes_to_sam2_input",
    "postprocess_sam2_masks",
]


def _triple(name: str, v: Any) -> tuple[float, float, float]:
    if isinstance(v, (int, float)):
        v = (v, v, v)
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name} needs 3 values (one per RGB channel), got {v!r}")
    return t  # type: ignore[return-value]


class _Config:
    """``to_dict``/``from_dict`` shared by the two dataclasses (JSON-friendly, strict on keys)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(
                f"{cls.__name__}: unknown field(s) {unknown} in the manifest's preprocessing section; "
                "the artifact was written by a newer toolkit, upgrade the runtime or re-export"
            )
        try:
            return cls(**dict(d))
        except (TypeError, ValueError) as e:
            raise UserError(f"{cls.__name__}: invalid preprocessing section in the manifest ({e}); re-export the artifact") from e


@dataclass(frozen=True)
class OwlPreprocessing(_Config):
    """Constants of ``Owlv2Processor``: what ``preprocess_owl`` and the text graph need."""

    image_size: int  # side of the square the image tower takes (960 for the base models)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1.0 / 255.0
    pad_value: float = 0.0  # bottom/right padding to a square, in rescaled units (before normalising)
    text_length: int = 16  # tokenizer max length: prompts are padded to it
    resample: str = "bilinear"  # only bilinear (antialias=False) is implemented, as the processor uses
    anti_alias_blur: bool = True  # Gaussian blur before downsampling (the processor always does it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if int(self.image_size) != self.image_size or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        object.__setattr__(self, "image_size", int(self.image_size))
        if int(self.text_length) != self.text_length or self.text_length < 1:
            raise ValueError(f"text_length must be a positive integer, got {self.text_length!r}")
        object.__setattr__(self, "text_length", int(self.text_length))
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std}")
        if self.resample != "bilinear":
            raise ValueError(f"resample {self.resample!r} is not implemented (only 'bilinear')")


@dataclass(frozen=True)
class Sam2Preprocessing(_Config):
    """Constants of ``Sam2Processor``: image size, normalisation, box coordinate frame, masks."""

    image_size: int  # side of the square the image encoder takes (1024 for the released models)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1.0 / 255.0
    mask_size: int = 256  # side of the decoder's low-res masks (image_size / 4)
    coord_size: int | None = None  # Sam2Processor.target_size: boxes are mapped to [0, coord_size]; None = image_size
    mask_threshold: float = 0.0  # logits > threshold are foreground (post_process_masks default)
    resample: str = "bilinear"
    antialias: bool = True  # the processor resizes with antialias (triangle filter widened when downsampling)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        for name in ("image_size", "mask_size"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.coord_size is None:
            object.__setattr__(self, "coord_size", self.image_size)
        elif int(self.coord_size) != self.coord_size or self.coord_size < 1:
            raise ValueError(f"coord_size must be a positive integer, got {self.coord_size!r}")
        object.__setattr__(self, "coord_size", int(self.coord_size))
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std}")
        if self.resample != "bilinear":
            raise ValueError(f"resample {self.resample!r} is not implemented (only 'bilinear')")
        if not self.antialias:
            raise ValueError("antialias=False is not implemented (the SAM2 processor resizes with antialias)")


# ----------------------------------------------------------------------------------------------
# Input checks.


def _check_image(img: Any, where: str) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise UserError(f"{where}: expected an HxWx3 uint8 numpy array, got {type(img).__name__}; load it with runtime.images.load_image")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"{where}: expected an HxWx3 uint8 RGB array, got {img.dtype} {img.shape}; load it with runtime.images.load_image")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise UserError(f"{where}: the image is empty ({img.shape[0]}x{img.shape[1]}); pass an image with at least one pixel")
    return np.ascontiguousarray(img)


def _image_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            images = list(images)
        else:
            images = [images]
    images = list(images)
    if not images:
        raise UserError("no images given; pass at least one HxWx3 uint8 image")
    return [_check_image(im, f"image {i}") for i, im in enumerate(images)]


def _image_hw(image_hw: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_hw)
    except (TypeError, ValueError) as e:
        raise UserError(f"image size must be (height, width), got {image_hw!r}") from e
    if h < 1 or w < 1:
        raise UserError(f"image size must be positive, got {h}x{w}")
    return h, w


# ----------------------------------------------------------------------------------------------
# OWLv2.


def _owl_one(img: np.ndarray, cfg: OwlPreprocessing) -> np.ndarray:
    h, w = img.shape[:2]
    side = max(h, w)  # padded square
    size = cfg.image_size
    if cfg.anti_alias_blur:
        sigma, ksize = imageops.owl_blur_sigma_and_ksize(side, size)
    else:
        sigma, ksize = 0.0, 1
    ty = imageops.blurred_bilinear_taps(side, h, size, sigma, ksize)
    tx = imageops.blurred_bilinear_taps(side, w, size, sigma, ksize)
    rows_y = np.flatnonzero(np.any(ty.weights != 0, axis=1))
    rows_x = np.flatnonzero(np.any(tx.weights != 0, axis=1))

    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    rf = np.float32(cfg.rescale_factor)
    pad = np.float32(cfg.pad_value)

    # Padding term: the blurred+resized constant padding is pad * (1 - Vy ⊗ Vx) up to the
    # (≈1) total weights; with pad 0 (the processor's value) it vanishes.
    if pad != 0:
        full_y, full_x = _full_weight_sums(side, size, sigma, ksize)
        vy = ty.weights.astype(np.float64).sum(axis=1)
        vx = tx.weights.astype(np.float64).sum(axis=1)
        pad_term = (float(pad) * (np.outer(full_y, full_x) - np.outer(vy, vx))).astype(np.float32)
    else:
        pad_term = None

    out = np.empty((3, size, size), dtype=np.float32)
    background = pad_term if pad_term is not None else np.zeros((size, size), np.float32)
    for c in range(3):
        out[c] = (background - mean[c]) / std[c]
    if rows_y.size == 0 or rows_x.size == 0:
        return out
    y = imageops.apply_taps(img, ty, rows=rows_y)  # (ny, W, 3) float32, raw 0..255 units
    yt = np.ascontiguousarray(y.transpose(1, 0, 2))  # (W, ny, 3)
    z = imageops.apply_taps(yt, tx, rows=rows_x)  # (nx, ny, 3)
    block = np.ix_(rows_y, rows_x)
    for c in range(3):
        v = z[:, :, c].T * rf
        if pad_term is not None:
            v += pad_term[block]
        v -= mean[c]
        v /= std[c]
        out[c][block] = v
    return out


def _full_weight_sums(side: int, size: int, sigma: float, ksize: int) -> tuple[np.ndarray, np.ndarray]:
    full = imageops.blurred_bilinear_taps(side, side, size, sigma, ksize).weights.astype(np.float64).sum(axis=1)
    return full, full


def preprocess_owl(images: Sequence[np.ndarray], cfg: OwlPreprocessing) -> np.ndarray:
    """``Owlv2Processor(images=...)["pixel_values"]``: float32 ``[B, 3, S, S]``.

    ``images`` are HxWx3 uint8 RGB arrays (a list, or one array). See the module docstring for the
    order of operations.
    """
    imgs = _image_list(images)
    return np.stack([_owl_one(im, cfg) for im in imgs])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    out = np.empty_like(x)
    pos = x >= 0
    e = np.exp(-np.abs(x)).astype(np.float32)
    out[pos] = np.float32(1.0) / (np.float32(1.0) + e[pos])
    out[~pos] = e[~pos] / (np.float32(1.0) + e[~pos])
    return out


def postprocess_owl(
    logits: np.ndarray,
    boxes: np.ndarray,
    image_hw: Sequence[int],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Owlv2Processor.post_process_grounded_object_detection(outputs, threshold, target_sizes=[(h, w)])``.

    ``logits``: ``[P, Q]`` (patches x prompts); ``boxes``: ``[P, 4]`` cxcywh relative to the padded
    square. Returns ``(boxes_xyxy [N, 4] float32 in input-image pixels, scores [N] float32,
    labels [N] int64)`` in patch order; boxes may extend past the image (not clipped, as the
    reference).
    """
    logits = np.asarray(logits)
    boxes = np.asarray(boxes)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [patches, prompts], got shape {logits.shape}")
    if boxes.shape != (logits.shape[0], 4):
        raise ValueError(f"boxes must be [patches, 4] with patches={logits.shape[0]}, got {boxes.shape}")
    if logits.shape[1] == 0:
        raise UserError("no prompts were given; pass at least one text prompt")
    try:
        t = float(threshold)
    except (TypeError, ValueError) as e:
        raise UserError(f"threshold must be a number in [0, 1], got {threshold!r}") from e
    if not (0.0 <= t <= 1.0):
        raise UserError(f"threshold must be in [0, 1], got {threshold!r}")
    h, w = _image_hw(image_hw)

    logits = logits.astype(np.float32, copy=False)
    labels = np.argmax(logits, axis=-1)
    best = np.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    scores = _sigmoid(best)
    keep = scores > np.float32(t)

    b = boxes[keep].astype(np.float32, copy=False)
    half = np.float32(0.5)
    cx, cy, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    xyxy = np.stack([cx - half * bw, cy - half * bh, cx + half * bw, cy + half * bh], axis=-1).astype(np.float32)
    xyxy *= np.float32(max(h, w))  # the padded square's side, for both axes
    return xyxy.reshape(-1, 4), scores[keep], labels[keep].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# SAM2.


def _sam2_luts(cfg: Sam2Preprocessing) -> np.ndarray:
    """Per-channel uint8 -> float32 tables of the processor's fused rescale+normalise.

    The processor computes ``mean' = float32(mean) * (1/rescale)``, ``std'`` likewise, then
    ``(float32(x) - mean') / std'``; a 256-entry table per channel gives exactly those values.
    """
    inv = np.float32(1.0 / cfg.rescale_factor)
    mean = np.asarray(cfg.mean, dtype=np.float32) * inv
    std = np.asarray(cfg.std, dtype=np.float32) * inv
    v = np.arange(256, dtype=np.float32)
    return ((v[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)


def preprocess_sam2(images: Sequence[np.ndarray], cfg: Sam2Preprocessing) -> np.ndarray:
    """``Sam2Processor(images=...)["pixel_values"]``: float32 ``[B, 3, S, S]``."""
    imgs = _image_list(images)
    luts = _sam2_luts(cfg)
    s = cfg.image_size
    out = np.empty((len(imgs), 3, s, s), dtype=np.float32)
    for i, img in enumerate(imgs):
        r = imageops.resize_bilinear_aa_uint8(img, s, s)
        for c in range(3):
            np.take(luts[c], r[:, :, c], out=out[i, c])
    return out


def boxes_to_sam2_input(boxes_xyxy: np.ndarray, image_hw: Sequence[int], cfg: Sam2Preprocessing,
                        clip: bool = True) -> np.ndarray:
    """``Sam2Processor(images, input_boxes=[boxes])["input_boxes"][0]``: float32 ``[N, 4]``.

    Boxes (xyxy, input-image pixels) are validated, clipped to the image unless ``clip=False`` (the
    processor does not clip), then x is scaled by ``coord_size / W`` and y by ``coord_size / H`` in
    float32, as the processor does.
    """
    h, w = _image_hw(image_hw)
    b = np.asarray(boxes_xyxy)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise UserError(f"boxes must be an [N, 4] array of x0, y0, x1, y1 in pixels, got shape {b.shape}")
    if not np.issubdtype(b.dtype, np.number) or np.iscomplexobj(b):
        raise UserError(f"boxes must be real numbers, got dtype {b.dtype}")
    b = b.astype(np.float32)
    if not np.all(np.isfinite(b)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(b), axis=1))[0])
        raise UserError(f"box {bad} has a NaN or infinite coordinate ({b[bad].tolist()}); pass finite pixel coordinates")
    if clip:
        b[:, 0::2] = np.clip(b[:, 0::2], 0, w)
        b[:, 1::2] = np.clip(b[:, 1::2], 0, h)
    target = cfg.coord_size
    b[:, 0::2] *= np.float32(target / w)
    b[:, 1::2] *= np.float32(target / h)
    return b


def postprocess_sam2_masks(low_res_logits: np.ndarray, image_hw: Sequence[int], cfg: Sam2Preprocessing) -> np.ndarray:
    """``Sam2Processor.post_process_masks(pred_masks, original_sizes=[(H, W)])[0]``: bool ``[N, M, H, W]``.

    ``low_res_logits`` is float32 ``[N, M, h, w]`` (boxes x masks per box). Bilinear to ``(H, W)``
    then ``> mask_threshold``; one mask at a time, so the float working set is a single ``H x W``
    plane whatever N.
    """
    x = np.asarray(low_res_logits)
    if x.ndim != 4:
        raise ValueError(f"low-res mask logits must be [boxes, masks, h, w], got shape {x.shape}")
    h, w = _image_hw(image_hw)
    x = x.astype(np.float32, copy=False)
    n, m, lh, lw = x.shape
    out = np.empty((n, m, h, w), dtype=bool)
    if n * m == 0:
        return out
    thr = np.float32(cfg.mask_threshold)
    resizer = imageops.BilinearThreshold(lh, lw, h, w)
    for i in range(n):
        for j in range(m):
            resizer(x[i, j], thr, out=out[i, j])
    return out
