"""Calibration inputs: the runtime's preprocessing, upstream FP32 graphs for downstream inputs, boxes."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.images import read_calibration_images
from calibration.inputs import UPSTREAM, CalibrationInputs, calibration_key, graph_digest
from runtime.backends import onnxruntime_opener
from runtime.graphs import OWL_IMAGE, SAM2_DECODER, SAM2_IMAGE
from runtime.images import load_image
from runtime.manifest import load_manifest
from runtime.owl import OwlDetector
from runtime.preprocessing import (OwlPreprocessing, Sam2Preprocessing, boxes_to_sam2_input, preprocess_owl,
                                   preprocess_sam2)
from runtime.sam2 import Sam2Segmenter


@pytest.fixture(scope="module")
def manifest(tiny_artifact):
    return load_manifest(tiny_artifact)


def make_inputs(manifest, calibration_dir, count=6, **kw):
    images = read_calibration_images(calibration_dir, count=count, progress=False)
    return CalibrationInputs(manifest.root, images, OwlPreprocessing.from_dict(manifest.preprocessing("owl")),
                             Sam2Preprocessing.from_dict(manifest.preprocessing("sam")),
                             manifest.sizes["owl_text_length"], progress=False, **kw)


@pytest.fixture(scope="module")
def inputs(manifest, calibration_dir):
    """One CalibrationInputs for the tests that only read it (its feeds are computed once, memoised);
    a test that needs a fresh one (what a first call costs) makes its own."""
    made = make_inputs(manifest, calibration_dir, boxes_per_image=8)
    yield made
    made.close()


def test_feeds_of_every_graph_follow_the_spec(manifest, inputs, assert_feeds_follow_spec):
    for name in UPSTREAM:
        feeds = inputs.feeds(name)
        assert len(feeds) == inputs.runs(name) > 1
        assert_feeds_follow_spec(name, feeds, manifest.sizes)


def test_image_inputs_are_the_runtime_preprocessing(manifest, inputs):
    image = load_image(inputs.images.paths[2])
    owl = OwlPreprocessing.from_dict(manifest.preprocessing("owl"))
    sam = Sam2Preprocessing.from_dict(manifest.preprocessing("sam"))
    np.testing.assert_array_equal(inputs.feeds(OWL_IMAGE.name)[2]["pixel_values"], preprocess_owl([image], owl))
    np.testing.assert_array_equal(inputs.feeds(SAM2_IMAGE.name)[2]["pixel_values"], preprocess_sam2([image], sam))


def test_decoder_boxes_are_owl_detections_topped_up_with_random_boxes(manifest, inputs):
    assert inputs.boxes_per_image == 8
    opener = onnxruntime_opener(manifest, flavour="portable")  # the graphs calibration runs (TensorRT's)
    detector = OwlDetector.from_manifest(manifest, opener)
    segmenter = Sam2Segmenter.from_manifest(manifest, opener)  # the runtime's encoder, run independently
    sam = Sam2Preprocessing.from_dict(manifest.preprocessing("sam"))
    side = manifest.sizes["sam_image_size"]
    found_any = False
    feeds = inputs.feeds(SAM2_DECODER.name)
    assert len(feeds) == len(inputs.images.paths)
    for i, feed in enumerate(feeds):
        boxes = feed["boxes"][0]
        assert boxes.shape == (8, 4)
        assert np.all(boxes >= 0) and np.all(boxes <= side)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        image = load_image(inputs.images.paths[i])
        (det,) = detector.detect([image], inputs.texts[: inputs.prompts_per_run], threshold=0.1)
        top = det.boxes[np.argsort(-det.scores, kind="stable")]
        top[:, 0::2] = np.clip(top[:, 0::2], 0, image.shape[1])
        top[:, 1::2] = np.clip(top[:, 1::2], 0, image.shape[0])
        top = top[(top[:, 2] - top[:, 0] >= 2) & (top[:, 3] - top[:, 1] >= 2)][:4]
        np.testing.assert_allclose(boxes[: len(top)], boxes_to_sam2_input(top, image.shape[:2], sam), rtol=1e-6)
        found_any |= len(top) > 0
        # the encoder features are the FP32 sam2_image outputs of the same image
        features = segmenter.image_features([image])
        for name in SAM2_IMAGE.output_names:
            np.testing.assert_allclose(feed[name], features[name], rtol=1e-6, atol=1e-6, err_msg=f"image {i}: {name}")
    assert found_any, "the tiny OWLv2 should detect something on the calibration images"


def test_feeds_are_deterministic_and_limit_costs_one_run(manifest, calibration_dir, inputs):
    a = inputs.feeds(SAM2_DECODER.name)
    fresh = make_inputs(manifest, calibration_dir)  # a new one: nothing computed yet
    try:
        b = fresh.feeds(SAM2_DECODER.name, limit=1)
        assert len(b) == 1
        assert {i for (_, i) in fresh._memo} == {0}
    finally:
        fresh.close()
    assert list(b[0]) == list(a[0])
    for name in a[0]:
        np.testing.assert_array_equal(a[0][name], b[0][name])


def test_calibration_key_names_what_the_ranges_depend_on(manifest, inputs, tmp_path, make_image):
    from PIL import Image

    shas = {n: graph_digest(manifest.root, n) for n in UPSTREAM}
    key = calibration_key(SAM2_DECODER.name, shas, inputs, "entropy")
    assert key["graph_sha256"] == shas[SAM2_DECODER.name]
    assert set(key["upstream_sha256"]) == {"sam2_image", "owl_image", "owl_text", "owl_head"}
    assert key["images_sha256"] == inputs.images.digest
    assert calibration_key("owl_text", shas, inputs, "entropy")["images_sha256"] is None
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        Image.fromarray(make_image(64, 64, seed=i)).save(other / f"{i}.png")
    images = read_calibration_images(other, progress=False)
    inputs2 = CalibrationInputs(manifest.root, images, inputs.owl, inputs.sam, manifest.sizes["owl_text_length"])
    assert calibration_key(SAM2_DECODER.name, shas, inputs2, "entropy") != key
    assert calibration_key("owl_text", shas, inputs2, "entropy") == calibration_key("owl_text", shas, inputs, "entropy")
    assert calibration_key(SAM2_DECODER.name, shas, inputs, "max") != key


def test_a_changed_graph_is_never_calibrated_from_the_cache(manifest, inputs, tmp_path):
    """One byte of ``owl_image.onnx`` changed (a re-export with other weights): the cached ranges of it
    and of every graph whose inputs it makes are missed; those of a graph it does not feed still hit."""
    import shutil

    from calibration.cache import ScaleCache

    changed = tmp_path / "changed"
    changed.mkdir()
    for name in UPSTREAM:
        shutil.copyfile(manifest.root / f"{name}.onnx", changed / f"{name}.onnx")
    data = bytearray((changed / "owl_image.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (changed / "owl_image.onnx").write_bytes(data)
    before = {n: graph_digest(manifest.root, n) for n in UPSTREAM}
    after = {n: graph_digest(changed, n) for n in UPSTREAM}
    cache = ScaleCache(tmp_path / "new", [tmp_path / "old"])
    for name in UPSTREAM:
        old_key, new_key = (calibration_key(name, shas, inputs, "entropy") for shas in (before, after))
        ScaleCache(tmp_path / "old").store(name, old_key, {"t": 0.5}, method="entropy", fallback=None, seconds=0.0, runs=1)
        fed = name == OWL_IMAGE.name or OWL_IMAGE.name in UPSTREAM[name]
        assert (cache.lookup(name, new_key) is None) == fed, name
        assert cache.lookup(name, old_key) is not None, name
