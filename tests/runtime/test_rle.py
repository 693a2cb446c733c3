"""runtime.rle against pycocotools (the dev extra): same strings, same areas, lossless round trip."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import rle

mask_utils = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0.x under numpy 2: a DeprecationWarning about __array__(copy=...) per call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 5), (7, 1), (1, 9), (64, 64), (480, 640), (333, 97)]:
        yield shape, "empty", np.zeros(shape, bool)
        yield shape, "full", np.ones(shape, bool)
        yield shape, "noise", rng.random(shape) > 0.5
        yield shape, "sparse", rng.random(shape) > 0.99
        block = np.zeros(shape, bool)
        block[shape[0] // 4 : shape[0] * 3 // 4 + 1, shape[1] // 3 :] = True
        yield shape, "block", block
    yield (2000, 3000), "long runs", np.pad(np.ones((1500, 2500), bool), ((400, 100), (20, 480)))
    # full-height columns inside the image: a column's last pixel and the next one's first are both set
    tall = np.zeros((128, 77), bool)
    tall[:, 10:40] = True
    tall[64:, 40] = True
    yield tall.shape, "full-height columns", tall
    yield (96, 50), "uint8 0/255, strided view", (rng.random((192, 100)) > 0.5).astype(np.uint8)[::2, ::2] * 255
    yield (70, 90), "transposed view", (rng.random((90, 70)) > 0.9).T


@pytest.mark.parametrize("shape,kind,mask", list(masks()), ids=lambda v: str(v) if not isinstance(v, np.ndarray) else "")
def test_encode_matches_pycocotools(shape, kind, mask):
    binary = mask != 0  # pycocotools wants 0/1; runtime.rle takes any non-zero as set
    ref = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    got = rle.encode(mask)
    assert got == {"size": list(ref["size"]), "counts": ref["counts"].decode("ascii")}
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if len(rows) else (0, 0, 0, 0)
    assert rle.mask_extent(binary) == box
    assert rle.encode(mask, box) == got  # the writer hands over the extent it computed for the PNGs
    assert rle.area(got) == int(mask_utils.area(ref)) == int(binary.sum())
    np.testing.assert_array_equal(rle.decode(got), binary)
    np.testing.assert_array_equal(mask_utils.decode({"size": got["size"], "counts": got["counts"]}), binary)


def test_uncompressed_counts_and_string_round_trip():
    rng = np.random.default_rng(1)
    m = rng.random((37, 53)) > 0.7
    counts = rle.counts_of(m)
    assert sum(counts) == m.size and counts[0] == int(np.argmax(m.T.ravel()))
    assert rle.string_to_counts(rle.counts_to_string(counts)) == counts
    np.testing.assert_array_equal(rle.decode({"size": [37, 53], "counts": counts}), m)
    # counts whose deltas are negative and span several 5-bit groups
    big = [5, 100000, 3, 70000, 900000, 1, 2]
    assert rle.string_to_counts(rle.counts_to_string(big)) == big


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError, match="sum to"):
        rle.decode({"size": [2, 2], "counts": [1, 1]})
