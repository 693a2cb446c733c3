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
from runtime.graphs import OWL_HEAD, OWL_IMAGE, OWL_TEXT, GraphSpec
from runtime.manifest import TOKENIZER_DIR, Manifest
from runtime.preprocessing import OwlPreprocessing, postprocess_owl, preprocess_owl
from runtime.profiling import OWL_HEAD_POST, PREPROCESS, StageTimer
from runtime.tokenizer import PromptTokenizer


@dataclass
class Detections:
    boxes: np.ndarray  # (N, 4) float32 xyxy in input-image pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 index into the prompt list


_QUERY = OWL_TEXT.outputs[0].name
_BOXES = OWL_IMAGE.output_names[3]
#: Prompt tuples whose text embeddings are kept: a server cycling through many prompt sets must not
#: grow without bound; 256 tuples of 8 prompts at 512 floats are 4 MB.
QUERY_CACHE_SIZE = 256


class OwlDetector:
    def __init__(self, text: GraphRunner, image: GraphRunner, head: GraphRunner,
                 tokenizer: PromptTokenizer, preprocessing: OwlPreprocessing, *,
                 query_cache_size: int = QUERY_CACHE_SIZE) -> None:
        self.text, self.image, self.head = text, image, head
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
        return cls(open_graph(OWL_TEXT), open_graph(OWL_IMAGE), open_graph(OWL_HEAD), tokenizer, pre)

    def prepare_streams(self) -> None:
        """TensorRT: each graph's context and buffers for the stream it runs on, made now; pinned
        host memory only for what the host writes or reads (the head's class embeddings, shifts and
        scales come from the image tower on the device)."""
        self.text.prepare()
        self.image.prepare(self.stream, host_outputs=(_BOXES,))
        self.head.prepare(host_inputs=(OWL_HEAD.input_names[-1],))

    def query_embeds(self, prompts: Sequence[str]) -> np.ndarray:
        key = tuple(prompts)
        if key in self._queries:
            self._queries.move_to_end(key)
            return self._queries[key]
        with self.timer(OWL_TEXT.name):
            queries = self.text.run(self.tokenizer(list(key)))[_QUERY]
        self._queries[key] = queries
        if len(self._queries) > self.query_cache_size:
            self._queries.popitem(last=False)
        return queries

    def clear_query_cache(self) -> None:
        self._queries.clear()

    def image_features(self, images: Sequence[np.ndarray]) -> Mapping[str, Any]:
        """The image tower's outputs for a batch: arrays, or with ``stream`` set the queued call's
        outputs (boxes come to the host when read; the head's inputs stay on the device)."""
        with self.timer(PREPROCESS):
            pixels = preprocess_owl(list(images), self.preprocessing)
        feeds = {OWL_IMAGE.inputs[0].name: pixels}
        with self.timer(OWL_IMAGE.name):
            return run_or_queue(self.image, feeds, self.stream, (_BOXES,), wait=self.timer.synchronize)

    def detect(self, images: Sequence[np.ndarray], prompts: Sequence[str], threshold: float = 0.1) -> list[Detections]:
        """Detections for each image (HxWx3 uint8 RGB) of ``images`` against ``prompts``."""
        queries = self.query_embeds(prompts)
        feats = self.image_features(images)
        return self.detect_features(feats, [img.shape[:2] for img in images], queries, threshold)

    def detect_features(self, features: Mapping[str, Any], image_hws: Sequence[Sequence[int]],
                        queries: np.ndarray, threshold: float = 0.1) -> list[Detections]:
        """Detections from ``image_features`` outputs (one per image size in ``image_hws``) and
        ``query_embeds`` outputs: the class head and post-processing, for callers that run the
        image tower themselves (e.g. concurrently with the SAM2 encoder)."""
        with self.timer(OWL_HEAD_POST):  # reading queued features waits for the image tower: timed here
            class_embeds, shift, scale, boxes, _objectness = (features[n] for n in OWL_IMAGE.output_names)
            head_feeds = dict(zip(OWL_HEAD.input_names, (class_embeds, shift, scale, queries), strict=True))
            (logits,) = self.head.run(head_feeds).values()
            out = []
            for i, hw in enumerate(image_hws):
                b, s, l = postprocess_owl(logits[i], boxes[i], hw, threshold)
                out.append(Detections(b, s, l))
        return out
