"""SAM2 box-prompted segmentation on exported graphs: one encoder pass serves every box of an image.

The decoder runs all boxes of an image in one call, in chunks of the engine profile's maximum
number of boxes. By default it is the single-mask decoder (SAM2's stability fallback inside the
graph), as SOWLv2 prompts with boxes: a box is an unambiguous prompt, and one mask per box means
a third of the logits to upsample. ``multimask=True`` picks the best of three by predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backends import GraphRunner, run_or_queue
from runtime.graphs import (NUM_BOXES, NUM_MASKS, SAM2_DECODER, SAM2_DECODER_MULTIMASK, SAM2_IMAGE, SAM2_MASKS,
                            SAM2_PIXELS, GraphSpec)
from runtime.manifest import Manifest
from runtime.preprocessing import Sam2Preprocessing, boxes_to_sam2_input
from runtime.profiling import DECODER, MASK_POST, PREPROCESS, StageTimer
from runtime.resample import image_batch, mask_tables, sam2_tables


_BOXES = SAM2_DECODER.input_names[-1]
_PIXELS = SAM2_PIXELS.output_names[0]


def box_bucket(n: int, max_boxes: int) -> int:
    """The decoder call size for ``n`` boxes with CUDA graphs: the next power of two, at most ``max_boxes``."""
    return min(1 << max(n - 1, 0).bit_length(), max_boxes)


@dataclass
class Masks:
    masks: np.ndarray  # (N, H, W) bool, H, W of the input image
    iou_scores: np.ndarray  # (N,) float32, the decoder's predicted IoU of each chosen mask
    object_score_logits: np.ndarray  # (N,) float32


class MaskUpsampler:
    """Low-res mask logits to boolean masks at the image size through ``sam2_masks``, in calls of at
    most the profile's ``num_masks``; the tables are the host's only work."""

    def __init__(self, graph: GraphRunner, mask_size: int, max_masks: int, timer: StageTimer) -> None:
        self.graph, self.mask_size, self.max_masks, self.timer = graph, mask_size, max_masks, timer
        self.stream = None  # TensorRT: a stream of the caller's to run on (None: the graph's own, run())

    def prepare(self) -> None:
        """TensorRT: the context and buffers for the calls' stream, made now (only the masks come back)."""
        self.graph.prepare(self.stream, host_outputs=SAM2_MASKS.output_names)

    def __call__(self, logits: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
        """``logits`` [N, m, m] float32 -> bool [N, H, W]."""
        h, w = int(image_hw[0]), int(image_hw[1])
        tables = mask_tables(h, w, self.mask_size)
        parts = []
        for start in range(0, len(logits), self.max_masks):
            feeds = {SAM2_MASKS.input_names[0]: logits[start : start + self.max_masks], **tables}
            with self.timer.graph():
                if self.stream is None:
                    out = self.graph.run(feeds)
                else:
                    out = self.graph.enqueue(feeds, self.stream, host_outputs=SAM2_MASKS.output_names).outputs()
                parts.append(out[SAM2_MASKS.output_names[0]])
        if not parts:
            return np.zeros((0, h, w), bool)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Sam2Segmenter:
    def __init__(self, pixels: GraphRunner, image: GraphRunner, decoder: GraphRunner, masks: GraphRunner,
                 preprocessing: Sam2Preprocessing, max_boxes: int, max_masks: int) -> None:
        self.pixels, self.image, self.decoder = pixels, image, decoder
        self.preprocessing = preprocessing
        self.max_boxes = max_boxes
        self._timer = StageTimer()  # the pipeline gives both models one timer
        self.upsample = MaskUpsampler(masks, preprocessing.mask_size, max_masks, self._timer)
        # TensorRT: a CUDA stream of the caller's on which ``image_features`` queues the encoder,
        # its outputs staying on the device for the decoder (see runtime.pipeline); None: run()
        self.stream = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, open_graph: Callable[[GraphSpec], GraphRunner],
                      multimask: bool = False) -> "Sam2Segmenter":
        pre = Sam2Preprocessing.from_dict(manifest.preprocessing("sam"))
        decoder = SAM2_DECODER_MULTIMASK if multimask else SAM2_DECODER
        return cls(open_graph(SAM2_PIXELS), open_graph(SAM2_IMAGE), open_graph(decoder), open_graph(SAM2_MASKS), pre,
                   manifest.profile_max(NUM_BOXES), manifest.profile_max(NUM_MASKS))

    @property
    def timer(self) -> StageTimer:
        return self._timer

    @timer.setter
    def timer(self, timer: StageTimer) -> None:
        self._timer = self.upsample.timer = timer

    def prepare_streams(self) -> None:
        """TensorRT: the encoder's context and buffers for its stream, made now (its features stay
        on the device); the decoder's are made per box bucket (CUDA graphs) or here."""
        self.pixels.prepare(self.stream, host_outputs=())
        self.image.prepare(self.stream, host_outputs=())
        self.decoder.prepare(host_inputs=(_BOXES,))
        self.upsample.prepare()

    def image_features(self, images: Sequence[np.ndarray]) -> Mapping[str, Any]:
        """Encoder outputs for a batch of same-size HxWx3 uint8 RGB images: arrays, or with ``stream``
        set device tensors of the queued call (the decoder waits for it on the device)."""
        with self.timer(PREPROCESS):
            h, w = images[0].shape[:2]
            feeds = {SAM2_PIXELS.input_names[0]: image_batch(images), **sam2_tables(h, w, self.preprocessing)}
            with self.timer.graph():
                pixels = run_or_queue(self.pixels, feeds, self.stream, wait=self.timer.synchronize)[_PIXELS]
        with self.timer(SAM2_IMAGE.name), self.timer.graph():
            return run_or_queue(self.image, {SAM2_IMAGE.input_names[0]: pixels}, self.stream,
                                wait=self.timer.synchronize)

    def segment(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> Masks:
        """Masks of ``image`` for each box (xyxy, input-image pixels)."""
        return self.segment_features(self.image_features([image]), 0, image.shape[:2], boxes_xyxy)

    def segment_features(self, features: Mapping[str, Any], index: int, image_hw: Sequence[int],
                         boxes_xyxy: np.ndarray, clip_boxes: bool = True) -> Masks:
        """Masks for the boxes of image ``index`` of an encoded batch.

        ``clip_boxes=False`` prompts with the boxes as given, also where they extend past the image,
        as ``Sam2Processor`` does (it does not clip): the image pipeline uses it to reproduce the
        reference pipeline, which hands OWLv2's unclipped boxes to SAM2.
        """
        h, w = int(image_hw[0]), int(image_hw[1])
        with self.timer(DECODER):
            boxes = boxes_to_sam2_input(boxes_xyxy, (h, w), self.preprocessing, clip=clip_boxes)
            if len(boxes) == 0:
                return Masks(np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros(0, np.float32))
            feats = [features[n][index : index + 1] for n in SAM2_IMAGE.output_names]
            chunks = []
            buckets = bool(getattr(self.decoder, "cuda_graph", False))
            for start in range(0, len(boxes), self.max_boxes):
                chunk = boxes[None, start : start + self.max_boxes]
                n = chunk.shape[1]
                if buckets:  # a CUDA graph per bucket replays: pad to a power of two (boxes decode independently)
                    chunk = np.concatenate([chunk, np.repeat(chunk[:, -1:], box_bucket(n, self.max_boxes) - n, axis=1)], 1)
                feeds = dict(zip(self.decoder.spec.input_names, (*feats, chunk), strict=True))
                with self.timer.graph():
                    out = self.decoder.run(feeds)
                chunks.append([out[name][0][:n] for name in self.decoder.spec.output_names])
            logits, iou, obj = (np.concatenate(parts) for parts in zip(*chunks))
        with self.timer(MASK_POST):
            best = iou.argmax(axis=1)  # a single-mask decoder has one column: index 0
            rows = np.arange(len(boxes))
            masks = self.upsample(logits[rows, best], (h, w))
        return Masks(masks, iou[rows, best].astype(np.float32), obj[:, 0].astype(np.float32))
