"""The PyTorch reference pipeline an artifact is judged against: transformers' OWLv2 and SAM2 with their
processors, run as SOWLv2 runs them (all boxes of an image in one SAM2 call), and the candidates SAM2's
mask selection chose between."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from export.models import LoadedModel, load_owl, load_sam
from runtime.errors import UserError
from runtime.manifest import Manifest


def reference_sources(manifest: Manifest, owl_model: str | None = None, sam_model: str | None = None,
                      alternative: str = "") -> tuple[str, str]:
    """The checkpoints ``manifest`` was exported from (its ``sources``), each unless overridden;
    ``alternative`` ends the error when there are none (e.g. " (or --torch off)")."""
    sources = manifest.data.get("sources") or {}
    owl = owl_model or (sources.get("owl") or {}).get("model")
    sam = sam_model or (sources.get("sam") or {}).get("model")
    if not owl or not sam:
        raise UserError(f"{manifest.root}: the manifest names no source checkpoints; pass --owl-model and "
                        f"--sam-model{alternative}")
    return owl, sam


def check_same_source(manifest: Manifest, loaded: LoadedModel) -> None:
    """Refuse a reference whose config is not the one the artifact was exported from: the comparison
    would measure the difference between two models."""
    recorded = ((manifest.data.get("sources") or {}).get(loaded.family) or {}).get("config_sha256")
    if recorded and recorded != loaded.config_sha256:
        flag = "--owl-model" if loaded.family == "owl" else "--sam-model"
        raise UserError(f"{loaded.source} is not the checkpoint {manifest.root} was exported from (config sha256 "
                        f"{loaded.config_sha256[:12]}… vs {recorded[:12]}… in the manifest); pass that checkpoint "
                        f"with {flag}")


@dataclass
class ReferenceDetections:
    boxes: np.ndarray  # (N, 4) float32 xyxy in image pixels
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) index into the texts
    text_embeds: np.ndarray  # (num_texts, D) the normalised query embeddings


class ReferencePipeline:
    """``Owlv2ForObjectDetection`` + ``post_process_grounded_object_detection``, then ``Sam2Model`` +
    ``Sam2Processor`` on the boxes, in FP32 on ``device`` (TF32 off on CUDA)."""

    def __init__(self, owl: LoadedModel, sam: LoadedModel, device: str = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.owl, self.sam = owl, sam
        owl.model.to(self.device)
        sam.model.to(self.device)

    @classmethod
    def load(cls, owl_source: str, sam_source: str, device: str = "cpu") -> "ReferencePipeline":
        return cls(load_owl(owl_source), load_sam(sam_source), device)

    def detect(self, image: np.ndarray, texts: list[str], threshold: float) -> ReferenceDetections:
        import torch

        processor = self.owl.processor
        inputs = processor(text=[texts], images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.owl.model(**inputs)
        (r,) = processor.post_process_grounded_object_detection(out, threshold=threshold,
                                                                target_sizes=[image.shape[:2]])
        return ReferenceDetections(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy(), r["labels"].cpu().numpy(),
                                   out.text_embeds[0].cpu().numpy())

    def sam2_candidates(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
        return sam2_candidates(self.sam.model, self.sam.processor, image, boxes, self.device)


def sam2_candidates(model: Any, processor: Any, image: np.ndarray, boxes: np.ndarray,
                    device: Any = None) -> dict[str, np.ndarray]:
    """The reference's single-mask output, and the two candidates its stability rule chooses from:
    the single-mask token and the multimask output with the best predicted IoU.

    ``model`` / ``processor``: transformers ``Sam2Model`` (eval) and ``Sam2Processor``; ``boxes``: (N, 4)
    xyxy in ``image`` pixels, all prompted at once as the pipeline does. Returns the masks (N, H, W) bool
    ``chosen`` (the reference's output), ``single`` (the single-mask token), ``multi`` / ``multi_second``
    (the best and second best multimask output by predicted IoU); ``multi_margin`` (best minus second
    predicted IoU), ``margin_pixels`` (how many low-res pixels the stability score is from its
    threshold) and ``picked_single`` (which candidate the stability rule chose)."""
    import torch

    decoder = model.mask_decoder
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    sizes = inputs["original_sizes"]
    if device is not None:
        inputs = inputs.to(device)
    post = lambda m: processor.post_process_masks(m.cpu(), sizes)[0].numpy()  # noqa: E731
    rows = np.arange(len(boxes))
    with torch.inference_mode():
        chosen = model(**inputs, multimask_output=False)
        multi = model(**inputs, multimask_output=True)
        decoder.dynamic_multimask_via_stability = False
        try:
            single = model(**inputs, multimask_output=False)
        finally:
            decoder.dynamic_multimask_via_stability = True
    logits = single.pred_masks[0, :, 0].flatten(1).cpu()
    delta = decoder.dynamic_multimask_stability_delta
    area_i, area_u = (logits > delta).sum(-1).double(), (logits > -delta).sum(-1).double()
    stability = torch.where(area_u > 0, area_i / area_u.clamp(min=1), torch.ones_like(area_u)).numpy()
    iou_scores = multi.iou_scores[0].cpu().numpy()
    order = np.argsort(-iou_scores, axis=-1, kind="stable")
    predicted = np.take_along_axis(iou_scores, order, axis=-1)
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
