"""Stage timing of the image pipeline (runtime.profiling) and the bounded text-embedding cache."""

from __future__ import annotations

import time

import pytest

from runtime import Pipeline
from runtime.owl import OwlDetector
from runtime.profiling import HOST, PIPELINE_STAGES


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    with Pipeline.load(tiny_artifact, backend="onnxruntime") as p:
        yield p


def test_predict_times_every_stage_and_counts_images(pipe, make_image):
    pipe.timer.reset()
    pipe.owl.clear_query_cache()
    images = [make_image(120, 160, seed=1), make_image(90, 70, seed=2)]
    results = pipe.predict_batch(images, ["cat", "dog"], threshold=0.0, max_detections=2)
    assert [len(r) for r in results] == [2, 2]
    assert pipe.timer.frames == 2
    assert set(pipe.timer.seconds) == set(PIPELINE_STAGES)
    assert all(v > 0 for v in pipe.timer.seconds.values())
    per_image = pipe.timer.per_frame_ms()
    assert per_image["owl_image"] == pytest.approx(1000 * pipe.timer.seconds["owl_image"] / 2)
    # cached text: a second call with the same prompts adds no text time
    text = pipe.timer.seconds["owl_text"]
    pipe.predict(images[0], ["cat", "dog"])
    assert pipe.timer.seconds["owl_text"] == text and pipe.timer.frames == 3


def test_text_cache_keeps_the_most_recently_used_prompt_sets(pipe):
    owl = pipe.owl
    small = OwlDetector(owl.text, owl.pixels, owl.image, owl.head, owl.tokenizer, owl.preprocessing, query_cache_size=2)
    calls = []
    run = small.text.run

    class Counting:
        spec = small.text.spec

        def run(self, feeds):
            calls.append(1)
            return run(feeds)

    small.text = Counting()
    a, b, c = ("a photo of cat",), ("a photo of dog",), ("a photo of car",)
    first = small.query_embeds(a)
    small.query_embeds(b)
    assert small.query_embeds(a) is first and len(calls) == 2  # a is now the most recent
    small.query_embeds(c)  # evicts b, the least recently used
    assert list(small._queries) == [a, c]
    small.query_embeds(b)
    assert len(calls) == 4 and list(small._queries) == [c, b]


class _Slow:
    """A graph runner that takes ``delay`` seconds longer per call."""

    def __init__(self, inner, delay: float):
        self.inner, self.spec, self.delay = inner, inner.spec, delay

    def run(self, feeds):
        time.sleep(self.delay)
        return self.inner.run(feeds)


def test_host_is_the_time_outside_graph_calls(pipe, make_image):
    image = make_image(120, 160, seed=1)

    def host_and_stages() -> tuple[float, dict[str, float]]:
        pipe.timer.reset()
        pipe.predict(image, ["cat", "dog"], threshold=0.0, max_detections=2)
        ms = pipe.timer.per_frame_ms()
        return ms[HOST], ms

    host_and_stages()  # tables and text cached
    quick, _ = host_and_stages()
    saved = pipe.owl.head, pipe.sam.upsample.graph
    pipe.owl.head, pipe.sam.upsample.graph = _Slow(saved[0], 0.2), _Slow(saved[1], 0.2)
    try:
        slow, stages = host_and_stages()
    finally:
        pipe.owl.head, pipe.sam.upsample.graph = saved
    # the 400 ms added inside graph calls show in their stages, not in the host's share (the margin
    # is for a loaded machine: host counting the calls would add all 400)
    assert stages["owl_head_post"] >= 200 and stages["mask_post"] >= 200
    assert 0 < quick and slow < quick + 100
