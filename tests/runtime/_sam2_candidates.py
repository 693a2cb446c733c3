"""The FP32 transformers SAM2 reference with the candidates its mask selection chooses between.

Shared by the per-graph precision tests and the end-to-end pipeline parity tests, so that both judge a
reduced-precision single-mask output by the same tie rule (``single_mask_accepted``) and pair INT8
detections with the reference's by the same box IoU (``SAME_OBJECT_BOX_IOU``).
"""

from __future__ import annotations

import numpy as np
import torch

from runtime.graphs import BEST_IOU, PRECISION_ACCEPTANCE, STABILITY
from runtime.metrics import mask_iou

# a stability score this many low-res mask pixels from SAM2's threshold is a tie: the flip margin that
# the graph-level precision acceptance states (the same for every precision; see
# test_precision_parity.test_masks_match_the_fp32_reference)
TIE_PIXELS = PRECISION_ACCEPTANCE["fp16"].flip_margins[STABILITY]
assert all(a.flip_margins[STABILITY] == TIE_PIXELS for a in PRECISION_ACCEPTANCE.values())
# predicted IoUs of the two best multimask outputs this close are a tie for the best-of-three choice
IOU_TIE = PRECISION_ACCEPTANCE["fp16"].flip_margins[BEST_IOU]
assert all(a.flip_margins[BEST_IOU] == IOU_TIE for a in PRECISION_ACCEPTANCE.values())

# INT8 is judged by the labels of the reference's best detections (PRECISION_ACCEPTANCE["int8"].top_k_labels),
# not one to one: each of them needs a "partner", the INT8 detection with the highest box IoU, and the
# partner must lie on the same object, which is what a box IoU of at least this much is taken to mean
# (the usual detection-matching threshold; INT8 boxes are otherwise free to move). The partner's label
# and mask are then judged against the reference detection's.
SAME_OBJECT_BOX_IOU = 0.5


def sam2_candidates(model, processor, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's single-mask output, and the two candidates its stability rule chooses from:
    the single-mask token and the multimask output with the best predicted IoU.

    ``model`` / ``processor``: transformers ``Sam2Model`` (eval) and ``Sam2Processor``; ``boxes``: (N, 4)
    xyxy in ``image`` pixels, all prompted at once as the pipeline does."""
    decoder = model.mask_decoder
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    post = lambda m: processor.post_process_masks(m, inputs["original_sizes"])[0].numpy()  # noqa: E731
    rows = np.arange(len(boxes))
    with torch.inference_mode():
        chosen = model(**inputs, multimask_output=False)
        multi = model(**inputs, multimask_output=True)
        decoder.dynamic_multimask_via_stability = False
        try:
            single = model(**inputs, multimask_output=False)
        finally:
            decoder.dynamic_multimask_via_stability = True
    logits = single.pred_masks[0, :, 0].flatten(1)
    delta = decoder.dynamic_multimask_stability_delta
    area_i, area_u = (logits > delta).sum(-1).double(), (logits > -delta).sum(-1).double()
    stability = torch.where(area_u > 0, area_i / area_u.clamp(min=1), torch.ones_like(area_u)).numpy()
    order = np.argsort(-multi.iou_scores[0].numpy(), axis=-1, kind="stable")
    predicted = np.take_along_axis(multi.iou_scores[0].numpy(), order, axis=-1)
    multi_masks = post(multi.pred_masks)
    return {
        "chosen": post(chosen.pred_masks)[:, 0],
        "single": post(single.pred_masks)[:, 0],
        "multi": multi_masks[rows, order[:, 0]],
        "multi_second": multi_masks[rows, order[:, 1]],
        "multi_margin": predicted[:, 0] - predicted[:, 1],  # best minus second predicted IoU
        # how many low-res pixels the stability score is from the threshold it is compared with
        "margin_pixels": np.abs(stability - decoder.dynamic_multimask_stability_thresh) * area_u.numpy(),
        "picked_single": stability >= decoder.dynamic_multimask_stability_thresh,
    }


def single_mask_accepted(got: np.ndarray, ref: dict[str, np.ndarray], min_iou: float):
    """Per mask: IoU >= ``min_iou`` with the reference's choice, or, where the reference's stability score
    is within ``TIE_PIXELS`` of SAM2's threshold, with its other candidate. Returns (ok, iou, other)."""
    iou = mask_iou(got, ref["chosen"])
    other = mask_iou(got, np.where(ref["picked_single"][:, None, None], ref["multi"], ref["single"]))
    tie = ref["margin_pixels"] <= TIE_PIXELS
    return (iou >= min_iou) | (tie & (other >= min_iou)), iou, other
