"""runtime.metrics: box and mask IoU on known values, empty cases as the functions document them."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.metrics import box_iou, mask_iou


def test_box_iou_of_known_boxes():
    a = np.array([[0, 0, 2, 2]], np.float32)
    b = np.array([[1, 0, 3, 2],  # overlap 2 of a union of 6: 1/3
                  [0, 0, 2, 2],  # the same box: 1
                  [5, 5, 7, 7],  # disjoint: 0
                  [2, 0, 4, 2]],  # touching at an edge: 0
                 np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    np.testing.assert_allclose(iou, [[1 / 3, 1.0, 0.0, 0.0]], rtol=1e-6, atol=0)


def test_box_iou_is_pairwise_and_symmetric():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], np.float32)
    b = np.array([[1, 0, 3, 2], [0, 0, 2, 2], [1, 1, 3, 3]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    # [0,0,4,4] (area 16) holds [0,0,2,2] (area 4): 4/16
    assert iou[1, 1] == pytest.approx(0.25, rel=1e-6)
    # [0,0,2,2] and [1,1,3,3]: overlap 1, union 7
    assert iou[0, 2] == pytest.approx(1 / 7, rel=1e-6)
    np.testing.assert_array_equal(box_iou(b, a), iou.T)


def test_box_iou_of_empty_boxes():
    empty = np.array([[1, 1, 1, 1], [3, 3, 2, 2]], np.float32)  # zero area; inverted corners
    box = np.array([[0, 0, 2, 2]], np.float32)
    np.testing.assert_array_equal(box_iou(empty, empty), np.zeros((2, 2)))  # 0 where both are empty
    np.testing.assert_array_equal(box_iou(empty, box), np.zeros((2, 1)))  # an empty box overlaps nothing
    assert box_iou(np.zeros((0, 4), np.float32), box).shape == (0, 1)
    assert box_iou(box, np.zeros((0, 4), np.float32)).shape == (1, 0)


def test_mask_iou_of_known_masks():
    a = np.zeros((3, 2, 3), bool)
    b = np.zeros((3, 2, 3), bool)
    a[0, :, :2] = True  # 4 pixels
    b[0, :, 1:] = True  # 4 pixels, 2 shared: 2 / 6
    a[1, 0] = True
    b[1, 1] = True  # disjoint
    a[2] = b[2] = True  # the same mask
    np.testing.assert_allclose(mask_iou(a, b), [1 / 3, 0.0, 1.0], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(mask_iou(b, a), mask_iou(a, b))


def test_mask_iou_of_empty_masks():
    empty = np.zeros((2, 4, 4), bool)
    full = np.ones((2, 4, 4), bool)
    np.testing.assert_array_equal(mask_iou(empty, empty), [1.0, 1.0])  # 1 where both are empty
    np.testing.assert_array_equal(mask_iou(empty, full), [0.0, 0.0])  # one empty: nothing shared


def test_mask_iou_of_no_masks_is_empty():
    none = np.zeros((0, 4, 4), bool)
    assert mask_iou(none, none).shape == (0,)
