"""Task-level agreement measures shared by the pipeline (NMS), the tracker and the parity checks."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: ``[len(a), len(b)]``; 0 where both boxes are empty."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boolean masks ``a[i]``, ``b[i]``: ``[N]``; 1 where both are empty."""
    pixels = tuple(range(1, np.ndim(a)))  # sums over H, W: also right for N = 0
    inter = (a & b).sum(axis=pixels)
    union = (a | b).sum(axis=pixels)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
