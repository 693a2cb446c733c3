"""The static TensorRT check: clean on every exported graph, loud on hand-built bad ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.trt_check import (
    ERROR,
    SUPPORTED_OPS,
    UNSUPPORTED_OPS,
    WARNING,
    check_graph,
    check_model,
    errors,
    main,
    onnx_files,
    raise_on_errors,
)
from runtime.errors import UserError
from runtime.graphs import GRAPHS
from runtime.manifest import load_manifest

OPSET = 18


def model(nodes, inputs, outputs, initializers=(), opset=OPSET, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    m = helper.make_model(graph, opset_imports=imports)
    m.ir_version = 8
    return m


def const(name, values, dtype=np.int64):
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))


def by(findings, op=None, severity=None):
    return [f for f in findings if (op is None or f.op == op) and (severity is None or f.severity == severity)]


def run_ort(m, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# --- the real graphs ---------------------------------------------------------------------------

def test_every_graph_of_the_tiny_artifact_has_no_errors(tiny_artifact):
    m = load_manifest(tiny_artifact)
    checked = 0
    for name in m.graphs:
        for precision in m.precisions_of(name):
            path = m.graph_path(name, precision)
            findings = check_graph(path)
            assert errors(findings) == [], "\n".join(map(str, errors(findings)))
            checked += 1
    assert checked >= len(m.graphs)


def test_every_video_graph_has_no_errors(tiny_video_artifact):
    m = load_manifest(tiny_video_artifact)
    video = [name for name in m.graphs if GRAPHS[name].video]
    assert video
    for name in video:
        found = errors(check_graph(m.graph_path(name, "fp32")))
        assert found == [], "\n".join(map(str, found))


def test_int64_graph_io_is_noted_not_an_error(tiny_artifact):
    findings = check_graph(tiny_artifact / "owl_text.onnx")
    notes = [f for f in findings if "INT64" in f.problem]
    assert notes and all(f.severity == WARNING for f in notes)
    assert {"input_ids", "attention_mask"} <= {n for f in notes for n in ("input_ids", "attention_mask") if n in f.problem}


def test_cli_over_an_artifact(tiny_artifact, capsys):
    assert main([str(tiny_artifact), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("0 errors") == len(onnx_files([tiny_artifact]))
    assert "release/10.1-GA" in err  # the support matrix's source is named


# --- shape tensors -----------------------------------------------------------------------------

def onehot_tile_reshape():
    """x[4] reshaped by a shape made with OneHot then Tile: valid ONNX, runs in ONNX Runtime."""
    nodes = [
        const("idx", [1]), const("depth", 2), const("vals", [1, 4]), const("reps", [1, 1]), const("ax", [0]),
        helper.make_node("OneHot", ["idx", "depth", "vals"], ["hot"], name="make_shape_onehot"),
        helper.make_node("Tile", ["hot", "reps"], ["tiled"], name="make_shape_tile"),
        helper.make_node("Squeeze", ["tiled", "ax"], ["shape"], name="squeeze"),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="the_reshape"),
    ]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])


def test_onehot_tile_chain_feeding_reshape_is_flagged():
    m = onehot_tile_reshape()
    onnx.checker.check_model(m)
    (y,) = run_ort(m, {"x": np.arange(4, dtype=np.float32)})
    assert y.shape == (1, 4)  # a real, working graph: only TensorRT's shape tensors object to it
    found = errors(check_model(m, "toy"))
    onehot, tile = by(found, "OneHot"), by(found, "Tile")
    assert onehot and tile, found
    assert onehot[0].node == "make_shape_onehot" and "the_reshape" in onehot[0].problem
    assert "shape input" in tile[0].problem and tile[0].graph == "toy"


def test_shape_built_from_shape_is_clean():
    nodes = [
        const("ax", [0]),
        helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"),
        helper.make_node("ReduceProd", ["s"], ["n"], name="numel", keepdims=1),
        helper.make_node("Concat", ["n"], ["flat"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "flat"], ["y"], name="flatten"),
    ]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    assert errors(check_model(m, "toy")) == []


def test_shape_from_input_values_is_a_data_dependent_error():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_by_values")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
                      helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    found = errors(check_model(m, "toy"))
    assert any("values of graph input 's'" in f.problem and f.node == "reshape_by_values" for f in found), found


def test_reshape_with_unknown_rank_is_flagged():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="rank_unknown")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
                      helper.make_tensor_value_info("s", TensorProto.INT64, ["k"])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    assert any("output rank is not known" in f.problem for f in errors(check_model(m, "toy")))


# --- data-dependent shapes ---------------------------------------------------------------------

def test_nonzero_reaching_an_output_is_an_error():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="where_nonzero")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
              [helper.make_tensor_value_info("nz", TensorProto.INT64, [1, "k"])])
    found = by(check_model(m, "toy"), "NonZero", ERROR)
    assert found and found[0].node == "where_nonzero" and "data-dependent" in found[0].problem


def test_nonzero_inside_the_graph_is_a_warning():
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="inner_nonzero"),
        helper.make_node("Shape", ["nz"], ["s"], name="shape_nz"),
        helper.make_node("Add", ["x", "x"], ["y"], name="add"),
    ]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])])
    found = by(check_model(m, "toy"), "NonZero")
    assert found and all(f.severity == WARNING for f in found)


# --- operators and types -----------------------------------------------------------------------

def test_the_recorded_matrix_is_consistent():
    assert not set(SUPPORTED_OPS) & UNSUPPORTED_OPS
    for op in ("Reshape", "LayerNormalization", "Einsum", "ScatterND", "GatherND", "IsNaN", "OneHot", "NonZero"):
        assert op in SUPPORTED_OPS
    for op in ("Unique", "DFT", "ConvInteger"):
        assert op in UNSUPPORTED_OPS


def test_unsupported_op_is_an_error():
    nodes = [helper.make_node("Unique", ["x"], ["u"], name="uniq")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
              [helper.make_tensor_value_info("u", TensorProto.FLOAT, ["k"])])
    found = by(check_model(m, "toy"), "Unique", ERROR)
    assert found and found[0].node == "uniq" and "not supported" in found[0].problem


def test_custom_domain_op_is_an_error():
    nodes = [helper.make_node("FusedGelu", ["x"], ["y"], name="ms_gelu", domain="com.microsoft")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])], domains=["com.microsoft"])
    found = by(check_model(m, "toy"), "FusedGelu", ERROR)
    assert found and "plugin" in found[0].problem


def test_int64_matmul_is_an_error():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"], name="int_matmul")]
    m = model(nodes, [helper.make_tensor_value_info("a", TensorProto.INT64, [2, 3]),
                      helper.make_tensor_value_info("b", TensorProto.INT64, [3, 2])],
              [helper.make_tensor_value_info("c", TensorProto.INT64, [2, 2])])
    found = by(check_model(m, "toy"), "MatMul", ERROR)
    assert found and "INT64 input is unsupported" in found[0].problem


def test_resize_cubic_and_if_are_flagged():
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 1, 4, 4])])
    # the else branch: a supported op, then one the parser lacks (Unique), which only a walk into
    # the subgraph can find
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["n"], name="neg_in_branch"),
                                helper.make_node("Unique", ["n"], ["e"], name="unique_in_branch")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["k"])])
    nodes = [
        const("scales", [1.0, 1.0, 2.0, 2.0], np.float32),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="cubic", mode="cubic"),
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
                      helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 1, 8, 8]),
               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, 4, 4])])
    found = check_model(m, "toy")
    assert by(found, "Resize", ERROR) and "cubic" in by(found, "Resize", ERROR)[0].problem
    assert by(found, "If", WARNING)
    # subgraph nodes are checked too: the branch's Unique is found, by its node name, and Neg is fine
    assert [(f.node, f.problem) for f in by(found, "Unique")] == [
        ("unique_in_branch", "not supported by the TensorRT ONNX parser (support matrix: N)")]
    assert by(found, "Unique", ERROR) and "Unique" in UNSUPPORTED_OPS
    assert not by(found, "Neg", ERROR)


def test_old_opset_is_an_error():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], opset=8)
    assert by(check_model(m, "toy"), "opset", ERROR)


def test_raise_on_errors_is_one_line(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(onehot_tile_reshape(), path)
    with pytest.raises(UserError) as e:
        raise_on_errors(check_graph(path), path)
    msg = str(e.value)
    assert "\n" not in msg and "make_shape_tile" in msg and "(and 1 more)" in msg
    assert "python -m export.trt_check" in msg
    raise_on_errors([f for f in check_graph(path) if f.severity == WARNING], path)  # warnings pass


def test_unreadable_file_is_a_user_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        check_graph(path)
