"""COCO run-length encoding of binary masks, compatible with ``pycocotools.mask`` (numpy only).

``encode(mask)`` gives ``{"size": [H, W], "counts": str}``: the compressed string form that
``pycocotools.mask.encode`` returns (as ``bytes``) and COCO results files store. The runs are
taken in column-major (Fortran) order and start with a run of zeros (0 when the first pixel is
set). Each count is written as in ``rleToString`` of ``maskApi.c``: from the fourth count on, as
the difference to the count two before; then in little-endian groups of 5 bits, a 6th bit set
when more groups follow, plus 48 to land in printable ASCII.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["encode", "decode", "counts_of", "counts_to_string", "string_to_counts", "area"]


def counts_of(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of a 2-D mask (anything non-zero is foreground)."""
    return _runs(mask).tolist()


def counts_to_string(counts: list[int]) -> str:
    """``rleToString``: the compressed form of uncompressed counts."""
    return _to_string(np.asarray(counts, dtype=np.int64))


def string_to_counts(s: str | bytes) -> list[int]:
    """``rleFrString``: uncompressed counts of the compressed form."""
    return _from_string(s).tolist()


def encode(mask: np.ndarray) -> dict[str, Any]:
    """``pycocotools.mask.encode(np.asfortranarray(mask))`` with ``counts`` as ``str`` (JSON-ready)."""
    m = np.asarray(mask)
    counts = _to_string(_runs(m))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The ``(H, W)`` bool mask of an RLE in compressed (string) or uncompressed (list) form."""
    h, w = (int(v) for v in rle["size"])
    counts = _counts(rle)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, the size {h}x{w} needs {h * w}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)  # runs alternate, zeros first
    return flat.reshape(w, h).T


def area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count of an RLE (``pycocotools.mask.area``)."""
    return int(_counts(rle)[1::2].sum())


# Arrays inside: a noisy mask has hundreds of thousands of runs, and a server encodes (its clients
# decode) every mask it returns.


def _counts(rle: Mapping[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    return _from_string(counts) if isinstance(counts, (str, bytes)) else np.asarray(counts, dtype=np.int64)


def _runs(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {m.shape}")
    flat = (m != 0).T.ravel()  # column-major
    if flat.size == 0:
        return np.zeros(1, np.int64)  # as pycocotools: one empty run of zeros
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds)
    return np.concatenate(([0], runs)) if flat[0] else runs


def _to_string(c: np.ndarray) -> str:
    x = c.copy()
    x[3:] -= c[1:-2]  # from the fourth count on: the difference to the count two before
    chars, valid = [], []  # per 5-bit group: its character, and whether the count has that group
    active = np.ones(len(x), bool)
    while active.any():
        ch = x & 0x1F
        x >>= 5  # arithmetic shift, as C's on a signed long
        more = np.where(ch & 0x10, x != -1, x != 0)
        chars.append((ch + 48 + (more << 5)).astype(np.uint8))
        valid.append(active.copy())
        active &= more
    if not chars:
        return ""
    return np.stack(chars, axis=1)[np.stack(valid, axis=1)].tobytes().decode("ascii")


def _from_string(s: str | bytes) -> np.ndarray:
    data = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), np.uint8).astype(np.int64) - 48
    if data.size == 0:
        return np.zeros(0, np.int64)
    if data[-1] & 0x20:
        raise ValueError("truncated RLE string")
    ends = np.flatnonzero((data & 0x20) == 0)  # the last character of each count
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(len(data)) - np.repeat(starts, ends - starts + 1)  # 5-bit group index within its count
    x = np.add.reduceat((data & 0x1F) << (5 * k), starts)
    negative = (data[ends] & 0x10) != 0  # the last group's top bit is the sign
    x[negative] -= np.left_shift(1, 5 * (k[ends][negative] + 1))
    counts = x.copy()  # undo the differences: counts[i] = x[i] + counts[i - 2] for i > 2
    counts[1::2] = np.cumsum(x[1::2])
    counts[2::2] = np.cumsum(x[2::2])
    return counts
