"""The TensorRT engine builder and ``python -m export.build --from DIR``.

Everywhere: profile shapes from the manifest, options, and the clear refusal/skip when TensorRT or a
GPU is missing. Where tensorrt and a CUDA device exist (``gpu``): real builds of the tiny artifact,
manifest records, the timing cache, parser errors naming their node. Nothing imitates TensorRT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from export.engine import EngineOptions, graph_profiles, profile_shapes, skipped_note, tensorrt_status
from runtime.errors import ArtifactError, UserError
from runtime.graphs import BATCH, GRAPHS, NUM_BOXES, NUM_PROMPTS, OWL_HEAD, OWL_TEXT, SAM2_DECODER
from runtime.manifest import MANIFEST_NAME, load_manifest, sha256_file

TINY_SIZES = {"owl_text_length": 16, "owl_embed_dim": 32, "owl_num_patches": 16, "one": 1, "box_coords": 4,
              "sam_embed_dim": 128, "sam_embed_size": 4, "sam_feat0_dim": 16, "sam_feat0_size": 16,
              "sam_feat1_dim": 32, "sam_feat1_size": 8}
PROFILES = {BATCH: {"min": 1, "opt": 1, "max": 4}, NUM_PROMPTS: {"min": 1, "opt": 4, "max": 64},
            NUM_BOXES: {"min": 1, "opt": 8, "max": 32}}


# --- pure Python ---------------------------------------------------------------------------------

def test_profile_shapes_put_every_dynamic_dim_on_every_input():
    shapes = profile_shapes(SAM2_DECODER, TINY_SIZES, PROFILES)
    assert list(shapes) == SAM2_DECODER.input_names
    assert shapes["boxes"] == ((1, 1, 4), (1, 8, 4), (4, 32, 4))
    assert shapes["image_embed"] == ((1, 128, 4, 4), (1, 128, 4, 4), (4, 128, 4, 4))
    assert shapes["high_res_feat0"][2] == (4, 16, 16, 16)


def test_profile_shapes_of_two_dims_in_one_graph():
    shapes = profile_shapes(OWL_HEAD, TINY_SIZES, PROFILES)
    assert shapes["query_embeds"] == ((1, 32), (4, 32), (64, 32))
    assert shapes["logit_scale"] == ((1, 16, 1), (1, 16, 1), (4, 16, 1))
    assert graph_profiles(OWL_HEAD, PROFILES) == {BATCH: PROFILES[BATCH], NUM_PROMPTS: PROFILES[NUM_PROMPTS]}


def test_profile_shapes_from_the_tiny_artifact(tiny_artifact):
    m = load_manifest(tiny_artifact)
    for name in m.graphs:
        spec = GRAPHS[name]
        for t_name, (lo, opt, hi) in profile_shapes(spec, m.sizes, m.data["profiles"]).items():
            assert len(lo) == len(spec.input(t_name).shape)
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))


def test_missing_profile_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="lack"):
        profile_shapes(OWL_TEXT, TINY_SIZES, {BATCH: PROFILES[BATCH]})


def test_options_are_checked():
    assert EngineOptions().record() == {"optimization_level": 3, "workspace_bytes": None}
    with pytest.raises(UserError, match="0..5"):
        EngineOptions(optimization_level=6)
    with pytest.raises(UserError, match="positive"):
        EngineOptions(workspace_bytes=0)


def test_skipped_note_says_how_to_build_later():
    note = skipped_note("engines/x", "no CUDA device")
    assert "no CUDA device" in note and "python -m export.build --from engines/x --engines require" in note


# --- export.build --from, where TensorRT cannot run ------------------------------------------------

no_trt = pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT and a GPU are available: the build would run")


@no_trt
def test_from_require_fails_with_the_reason(tiny_artifact):
    from export.build import main

    with pytest.raises(UserError, match="--engines require: cannot build TensorRT engines here: "):
        main(["--from", str(tiny_artifact), "--engines", "require"])


@no_trt
def test_from_auto_skips_with_one_line_and_leaves_the_artifact(tiny_artifact, capsys):
    from export.build import main

    before = sha256_file(tiny_artifact / MANIFEST_NAME)
    assert main(["--from", str(tiny_artifact)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("engines skipped (")
    assert f"python -m export.build --from {tiny_artifact} --engines require" in err[0]
    assert sha256_file(tiny_artifact / MANIFEST_NAME) == before


def test_from_with_engines_skip_is_refused(tiny_artifact):
    from export.build import main

    with pytest.raises(UserError, match="--engines skip would do nothing"):
        main(["--from", str(tiny_artifact), "--engines", "skip"])


def test_bad_optimisation_level_is_a_usage_error(tiny_artifact):
    from export.build import main

    with pytest.raises(SystemExit) as e:
        main(["--from", str(tiny_artifact), "--opt-level", "9"])
    assert e.value.code == 2


# --- on a GPU with TensorRT ----------------------------------------------------------------------

@pytest.fixture
def artifact_copy(tensorrt_gpu, request, tmp_path) -> Path:
    # tensorrt_gpu skips before the (slow) artifact fixture is built
    root = tmp_path / "tiny"
    shutil.copytree(request.getfixturevalue("tiny_artifact"), root)
    return root


@pytest.mark.gpu
def test_build_from_writes_engines_and_records(artifact_copy, capsys):
    from export.build import main
    from runtime.backends.tensorrt import engine_file_name, tensorrt_environment

    assert main(["--from", str(artifact_copy), "--engines", "require", "--opt-level", "0", "--max-boxes", "8"]) == 0
    env = tensorrt_environment()
    data = json.loads((artifact_copy / MANIFEST_NAME).read_text())
    assert data["profiles"][NUM_BOXES]["max"] == 8  # the runtime reads the maxima the engines take
    for name in data["graphs"]:
        rec = data["engines"][name]["fp32"][env.device.slug]
        assert rec["file"] == engine_file_name(name, "fp32", env.device.slug)
        assert sha256_file(artifact_copy / rec["file"]) == rec["sha256"]
        assert rec["tensorrt"] == env.tensorrt_version and rec["gpu"]["name"] == env.device.name
        assert rec["gpu"]["compute_capability"] == "%d.%d" % env.device.compute_capability
        assert rec["precision"] == "fp32" and rec["builder"]["optimization_level"] == 0
        assert set(rec["profiles"]) == set(GRAPHS[name].dynamic_dims)
        if NUM_BOXES in rec["profiles"]:
            assert rec["profiles"][NUM_BOXES]["max"] == 8
    assert (artifact_copy / "timing.cache").stat().st_size > 0
    assert "engines built with TensorRT" in data["engines_note"]


@pytest.mark.gpu
def test_timing_cache_is_reused_and_a_foreign_one_ignored(artifact_copy):
    from export.engine import build_engines

    data = load_manifest(artifact_copy).data
    data = {**data, "graphs": {OWL_HEAD.name: data["graphs"][OWL_HEAD.name]}}  # one small graph is enough
    said: list[str] = []
    opts = EngineOptions(optimization_level=0)
    build_engines(artifact_copy, data, ["fp32"], opts, say=said.append)
    build_engines(artifact_copy, data, ["fp32"], opts, say=said.append)
    assert any(s.startswith("using timing cache") for s in said)
    (artifact_copy / "timing.cache").write_bytes(b"\x00" * 64)  # not a cache of this TensorRT
    said.clear()
    build_engines(artifact_copy, data, ["fp32"], opts, say=said.append)
    assert any(s.startswith("ignoring timing cache") for s in said), said


@pytest.mark.gpu
def test_parser_errors_name_the_node(tensorrt_gpu, tmp_path):
    from export.engine import EngineBuildError, network_from_onnx

    graph = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="the_unique_node")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["k"])])
    path = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(EngineBuildError, match="the_unique_node") as e:
        network_from_onnx(path)
    assert "\n" not in str(e.value) and "python -m export.trt_check" in str(e.value)


@pytest.mark.gpu
def test_network_is_strongly_typed(tensorrt_gpu, tmp_path):
    """The network the builder gets: strongly typed (the creation flag on TensorRT 10, always on 11+),
    so the FP16 types the graph declares are the network's."""
    import tensorrt as trt

    from export.engine import network_from_onnx
    from runtime.backends.tensorrt import tensorrt_major

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])])
    path = tmp_path / "fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    parsed = network_from_onnx(path)  # keeps the builder and parser alive with the network
    network = parsed.network
    if tensorrt_major(trt.__version__) < 11:  # TensorRT 11 ignores the (deprecated) flag
        assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert network.num_inputs == 1 and network.num_outputs == 1
    assert network.get_input(0).dtype == trt.DataType.HALF and network.get_output(0).dtype == trt.DataType.HALF
