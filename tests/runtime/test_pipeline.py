"""runtime.Pipeline: loading (verification, backend choice and its reasons), graph-run counts,
batching, NMS, and one-line errors for bad input. Parity with PyTorch: test_pipeline_parity.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import runtime.pipeline as pl
from runtime import Pipeline, Result
from runtime.backends import onnxruntime_opener
from runtime.backends.tensorrt import DeviceInfo, engine_file_name
from runtime.errors import ArtifactError, UserError
from runtime.graphs import OWL_HEAD, OWL_IMAGE, OWL_TEXT, SAM2_DECODER, SAM2_IMAGE
from runtime.manifest import sha256_file

PROMPTS = ["cat", "dog", "person"]
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))
L4 = DeviceInfo("NVIDIA L4", (8, 9))
GRAPHS = pl.required_graphs()


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    with Pipeline.load(tiny_artifact, backend="onnxruntime") as p:
        yield p


class Counting:
    """Wraps a graph runner and records the feeds' leading dimensions of each call."""

    def __init__(self, inner):
        self.inner, self.spec, self.calls = inner, inner.spec, []

    def run(self, feeds):
        self.calls.append({k: np.shape(v) for k, v in feeds.items()})
        return self.inner.run(feeds)


@pytest.fixture
def counted(pipe):
    """The module's pipeline with every runner counted (restored afterwards)."""
    saved = (pipe.owl.text, pipe.owl.image, pipe.owl.head, pipe.sam.image, pipe.sam.decoder,
             pipe.sam.max_boxes, pipe.max_batch, pipe.concurrent, dict(pipe.owl._queries))
    pipe.owl._queries.clear()
    pipe.owl.text, pipe.owl.image, pipe.owl.head = (Counting(g) for g in saved[:3])
    pipe.sam.image, pipe.sam.decoder = (Counting(g) for g in saved[3:5])
    yield pipe
    (pipe.owl.text, pipe.owl.image, pipe.owl.head, pipe.sam.image, pipe.sam.decoder,
     pipe.sam.max_boxes, pipe.max_batch, pipe.concurrent) = saved[:8]
    pipe.owl._queries.clear()
    pipe.owl._queries.update(saved[8])


def assert_same(a: Result, b: Result) -> None:
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.masks, b.masks)


# ---------------------------------------------------------------------------------------------
# What runs how often.


def test_each_graph_runs_once_per_image_and_text_once_per_prompt_tuple(counted, make_image):
    image = make_image(240, 320, seed=1)
    r = counted.predict(image, PROMPTS)
    assert len(r) > 1
    assert r.boxes.shape == (len(r), 4) and r.masks.shape == (len(r), 240, 320)
    assert len(counted.owl.image.calls) == len(counted.sam.image.calls) == 1
    assert len(counted.sam.decoder.calls) == 1, "all boxes of an image go through one decoder call"
    assert counted.sam.decoder.calls[0]["boxes"] == (1, len(r), 4)
    assert len(counted.owl.text.calls) == 1
    counted.predict(make_image(100, 80, seed=2), PROMPTS)
    counted.predict(image, PROMPTS)
    assert len(counted.owl.text.calls) == 1, "the prompt tuple's embeddings are cached"
    assert ("a photo of cat", "a photo of dog", "a photo of person") in counted.owl._queries
    counted.predict(image, PROMPTS[:2])
    assert len(counted.owl.text.calls) == 2


def test_decoder_is_chunked_at_the_profile_maximum(counted, make_image):
    image = make_image(240, 320, seed=1)
    whole = counted.predict(image, PROMPTS)
    counted.sam.decoder.calls.clear()
    counted.sam.max_boxes = 2
    chunked = counted.predict(image, PROMPTS)
    n = len(whole)
    assert [c["boxes"][1] for c in counted.sam.decoder.calls] == [2] * (n // 2) + ([n % 2] if n % 2 else [])
    assert_same(whole, chunked)


def test_predict_batch_uses_the_batch_dimension_in_chunks(counted, make_image):
    images = [make_image(80, 90, seed=i) for i in range(5)]
    counted.max_batch = 3
    batch = counted.predict_batch(images, PROMPTS)
    assert [c["pixel_values"][0] for c in counted.owl.image.calls] == [3, 2]
    assert [c["pixel_values"][0] for c in counted.sam.image.calls] == [3, 2]
    for image, got in zip(images, batch, strict=True):
        one = counted.predict(image, PROMPTS)
        np.testing.assert_allclose(got.boxes, one.boxes, atol=1e-4)
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-5)
        np.testing.assert_array_equal(got.labels, one.labels)
        assert (got.masks != one.masks).mean() < 1e-3
    assert counted.predict_batch([], PROMPTS) == []


