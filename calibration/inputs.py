"""Calibration inputs of every graph, made from calibration images the way the runtime makes them.

* ``owl_text``: tokenised prompts (a fixed list of everyday objects in the pipeline's prompt
  template), ``prompts_per_run`` per run — it does not depend on the images;
* ``owl_image`` / ``sam2_image``: each image through ``preprocess_owl`` / ``preprocess_sam2``,
  one image per run;
* ``owl_head``: the FP32 ``owl_image`` outputs of each image (run in ONNX Runtime) with the FP32
  query embeddings of one prompt run;
* ``sam2_decoder`` / ``sam2_decoder_multimask``: the FP32 ``sam2_image`` outputs of each image
  with ``boxes_per_image`` boxes: the best-scoring OWLv2 detections of the image (the FP32 OWL
  graphs on the calibration prompts, as the pipeline would prompt SAM2), topped up with random
  plausible boxes (log-uniform sides from 3 % to 100 % of the image, seeded per image);
* SAM2's video graphs (an artifact exported with ``--video``; needs the artifact's ``sizes``):
  ``sam2_prompt_decoder`` takes the decoders' inputs (a frame's features and the boxes that start
  objects) and shares their feeds; the memory attention, tracking decoder, object pointer and
  memory encoder get the calls the FP32 tracker makes on short clips made of the calibration
  images (:mod:`calibration.video`).

Everything is computed on demand and kept until :meth:`CalibrationInputs.close`; ``feeds(graph,
limit=1)`` costs one image (what ModelOpt needs for its placement analysis when the ranges are
cached).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from calibration.images import CalibrationImages
from calibration.video import RECORDED_GRAPHS, VIDEO_SIZES, VideoClips, VideoRecording
from runtime.backends.onnxruntime import OrtGraph
from runtime.graphs import (DYNAMIC_DIMS, GRAPHS, NUM_BOXES, NUM_OBJECTS, OWL_HEAD, OWL_IMAGE, OWL_TEXT, SAM2_DECODER,
                            SAM2_DECODER_MULTIMASK, SAM2_IMAGE, SAM2_PROMPT_DECODER, SAM2_VIDEO_GRAPHS)
from runtime.manifest import TOKENIZER_DIR, graph_file_name
from runtime.owl import OwlDetector
from runtime.preprocessing import (OwlPreprocessing, Sam2Preprocessing, boxes_to_sam2_input, preprocess_owl,
                                   preprocess_sam2)
from runtime.tokenizer import PromptTokenizer

#: Everyday objects (COCO's categories and a few more): the text graph is calibrated on these.
CALIBRATION_PROMPTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "suitcase", "frisbee", "skis",
    "sports ball", "kite", "skateboard", "surfboard", "bottle", "wine glass", "cup", "fork", "knife",
    "bowl", "banana", "apple", "sandwich", "orange", "pizza", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "keyboard", "cell phone", "microwave",
    "oven", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "toothbrush",
    "tree", "building", "road", "sky", "window", "door", "shoe", "hat", "flower", "red car",
)

_BOX_MIN_FRACTION, _BOX_MAX_FRACTION = 0.03, 1.0

# graph -> the FP32 graphs whose outputs its calibration inputs are made of
UPSTREAM: dict[str, tuple[str, ...]] = {
    OWL_TEXT.name: (),
    OWL_IMAGE.name: (),
    OWL_HEAD.name: (OWL_IMAGE.name, OWL_TEXT.name),
    SAM2_IMAGE.name: (),
    SAM2_DECODER.name: (SAM2_IMAGE.name, OWL_TEXT.name, OWL_IMAGE.name, OWL_HEAD.name),
    SAM2_DECODER_MULTIMASK.name: (SAM2_IMAGE.name, OWL_TEXT.name, OWL_IMAGE.name, OWL_HEAD.name),
}
# SAM2's video graphs -> the FP32 graphs their inputs come from: the prompt decoder's are the decoders';
# the tracker's calls depend on every graph it runs (memory attention's inputs, for one, are made by
# the memory encoder, the object pointer and the decoders from what memory attention gave earlier)
# and on the OWLv2 graphs that give the boxes
VIDEO_UPSTREAM: dict[str, tuple[str, ...]] = {
    SAM2_PROMPT_DECODER.name: UPSTREAM[SAM2_DECODER.name],
    **{name: (SAM2_IMAGE.name, OWL_TEXT.name, OWL_IMAGE.name, OWL_HEAD.name,
              *(g.name for g in SAM2_VIDEO_GRAPHS if g.name != name)) for name in RECORDED_GRAPHS},
}
# graphs whose inputs do not depend on the images
_IMAGE_FREE = (OWL_TEXT.name,)


def upstream(graph: str) -> tuple[str, ...]:
    """The FP32 graphs whose outputs the calibration inputs of ``graph`` are made of."""
    return UPSTREAM[graph] if graph in UPSTREAM else VIDEO_UPSTREAM[graph]


def random_boxes_xyxy(rng: np.random.Generator, n: int | tuple[int, ...], h: int, w: int) -> np.ndarray:
    """``n`` valid xyxy boxes inside an ``h x w`` image, sides log-uniform from 3 % to 100 % of it
    (``n`` a shape: an array of that shape of boxes, e.g. ``(batch, num_boxes)``)."""
    shape = (n, 2) if isinstance(n, (int, np.integer)) else (*n, 2)
    size = np.array([w, h], np.float64)
    centre = rng.uniform(0.0, 1.0, shape) * size
    side = size * np.exp(rng.uniform(np.log(_BOX_MIN_FRACTION), np.log(_BOX_MAX_FRACTION), shape))
    lo = np.clip(centre - side / 2, 0.0, size - 1.0)
    hi = np.clip(centre + side / 2, lo + 1.0, size)
    return np.concatenate([lo, hi], axis=-1).astype(np.float32)


class CalibrationInputs:
    """Per-graph calibration feeds for an exported (FP32) engines directory being built in ``root``.

    The video graphs need the artifact's ``sizes`` (with ``export.sam2_video``'s) and the maxima of
    its ``num_objects`` / ``num_boxes`` profiles (``max_dims``), as the tracker is opened with them;
    ``video`` says how the calibration images become clips.
    """

    def __init__(
        self,
        root: Path,
        images: CalibrationImages,
        owl: OwlPreprocessing,
        sam: Sam2Preprocessing,
        text_length: int,
        *,
        prompt_template: str = "a photo of {}",
        prompts: tuple[str, ...] = CALIBRATION_PROMPTS,
        prompts_per_run: int = 8,
        boxes_per_image: int = 8,
        detection_threshold: float = 0.1,
        seed: int = 0,
        progress: bool = True,
        sizes: Mapping[str, int] | None = None,
        max_dims: Mapping[str, int] | None = None,
        video: VideoClips = VideoClips(),
    ) -> None:
        self.root = Path(root)
        self.images = images
        self.owl, self.sam = owl, sam
        self.texts = [prompt_template.format(p) for p in prompts]
        self.prompts_per_run = prompts_per_run
        self.boxes_per_image = boxes_per_image
        self.detection_threshold = detection_threshold
        self.seed = seed
        self.progress = progress
        self.tokenizer = PromptTokenizer(self.root / TOKENIZER_DIR, text_length)
        self._graphs: dict[str, OrtGraph] = {}
        self._detector: OwlDetector | None = None
        self._memo: dict[tuple[str, int], Any] = {}
        self._video: VideoRecording | None = None
        if sizes is not None and all(k in sizes for k in VIDEO_SIZES):
            dims = {**{d: r.max for d, r in DYNAMIC_DIMS.items()}, **(max_dims or {})}
            self._video = VideoRecording(self, sizes, dims, video)

    # --- what the cache key needs -----------------------------------------------------------
    def supports(self, graph: str) -> bool:
        return graph in UPSTREAM or (graph in VIDEO_UPSTREAM and self._video is not None)

    def settings(self, graph: str | None = None) -> dict[str, Any]:
        """The settings the inputs of ``graph`` depend on (None: of every supported graph)."""
        base = {
            "prompts_sha256": hashlib.sha256(json.dumps(self.texts).encode()).hexdigest(),
            "prompts_per_run": self.prompts_per_run,
            "boxes_per_image": self.boxes_per_image,
            "detection_threshold": self.detection_threshold,
            "seed": self.seed,
            "owl_preprocessing": self.owl.to_dict(),
            "sam_preprocessing": self.sam.to_dict(),
        }
        if self._video is not None and (graph is None or graph in RECORDED_GRAPHS):
            base["video"] = self._video.record()
        return base

    def depends_on_images(self, graph: str) -> bool:
        return graph not in _IMAGE_FREE

    def runs(self, graph: str) -> int:
        """How many calibration runs ``feeds(graph)`` gives (for a recorded video graph: after tracking its clips)."""
        if graph in RECORDED_GRAPHS and self.supports(graph):
            return len(self.feeds(graph))
        return self._num_text_runs() if graph == OWL_TEXT.name else len(self.images)

    # --- feeds ------------------------------------------------------------------------------
    def feeds(self, graph: str, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        """One feed dict per calibration run of ``graph`` (the first ``limit`` of them)."""
        if not self.supports(graph):
            why = " (the video graphs need the artifact's sizes)" if graph in VIDEO_UPSTREAM else ""
            raise KeyError(f"no calibration inputs are defined for graph {graph!r}{why}")
        if graph in RECORDED_GRAPHS:
            return self._video.feeds(graph, limit)
        n = self.runs(graph) if limit is None else min(limit, self.runs(graph))
        make: Callable[[int], dict[str, np.ndarray]] = {
            OWL_TEXT.name: self._text_feed,
            OWL_IMAGE.name: lambda i: {OWL_IMAGE.input_names[0]: self._owl_pixels(i)},
            OWL_HEAD.name: self._head_feed,
            SAM2_IMAGE.name: lambda i: {SAM2_IMAGE.input_names[0]: self._sam_pixels(i)},
            SAM2_DECODER.name: self._decoder_feed,
            SAM2_DECODER_MULTIMASK.name: self._decoder_feed,
            SAM2_PROMPT_DECODER.name: self._decoder_feed,
        }[graph]
        return [make(i) for i in self._progress(range(n), f"calibration inputs of {graph}", graph)]

    def close(self) -> None:
        self._memo.clear()
        self._detector = None
        self._graphs.clear()
        if self._video is not None:
            self._video.close()

    # --- internals --------------------------------------------------------------------------
    def _progress(self, it, desc: str, graph: str):
        upstream_work = bool(upstream(graph)) and len(it) > 1
        if not (self.progress and upstream_work):
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, unit="run", leave=False, file=sys.stderr)

    def fp32_graph(self, name: str) -> OrtGraph:
        """The artifact's FP32 graph ``name`` in ONNX Runtime, opened once."""
        if name not in self._graphs:
            self._graphs[name] = OrtGraph(self.root / graph_file_name(name, "fp32"), GRAPHS[name])
        return self._graphs[name]

    def _cached(self, key: str, i: int, make: Callable[[], Any]) -> Any:
        if (key, i) not in self._memo:
            self._memo[(key, i)] = make()
        return self._memo[(key, i)]

    def _image(self, i: int) -> np.ndarray:
        """Image ``i``, decoded again (not kept); its size is kept for :meth:`_hw`."""
        img = self.images.load(i)
        self._memo[("hw", i)] = img.shape[:2]
        return img

    def _owl_pixels(self, i: int) -> np.ndarray:
        return self._cached("owl_pixels", i, lambda: preprocess_owl([self._image(i)], self.owl))

    def _sam_pixels(self, i: int) -> np.ndarray:
        return self._cached("sam_pixels", i, lambda: preprocess_sam2([self._image(i)], self.sam))

    def _hw(self, i: int) -> tuple[int, int]:
        return self._cached("hw", i, lambda: self._image(i).shape[:2])

    def _num_text_runs(self) -> int:
        return math.ceil(len(self.texts) / self.prompts_per_run)

    def _text_feed(self, run: int) -> dict[str, np.ndarray]:
        k = self.prompts_per_run
        return self.tokenizer(self.texts[run * k:(run + 1) * k])

    def _queries(self, run: int) -> np.ndarray:
        run %= self._num_text_runs()
        return self._cached("queries", run, lambda: self.fp32_graph(OWL_TEXT.name).run(self._text_feed(run))[
            OWL_TEXT.output_names[0]])

    def _owl_features(self, i: int) -> dict[str, np.ndarray]:
        return self._cached("owl_features", i, lambda: self.fp32_graph(OWL_IMAGE.name).run(
            {OWL_IMAGE.input_names[0]: self._owl_pixels(i)}))

    def _head_feed(self, i: int) -> dict[str, np.ndarray]:
        f = self._owl_features(i)
        values = [f[n] for n in OWL_HEAD.input_names[:3]] + [self._queries(i)]
        return dict(zip(OWL_HEAD.input_names, values, strict=True))

    def _sam_features(self, i: int) -> dict[str, np.ndarray]:
        return self._cached("sam_features", i, lambda: self.fp32_graph(SAM2_IMAGE.name).run(
            {SAM2_IMAGE.input_names[0]: self._sam_pixels(i)}))

    def _owl_detector(self) -> OwlDetector:
        """The runtime's OWLv2 detector on the FP32 graphs (for its class head and post-processing;
        calibration makes its pixel values with the numpy reference, so no pixel graph)."""
        if self._detector is None:
            self._detector = OwlDetector(self.fp32_graph(OWL_TEXT.name), None, self.fp32_graph(OWL_IMAGE.name),
                                         self.fp32_graph(OWL_HEAD.name), self.tokenizer, self.owl)
        return self._detector

    def _detections(self, i: int) -> np.ndarray:
        """OWLv2's best boxes on image ``i`` (xyxy image pixels, clipped, at most half the boxes)."""
        def make():
            features, queries = self._owl_features(i), self._queries(i)
            h, w = self._hw(i)
            (found,) = self._owl_detector().detect_features(features, [(h, w)], queries, self.detection_threshold)
            boxes = found.boxes[np.argsort(-found.scores, kind="stable")]
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
            ok = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
            return boxes[ok][: self.boxes_per_image // 2]

        return self._cached("detections", i, make)

    def decoder_boxes(self, i: int) -> np.ndarray:
        """The ``boxes_per_image`` boxes the decoders are calibrated with on image ``i`` (xyxy image
        pixels): OWLv2's best detections, then random plausible boxes (seeded by the image)."""
        h, w = self._hw(i)
        found = self._detections(i)
        rng = np.random.default_rng([self.seed, i])
        extra = random_boxes_xyxy(rng, self.boxes_per_image - len(found), h, w)
        return np.concatenate([found, extra])

    def _decoder_feed(self, i: int) -> dict[str, np.ndarray]:
        boxes = boxes_to_sam2_input(self.decoder_boxes(i), self._hw(i), self.sam)[None]
        feats = self._sam_features(i)
        feeds = {name: feats[out] for name, out in zip(SAM2_DECODER.input_names[:-1], SAM2_IMAGE.output_names,
                                                       strict=True)}
        feeds[SAM2_DECODER.input_names[-1]] = boxes.astype(np.float32)
        return feeds


def graph_digest(root: Path, graph: str) -> str:
    """sha256 of a graph's FP32 files (the .onnx and its external data, in that order)."""
    h = hashlib.sha256()
    path = Path(root) / graph_file_name(graph, "fp32")
    for f in (path, path.with_name(path.name + ".data")):
        if f.exists():
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def calibration_key(graph: str, graph_sha: Mapping[str, str], inputs: CalibrationInputs, method: str) -> dict[str, Any]:
    """What the ranges of ``graph`` depend on: its FP32 graph, the FP32 graphs its inputs come from,
    the calibration images (unless its inputs do not use them), the input settings and the method."""
    return {
        "graph": graph,
        "graph_sha256": graph_sha[graph],
        "upstream_sha256": {u: graph_sha[u] for u in upstream(graph)},
        "images_sha256": inputs.images.digest if inputs.depends_on_images(graph) else None,
        "settings": inputs.settings(graph),
        "method": method,
    }
