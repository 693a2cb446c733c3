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

    def __call__(self, stage: str) -> "_Span":
        return _Span(self, stage)

    def reset(self) -> None:
        self.seconds.clear()
        self.frames = 0

    def per_frame_ms(self) -> dict[str, float]:
        return {k: 1000.0 * v / max(self.frames, 1) for k, v in self.seconds.items()}


class _Span:
    __slots__ = ("timer", "stage", "t0")

    def __init__(self, timer: StageTimer, stage: str) -> None:
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds[self.stage] += time.perf_counter() - self.t0


# Stage names of the image pipeline (runtime.owl, runtime.sam2), in pipeline order; graph stages
# carry the graph's name.
PREPROCESS = "preprocess"  # image decode excluded: OWLv2 and SAM2 pixel preparation
OWL_HEAD_POST = "owl_head_post"  # class head graph + box/score post-processing
DECODER = "sam2_decoder"  # box prompts to model space + decoder graph calls (single or multimask)
MASK_POST = "mask_post"  # low-res logits to input-size boolean masks
PIPELINE_STAGES = (PREPROCESS, "owl_text", "owl_image", OWL_HEAD_POST, "sam2_image", DECODER, MASK_POST)
