"""Precision in the graph: FP16 AutoCast and INT8 Q/DQ steps alone, and through ``export.build``."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from calibration.images import read_calibration_images
from calibration.inputs import CalibrationInputs
from export.parity import cosine
from export.precision import (INT8_KEEP_FP16, KeepFp32, ROOT_SCOPE, CacheMismatch, activation_scales, convert_fp16,
                              node_module, nodes_kept_fp32, policy_for, quantize_int8)
from runtime.backends.onnxruntime import OrtGraph
from runtime.graphs import GRAPHS, OWL_IMAGE, OWL_TEXT, PRECISION_ACCEPTANCE, SAM2_DECODER, SAM2_IMAGE
from runtime.manifest import PARITY_NAME, graph_file_name, load_manifest, sha256_file
from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def calib_inputs(tiny_artifact, calibration_dir):
    m = load_manifest(tiny_artifact)
    images = read_calibration_images(calibration_dir, count=6, progress=False)
    return CalibrationInputs(tiny_artifact, images, OwlPreprocessing.from_dict(m.preprocessing("owl")),
                             Sam2Preprocessing.from_dict(m.preprocessing("sam")), m.sizes["owl_text_length"],
                             progress=False)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[v.name] = v.type.tensor_type.elem_type
    return types


# --- which nodes stay FP32 -----------------------------------------------------------------------
def test_policy_selects_by_op_type_and_module_scope(tiny_artifact):
    model = onnx.load(str(tiny_artifact / "owl_image.onnx"))
    modules = {n.name: node_module(n) for n in model.graph.node}
    assert any(m.startswith("det.box_head") for m in modules.values())
    assert ROOT_SCOPE in modules.values()
    by_op = set(nodes_kept_fp32(model, KeepFp32(op_types=("LayerNormalization",))))
    assert by_op == {n.name for n in model.graph.node if n.op_type == "LayerNormalization"} and by_op
    by_scope = set(nodes_kept_fp32(model, KeepFp32(scopes=("det.box_head",))))
    assert by_scope and all(modules[n].startswith("det.box_head") for n in by_scope)
    assert not set(nodes_kept_fp32(model, KeepFp32(scopes=("det.box",))))  # whole path components only
    for name in GRAPHS:
        assert policy_for(name).why


# --- FP16 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", [OWL_IMAGE.name, SAM2_DECODER.name])
def test_fp16_keeps_io_and_the_policy_in_fp32(tiny_artifact, calib_inputs, tmp_path, graph):
    spec = GRAPHS[graph]
    src = tiny_artifact / graph_file_name(graph, "fp32")
    result = convert_fp16(src, tmp_path / graph_file_name(graph, "fp16"), spec)
    model = onnx.load(str(result.files[0]))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)) for t in spec.inputs]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {FLOAT}
    assert [i.name for i in model.graph.input] == spec.input_names
    types = tensor_types(model)
    kept = set(nodes_kept_fp32(onnx.load(str(src)), policy_for(graph)))
    assert result.record["kept_fp32"]["nodes"] == len(kept) > 0
    nodes = {n.name: n for n in model.graph.node}
    for name in kept:  # every float input of a kept node is FP32
        for i in nodes[name].input:
            assert types.get(i) != FLOAT16, (name, i)
    half = [n for n in model.graph.node if n.name not in kept and n.op_type == "MatMul"
            and types.get(n.input[0]) == FLOAT16]
    assert half, "the MatMuls outside the policy run in FP16"
    ref, got = OrtGraph(src, spec), OrtGraph(result.files[0], spec)
    for feeds in calib_inputs.feeds(graph, limit=2):
        a, b = ref.run(feeds), got.run(feeds)
        for k in spec.output_names:
            assert cosine(a[k], b[k]) >= PRECISION_ACCEPTANCE["fp16"].min_cosine, k


# --- INT8 ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam2_image_int8(tiny_artifact, calib_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "sam2_image.int8.onnx"
    feeds = calib_inputs.feeds(SAM2_IMAGE.name)
    return quantize_int8(tiny_artifact / "sam2_image.onnx", out, SAM2_IMAGE, feeds, method="entropy"), feeds


def test_int8_is_explicit_symmetric_qdq_with_per_channel_weights(sam2_image_int8):
    result, _ = sam2_image_int8
    model = onnx.load(str(result.files[0]))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs
    for n in qs + dqs:
        zero = inits[n.input[2]]
        assert zero.dtype == np.int8 and not zero.any(), n.name  # symmetric INT8
    weight_qs = [n for n in qs if n.input[0] in inits]  # Q(weight) -> DQ: TensorRT folds it into INT8 weights
    assert weight_qs and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weight_qs), \
        "weights are quantized per output channel"
    assert result.record["quantized_ops"].get("Conv", 0) > 0 and result.record["quantized_ops"].get("MatMul", 0) > 0
    assert len(activation_scales(model)) == result.record["activation_quantizers"] == len(result.scales)
    assert {i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)} == {FLOAT}
    assert any(t.data_type == FLOAT16 for t in model.graph.initializer), "the rest of the graph is FP16"
    assert not list(result.files[0].parent.glob("*qdq-fp32*")), "no intermediate file left"


def test_int8_parity_with_qdq_fusion_off(tiny_artifact, sam2_image_int8):
    result, feeds = sam2_image_int8
    ref = OrtGraph(tiny_artifact / "sam2_image.onnx", SAM2_IMAGE)
    got = OrtGraph(result.files[0], SAM2_IMAGE, disable_qdq_fusion=True)
    for f in feeds:
        a, b = ref.run(f), got.run(f)
        for k in SAM2_IMAGE.output_names:
            assert cosine(a[k], b[k]) >= PRECISION_ACCEPTANCE["int8"].min_cosine, k


def test_cached_scales_give_the_same_graph_without_calibrating(tiny_artifact, sam2_image_int8, tmp_path):
    result, feeds = sam2_image_int8
    again = quantize_int8(tiny_artifact / "sam2_image.onnx", tmp_path / "again.onnx", SAM2_IMAGE, feeds[:1],
                          scales=result.scales)
    assert again.record["calibration_method"] == "cached"
    assert again.files[0].read_bytes() == result.files[0].read_bytes()
    wrong = dict(list(result.scales.items())[1:])
    with pytest.raises(CacheMismatch):
        quantize_int8(tiny_artifact / "sam2_image.onnx", tmp_path / "x.onnx", SAM2_IMAGE, feeds[:1], scales=wrong)


def test_entropy_failure_falls_back_to_max_loudly_and_on_record(tiny_artifact, calib_inputs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="export.precision"):
        result = quantize_int8(tiny_artifact / "owl_text.onnx", tmp_path / "owl_text.int8.onnx", OWL_TEXT,
                               calib_inputs.feeds(OWL_TEXT.name), method="entropy")
    assert result.record["calibration_method"] == "max"
    assert "entropy calibration failed" in result.record["calibration_fallback"]
    assert "entropy calibration failed" in caplog.text


# --- through export.build ------------------------------------------------------------------------
def test_precision_entries_in_the_manifest(tiny_precision_artifact):
    m = load_manifest(tiny_precision_artifact)
    for name, rec in m.graphs.items():
        if GRAPHS[name].fixed_precision:  # the pixel graphs: one FP32 file for every precision
            assert set(rec["files"]) == {"fp32"}, name
            continue
        assert set(rec["files"]) == {"fp32", "fp16", "int8"}, name
        for p in ("fp32", "fp16", "int8"):  # the FP32 graphs too: quantization must not touch them
            entry = rec["files"][p]
            for f in entry["files"]:
                assert sha256_file(tiny_precision_artifact / f["path"]) == f["sha256"]
            assert m.graph_path(name, p).is_file()
        assert rec["files"]["fp16"]["files"][0]["path"] == graph_file_name(name, "fp16")
        kept = rec["files"]["fp16"]["kept_fp32"]
        fp32 = onnx.load(str(tiny_precision_artifact / graph_file_name(name, "fp32")), load_external_data=False)
        assert kept["nodes"] == len(nodes_kept_fp32(fp32, policy_for(name))) and kept["why"], name
        assert kept["nodes"] > 0 or GRAPHS[name].video, name  # a video graph may have nothing its policy keeps
        int8 = rec["files"]["int8"]
        if name in INT8_KEEP_FP16:
            assert int8["precision"] == "fp16" and int8["kept_higher_precision"] == INT8_KEEP_FP16[name]
            assert int8["files"] == rec["files"]["fp16"]["files"]
        else:
            assert int8["precision"] == "int8" and int8["files"][0]["path"] == graph_file_name(name, "int8")
            assert int8["activation_quantizers"] > 0 and int8["calibration_method"] in ("entropy", "max")
            assert (tiny_precision_artifact / int8["calibration_cache"]["path"]).is_file()
    cal = m.data["calibration"]
    assert cal["used"] == 6 and cal["skipped"] == 0 and len(cal["sha256"]) == 64
    assert set(cal["graphs"]) == {n for n in m.graphs if n not in INT8_KEEP_FP16 and not GRAPHS[n].fixed_precision}
    assert m.data["toolkit"].get("nvidia-modelopt")


def test_parity_sections_per_precision(tiny_precision_artifact):
    parity = json.loads((tiny_precision_artifact / PARITY_NAME).read_text())
    m = load_manifest(tiny_precision_artifact)
    for p in ("fp16", "int8"):
        assert parity[p]["passed"] and m.data["parity"][p]["passed"]
        rows = parity[p]["rows"]
        for name, spec in GRAPHS.items():
            if name not in m.graphs or spec.fixed_precision:
                continue
            mine = [r for r in rows if r["graph"] == name]
            assert {r["output"] for r in mine} == set(spec.with_candidates().output_names), (p, name)
            assert all(r["cosine"] >= PRECISION_ACCEPTANCE[p].min_cosine for r in mine), (p, name)
        assert {r["inputs"] for r in rows} == ({"random"} if p == "fp16" else {"calibration"})


def test_no_intermediate_files(tiny_precision_artifact):
    names = sorted(p.name for p in tiny_precision_artifact.iterdir())
    assert not [n for n in names if "qdq" in n or n.endswith(".tmp")], names
    assert [p.name for p in tiny_precision_artifact.parent.iterdir()] == [tiny_precision_artifact.name]


def test_rerun_with_the_same_inputs_reuses_the_calibration(tiny_precision_artifact, tiny_checkpoints, calibration_dir,
                                                          tmp_path):
    """Re-exported over a copy of the ``--video`` artifact, without ``--video``: the image graphs' cached
    ranges are reused and their INT8 files come out the same."""
    from export.build import main

    out = tmp_path / "again"
    shutil.copytree(tiny_precision_artifact, out)
    first = load_manifest(out).data
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam), "--out", str(out),
          "--fp16", "--int8", "--calib-dir", str(calibration_dir), "--calib-count", "6", "--engines", "skip"])
    second = load_manifest(out).data
    assert second["calibration"]["graphs"], "the rerun calibrated no graph: nothing to check"
    for name, g in second["calibration"]["graphs"].items():
        assert g["reused"], name
        assert second["graphs"][name]["files"]["int8"]["files"] == first["graphs"][name]["files"]["int8"]["files"]
        assert second["graphs"][name]["files"]["int8"]["calibration_method"] == \
            first["graphs"][name]["files"]["int8"]["calibration_method"]
    assert second["calibration"]["onnxruntime"], "the rerun quantised no graph for ONNX Runtime: nothing to check"
    for name, g in second["calibration"]["onnxruntime"].items():  # ONNX Runtime's INT8: the same cache, reused
        assert g["reused"], name
        assert second["graphs"][name]["onnxruntime"]["int8"]["files"] == first["graphs"][name]["onnxruntime"]["int8"]["files"]


# --- bad input -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_build(run_module):
    """``run_build(*args)``: ``python -m export.build args`` (conftest's ``run_module``), any exit status."""
    return functools.partial(run_module, "export.build", check=None)


def bad_folder(tmp_path: Path, kind: str) -> Path:
    d = tmp_path / "calib"
    if kind == "missing":
        return d
    d.mkdir()
    if kind == "corrupt":
        for i in range(5):
            (d / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return d


@pytest.mark.parametrize("kind, fragment", [
    ("missing", "does not exist"),
    ("empty", "has no images"),
    ("corrupt", "only 0 of 5 images"),
])
def test_bad_calibration_folder_is_a_one_line_error_and_writes_nothing(run_build, one_error_line, tmp_path,
                                                                       tiny_checkpoints, kind, fragment):
    out = tmp_path / "out"
    r = run_build("--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
                  "--out", str(out), "--int8", "--calib-dir", str(bad_folder(tmp_path, kind)), "--engines", "skip")
    one_error_line(r, fragment)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("args, fragment", [
    (["--calib-dir", "x"], "--calib-dir/--calib-count are for --int8"),
    (["--int8", "--calib-dir", "x", "--calib-count", "2"], "--calib-count 2 is too few"),
    (["--int8", "--calib-dir", "x", "--calib-method", "mse"], "invalid choice: 'mse'"),
])
def test_bad_precision_flags(run_build, one_error_line, args, fragment):
    one_error_line(run_build(*args), fragment)


# --- SAM2's discrete choices: candidates compared, flips counted apart ----------------------------
@pytest.fixture(scope="module")
def decoder_export(tiny_checkpoints):
    """The tiny SAM2 checkpoint's sam2_decoder as ``export.build`` exports it (module and example inputs)."""
    from export.models import load_sam
    from export.sam2 import sam2_graph_exports, sam2_sizes

    sam = load_sam(str(tiny_checkpoints.sam))
    return {g.spec.name: g for g in sam2_graph_exports(sam, sam2_sizes(sam))}[SAM2_DECODER.name]


def test_shipped_decoder_has_its_candidates_as_named_tensors_not_outputs(tiny_artifact):
    model = onnx.load(str(tiny_artifact / graph_file_name(SAM2_DECODER.name, "fp32")), load_external_data=False)
    assert [o.name for o in model.graph.output] == SAM2_DECODER.output_names  # engines and the runtime see these
    produced = {o for node in model.graph.node for o in node.output}
    assert {t.name for t in SAM2_DECODER.candidates} <= produced


def _broken(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def _scale_weight(name_part: str, factor: float):
    def edit(model):
        (t,) = [t for t in model.graph.initializer if name_part in t.name]
        w = onnx.numpy_helper.to_array(t)
        t.CopyFrom(onnx.numpy_helper.from_array((w * factor).astype(w.dtype), t.name))
    return edit


def _shift_iou_prediction(token: int, shift: float):
    def edit(model):
        (t,) = [t for t in model.graph.initializer if t.name.endswith("iou_prediction_head.proj_out.bias")]
        b = onnx.numpy_helper.to_array(t).copy()
        b[token] += shift
        t.CopyFrom(onnx.numpy_helper.from_array(b, t.name))
    return edit


def _invert_stability_choice(model):
    """``stability >= threshold`` -> ``<``: every box takes the other candidate."""
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"} | {t.name for t in model.graph.initializer}
    (node,) = [n for n in model.graph.node if n.op_type == "GreaterOrEqual" and n.input[1] in consts]
    node.op_type = "Less"


def test_decoder_precision_gate_tells_a_broken_graph_from_a_sound_one(tiny_artifact, decoder_export, tmp_path):
    """The FP16 decoder passes (its flips, if any, at ties); the same graph with one weight of the
    mask hypernetwork scaled fails on that candidate; with one mask token's predicted IoU raised by
    0.1, every cosine passes but the best-of-three choice flips where the reference was no tie
    (rejected flips); with its stability choice inverted, every candidate passes but the chosen mask
    fails, since the reference chooses as the graph's own candidates say."""
    from export.precision import _random_runs, precision_parity, rejected_flips

    acc = PRECISION_ACCEPTANCE["fp16"]
    fp32 = tiny_artifact / graph_file_name(SAM2_DECODER.name, "fp32")
    runs = _random_runs(decoder_export, seed=0)
    sound = convert_fp16(fp32, tmp_path / "sound.fp16.onnx", SAM2_DECODER).files[0]
    rows, flips = precision_parity(decoder_export, sound, "fp16", runs, acc)
    assert all(r.passed for r in rows) and not rejected_flips(flips)
    assert {r.output for r in rows} == set(SAM2_DECODER.with_candidates().output_names)

    weights = _broken(sound, tmp_path / "weights.onnx", _scale_weight("output_hypernetworks_mlps.0.proj_out.bias", 3.0))
    rows, _ = precision_parity(decoder_export, weights, "fp16", runs, acc)
    failed = {r.output for r in rows if not r.passed}
    assert "candidate_mask_logits" in failed, failed

    iou = _broken(sound, tmp_path / "iou.onnx", _shift_iou_prediction(2, 0.1))
    rows, flips = precision_parity(decoder_export, iou, "fp16", runs, acc)
    assert all(r.passed for r in rows)
    bad = rejected_flips(flips)
    assert bad and all(f.margin > acc.flip_margins[f.choice] for f in bad), flips

    choice = _broken(sound, tmp_path / "choice.onnx", _invert_stability_choice)
    rows, flips = precision_parity(decoder_export, choice, "fp16", runs, acc)
    failed = {r.output for r in rows if not r.passed}
    assert failed == {"mask_logits", "iou_scores"}, failed
    assert not flips  # the candidates agree: the graph chose against them


def test_flips_are_replayed_on_the_reference_and_judged_by_its_margin(decoder_export):
    """A single-mask logit nudged across +delta where the reference's stability score sits exactly on
    the threshold flips that box's choice at margin 0 (a tie), and the reference is then chosen as the
    graph chose; a box made perfectly stable where the reference is unstable flips far from a tie."""
    import torch

    from export.parity import replay_choices
    from runtime.graphs import STABILITY

    module = decoder_export.module
    md = module.mask_decoder
    feeds = decoder_export.make_inputs({"batch": 1, "num_boxes": 3}, np.random.default_rng(3))
    ref = decoder_export.torch_outputs(feeds)
    limit = PRECISION_ACCEPTANCE["fp16"].flip_margins[STABILITY]

    margins = module.margins({k: torch.from_numpy(v) for k, v in ref.items()})[STABILITY][0].numpy()
    picks = module.decide({k: torch.from_numpy(v) for k, v in ref.items()})[STABILITY][0, :, 0].numpy()
    far = [i for i in range(3) if not picks[i] and margins[i] > limit]
    assert far, (picks, margins)
    got = {k: v.copy() for k, v in ref.items()}
    got["candidate_mask_logits"][0, far[0], 0] = 10.0  # stability 1: stable
    _, flips = replay_choices(decoder_export, ref, got)
    assert flips == [(STABILITY, [0, far[0]], pytest.approx(float(margins[far[0]])))]

    stability, _ = module._stability(torch.from_numpy(ref["candidate_mask_logits"][:, :, 0:1]))
    thresh = md.dynamic_multimask_stability_thresh
    md.dynamic_multimask_stability_thresh = float(stability[0, 0, 0])  # box 0 exactly on the threshold: stable
    try:
        unchanged, none = replay_choices(decoder_export, ref, ref)
        assert none == []
        got = {k: v.copy() for k, v in ref.items()}
        single = got["candidate_mask_logits"][0, 0, 0]
        single[tuple(np.argwhere(single > md.dynamic_multimask_stability_delta)[0])] = 0.0  # one pixel less: unstable
        chosen, flips = replay_choices(decoder_export, ref, got)
    finally:
        md.dynamic_multimask_stability_thresh = thresh
    assert flips == [(STABILITY, [0, 0], 0.0)]
    best = int(np.argmax(ref["candidate_iou_scores"][0, 0, 1:])) + 1
    np.testing.assert_array_equal(chosen["mask_logits"][0, 0, 0], ref["candidate_mask_logits"][0, 0, best])
    np.testing.assert_array_equal(chosen["mask_logits"][0, 1:], unchanged["mask_logits"][0, 1:])
