"""OWLv2 detection on exported graphs: prompts -> cached query embeddings; image -> boxes.

The image tower (``owl_image``) runs once per image whatever the prompts; the query embeddings of a
prompt tuple are computed once and kept in a least-recently-used cache (``query_cache_size`` prompt
tuples); the small ``owl_head`` scores patches against them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backends import GraphRunner, run_or_queue
from runtime.graphs import BATCH, OWL_HEAD, OWL_IMAGE, OWL_PIXELS, OWL_TEXT, GraphSpec
from runtime.manifest import TOKENIZER_DIR, Manifest
from runtime.preprocessing import OwlPreprocessing, postprocess_owl
from runtime.resample import image_batch, owl_tables, size_groups
from runtime.profiling import OWL_HEAD_POST, PREPROCESS, StageTimer
from runtime.tokenizer import PromptTokenizer


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 xyxy in input-image pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 index into the prompt list


_QUERY = OWL_TEXT.outputs[0].name
_BOXES = OWL_IMAGE.output_names[3]
_PIXELS = OWL_PIXELS.output_names[0]
#: Prompt tuples whose text embeddings are kept: a server cycling through many prompt sets must not
#: grow without bound; 256 tuples of 8 prompts at 512 floats are 4 MB.
QUERY_CACHE_SIZE = 256


class OwlDetector:
    def __init__(self, text: GraphRunner, pixels: GraphRunner, image: GraphRunner, head: GraphRunner,
                 tokenizer: PromptTokenizer, preprocessing: OwlPreprocessing, *,
                 query_cache_size: int = QUERY_CACHE_SIZE, max_batch: int = 1) -> None:
        self.text, self.pixels, self.image, self.head = text, pixels, image, head
        self.max_batch = max_batch
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.query_cache_size = max(int(query_cache_size), 1)
        self._queries: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self.timer = StageTimer()  # the pipeline gives both models one timer
        # TensorRT: a CUDA stream of the caller's on which ``image_features`` queues the image tower
        # (see runtime.pipeline); None: graphs called with run()
        self.stream = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, open_graph: Callable[[GraphSpec], GraphRunner]) -> "OwlDetector":
        pre = OwlPreprocessing.from_dict(manifest.preprocessing("owl"))
        tokenizer = PromptTokenizer(manifest.root / TOKENIZER_DIR, manifest.sizes["owl_text_length"])
        return cls(open_graph(OWL_TEXT), open_graph(OWL_PIXELS), open_graph(OWL_IMAGE), open_graph(OWL_HEAD),
                   tokenizer, pre, max_batch=manifest.profile_max(BATCH, 1))

    def prepare_streams(self) -> None:
        """TensorRT: each graph's context and buffers for the stream it runs on, made now; pinned
        host memory only for what the host writes or reads (the head's class embeddings, shifts and
        scales come from the image tower on the device)."""
        self.text.prepare()
        self.pixels.prepare(self.stream, host_outputs=())
        self.image.prepare(self.stream, host_outputs=(_BOXES,))
        self.head.prepare(host_inputs=(OWL_HEAD.input_names[-1],))

    def query_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        key = tuple(prompts)
        if key in self._queries:
            self._queries.move_to_end(key)
            return self._queries[key]
        with self.timer(OWL_TEXT.name), self.timer.graph():
            queries = self.text.run(self.tokenizer(list(key)))[_QUERY]
        self._queries[key] = queries
        if len(self._queries) > self.query_cache_size:
            self._queries.popitem(last=False)
        return queries

    def clear_query_cache(self) -> None:
        self._queries.clear()

    def image_features(self, images: Sequence[np.ndarray]) -> Mapping[str, Any]:
        """The image tower's outputs for a batch of same-size images (HxWx3 uint8 RGB, within the
        artifact's image profile): arrays, or with ``stream`` set the queued call's outputs (boxes
        come to the host when read; the pixels and the head's inputs stay on the device)."""
        with self.timer(PREPROCESS):
            h, w = images[0].shape[:2]
            feeds = {OWL_PIXELS.input_names[0]: image_batch(images), **owl_tables(h, w, self.preprocessing)}
            with self.timer.graph():
                pixels = run_or_queue(self.pixels, feeds, self.stream, wait=self.timer.synchronize)[_PIXELS]
        with self.timer(OWL_IMAGE.name), self.timer.graph():
            return run_or_queue(self.image, {OWL_IMAGE.input_names[0]: pixels}, self.stream, (_BOXES,),
                                wait=self.timer.synchronize)

    def detect(self, images: Sequence[np.ndarray], prompts: Sequence[str], threshold: float = 0.1) -> list[Detections]:
        """Detections for each image (HxWx3 uint8 RGB, within the image profile) of ``images``
        against ``prompts``; images of one size go through the image tower together."""
        queries = self.query_embeds(prompts)
        out: list[Detections | None] = [None] * len(images)
        for group in size_groups([im.shape for im in images], self.max_batch):
            feats = self.image_features([images[i] for i in group])
            dets = self.detect_features(feats, [images[i].shape[:2] for i in group], queries, threshold)
            for i, d in zip(group, dets, strict=True):
                out[i] = d
        return out  # type: ignore[return-value]

    def detect_features(self, features: Mapping[str, Any], image_hws: Sequence[Sequence[int]],
                        queries: np.ndarray, threshold: float = 0.1) -> list[Detections]:
        """Detections from ``image_features`` outputs (one per image size in ``image_hws``) and
        ``query_embeds`` outputs: the class head and post-processing, for callers that run the
        image tower themselves (e.g. concurrently with the SAM2 encoder)."""
        with self.timer(OWL_HEAD_POST):  # reading queued features waits for the image tower: timed here
            class_embeds, shift, scale, boxes, _objectness = (features[n] for n in OWL_IMAGE.output_names)
            head_feeds = dict(zip(OWL_HEAD.input_names, (class_embeds, shift, scale, queries), strict=True))
            with self.timer.graph():
                (logits,) = self.head.run(head_feeds).values()
            out = []
            for i, hw in enumerate(image_hws):
                b, s, l = postprocess_owl(logits[i], boxes[i], hw, threshold)
                out.append(Detections(b, s, l))
        return out