def test_detect_batch_decodes_in_chunks_and_equals_predict(counted, make_image):
    images = [make_image(*hw, seed=i) for i, hw in enumerate([(80, 90), (60, 50), (80, 90), (80, 90), (60, 50)])]
    counted.max_batch = 2
    dets = counted.detect_batch(images, PROMPTS, 0.0)
    # chunks of 2 images, each split by size: [80x90, 60x50], [80x90, 80x90], [60x50]
    assert [c["pixel_values"][0] for c in counted.owl.image.calls] == [1, 1, 2, 1]
    assert not counted.sam.image.calls, "detection alone runs no SAM2 graph"
    for image, got in zip(images, dets, strict=True):
        one = counted.predict(image, PROMPTS, threshold=0.0)
        np.testing.assert_allclose(np.sort(got.scores), np.sort(one.scores), atol=1e-5)
        assert len(got.boxes) == len(one) > 0
    assert counted.detect_batch([], PROMPTS) == []


def test_images_of_one_size_share_a_call_and_results_keep_the_input_order(counted, make_image):
    small, big = (60, 90), (100, 70)
    images = [make_image(*small, seed=1), make_image(*big, seed=2), make_image(*small, seed=3)]
    counted.max_batch = 4
    batch = counted.predict_batch(images, PROMPTS)
    # a pixel graph takes one image size per call: the two small images together, then the big one
    assert [c["pixel_values"][0] for c in counted.owl.image.calls] == [2, 1]
    assert [r.masks.shape[1:] for r in batch] == [small, big, small]
    for image, got in zip(images, batch, strict=True):
        one = counted.predict(image, PROMPTS)
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-5)
        np.testing.assert_array_equal(got.labels, one.labels)


def test_an_image_beyond_the_image_profile_is_downscaled_and_mapped_back(pipe, make_image, caplog):
    from runtime.resample import fitted_size

    max_h, max_w = pipe.max_image_hw
    h, w = max_h + 60, 40
    tall = make_image(h, w, seed=4)
    with caplog.at_level(logging.INFO, logger="runtime.pipeline"):
        got = pipe.predict(tall, PROMPTS, threshold=0.0, max_detections=3)
    assert "larger than the artifact's image profile" in caplog.text
    fh, fw = fitted_size(h, w, max_h, max_w)
    assert fh == max_h and fw < w
    small = pipe.predict(np.asarray(Image.fromarray(tall).resize((fw, fh), Image.Resampling.BILINEAR)), PROMPTS,
                         threshold=0.0, max_detections=3)
    assert got.masks.shape == (3, h, w)
    np.testing.assert_allclose(got.boxes, small.boxes * np.array([w / fw, h / fh, w / fw, h / fh]), rtol=1e-6)
    np.testing.assert_array_equal(got.scores, small.scores)
    rows, cols = np.arange(h) * fh // h, np.arange(w) * fw // w  # nearest: each pixel's source pixel
    np.testing.assert_array_equal(got.masks, small.masks[:, rows][:, :, cols])
    assert got.masks.flags["C_CONTIGUOUS"]  # what the RLE and PNG writers read fast


def test_concurrent_and_sequential_encoders_agree(counted, make_image):
    image = make_image(200, 150, seed=3)
    counted.concurrent = False
    a = counted.predict(image, PROMPTS)
    counted.concurrent = True
    b = counted.predict(image, PROMPTS)
    assert_same(a, b)
    assert len(counted.sam.image.calls) == 2


def test_sequential_mode_skips_the_sam2_encoder_without_detections(counted, make_image):
    counted.concurrent = False
    r = counted.predict(make_image(50, 60, seed=4), ["cat"], threshold=1.0)
    assert len(r) == 0 and r.masks.shape == (0, 50, 60) and r.boxes.shape == (0, 4)
    assert r.labels.dtype == np.int64 and r.scores.dtype == np.float32
    assert counted.sam.image.calls == [] and counted.sam.decoder.calls == []


