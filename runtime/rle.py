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


def encode(mask: np.ndarray, extent: tuple[int, int, int, int] | None = None) -> dict[str, Any]:
    """``pycocotools.mask.encode(np.asfortranarray(mask))`` with ``counts`` as ``str`` (JSON-ready);
    ``extent``: the mask's :func:`mask_extent`, where the caller has it already."""
    m = np.asarray(mask)
    counts = _to_string(_runs(m, extent))
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


def _runs(mask: np.ndarray, extent: tuple[int, int, int, int] | None = None) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {m.shape}")
    h, w = m.shape
    if m.size == 0:
        return np.zeros(1, np.int64)  # as pycocotools: one empty run of zeros
    b = m if m.dtype == bool else m != 0
    y0, y1, x0, x1 = mask_extent(b) if extent is None else extent
    if y1 == y0:
        return np.array([h * w], np.int64)
    s = _column_words(b[y0:y1, x0:x1])  # outside the mask's box every pixel is 0: only the box is scanned
    carry = np.zeros_like(s)
    carry[:, 1:] = s[:, :-1] >> np.uint64(63)
    t = s ^ ((s << np.uint64(1)) | carry)  # bit y of column x: the pixel differs from the one above (0 above row 0)
    flat = np.flatnonzero(t)
    bits = np.flatnonzero(np.unpackbits(t.ravel()[flat].view(np.uint8).reshape(-1, 8), axis=1, bitorder="little"))
    x, k = np.divmod(flat, t.shape[1])
    pos = ((x + x0) * h + k * 64 + y0)[bits >> 6] + (bits & 63)  # flat column-major positions, ascending
    # each column is scanned as if 0 above and below it: where a column ends set and the next starts
    # set (a box of full height), its fall and the next one's rise are the same position and cancel
    same = np.flatnonzero(pos[1:] == pos[:-1])
    if len(same):
        keep = np.ones(len(pos), bool)
        keep[same] = keep[same + 1] = False
        pos = pos[keep]
    if len(pos) and pos[-1] == h * w:  # the fall below the last pixel
        pos = pos[:-1]
    return np.diff(pos, prepend=0, append=h * w)  # starts with a run of zeros, 0 long when pixel 0 is set


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the rows and columns a 2-D mask touches (empty ranges for an empty mask)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


_U64 = np.dtype("<u8")
_TRANSPOSE8 = tuple((np.uint64(k), np.uint64(s)) for k, s in
                    ((0x00AA00AA00AA00AA, 7), (0x0000CCCC0000CCCC, 14), (0x00000000F0F0F0F0, 28)))


def _column_words(b: np.ndarray) -> np.ndarray:
    """A (h, w) bool array's columns as bit strings, ``(w, h // 64 + 1)`` little-endian uint64 words
    (bit ``y % 64`` of word ``y // 64`` of row ``x`` is ``b[y, x]``; zero below row h): the
    column-major order COCO runs need, without a byte-by-byte transposed copy of the whole mask
    (numpy's is several times slower than the rest of the encoding). Bits are packed along rows,
    bytes transposed, each 8x8 bit block transposed in a uint64 with shifts and masks, bytes
    transposed again: every step on an eighth of the mask's bytes."""
    h, w = b.shape
    rows = np.zeros((-(-h // 8) * 8, -(-w // 8)), np.uint8)
    rows[:h] = np.packbits(b, axis=1, bitorder="little")  # bit c of byte j: column 8j + c
    hb, wb = rows.shape[0] // 8, rows.shape[1]
    blocks = np.ascontiguousarray(rows.T).view(_U64)  # (wb, hb): byte r of word (j, i) is row 8i + r
    t = np.empty_like(blocks)
    for k, s in _TRANSPOSE8:  # swap bit (r, c) with (c, r): byte c of word (j, i) becomes column 8j + c
        np.right_shift(blocks, s, out=t)
        t ^= blocks
        t &= k
        blocks ^= t
        t <<= s
        blocks ^= t
    cols = np.zeros((wb, 8, (h // 64 + 1) * 8), np.uint8)  # (byte j, bit c, the column's bytes)
    cols[:, :, :hb] = blocks.view(np.uint8).reshape(wb, hb, 8).transpose(0, 2, 1)
    return cols.reshape(wb * 8, -1).view(_U64)[:w]


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
