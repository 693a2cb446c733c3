"""End to end on CPU: exported SAM2 graphs + numpy processing give the reference's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.backends import onnxruntime_opener
from runtime.errors import UserError
from runtime.manifest import load_manifest
from runtime.sam2 import Sam2Segmenter
from runtime.metrics import mask_iou


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    from transformers import Sam2Model, Sam2Processor

    model = Sam2Model.from_pretrained(tiny_checkpoints.sam).eval()
    processor = Sam2Processor.from_pretrained(tiny_checkpoints.sam)

    def segment(image: np.ndarray, boxes: np.ndarray, multimask: bool = False) -> np.ndarray:
        inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs, multimask_output=multimask)
        masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()
        if multimask:  # best of three by predicted IoU, as the runtime does
            best = out.iou_scores[0].argmax(-1).numpy()
            return masks[np.arange(len(boxes)), best]
        return masks[:, 0]

    return segment


@pytest.fixture(scope="module")
def manifest(tiny_artifact):
    return load_manifest(tiny_artifact)


@pytest.fixture(scope="module")
def segmenter(manifest):
    return Sam2Segmenter.from_manifest(manifest, onnxruntime_opener(manifest))


def random_boxes(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 0.7 * w, n), rng.uniform(0, 0.7 * h, n)
    bw, bh = rng.uniform(0.1, 0.3, n) * w + 4, rng.uniform(0.1, 0.3, n) * h + 4
    return np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], 1).astype(np.float32)


def assert_masks_match(got: np.ndarray, ref: np.ndarray, min_iou: float = 0.99) -> None:
    assert got.shape == ref.shape and got.dtype == bool
    assert ref.any(axis=(1, 2)).any(), "the reference should produce non-empty masks"
    iou = mask_iou(got, ref)
    assert np.all(iou >= min_iou), iou


@pytest.mark.parametrize("hw", [(64, 64), (480, 640), (640, 480)])
@pytest.mark.parametrize("num_boxes", [1, 7])
def test_masks_match_reference(reference, segmenter, make_image, hw, num_boxes):
    image = make_image(*hw, seed=num_boxes)
    boxes = random_boxes(num_boxes, *hw, seed=hw[1] + num_boxes)
    got = segmenter.segment(image, boxes)
    assert_masks_match(got.masks, reference(image, boxes))
    assert got.iou_scores.shape == got.object_score_logits.shape == (num_boxes,)


def test_multimask_decoder_matches_reference(reference, manifest, make_image):
    seg = Sam2Segmenter.from_manifest(manifest, onnxruntime_opener(manifest), multimask=True)
    image = make_image(480, 640, seed=3)
    boxes = random_boxes(5, 480, 640, seed=3)
    assert_masks_match(seg.segment(image, boxes).masks, reference(image, boxes, multimask=True))


def test_more_boxes_than_profile_maximum_are_chunked(reference, manifest, segmenter, make_image):
    chunked = Sam2Segmenter.from_manifest(manifest, onnxruntime_opener(manifest))
    chunked.max_boxes = 3
    image = make_image(200, 300, seed=5)
    boxes = random_boxes(8, 200, 300, seed=5)
    got = chunked.segment(image, boxes)
    np.testing.assert_array_equal(got.masks, segmenter.segment(image, boxes).masks)
    assert_masks_match(got.masks, reference(image, boxes))


def test_boxes_partly_outside_are_clipped(reference, segmenter, make_image):
    image = make_image(120, 160, seed=6)
    boxes = np.array([[-30, -10, 60, 50], [100, 80, 400, 300]], np.float32)
    clipped = np.array([[0, 0, 60, 50], [100, 80, 160, 120]], np.float32)
    got = segmenter.segment(image, boxes)
    np.testing.assert_array_equal(got.masks, segmenter.segment(image, clipped).masks)
    assert_masks_match(got.masks, reference(image, clipped))


def test_degenerate_boxes_give_a_defined_result(segmenter, make_image):
    image = make_image(100, 100, seed=7)
    boxes = np.array([[10, 10, 10, 50], [20, 30, 60, 30], [40, 40, 40, 40]], np.float32)
    got = segmenter.segment(image, boxes)
    assert got.masks.shape == (3, 100, 100)
    assert np.all(np.isfinite(got.iou_scores)) and np.all(np.isfinite(got.object_score_logits))


def test_no_boxes_gives_empty_masks(segmenter, make_image):
    got = segmenter.segment(make_image(50, 70), np.zeros((0, 4), np.float32))
    assert got.masks.shape == (0, 50, 70)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_box_is_a_one_line_error(segmenter, make_image, bad):
    with pytest.raises(UserError, match="NaN or infinite") as e:
        segmenter.segment(make_image(50, 50), np.array([[0, 0, bad, 10]], np.float32))
    assert "\n" not in str(e.value)