def test_default_concurrency_by_backend(pipe):
    assert pipe.concurrent is False  # ONNX Runtime on CPU: measured slower concurrently
    assert Pipeline(pipe.manifest, pl.BackendChoice("tensorrt", "fp32", "test"), pipe.owl, pipe.sam).concurrent


# ---------------------------------------------------------------------------------------------
# NMS and max_detections.


def test_defaults_keep_reference_order_and_everything(pipe, make_image):
    image = make_image(240, 320, seed=1)
    r = pipe.predict(image, PROMPTS)
    (det,) = pipe.owl.detect([image], pipe.texts(PROMPTS), threshold=0.1)
    np.testing.assert_array_equal(r.boxes, det.boxes)
    np.testing.assert_array_equal(r.scores, det.scores)


def test_a_score_exactly_on_the_threshold_is_dropped(pipe, make_image):
    """``score > threshold`` as the reference, through predict: the threshold set to a detection's own
    (float32) score drops it and keeps every higher one; one float32 step lower keeps it too."""
    image = make_image(240, 320, seed=1)
    every = pipe.predict(image, PROMPTS, threshold=0.0)
    scores = np.sort(every.scores)
    assert len(scores) > 4
    on = scores[len(scores) // 2]
    for t, keep in ((on, every.scores > on), (np.nextafter(on, np.float32(0)), every.scores >= on)):
        got = pipe.predict(image, PROMPTS, threshold=float(t))
        np.testing.assert_array_equal(got.scores, every.scores[keep])
        np.testing.assert_array_equal(got.boxes, every.boxes[keep])
        np.testing.assert_array_equal(got.masks, every.masks[keep])
    assert (every.scores == on).any() and (every.scores > on).any()


def test_max_detections_keeps_the_best(pipe, make_image):
    image = make_image(240, 320, seed=1)
    full = pipe.predict(image, PROMPTS)
    top = pipe.predict(image, PROMPTS, max_detections=2)
    assert len(full) > 2 and len(top) == 2
    order = np.argsort(-full.scores, kind="stable")[:2]
    np.testing.assert_array_equal(top.scores, full.scores[order])
    np.testing.assert_array_equal(top.masks, full.masks[order])
    assert len(pipe.predict(image, PROMPTS, max_detections=0)) == 0


@pytest.mark.parametrize("per_label,prompts", [(True, ["cat"]), (False, PROMPTS)])
def test_nms_suppresses_overlaps(pipe, make_image, per_label, prompts):
    image = make_image(240, 320, seed=1)
    full = pipe.predict(image, prompts, threshold=0.0)
    got = pipe.predict(image, prompts, threshold=0.0, nms_iou=0.3, per_label_nms=per_label)
    assert 0 < len(got) < len(full)
    assert np.all(np.diff(got.scores) <= 0)
    iou = pl.box_iou(got.boxes, got.boxes)
    np.fill_diagonal(iou, 0)
    same = got.labels[:, None] == got.labels[None, :] if per_label else np.ones_like(iou, bool)
    assert not np.any((iou > 0.3) & same)
    # every dropped box overlaps a kept one of higher score
    kept = {tuple(b) for b in got.boxes.tolist()}
    for b, s, l in zip(full.boxes, full.scores, full.labels):
        if tuple(b.tolist()) not in kept:
            ov = pl.box_iou(b[None], got.boxes)[0]
            ok = (ov > 0.3) & (got.scores >= s) & ((got.labels == l) if per_label else True)
            assert ok.any()


def test_nms_function_on_known_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.5, 0.9, 0.3, 0.4], np.float32)
    labels = np.array([0, 0, 0, 1])
    np.testing.assert_array_equal(pl.nms(boxes, scores, labels, 0.5), [1, 3, 2])
    np.testing.assert_array_equal(pl.nms(boxes, scores, labels, 0.5, per_label=False), [1, 2])
    assert pl.nms(boxes[:0], scores[:0], labels[:0], 0.5).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Inputs users get wrong, or that are merely unusual.


