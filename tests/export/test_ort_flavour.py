"""The graphs written for ONNX Runtime on CPU (the manifest's ``onnxruntime`` entries): attention fused
into MultiHeadAttention in FP32, ONNX Runtime's own INT8 running integer kernels, the manifest rule
that picks them, their parity, and what ONNX Runtime's optimiser makes of them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from export.ort_flavour import INTEGER_OPS, activation_params, optimised_graph_ops, quantize_for_onnxruntime
from export.precision import INT8_KEEP_FP16, CacheMismatch
from runtime.backends.onnxruntime import OrtGraph
from runtime.errors import ArtifactError
from runtime.graphs import GRAPHS, OWL_IMAGE, PRECISION_ACCEPTANCE, SAM2_IMAGE, SAM2_MEMORY_ATTENTION
from runtime.manifest import MANIFEST_NAME, ONNXRUNTIME, PARITY_NAME, graph_file_name, load_manifest, sha256_file
from runtime.pipeline import Pipeline


def config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def attention_layers(tiny_checkpoints) -> dict[str, int]:
    """Attention blocks per graph, read from the checkpoints' configs: one MultiHeadAttention each."""
    owl, sam = config(tiny_checkpoints.owl), config(tiny_checkpoints.sam)
    decoder = 3 * sam["mask_decoder_config"]["num_hidden_layers"] + 1  # self, token->image, image->token; final
    return {"owl_text": owl["text_config"]["num_hidden_layers"], "owl_image": owl["vision_config"]["num_hidden_layers"],
            "sam2_image": sum(sam["vision_config"]["backbone_config"]["blocks_per_stage"]),
            "sam2_decoder": decoder, "sam2_decoder_multimask": decoder}


# --- FP32 --------------------------------------------------------------------------------------------
def test_fp32_flavour_fuses_every_attention_block(tiny_artifact, tiny_checkpoints):
    m = load_manifest(tiny_artifact)
    layers = attention_layers(tiny_checkpoints)
    assert set(layers) < set(m.graphs)
    for name, count in layers.items():
        entry = m.graphs[name][ONNXRUNTIME]["fp32"]
        assert entry["files"][0]["path"] == graph_file_name(name, "fp32", ONNXRUNTIME)
        for f in entry["files"]:
            assert sha256_file(tiny_artifact / f["path"]) == f["sha256"]
        assert entry["contrib_ops"]["MultiHeadAttention"] == count, name
        ops, _ = optimised_graph_ops(m.onnxruntime_graph_path(name, "fp32"))
        assert ops.get("MultiHeadAttention") == count and "Attention" not in ops, (name, ops)
        assert "Softmax" not in ops, (name, ops)  # no unfused attention left
        assert m.onnxruntime_graph_path(name, "fp32") != m.graph_path(name, "fp32")


def test_a_graph_without_attention_runs_its_portable_file(tiny_artifact):
    m = load_manifest(tiny_artifact)
    assert ONNXRUNTIME not in m.graphs["owl_head"]  # a cosine similarity: nothing to fuse
    assert m.onnxruntime_graph_path("owl_head", "fp32") == m.graph_path("owl_head", "fp32")


def test_fp32_flavour_has_export_parity_with_the_spec_tolerances(tiny_artifact):
    m = load_manifest(tiny_artifact)
    rows = json.loads((tiny_artifact / PARITY_NAME).read_text())["fp32"]["rows"]
    for name in m.graphs:
        portable = [r for r in rows if r["graph"] == name and r["flavour"] == "portable"]
        ort = [r for r in rows if r["graph"] == name and r["flavour"] == ONNXRUNTIME]
        if ONNXRUNTIME not in m.graphs[name]:
            assert not ort
            continue
        assert [(r["dims"], r["output"]) for r in ort] == [(r["dims"], r["output"]) for r in portable], name
        for r in ort:
            tol = GRAPHS[name].with_candidates().output(r["output"]).tolerance
            assert r["passed"] and r["tolerance"] == {"atol": tol.atol, "rtol": tol.rtol, "min_cosine": tol.min_cosine}


