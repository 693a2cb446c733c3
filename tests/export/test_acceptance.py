"""export.acceptance on hand-made detections and masks: what passes, what fails, what counts as a flip."""

from __future__ import annotations

import numpy as np
import pytest

from export.acceptance import (BEST_OF_THREE, FP32_ACCEPTANCE, STABILITY_FALLBACK, acceptance, check_masks,
                               match_detections, single_mask_accepted)
from runtime.graphs import PRECISION_ACCEPTANCE

BOXES = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30]], np.float32)
SCORES = np.array([0.9, 0.5, 0.105], np.float32)
LABELS = np.array([0, 1, 1])


def det(boxes=BOXES, scores=SCORES, labels=LABELS):
    return np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels)


def test_the_acceptance_of_each_precision():
    assert acceptance("fp32") is FP32_ACCEPTANCE and FP32_ACCEPTANCE.min_box_iou == 0.99
    assert acceptance("fp16") is PRECISION_ACCEPTANCE["fp16"] and acceptance("int8").top_k_labels == 5


def test_one_to_one_in_any_order():
    order = [2, 0, 1]
    m = match_detections(det(), det(BOXES[order], SCORES[order], LABELS[order]), FP32_ACCEPTANCE, 0.1, 0.001, 1e-3)
    assert m.passed and m.judged == 3
    np.testing.assert_array_equal(BOXES[m.ref_rows], BOXES[order][m.got_rows])
    assert m.box_iou.min() == 1.0 and m.score_error.max() == 0.0 and m.labels_agree.all()


def test_a_moved_box_a_changed_label_and_a_score_error_each_fail():
    moved = BOXES.copy()
    moved[1] += 3  # IoU 289/511 with the original
    m = match_detections(det(), det(moved), FP32_ACCEPTANCE, 0.1, 0.001)
    assert not m.passed and m.missing.tolist() == [1] and m.extra.tolist() == [1]
    m = match_detections(det(), det(labels=[0, 0, 1]), FP32_ACCEPTANCE, 0.1, 0.001)
    assert not m.passed and m.missing.tolist() == [1]
    off = SCORES + np.array([0, 2e-3, 0], np.float32)
    assert not match_detections(det(), det(scores=off), FP32_ACCEPTANCE, 0.1, 0.001, 1e-3).passed
    assert match_detections(det(), det(scores=off), FP32_ACCEPTANCE, 0.1, 0.001).passed  # no score gate


def test_a_detection_missing_at_the_threshold_is_a_flip_elsewhere_a_failure():
    fp16 = PRECISION_ACCEPTANCE["fp16"]
    m = match_detections(det(), det(BOXES[:2], SCORES[:2], LABELS[:2]), fp16, 0.1, 0.01)
    assert m.passed and m.at_threshold == 1 and m.missing.tolist() == [2]
    m = match_detections(det(), det(BOXES[1:], SCORES[1:], LABELS[1:]), fp16, 0.1, 0.01)
    assert not m.passed and m.missing.tolist() == [0]
    extra = det(np.vstack([BOXES, [[70, 70, 80, 80]]]), np.append(SCORES, 0.3), np.append(LABELS, 0))
    assert not match_detections(det(), extra, fp16, 0.1, 0.01).passed


def test_top_k_labels_need_a_partner_of_the_same_label_on_the_same_object():
    int8 = PRECISION_ACCEPTANCE["int8"]
    shifted = BOXES + np.array([2, 0, 2, 0], np.float32)  # IoU 0.67, 0.82, 0.67: the same objects
    m = match_detections(det(), det(shifted, SCORES[::-1].copy()), int8, 0.1, 0.01)
    assert m.passed and m.judged == 3 and m.box_iou.min() < 0.95
    m = match_detections(det(), det(shifted, labels=[0, 0, 1]), int8, 0.1, 0.01)
    assert not m.passed and m.missing.tolist() == [1]
    far = BOXES + np.array([8, 0, 8, 0], np.float32)  # IoU 0.11 for the first box
    assert not match_detections(det(), det(far), int8, 0.1, 0.01).passed
    assert not match_detections(det(), det(np.zeros((0, 4)), [], []), int8, 0.1, 0.01).passed


def masks(*rows: str) -> np.ndarray:
    """One 4x4 mask per string: the cells set where the string has '1'."""
    return np.array([[c == "1" for c in r] for r in rows]).reshape(len(rows), 4, 4)


A, B = "1111111100000000", "0000000011111111"


@pytest.fixture
def candidates():
    """Two boxes; the reference chose candidate A for both (the single mask); the other is B."""
    return {"chosen": masks(A, A), "single": masks(A, A), "multi": masks(B, B), "multi_second": masks(A, B),
            "picked_single": np.array([True, True]), "margin_pixels": np.array([0.5, 40.0]),
            "multi_margin": np.array([0.002, 0.3])}


def test_a_flip_is_accepted_only_where_the_reference_was_at_a_tie(candidates):
    got = masks(B, B)  # both flipped to the other candidate
    c = check_masks(got, candidates, 0.9, STABILITY_FALLBACK)
    assert c.flipped.tolist() == [True, True] and c.accepted.tolist() == [True, False] and not c.passed
    assert c.flips() == [{"mask": 0, "margin": 0.5, "accepted": True}, {"mask": 1, "margin": 40.0, "accepted": False}]
    ok, iou, other = single_mask_accepted(got, candidates, 0.9)
    assert ok.tolist() == [True, False] and iou.tolist() == [0.0, 0.0] and other.tolist() == [1.0, 1.0]
    c = check_masks(masks(A, A), candidates, 0.9, STABILITY_FALLBACK)
    assert c.passed and not c.flipped.any() and c.flips() == []


def test_best_of_three_compares_with_the_second_best(candidates):
    c = check_masks(masks(A, A), candidates, 0.9, BEST_OF_THREE)  # the reference's best is B for both
    assert c.flipped.tolist() == [True, False] and c.accepted.tolist() == [True, False]
    assert c.margin.tolist() == [0.002, 0.3]
