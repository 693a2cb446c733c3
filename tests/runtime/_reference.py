"""The transformers reference pipeline and tracker that the runtime's results are judged against, and
the judgements: shared by the tiny checkpoints' parity tests and the family of model shapes.

The image reference is what SOWLv2 does with transformers: prompts wrapped as "a photo of {p}",
``Owlv2ForObjectDetection`` + ``Owlv2Processor.post_process_grounded_object_detection``, then
``Sam2Model`` + ``Sam2Processor`` with all boxes of the image at once, ``multimask_output=False``.
The tracking reference is ``Sam2VideoProcessor`` + ``Sam2VideoModel`` with box prompts on frame 0.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime import Result
from runtime.graphs import PRECISION_ACCEPTANCE
from runtime.metrics import box_iou, mask_iou

from _sam2_candidates import SAME_OBJECT_BOX_IOU, single_mask_accepted

THRESHOLD = 0.1
TEMPLATE = "a photo of {}"


def reference_pipeline(owl_dir, sam_dir):
    """``run(image, prompts, candidates=False)`` -> (boxes, scores, labels, masks) of
    ``export.reference.ReferencePipeline`` (FP32, CPU); with ``candidates`` the last item is instead
    ``sam2_candidates``' dict: the same masks as "chosen", and what SAM2's selection weighed."""
    from export.reference import ReferencePipeline

    ref = ReferencePipeline.load(str(owl_dir), str(sam_dir))

    def run(image: np.ndarray, prompts: list[str], candidates: bool = False):
        det = ref.detect(image, [TEMPLATE.format(p) for p in prompts], THRESHOLD)
        if len(det.boxes) == 0:
            return det.boxes, det.scores, det.labels, np.zeros((0, *image.shape[:2]), bool)
        masks = ref.sam2_candidates(image, det.boxes)
        return det.boxes, det.scores, det.labels, masks if candidates else masks["chosen"]

    return run


def assert_matches_reference(got: Result, ref) -> None:
    """FP32: the reference's detections one to one (box IoU >= 0.99, scores within 1e-3, same labels)
    and their masks at IoU >= 0.99."""
    ref_boxes, ref_scores, ref_labels, ref_masks = ref
    assert len(ref_boxes) > 0, "the tiny models should detect something at this threshold"
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32
    assert got.labels.dtype.kind == "i" and got.masks.dtype == bool
    assert got.masks.shape == ref_masks.shape
    assert len(got) == len(ref_boxes)
    iou = box_iou(ref_boxes, got.boxes)
    match = iou.argmax(axis=1)
    assert len(set(match.tolist())) == len(match), "two reference boxes matched the same detection"
    assert np.all(iou[np.arange(len(ref_boxes)), match] >= 0.99)
    np.testing.assert_allclose(got.scores[match], ref_scores, atol=1e-3)
    np.testing.assert_array_equal(got.labels[match], ref_labels)
    assert ref_masks.any(axis=(1, 2)).all(), "the reference should produce non-empty masks"
    mi = mask_iou(got.masks[match], ref_masks)
    assert np.all(mi >= 0.99), mi


def assert_within_acceptance(got: Result, ref, precision: str) -> None:
    """Reduced precision by ``PRECISION_ACCEPTANCE``: FP16 detections matched one to one (box IoU,
    label), INT8 the top-k labels (each of the reference's k best detections has a detection on the
    same object, box IoU >= SAME_OBJECT_BOX_IOU, with its label); masks the reference's choice or, at
    a stability tie, its other candidate (``single_mask_accepted``). ``ref`` is ``run(...,
    candidates=True)``'s."""
    acc = PRECISION_ACCEPTANCE[precision]
    ref_boxes, ref_scores, ref_labels, ref = ref
    assert len(ref_boxes) > 0
    assert ref["chosen"].any(axis=(1, 2)).all(), "the reference should produce non-empty masks"
    if acc.min_box_iou is not None:
        assert len(got) == len(ref_boxes)
        iou = box_iou(ref_boxes, got.boxes)
        match = iou.argmax(axis=1)
        assert len(set(match.tolist())) == len(match)
        assert np.all(iou[np.arange(len(ref_boxes)), match] >= acc.min_box_iou)
        np.testing.assert_array_equal(got.labels[match], ref_labels)
        ref_rows, got_rows = np.arange(len(ref_boxes)), match
    else:
        ref_top = np.argsort(-ref_scores, kind="stable")[: acc.top_k_labels]
        assert len(got) > 0
        iou = box_iou(ref_boxes[ref_top], got.boxes)
        partner = iou.argmax(axis=1)
        assert np.all(iou[np.arange(len(ref_top)), partner] >= SAME_OBJECT_BOX_IOU), iou.max(axis=1)
        np.testing.assert_array_equal(got.labels[partner], ref_labels[ref_top])
        ref_rows, got_rows = ref_top, partner
    ref = {name: v[ref_rows] for name, v in ref.items()}
    ok, iou, other = single_mask_accepted(got.masks[got_rows], ref, acc.min_mask_iou)
    for i in np.flatnonzero(ok & (iou < acc.min_mask_iou)):  # the flips: accepted at a tie only
        print(f"\n{precision}: mask {i} took the other candidate (IoU {other[i]:.3f}) at a stability tie "
              f"{ref['margin_pixels'][i]:.2f} low-res pixels from the threshold")
    assert np.all(ok), {"iou": iou, "other": other, "margin_pixels": ref["margin_pixels"]}


def reference_tracking(sam_dir, frames: list[np.ndarray], boxes: np.ndarray) -> list[np.ndarray]:
    """transformers' video inference: Sam2VideoProcessor + Sam2VideoModel, boxes on frame 0; the
    binarised masks of every frame, (objects, H, W)."""
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    model = Sam2VideoModel.from_pretrained(sam_dir).eval()
    processor = Sam2VideoProcessor.from_pretrained(sam_dir)
    h, w = frames[0].shape[:2]
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=list(range(1, len(boxes) + 1)),
                                              input_boxes=[boxes.tolist()])
    out = []
    with torch.inference_mode():
        for o in model.propagate_in_video_iterator(session, start_frame_idx=0):
            masks = processor.post_process_masks([o.pred_masks], original_sizes=[[h, w]], binarize=True)[0]
            out.append(masks[:, 0].numpy())
    return out
