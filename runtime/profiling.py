"""Wall time per stage, accumulated by the pipeline and the tracker as they run.

Always on: a span is two ``perf_counter`` calls and a dict update (~1 µs), nothing next to a graph
call. ``tools.benchmark`` and ``tools.bench.tracking`` read it; users can too::

    pipe.timer.reset()
    pipe.predict(image, prompts)
    pipe.timer.per_frame_ms()   # {"preprocess": ..., "owl_image": ..., ...}

On TensorRT a graph's span ends when its outputs are on the host, so it includes the copies. A call
the pipeline only queues on a CUDA stream (the two image encoders) returns at once: its GPU time
shows up where the host next waits (head + post-processing, decoder), unless ``synchronize`` is
set, which makes those spans wait for their call (exact stages, no overlap: for measuring only).
Where the pipeline runs two graphs concurrently their spans overlap and the stages add up to more
than the wall time.

``host`` (in ``per_frame_ms`` once the pipeline has run): the wall time of ``predict`` outside graph
calls, file decoding excluded: what the host spends around the graphs. Exact where graph calls
return with their outputs (ONNX Runtime without ``concurrent``; TensorRT with ``synchronize``).
"""

from __future__ import annotations

import time
from collections import defaultdict


class StageTimer:
    """Accumulated wall time per stage (seconds) and a count of frames (images or video frames)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.frames = 0
        self.synchronize = False  # queued (CUDA stream) calls wait inside their span: exact stages
        self.graph_seconds = 0.0  # inside graph calls (``graph`` spans)
        self.wall_seconds = 0.0  # inside ``wall`` spans: the work ``host`` is measured against

    def __call__(self, stage: str) -> "_Span":
        return _Span(self, stage)

    def graph(self) -> "_Span":
        """A span around one graph call (inside a stage's span)."""
        return _Span(self, None, "graph")

    def wall(self) -> "_Span":
        """A span around the pipeline's work on a batch, file decoding excluded."""
        return _Span(self, None, "wall")

    def reset(self) -> None:
        self.seconds.clear()
        self.frames = 0
        self.graph_seconds = self.wall_seconds = 0.0

    def per_frame_ms(self) -> dict[str, float]:
        out = {k: 1000.0 * v / max(self.frames, 1) for k, v in self.seconds.items()}
        if self.wall_seconds:
            out[HOST] = 1000.0 * max(self.wall_seconds - self.graph_seconds, 0.0) / max(self.frames, 1)
        return out


class _Span:
    __slots__ = ("timer", "stage", "kind", "t0")

    def __init__(self, timer: StageTimer, stage: str | None, kind: str = "stage") -> None:
        self.timer, self.stage, self.kind = timer, stage, kind

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self.t0
        if self.stage is not None:
            self.timer.seconds[self.stage] += dt
        elif self.kind == "graph":
            self.timer.graph_seconds += dt
        else:
            self.timer.wall_seconds += dt


# Stage names of the image pipeline (runtime.owl, runtime.sam2), in pipeline order; graph stages
# carry the graph's name.
PREPROCESS = "preprocess"  # image decode excluded: the pixel graphs and their tables
OWL_HEAD_POST = "owl_head_post"  # class head graph + box/score post-processing
DECODER = "sam2_decoder"  # box prompts to model space + decoder graph calls (single or multimask)
MASK_POST = "mask_post"  # low-res logits to input-size boolean masks (the sam2_masks graph)
HOST = "host"  # per image: wall time outside graph calls (see the module docstring)
PIPELINE_STAGES = (PREPROCESS, "owl_text", "owl_image", OWL_HEAD_POST, "sam2_image", DECODER, MASK_POST)
