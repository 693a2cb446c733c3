"""tools.serve.model in-process (no Triton): batches of requests against Pipeline.predict, grouping by
prompts, the text-embedding cache, and one error line per bad request while its batch is served."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from runtime import rle
from tools.serve.interface import IMAGE, OWL_DETECT, OWLSAM, PROMPTS, THRESHOLD
from tools.serve.model import RequestHandler

MAX_PIXELS = 250 * 250


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def request(data: bytes, prompts, threshold=None) -> dict[str, np.ndarray]:
    """A request's tensors as Triton's Python backend hands them over (batch dimension 1)."""
    inputs = {IMAGE.name: np.array([[data]], dtype=object),
              PROMPTS.name: np.array([[p if isinstance(p, bytes) else p.encode() for p in prompts]], dtype=object)
              .reshape(1, len(prompts))}
    if threshold is not None:
        inputs[THRESHOLD.name] = np.array([[threshold]], np.float32)
    return inputs


@pytest.fixture(scope="module")
def images(make_image) -> list[np.ndarray]:
    return [make_image(h, w, seed=40 + i) for i, (h, w) in enumerate([(120, 160), (200, 90), (64, 64), (97, 131), (150, 150)])]


def assert_matches(out: dict[str, np.ndarray], expected, hw, masks: bool = True) -> None:
    n = len(expected)
    assert out["boxes"].shape == (1, n, 4) and out["boxes"].dtype == np.float32
    np.testing.assert_allclose(out["boxes"][0], expected.boxes, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["scores"][0], expected.scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["labels"][0], expected.labels)
    assert out["labels"].dtype == np.int64
    np.testing.assert_array_equal(out["image_size"], [hw])
    if masks:
        assert out["masks_rle"].shape == (1, n)
        decoded = [rle.decode(json.loads(s)) for s in out["masks_rle"][0]]
        assert len(decoded) == n
        for got, want in zip(decoded, expected.masks, strict=True):
            np.testing.assert_array_equal(got, want)
    else:
        assert "masks_rle" not in out


def test_a_batch_of_mixed_sizes_and_prompt_lists_equals_predict(tiny_pipeline, images):
    handler = RequestHandler(tiny_pipeline, OWLSAM, MAX_PIXELS)
    prompt_lists = [["cat", "red car"], ["dog"], ["cat", "red car"], ["a bird", "tree", "cat"], ["dog"]]
    thresholds = [None, 0.05, None, 0.2, 0.05]
    batch = [request(encode(im), p, t) for im, p, t in zip(images, prompt_lists, thresholds, strict=True)]
    outs = handler.handle(batch)
    total = 0
    for out, im, p, t in zip(outs, images, prompt_lists, thresholds, strict=True):
        assert isinstance(out, dict), out
        expected = tiny_pipeline.predict(im, p, t)
        total += len(expected)
        assert_matches(out, expected, im.shape[:2])
    assert total > 10  # the comparison covered real detections


def test_detect_model_equals_predict_without_masks(tiny_pipeline, images):
    handler = RequestHandler(tiny_pipeline, OWL_DETECT, MAX_PIXELS)
    # more requests than the artifact's batch profile: the detector runs in chunks
    batch = [request(encode(im), ["cat", "red car"], 0.05) for im in images]
    assert len(batch) > tiny_pipeline.max_batch
    for out, im in zip(handler.handle(batch), images, strict=True):
        expected = tiny_pipeline.predict(im, ["cat", "red car"], 0.05)
        assert len(expected) > 0
        assert_matches(out, expected, im.shape[:2], masks=False)
        assert list(out) == OWL_DETECT.output_names


def test_text_embeddings_are_computed_once_per_prompt_list(tiny_pipeline, images):
    calls = []
    text = tiny_pipeline.owl.text

    class Counting:
        spec = text.spec

        def run(self, feeds):
            calls.append(feeds["input_ids"].shape[0])
            return text.run(feeds)

    tiny_pipeline.owl.clear_query_cache()
    tiny_pipeline.owl.text = Counting()
    try:
        handler = RequestHandler(tiny_pipeline, OWLSAM, MAX_PIXELS)
        data = encode(images[0])
        for _ in range(3):
            outs = handler.handle([request(data, ["cat", "dog"]), request(data, ["tree"]), request(data, ["cat", "dog"])])
            assert all(isinstance(o, dict) for o in outs)
    finally:
        tiny_pipeline.owl.text = text
    assert sorted(calls) == [1, 2]  # one text run per prompt list across three batches


def _bad_requests(images) -> list[tuple[dict, str]]:
    good = encode(images[0])
    too_big = encode(np.zeros((260, 250, 3), np.uint8))
    wrong_batch = request(good, ["cat"])
    wrong_batch[IMAGE.name] = np.array([[good], [good]], dtype=object)
    return [
        (request(b"", ["cat"]), "image: no image data (0 bytes); send the bytes of a JPEG, PNG, BMP, TIFF or WebP file"),
        (request(b"GIF89a not really", ["cat"]), "image: not an image file PIL can read; pass a JPEG, PNG, BMP, TIFF or WebP image"),
        (request(encode(images[0], "GIF"), ["cat"]), "image: not an image file PIL can read; pass a JPEG, PNG, BMP, TIFF or WebP image"),
        (request(good[: len(good) // 2], ["cat"]), "image: the image data is truncated or corrupt"),
        (request(too_big, ["cat"]), f"image: 250x260 is 65000 pixels, more than the limit of {MAX_PIXELS}; downscale it first"),
        (request(good, []), "no prompts given; pass at least one text prompt"),
        (request(good, ["cat", "  "]), "prompt 1 is empty; pass a word or phrase such as 'cat'"),
        (request(good, [b"\xff\xfe"]), "prompt 0 is not valid UTF-8; send each prompt as UTF-8 text"),
        (request(good, ["cat"] * 65), "65 prompts is more than this server's artifact takes (64); send fewer, or export "
                                      "the artifact with --max-prompts 65"),
        (request(good, ["cat"], 1.5), "threshold must be in [0, 1], got 1.5"),
        (request(good, ["cat"], float("nan")), "threshold must be in [0, 1], got nan"),
        (wrong_batch, "input 'image' has batch size 2; send one image per request (batch size 1): the server batches "
                      "requests itself"),
    ]


@pytest.mark.parametrize("spec", [OWLSAM, OWL_DETECT], ids=lambda s: s.name)
def test_each_bad_request_gets_its_own_error_and_the_batch_is_served(tiny_pipeline, images, spec):
    handler = RequestHandler(tiny_pipeline, spec, MAX_PIXELS)
    bad = _bad_requests(images)
    good = request(encode(images[1]), ["cat", "red car"], 0.05)
    batch = [r for req, _ in bad for r in (req, good)]  # every bad request beside a good one
    outs = handler.handle(batch)
    expected = tiny_pipeline.predict(images[1], ["cat", "red car"], 0.05)
    for k, (_, message) in enumerate(bad):
        err, ok = outs[2 * k], outs[2 * k + 1]
        assert isinstance(err, str) and err.startswith(message), (err, message)
        assert "\n" not in err and "Traceback" not in err
        assert_matches(ok, expected, images[1].shape[:2], masks=spec is OWLSAM)


def test_an_internal_error_answers_its_group_in_one_line_and_spares_the_others(tiny_pipeline, images, caplog):
    handler = RequestHandler(tiny_pipeline, OWLSAM, MAX_PIXELS)
    predict_batch = tiny_pipeline.predict_batch

    def failing(images_, prompts, threshold=None):
        if "boom" in prompts:
            raise RuntimeError("a bug deep inside")
        return predict_batch(images_, prompts, threshold)

    tiny_pipeline.predict_batch = failing
    try:
        outs = handler.handle([request(encode(images[0]), ["boom"]), request(encode(images[2]), ["cat"])])
    finally:
        del tiny_pipeline.predict_batch
    assert outs[0] == "internal error in model owlsam (RuntimeError); the server log has the details"
    assert_matches(outs[1], tiny_pipeline.predict(images[2], ["cat"]), images[2].shape[:2])
    assert "a bug deep inside" in caplog.text  # the details go to the server's log