@pytest.mark.parametrize("prompts,match", [
    ([], "no prompts"),
    (["cat", ""], "prompt 1 is empty"),
    (["cat", 3], "prompt 1 is a int"),
    (None, "list of strings"),
])
def test_bad_prompts_are_one_line_errors(pipe, make_image, prompts, match):
    with pytest.raises(UserError, match=match) as e:
        pipe.predict(make_image(32, 32), prompts)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold=1.5), "threshold must be in"),
    (dict(threshold="high"), "threshold must be a number"),
    (dict(nms_iou=0), "nms_iou must be in"),
    (dict(max_detections=-1), "max_detections"),
    (dict(max_detections=2.5), "max_detections"),
])
def test_bad_options_are_one_line_errors(pipe, make_image, kwargs, match):
    with pytest.raises(UserError, match=match):
        pipe.predict(make_image(32, 32), ["cat"], **kwargs)


def test_a_lone_string_is_one_prompt_and_a_pil_image_one_image(pipe, make_image):
    image = make_image(80, 80, seed=5)
    assert_same(pipe.predict(image, "cat"), pipe.predict(image, ["cat"]))
    (from_pil,) = pipe.predict_batch(Image.fromarray(image), ["cat"])
    assert_same(from_pil, pipe.predict(image, ["cat"]))


def test_long_prompt_is_truncated_with_a_warning(pipe, make_image, caplog):
    long = " ".join(["red"] * 40)
    with caplog.at_level(logging.WARNING):
        r = pipe.predict(make_image(64, 64, seed=6), [long])
    assert any("truncated" in rec.getMessage() for rec in caplog.records)
    assert r.masks.shape[1:] == (64, 64)


def test_one_pixel_image(pipe):
    r = pipe.predict(np.full((1, 1, 3), 200, np.uint8), PROMPTS, threshold=0.0)
    assert r.masks.shape == (len(r), 1, 1) and len(r) > 0


def test_large_image(pipe, make_image):
    small = make_image(600, 800, seed=7)
    big = np.asarray(Image.fromarray(small).resize((8000, 6000), Image.NEAREST))
    r = pipe.predict(big, ["cat"], threshold=0.0, max_detections=1)
    assert r.masks.shape == (1, 6000, 8000) and r.masks.any()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "exif"])
def test_image_files_of_every_mode(pipe, make_image, tmp_path, mode):
    from runtime.images import load_image

    rgb = make_image(48, 80, seed=8)
    if mode == "exif":
        path = tmp_path / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(path, quality=95, exif=exif)
        h, w = 80, 48  # shown upright: turned 90 degrees
    elif mode == "CMYK":
        path = tmp_path / "cmyk.jpg"
        Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
        h, w = 48, 80
    elif mode == "I;16":
        path = tmp_path / "gray16.png"
        Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(path)
        h, w = 48, 80
    else:
        path = tmp_path / f"{mode}.png"
        im = Image.fromarray(rgb)
        (im.convert("P") if mode == "P" else im.convert(mode)).save(path)
        h, w = 48, 80
    r = pipe.predict(path, PROMPTS, threshold=0.0)
    assert r.masks.shape == (len(r), h, w) and len(r) > 0
    assert_same(r, pipe.predict(load_image(path), PROMPTS, threshold=0.0))