def test_a_wrong_fused_graph_fails_its_parity(tiny_artifact, tiny_checkpoints, tmp_path):
    """Negative test: the same parity, on the ONNX Runtime flavour with one attention's head count
    changed, fails (the weights are right, the split of the heads is not)."""
    from export.models import load_owl
    from export.owl import owl_graph_exports, owl_sizes
    from export.parity import check_export_parity, failures

    owl = load_owl(str(tiny_checkpoints.owl))
    graph = next(g for g in owl_graph_exports(owl, owl_sizes(owl)) if g.spec.name == OWL_IMAGE.name)
    model = onnx.load(str(tiny_artifact / graph_file_name(OWL_IMAGE.name, "fp32", ONNXRUNTIME)))
    mha = next(n for n in model.graph.node if n.op_type == "MultiHeadAttention")
    heads = next(a for a in mha.attribute if a.name == "num_heads")
    assert heads.i > 1
    heads.i = 1
    wrong = tmp_path / "owl_image.ort.onnx"
    onnx.save(model, str(wrong))
    rows = check_export_parity(graph, tiny_artifact / "owl_image.onnx", flavours={ONNXRUNTIME: wrong})
    assert not failures([r for r in rows if r.flavour == "portable"])
    assert failures([r for r in rows if r.flavour == ONNXRUNTIME])


# --- INT8 --------------------------------------------------------------------------------------------
def test_int8_flavour_entries_and_the_plan(tiny_precision_artifact):
    m = load_manifest(tiny_precision_artifact)
    quantized = []
    for name, rec in m.graphs.items():
        if GRAPHS[name].fixed_precision:  # the pixel graphs: FP32 everywhere, no flavour to quantise
            assert "int8" not in rec.get(ONNXRUNTIME, {}), name
            continue
        entry = rec[ONNXRUNTIME]["int8"]
        for f in entry["files"]:
            assert sha256_file(tiny_precision_artifact / f["path"]) == f["sha256"]
        if name in INT8_KEEP_FP16:  # the plan's graphs kept at higher precision: FP32 on ONNX Runtime
            assert entry["precision"] == "fp32" and entry["kept_higher_precision"].startswith(INT8_KEEP_FP16[name])
            fp32 = rec.get(ONNXRUNTIME, {}).get("fp32") or rec["files"]["fp32"]
            assert entry["files"] == fp32["files"]
            continue
        quantized.append(name)
        assert entry["precision"] == "int8" and entry["files"][0]["path"] == graph_file_name(name, "int8", ONNXRUNTIME)
        assert entry["activation_quantizers"] > 0 and entry["quantizer"].startswith("onnxruntime ")
        cache = json.loads((tiny_precision_artifact / entry["calibration_cache"]["path"]).read_text())
        assert entry["calibration_cache"]["path"] == f"calibration/{name}.{ONNXRUNTIME}.json"
        assert set(cache["scales"]) == set(cache["zero_points"]) and len(cache["scales"]) == entry["activation_quantizers"]
        assert cache["key"]["images_sha256"] == m.data["calibration"]["sha256"]  # the portable INT8's images
    # the plan of the portable INT8 graphs: the same graphs quantised (the video graphs too: --video)
    assert quantized == [n for n, rec in m.graphs.items() if "int8" in rec["files"]
                         and rec["files"]["int8"]["precision"] == "int8"]
    assert {OWL_IMAGE.name, SAM2_IMAGE.name, SAM2_MEMORY_ATTENTION.name} <= set(quantized)
    assert set(m.data["calibration"]["onnxruntime"]) == set(quantized)


@pytest.mark.parametrize("name", [OWL_IMAGE.name, SAM2_IMAGE.name])
def test_int8_flavour_runs_integer_kernels_and_fused_attention(tiny_precision_artifact, tiny_checkpoints, name):
    """What ONNX Runtime's optimiser makes of the graph: every quantised MatMul/Conv is an integer
    kernel, none runs dequantise-then-FP32, and attention stays fused (FP32)."""
    m = load_manifest(tiny_precision_artifact)
    entry = m.onnxruntime_entry(name, "int8")
    ops, in_float = optimised_graph_ops(m.onnxruntime_graph_path(name, "int8"))
    assert not in_float, in_float
    integer = sum(ops.get(op, 0) for op in INTEGER_OPS)
    assert integer == sum(entry["quantized_ops"].values()) > 0, (ops, entry["quantized_ops"])
    assert {k: v for k, v in ops.items() if k in INTEGER_OPS} == {k: v for k, v in entry["ort_kernels"].items()
                                                                  if k in INTEGER_OPS}
    assert ops.get("MultiHeadAttention") == attention_layers(tiny_checkpoints)[name]
    # the portable INT8 graph, by contrast, is TensorRT's: ONNX Runtime checks it with Q/DQ fusion off
    assert m.graph_path(name, "int8") != m.onnxruntime_graph_path(name, "int8")


