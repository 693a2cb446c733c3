"""Any checkpoint, not just ours: every member of ``tools.tiny_checkpoints.FAMILY`` (image and patch
sizes, widths, heads, layers, text positions, SAM2 hidden 128 and 256, memory attention, number of
memories, processors left at their defaults) through one combined ``export.build --fp32 --fp16 --int8
--video``: the sizes the runtime uses come from the model, every graph passes parity at every
precision (SAM2's discrete choices judged apart), the pipeline gives the transformers pipeline's
result and tracking gives ``Sam2VideoModel``'s."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import Pipeline
from runtime.backends import onnxruntime_opener
from runtime.graphs import GRAPHS, OWL_IMAGE, PRECISION_ACCEPTANCE
from runtime.manifest import ONNXRUNTIME, PARITY_NAME, load_manifest
from runtime.owl import OwlDetector
from runtime.pipeline import BackendChoice
from runtime.sam2 import Sam2Segmenter
from runtime.metrics import mask_iou
from runtime.tracker import Sam2Tracker, track
from tools.bench.synthetic import MovingShapes
from tools.tiny_checkpoints import FAMILY

from _reference import (THRESHOLD, assert_matches_reference, assert_within_acceptance, reference_pipeline,
                        reference_tracking)

PROMPTS = ["cat", "dog", "person", "red car"]
MIN_TRACKING_IOU = 0.98  # as test_tracker's parity with Sam2VideoModel


@pytest.fixture(scope="module")
def reference(family_member):
    return reference_pipeline(family_member.checkpoints.owl, family_member.checkpoints.sam)


def test_sizes_come_from_the_model(family_member):
    """The artifact's sizes and preprocessing are the checkpoint's architecture, whatever its processors
    say where they do not matter: a SAM2 processor left at mask_size 256 gives way to the model's."""
    shape = FAMILY[family_member.name]
    m = load_manifest(family_member.artifact)
    embed = shape.sam_image_size // 16
    expected = {
        "owl_image_size": shape.owl_image_size, "owl_num_patches": (shape.owl_image_size // shape.owl_patch_size) ** 2,
        "owl_embed_dim": shape.owl_text[0], "owl_text_length": shape.owl_tokenizer_length,
        "sam_image_size": shape.sam_image_size, "sam_embed_dim": shape.sam_hidden, "sam_embed_size": embed,
        "sam_mask_size": 4 * embed, "sam_memory_tokens": embed * embed, "sam_num_maskmem": shape.sam_num_maskmem,
        "sam_max_object_pointers": shape.sam_max_pointers,
    }
    assert {k: m.sizes[k] for k in expected} == expected
    owl, sam = m.preprocessing("owl"), m.preprocessing("sam")
    assert (owl["image_size"], owl["text_length"]) == (shape.owl_image_size, shape.owl_tokenizer_length)
    assert sam["image_size"] == sam["coord_size"] == shape.sam_image_size
    assert sam["mask_size"] == 4 * embed
    saved = json.loads((family_member.checkpoints.sam / "processor_config.json").read_text())
    processor_mask = saved["image_processor"]["mask_size"]["height"]
    assert processor_mask == (shape.sam_processor_mask_size or 256)


def test_every_graph_passes_parity_at_every_precision(family_member):
    """Every graph of the family member at FP32, FP16 and INT8, every output and every candidate of
    SAM2's choices checked; choices that flipped did so at the reference's ties only (printed)."""
    m = load_manifest(family_member.artifact)
    assert sorted(m.graphs) == sorted(GRAPHS)
    parity = json.loads((family_member.artifact / PARITY_NAME).read_text())
    for precision in ("fp32", "fp16", "int8"):
        section = parity[precision]
        assert section["passed"] and all(r["passed"] for r in section["rows"]), precision
        checked = {(r["flavour"], r["graph"], r["output"]) for r in section["rows"]}
        for spec in GRAPHS.values():
            if precision != spec.runs_at(precision):  # the pixel graphs: FP32 at every precision
                assert precision not in m.data["graphs"][spec.name]["files"], (spec.name, precision)
                continue
            assert precision in m.data["graphs"][spec.name]["files"], (spec.name, precision)
            # ONNX Runtime's own INT8 (what it runs at int8) is judged like the portable graphs
            flavours = ["portable"] + [ONNXRUNTIME] * (precision == "int8")
            if precision == "int8":
                assert m.onnxruntime_entry(spec.name, "int8"), spec.name
            for flavour in flavours:
                for t in spec.with_candidates().outputs:
                    assert (flavour, spec.name, t.name) in checked, (precision, flavour, spec.name, t.name)
    for precision in ("fp16", "int8"):
        limits = PRECISION_ACCEPTANCE[precision].flip_margins
        for f in parity[precision]["flips"]:
            print(f"\n{family_member.name} {precision} {f['flavour']}: {f['graph']} {f['inputs']} {f['dims']} item {f['item']} "
                  f"{f['choice']} flipped at reference margin {f['margin']:.4g} (at most {limits[f['choice']]})")
            assert f["accepted"] and f["margin"] <= limits[f["choice"]] == f["max_margin"]
        summary = m.data["parity"][precision]
        assert summary["choice_flips"] == len(parity[precision]["flips"])


def test_pipeline_matches_transformers(family_member, reference, make_image):
    """Detections and masks of the FP32 pipeline on three images; where the reference finds nothing the
    pipeline must not either, and the reference finds something on at least one of them."""
    found = 0
    with Pipeline.load(family_member.artifact, backend="onnxruntime", precision="fp32") as pipe:
        for hw in ((480, 640), (90, 120), (300, 300)):
            image = make_image(*hw, seed=sum(hw) + 1)
            ref, got = reference(image, PROMPTS), pipe.predict(image, PROMPTS, threshold=THRESHOLD)
            if len(ref[0]) == 0:
                assert len(got) == 0, (hw, got.scores)
                continue
            assert_matches_reference(got, ref)
            found += len(ref[0])
    assert found > 0, "the reference should detect something on these images"


@pytest.mark.parametrize("precision,flavour", [("fp16", ONNXRUNTIME), ("int8", ONNXRUNTIME), ("int8", "portable")],
                         ids=["fp16", "int8-onnxruntime", "int8-portable"])
def test_reduced_precision_pipeline_within_acceptance(family_member, reference, make_image, precision, flavour):
    """The pipeline as ``Pipeline.load`` opens it (at int8: ONNX Runtime's own INT8, integer kernels),
    and on the portable INT8 graphs TensorRT builds from (fake-quantised), within the acceptance."""
    image = make_image(480, 640, seed=7)
    if flavour == ONNXRUNTIME:
        with Pipeline.load(family_member.artifact, backend="onnxruntime", precision=precision) as pipe:
            assert pipe.owl.image.path == pipe.manifest.onnxruntime_graph_path(OWL_IMAGE.name, precision, verify=False)
            got = pipe.predict(image, PROMPTS, threshold=THRESHOLD)
    else:
        m = load_manifest(family_member.artifact)
        opener = onnxruntime_opener(m, precision, flavour=flavour)
        pipe = Pipeline(m, BackendChoice("onnxruntime", precision, "the portable graphs"),
                        OwlDetector.from_manifest(m, opener), Sam2Segmenter.from_manifest(m, opener))
        got = pipe.predict(image, PROMPTS, threshold=THRESHOLD)
    assert_within_acceptance(got, reference(image, PROMPTS, candidates=True), precision)


def test_tracking_matches_sam2videomodel(family_member):
    """Box prompts on frame 0 of a generated clip, no re-detection: every object's mask on every
    frame at IoU >= 0.98 with transformers' video inference."""
    video = MovingShapes(8, 96, 128, num_shapes=3, seed=5)
    frames, boxes = list(video), video.boxes(0)
    ref = reference_tracking(str(family_member.checkpoints.sam), frames, boxes)
    with Sam2Tracker.open(load_manifest(family_member.artifact), "onnxruntime") as tracker:
        ours = list(track(iter(frames), tracker, boxes=boxes))
    assert len(ours) == len(ref) == len(frames)
    ious = np.stack([mask_iou(r, o.masks) for r, o in zip(ref, ours, strict=True)])
    print(f"\n{family_member.name}: IoU vs Sam2VideoModel min {ious.min():.5f}, mean {ious.mean():.5f}")
    assert ious.min() >= MIN_TRACKING_IOU, np.round(ious.min(axis=1), 4)
    areas = np.array([r.mean(axis=(1, 2)) for r in ref])
    assert 0.02 < areas.max() and areas.min() < 0.98, "the reference's masks should be neither all empty nor full"