def test_unreadable_image_is_a_one_line_error(pipe, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="broken.jpg") as e:
        pipe.predict(bad, ["cat"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loading: verification and the backend choice.


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setattr(pl, "tensorrt_version", lambda: (None, "tensorrt is not importable (No module named 'tensorrt')"))


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 10.9 'importable', an H100 'present', and a TensorRT backend that runs ONNX Runtime."""
    opened = []

    def tensorrt_opener(manifest, precision, cuda_graphs=()):
        opened.append(precision)
        return onnxruntime_opener(manifest, precision)

    monkeypatch.setattr(pl, "tensorrt_version", lambda: ("10.9.0", ""))
    monkeypatch.setattr(pl, "cuda_device", lambda: (H100, ""))
    monkeypatch.setattr(pl, "_tensorrt_opener", lambda: (tensorrt_opener, ""))
    return opened


def copy_artifact(src: Path, dst: Path, engines: list[dict] | None = None, **manifest_changes) -> Path:
    """A copy of ``src``; with ``engines``, fake engine files and their records in the manifest (the
    format of runtime.backends.tensorrt: graph -> precision -> GPU tag -> record)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    if engines is not None:
        records = {}
        for e in engines:
            gpu = e["gpu"]
            for spec in GRAPHS:
                precision = spec.runs_at(e["precision"])  # the pixel graphs' engines are FP32
                name = engine_file_name(spec.name, precision, gpu.slug)
                (dst / name).write_bytes(f"engine {name}".encode())
                records.setdefault(spec.name, {}).setdefault(precision, {})[gpu.slug] = {
                    "file": name, "sha256": sha256_file(dst / name), "bytes": (dst / name).stat().st_size,
                    "precision": precision, "tensorrt": e["trt"],
                    "gpu": {"name": gpu.name, "compute_capability": "%d.%d" % gpu.compute_capability},
                    "profiles": {}}
        manifest["engines"] = records
    manifest.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def engine(gpu: DeviceInfo = H100, trt: str = "10.9.0", precision: str = "fp32") -> dict:
    return {"precision": precision, "trt": trt, "gpu": gpu}


def test_auto_without_tensorrt_chooses_onnxruntime_and_says_why(tiny_artifact, no_tensorrt, caplog):
    with caplog.at_level(logging.INFO, logger="runtime.pipeline"), Pipeline.load(tiny_artifact) as p:
        assert (p.backend, p.precision) == ("onnxruntime", "fp32")
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime.pipeline"]
    assert any("backend onnxruntime, precision fp32" in m and "tensorrt is not importable" in m for m in lines), lines


def test_auto_without_cuda_device_says_so(tiny_artifact, fake_tensorrt, monkeypatch):
    monkeypatch.setattr(pl, "cuda_device", lambda: (None, "no CUDA device is visible; run on a machine with an NVIDIA GPU"))
    with Pipeline.load(tiny_artifact) as p:
        assert p.backend == "onnxruntime" and "no CUDA device" in p.choice.reason and not fake_tensorrt


def test_auto_without_engines_says_so(tiny_artifact, fake_tensorrt):
    with Pipeline.load(tiny_artifact) as p:
        assert p.backend == "onnxruntime" and "has no TensorRT engines" in p.choice.reason


def test_auto_with_engines_for_this_gpu_chooses_tensorrt(tiny_artifact, fake_tensorrt, tmp_path):
    # the choice only: fake_tensorrt opens ONNX Runtime graphs, so what TensorRT computes is judged by
    # tests/runtime/test_tensorrt_backend.py on real engines
    art = copy_artifact(tiny_artifact, tmp_path / "a", engines=[engine(L4), engine(H100)])
    with Pipeline.load(art) as p:
        assert p.backend == "tensorrt" and fake_tensorrt == ["fp32"]
        assert all(r.gpu_name == H100.name for r in p.choice.engines)
        assert p.concurrent


def test_engines_for_another_gpu(tiny_artifact, fake_tensorrt, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "a", engines=[engine(L4)])
    with Pipeline.load(art) as p:  # auto: falls back, and says why
        assert p.backend == "onnxruntime"
        assert "NVIDIA L4 (sm89)" in p.choice.reason and f"{H100.name} (sm90)" in p.choice.reason
    with pytest.raises(ArtifactError) as e:
        Pipeline.load(art, backend="tensorrt")
    msg = str(e.value)
    assert "NVIDIA L4 (sm89)" in msg and f"{H100.name} (sm90)" in msg
    assert "\n" not in msg


def test_engines_from_another_tensorrt_version(tiny_artifact, fake_tensorrt, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "a", engines=[engine(trt="10.3.0")])
    with pytest.raises(ArtifactError, match=r"TensorRT 10\.3\.0.*TensorRT 10\.9\.0"):
        Pipeline.load(art, backend="tensorrt")


def test_tampered_engine_is_refused(tiny_artifact, fake_tensorrt, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "a", engines=[engine()])
    (art / engine_file_name("sam2_decoder", "fp32", H100.slug)).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        Pipeline.load(art, backend="tensorrt")
    assert fake_tensorrt == [], "nothing was opened"


def test_explicit_tensorrt_unavailable_says_what_is_missing(tiny_artifact, no_tensorrt):
    with pytest.raises(UserError, match="backend tensorrt was requested but tensorrt is not importable") as e:
        Pipeline.load(tiny_artifact, backend="tensorrt")
    assert not isinstance(e.value, ArtifactError)


def test_missing_precision_names_what_the_artifact_has(tiny_artifact, no_tensorrt):
    for backend in ("onnxruntime", "auto"):
        with pytest.raises(ArtifactError, match="has no fp16 graphs \\(ONNX graphs at fp32\\)"):
            Pipeline.load(tiny_artifact, backend=backend, precision="fp16")


def test_missing_precision_with_engines_lists_them(tiny_artifact, fake_tensorrt, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "a", engines=[engine(precision="fp16")])
    with pytest.raises(ArtifactError, match="TensorRT engines at fp16"):
        Pipeline.load(art, backend="onnxruntime", precision="int8")
    from runtime.manifest import load_manifest

    choice = pl.choose_backend(load_manifest(art), "auto", "fp16")  # engines without ONNX files suffice
    assert choice.backend == "tensorrt" and len(choice.engines) == len(GRAPHS)


@pytest.mark.parametrize("kwargs,match", [(dict(backend="cuda"), "backend 'cuda' is not one of"),
                                          (dict(precision="bf16"), "precision 'bf16' is not one of")])
def test_unknown_backend_or_precision(tiny_artifact, kwargs, match):
    with pytest.raises(UserError, match=match):
        Pipeline.load(tiny_artifact, **kwargs)


# the files ONNX Runtime opens: the decoder's ONNX Runtime flavour, the class head's portable graph
# (it has no flavour: nothing to fuse), the tokenizer
@pytest.mark.parametrize("same_size", [False, True], ids=["appended", "same-size"])
@pytest.mark.parametrize("victim", ["sam2_decoder.ort.onnx", "owl_head.onnx", "tokenizer/tokenizer.json"])
def test_tampered_file_is_refused_before_anything_is_opened(tiny_artifact, tmp_path, monkeypatch, victim, same_size):
    import runtime.backends.onnxruntime as ort_backend

    art = copy_artifact(tiny_artifact, tmp_path / "a")
    if same_size:
        rewrite_same_size(art / victim, restore_mtime=True)
    else:
        with open(art / victim, "ab") as f:
            f.write(b" ")
    opened = []
    monkeypatch.setattr(ort_backend.OrtGraph, "__init__", lambda self, *a, **k: opened.append(a))
    with pytest.raises(ArtifactError, match="does not match the manifest") as e:
        Pipeline.load(art, backend="onnxruntime")
    assert victim.split("/")[-1] in str(e.value) and opened == []


def test_a_file_is_hashed_once_per_manifest_unless_it_changes(tiny_artifact, tmp_path, monkeypatch):
    import runtime.manifest as manifest_module

    art = copy_artifact(tiny_artifact, tmp_path / "a")
    manifest = manifest_module.load_manifest(art)
    hashed = []
    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    manifest.graph_path("sam2_image", "fp32")
    manifest.graph_path("sam2_image", "fp32")  # e.g. Pipeline.load, then the tracker: no second hash
    assert hashed == ["sam2_image.onnx"]
    with open(art / "sam2_image.onnx", "ab") as f:
        f.write(b" ")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        manifest.graph_path("sam2_image", "fp32")
    assert hashed == ["sam2_image.onnx"] * 2


def rewrite_same_size(path: Path, restore_mtime: bool) -> None:
    """Flip one byte in the middle of ``path`` in place (same size); its mtime put back as it was, or
    one second later (a rewrite at another time). Returns once the rewrite shows in ctime: within
    one tick of the filesystem's clock no stamp could tell it."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    while True:
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + (0 if restore_mtime else 10**9)))
        after = path.stat()
        if after.st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
    assert after.st_size == before.st_size


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["later", "mtime-restored"])
def test_a_verified_file_rewritten_with_the_same_size_is_refused(tiny_artifact, tmp_path, restore_mtime):
    from runtime.manifest import load_manifest

    art = copy_artifact(tiny_artifact, tmp_path / "a")
    manifest = load_manifest(art)
    manifest.graph_path("sam2_decoder", "fp32")  # verified: the manifest remembers the file's stamp
    rewrite_same_size(art / "sam2_decoder.onnx", restore_mtime)
    with pytest.raises(ArtifactError, match="sam2_decoder.onnx does not match the manifest"):
        manifest.graph_path("sam2_decoder", "fp32")


def test_other_schema_version_is_refused(tiny_artifact, tmp_path):
    art = copy_artifact(tiny_artifact, tmp_path / "a", schema_version=99)
    with pytest.raises(ArtifactError, match="schema version 99"):
        Pipeline.load(art)


def test_import_runtime_exposes_pipeline_lazily():
    import subprocess
    import sys

    code = "import sys, runtime; assert 'runtime.pipeline' not in sys.modules; runtime.Pipeline; runtime.Result; " \
           "assert 'runtime.pipeline' in sys.modules"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