def test_int8_flavour_parity_rows(tiny_precision_artifact):
    m = load_manifest(tiny_precision_artifact)
    rows = json.loads((tiny_precision_artifact / PARITY_NAME).read_text())["int8"]["rows"]
    for name, spec in GRAPHS.items():
        if name not in m.graphs or spec.fixed_precision:
            continue
        mine = [r for r in rows if r["graph"] == name and r["flavour"] == ONNXRUNTIME]
        assert {r["output"] for r in mine} == set(spec.with_candidates().output_names), name
        assert all(r["passed"] and r["cosine"] >= PRECISION_ACCEPTANCE["int8"].min_cosine for r in mine), name
        assert {r["inputs"] for r in mine} == {"calibration"}, name


def test_pipeline_on_onnxruntime_at_int8_runs_the_cpu_flavour(tiny_precision_artifact, make_image):
    m = load_manifest(tiny_precision_artifact)
    with Pipeline.load(tiny_precision_artifact, backend="onnxruntime", precision="int8") as pipe:
        opened = {g.spec.name: g.path for g in pipe._graphs}
        assert pipe.predict(make_image(120, 160, seed=3), ["cat"], threshold=0.0, max_detections=2).masks.shape[0] == 2
    for name, path in opened.items():
        assert path == m.onnxruntime_graph_path(name, GRAPHS[name].runs_at("int8")), name
    assert opened[OWL_IMAGE.name].name == graph_file_name(OWL_IMAGE.name, "int8", ONNXRUNTIME)


def test_int8_artifact_without_the_cpu_flavour_is_refused(tiny_precision_artifact, tmp_path):
    """An artifact exported before ONNX Runtime had its own INT8: its INT8 graphs are TensorRT's, which
    ONNX Runtime runs only fake-quantised (flavour "portable", for numerics): refused, with the fix."""
    out = tmp_path / "old"
    shutil.copytree(tiny_precision_artifact, out)
    data = json.loads((out / MANIFEST_NAME).read_text())
    for rec in data["graphs"].values():
        rec.get(ONNXRUNTIME, {}).pop("int8", None)
    (out / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="its int8 graphs are TensorRT's.*re-export with python -m export.build .* --int8 --calib-dir"):
        Pipeline.load(out, backend="onnxruntime", precision="int8")
    with pytest.raises(ArtifactError, match="no ONNX Runtime int8 'owl_image' graph"):
        load_manifest(out).onnxruntime_graph_path("owl_image", "int8")


# --- quantize_for_onnxruntime alone ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam2_image_feeds(tiny_artifact, calibration_dir):
    from calibration.images import read_calibration_images
    from calibration.inputs import CalibrationInputs
    from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

    m = load_manifest(tiny_artifact)
    images = read_calibration_images(calibration_dir, count=6, progress=False)
    inputs = CalibrationInputs(tiny_artifact, images, OwlPreprocessing.from_dict(m.preprocessing("owl")),
                               Sam2Preprocessing.from_dict(m.preprocessing("sam")), m.sizes["owl_text_length"],
                               progress=False)
    try:
        yield inputs.feeds(SAM2_IMAGE.name)
    finally:
        inputs.close()


def test_cached_ranges_give_the_same_graph_without_calibrating(tiny_artifact, sam2_image_feeds, tmp_path):
    src = tiny_artifact / graph_file_name(SAM2_IMAGE.name, "fp32", ONNXRUNTIME)
    first, params = quantize_for_onnxruntime(src, tmp_path / "a.onnx", SAM2_IMAGE, sam2_image_feeds)
    assert first.record["calibration_method"] == "minmax" and all(0 <= z <= 255 for _, z in params.values())
    again, same = quantize_for_onnxruntime(src, tmp_path / "b.onnx", SAM2_IMAGE, sam2_image_feeds[:1], params=params)
    assert again.record["calibration_method"] == "cached" and same == params
    feeds = sam2_image_feeds[-1]
    a, b = (OrtGraph(p, SAM2_IMAGE).run(feeds) for p in (tmp_path / "a.onnx", tmp_path / "b.onnx"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # one image's ranges differ from six images' ranges: calibrating on it alone would not give this graph
    alone = activation_params(onnx.load(str(quantize_for_onnxruntime(src, tmp_path / "c.onnx", SAM2_IMAGE,
                                                                     sam2_image_feeds[:1])[0].files[0])))
    assert alone != params
    with pytest.raises(CacheMismatch, match="cached ranges cover"):
        quantize_for_onnxruntime(src, tmp_path / "d.onnx", SAM2_IMAGE, sam2_image_feeds[:1],
                                 params=dict(list(params.items())[1:]))
