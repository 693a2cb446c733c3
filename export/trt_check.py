"""Static check: will TensorRT's ONNX parser take this graph, and build it without traps?

    python -m export.trt_check engines/default            # every ONNX graph of an artifact
    python -m export.trt_check path/to/graph.onnx [...]

Runs on any machine (onnx only, no TensorRT); :func:`check_graph` returns structured :class:`Finding` s
and ``export.build`` raises on any ``error``. What is checked and why: docs/ARCHITECTURE.md ("The
static TensorRT check").
"""

from __future__ import annotations

import sys
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from runtime.errors import OneLineArgumentParser, UserError, run_cli
from runtime.graphs import DYNAMIC_DIMS
from runtime.manifest import ONNXRUNTIME_SUFFIX

ERROR = "error"
WARNING = "warning"

# --- the support matrix, as data -------------------------------------------------------------
# Source: https://github.com/onnx/onnx-tensorrt/blob/release/10.1-GA/docs/operators.md (tag
# release/10.1-GA, commit 96e7811, June 2024), "TensorRT 10.0 supports operators in the inclusive
# range of opset 9 to opset 20". Operator -> "Supported Types" column of every row marked Y; the
# table's "INF64" typo for ConstantOfShape is read as INT64. TensorRT 11's ONNX Opset Guide
# (docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html) raises the maximum
# opset to 25 and points to the same operators.md. Update both together when the matrix moves.
SUPPORT_MATRIX_SOURCE = "onnx-tensorrt docs/operators.md @ release/10.1-GA (96e7811), TensorRT 10.0/10.1, opset 9-20"
MIN_OPSET = 9
MAX_OPSET_MATRIX = 20  # what the recorded matrix covers (TensorRT 10.0/10.1)
MAX_OPSET_TRT = 25  # TensorRT 11.x (ONNX Opset Guide)

_F = "FP32 FP16 BF16"
_FI = "FP32 FP16 BF16 INT32 INT64"
_FIB = "FP32 FP16 BF16 INT32 INT64 BOOL"
SUPPORTED_OPS: dict[str, str] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": "BOOL", "ArgMax": _FI, "ArgMin": _FI,
    "Asin": _F, "Asinh": _F, "Atan": _F, "Atanh": _F, "AveragePool": _F, "BatchNormalization": _F,
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL", "CastLike": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Ceil": _F, "Celu": _F, "Clip": _F, "Concat": _FIB, "Constant": _FIB, "ConstantOfShape": _FIB,
    "Conv": _F, "ConvTranspose": _F, "Cos": _F, "Cosh": _F, "CumSum": _F, "DeformConv": "FP32 FP16",
    "DepthToSpace": _FI, "DequantizeLinear": "INT8 FP8 INT4", "Div": _FI, "Dropout": _F, "Einsum": _F,
    "Elu": _F, "Equal": _FI, "Erf": _F, "Exp": _F, "Expand": _FIB, "EyeLike": _FIB, "Flatten": _FIB,
    "Floor": _F, "Gather": _FIB, "GatherElements": _FIB, "GatherND": _FIB,
    "Gelu": "FP32 FP16 BF16 INT8 INT32 INT64", "Gemm": _F, "GlobalAveragePool": _F, "GlobalLpPool": _F,
    "GlobalMaxPool": _F, "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": "FP32 FP16",
    "GroupNormalization": _F, "GRU": _F, "HardSigmoid": _F, "HardSwish": _F, "Hardmax": _F,
    "Identity": _FIB, "If": _FIB, "ImageScaler": _F, "InstanceNormalization": _F, "IsInf": _F,
    "IsNaN": _FI, "LayerNormalization": _F, "LeakyRelu": _F, "Less": _FI, "LessOrEqual": _FI, "Log": _F,
    "LogSoftmax": _F, "Loop": _FIB, "LRN": _F, "LSTM": _F, "LpNormalization": _F, "LpPool": _F,
    "MatMul": _F, "Max": _FI, "MaxPool": _F, "Mean": "FP32 FP16 BF16 FP8 INT32 INT64",
    "MeanVarianceNormalization": _F, "Min": _FI, "Mish": "FP32 FP16", "Mod": _FI, "Mul": _FI, "Neg": _FI,
    "NonMaxSuppression": "FP32 FP16", "NonZero": "FP32 FP16", "Not": "BOOL", "OneHot": _FIB, "Or": "BOOL",
    "Pad": _FI, "ParametricSoftplus": _F, "Pow": _F, "PRelu": _F, "QuantizeLinear": _F, "RandomNormal": _F,
    "RandomNormalLike": _F, "RandomUniform": _F, "RandomUniformLike": _F, "Range": _FI, "Reciprocal": _F,
    "ReduceL1": _FI, "ReduceL2": _FI, "ReduceLogSum": _FI, "ReduceLogSumExp": _FI, "ReduceMax": _FI,
    "ReduceMean": _FI, "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI, "ReduceSumSquare": _FI,
    "Relu": _FI, "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB, "RNN": _F, "RoiAlign": "FP32 FP16",
    "Round": _F, "ScaledTanh": _F, "Scan": _F, "Scatter": _FI, "ScatterElements": _FI, "ScatterND": _FI,
    "Selu": _F, "Shape": _FIB, "Shrink": _FI, "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Sinh": _F,
    "Size": _FIB, "Slice": _FIB, "Softmax": _F, "Softplus": _F, "Softsign": _F, "SpaceToDepth": _FI,
    "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB, "Sub": _FI, "Sum": _FI, "Tan": _F, "Tanh": _F,
    "ThresholdedRelu": _F, "Tile": _FIB, "TopK": _FI, "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB,
    "Upsample": _F, "Where": _FIB, "Xor": "BOOL",
}
# Rows marked N in the same table.
UNSUPPORTED_OPS = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im "
    "CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow "
    "HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul "
    "RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert "
    "SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer "
    "StringSplit TfIdfVectorizer Unique".split()
)

# Which input carries the data type the matrix's "Supported Types" column speaks of (default 0);
# None: the op accepts any type there (Shape and Size read only the shape).
_TYPED_INPUT: dict[str, int | None] = {"Where": 1, "Shape": None, "Size": None, "Constant": -1, "ConstantOfShape": -1}

# ONNX TensorProto element types -> the matrix's names.
_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL",
               10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BF16", 17: "FP8", 18: "FP8",
               19: "FP8", 20: "FP8", 22: "INT4", 23: "FP4"}
_INT64 = 7

# --- shape tensors ---------------------------------------------------------------------------
# Inputs whose *values* become a shape (or an output size) at build time.
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
               "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4),
    "Resize": (2, 3), "Upsample": (1,), "Pad": (1, 3), "Range": (0, 1, 2), "OneHot": (1,), "TopK": (1,),
    "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "EyeLike": (0,),
    **{op: (1,) for op in _REDUCE_OPS},
}
# The shape inputs whose *length* sets an output rank: it must be known at build time.
_RANK_INPUTS: dict[str, int] = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0}
# Ops whose output is computed from a tensor's shape, not its values: a shape chain may start here.
_SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})
# Ops TensorRT can evaluate shape tensors with (IShapeLayer, IConstantLayer, IConcatenationLayer,
# IElementWiseLayer, IGatherLayer, IIdentityLayer, IReduceLayer, ISliceLayer, IShuffleLayer, ISelectLayer,
# casts; TensorRT developer guide, "Dynamic Shapes: Advanced Topics").
SHAPE_SAFE_OPS = frozenset({
    "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Cast", "CastLike",
    "Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Not", "And", "Or", "Where", "ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin",
    "ConstantOfShape", "Floor", "Ceil", "Sqrt",
})
# Reported users' breakages, and ops TensorRT cannot run as shape calculations: errors, not warnings.
SHAPE_BREAKING_OPS = frozenset({
    "OneHot", "Tile", "Range", "NonZero", "NonMaxSuppression", "Scatter", "ScatterND", "ScatterElements",
    "GatherND", "GatherElements", "CumSum", "TopK", "ArgMax", "ArgMin", "If", "Loop", "Scan", "Expand",
    "Einsum", "MatMul", "Gemm", "Trilu",
})
DATA_DEPENDENT_OPS = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})

# Restrictions of the matrix that need an input to be an initializer/constant.
_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    "Slice": (3, "axes"), "Squeeze": (1, "axes"), "Unsqueeze": (1, "axes"), "Pad": (3, "axes"),
    "CumSum": (1, "axis"), "OneHot": (1, "depth"), **{op: (1, "axes") for op in _REDUCE_OPS},
}
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
TOPK_MAX_K = 3840
# int64 tensors larger than this (elements, at the profile maxima) are worth computing in int32.
LARGE_INT64_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    op: str
    problem: str
    severity: str  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.op} node {self.node!r}" if self.node else self.op
        return f"{self.severity}: {self.graph}: {where}: {self.problem}"


def check_graph(path: str | Path) -> list[Finding]:
    """Findings for one ONNX file (weights are not loaded: only structure, types and shapes matter)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any load failure (I/O, protobuf) is about the user's file
        raise UserError(f"{path} is not a readable ONNX model ({e}); re-export it") from None
    name = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return check_model(model, name)


def check_model(model, graph_name: str) -> list[Finding]:
    """Findings for an in-memory ``onnx.ModelProto`` (what the unit tests build by hand)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the checks below degrade to "unknown"
        inferred = model
    g = _Graph(inferred.graph)
    out: list[Finding] = []

    def add(node, problem: str, severity: str = ERROR) -> None:
        out.append(Finding(graph_name, getattr(node, "name", "") or "", getattr(node, "op_type", node if isinstance(node, str) else ""), problem, severity))

    _check_opset(model, add)
    functions = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph, model.functions):
        _check_op(node, g, functions, add)
    _check_io(g, add)
    _check_shape_chains(g, add)
    _check_data_dependent(g, add)
    _check_large_int64(g, add)
    return out


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == ERROR]


def raise_on_errors(findings: Sequence[Finding], what: str | Path) -> None:
    """One UserError naming the first problem and the count, if any finding is an error."""
    bad = errors(findings)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(
            f"{what} would not build in TensorRT: {bad[0]}{more}; "
            f"see python -m export.trt_check {what} for every finding and change the export"
        )


# --- checks ----------------------------------------------------------------------------------

def _check_opset(model, add) -> None:
    for imp in model.opset_import:
        if imp.domain not in ("", "ai.onnx"):
            continue
        if imp.version < MIN_OPSET:
            add("opset", f"opset {imp.version} is below {MIN_OPSET}, the oldest the TensorRT parser reads")
        elif imp.version > MAX_OPSET_TRT:
            add("opset", f"opset {imp.version} is newer than TensorRT reads (up to {MAX_OPSET_TRT} in TensorRT 11)")
        elif imp.version > MAX_OPSET_MATRIX:
            add("opset", f"opset {imp.version} is beyond the recorded support matrix (opset {MAX_OPSET_MATRIX}, "
                f"TensorRT 10.0/10.1); TensorRT 11 reads up to opset {MAX_OPSET_TRT}", WARNING)


def _check_op(node, g: "_Graph", functions, add) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        if (node.domain, op) not in functions:
            add(node, f"custom-domain op ({node.domain}) needs a TensorRT plugin")
        return
    if op in UNSUPPORTED_OPS:
        add(node, "not supported by the TensorRT ONNX parser (support matrix: N)")
        return
    if op not in SUPPORTED_OPS:
        add(node, f"not in the TensorRT ONNX support matrix ({SUPPORT_MATRIX_SOURCE})")
        return
    _check_type(node, g, add)
    if op in CONTROL_FLOW_OPS:
        add(node, "control flow: TensorRT parses it with restrictions (branch outputs of equal rank, no dynamic "
            "scan lengths) and cannot fuse across it; dynamo exports have none", WARNING)
    if op in _CONSTANT_INPUTS:
        index, what = _CONSTANT_INPUTS[op]
        if len(node.input) > index and node.input[index] and node.input[index] not in g.constants:
            add(node, f"`{what}` must be an initializer or constant for the TensorRT parser")
    attrs = {a.name: a for a in node.attribute}
    if op == "Resize":
        coord = _attr_str(attrs, "coordinate_transformation_mode", "half_pixel")
        mode = _attr_str(attrs, "mode", "nearest")
        nearest = _attr_str(attrs, "nearest_mode", "round_prefer_floor")
        if coord not in _RESIZE_COORDS:
            add(node, f"coordinate_transformation_mode {coord!r} is unsupported")
        if mode not in _RESIZE_MODES:
            add(node, f"mode {mode!r} is unsupported (nearest or linear only)")
        if mode == "nearest" and nearest not in _RESIZE_NEAREST:
            add(node, f"nearest_mode {nearest!r} is unsupported")
        if _attr_int(attrs, "antialias", 0):
            add(node, "antialias is unsupported")
        if _attr_str(attrs, "keep_aspect_ratio_policy", "stretch") != "stretch":
            add(node, "keep_aspect_ratio_policy must be 'stretch'")
    elif op == "TopK":
        if not _attr_int(attrs, "sorted", 1):
            add(node, "`sorted` must be 1")
        k = g.constant_value(node.input[1]) if len(node.input) > 1 else None
        if k is not None and k.size and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
            add(node, f"K = {int(k.reshape(-1)[0])} must be below {TOPK_MAX_K}")
    elif op == "LayerNormalization":
        for extra in node.output[1:]:
            if extra and (g.consumers.get(extra) or extra in g.output_names):
                add(node, "only the first output Y is supported; Mean/InvStdDev are used here")
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        if op == "MaxPool" and len(node.output) > 1 and node.output[1] and (
                g.consumers.get(node.output[1]) or node.output[1] in g.output_names):
            add(node, "the Indices output is unsupported")
        dil = attrs.get("dilations")
        if dil is not None and any(d != 1 for d in dil.ints):
            add(node, "dilations must be empty or all ones")
    elif op == "ScatterND":
        if _attr_str(attrs, "reduction", "none") != "none":
            add(node, "`reduction` is unsupported")
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zp = g.constant_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and zp.size and (zp != 0).any():
            add(node, "the zero point must be 0 (symmetric quantisation)")
    elif op == "Constant":
        if any(a in attrs for a in ("sparse_value", "value_string", "value_strings")):
            add(node, "sparse and string constants are unsupported")
    elif op == "Dropout":
        if len(node.input) > 2 and node.input[2]:
            mode = g.constant_value(node.input[2])
            if mode is None or bool(mode.reshape(-1)[0]):
                add(node, "`training_mode` must be an initializer that is False")


def _check_type(node, g: "_Graph", add) -> None:
    allowed = SUPPORTED_OPS[node.op_type].split()
    index = _TYPED_INPUT.get(node.op_type, 0)
    if index is None:
        return
    names = node.output if index < 0 else node.input
    pos = 0 if index < 0 else index
    if len(names) <= pos or not names[pos]:
        return
    elem = g.elem_type(names[pos])
    type_name = _TYPE_NAMES.get(elem) if elem else None
    if type_name is None or type_name in allowed:
        return
    if type_name == "DOUBLE":
        add(node, "DOUBLE tensors are cast down to FP32 by TensorRT (clamped to +-FLT_MAX)", WARNING)
    elif node.op_type == "Cast" and type_name in ("INT8", "FP8", "INT4"):
        return  # quantised types reach Cast only through Q/DQ patterns, which the matrix covers
    else:
        add(node, f"{type_name} input is unsupported (supported: {', '.join(allowed)})")


def _check_io(g: "_Graph", add) -> None:
    for kind, values in (("input", g.graph.input), ("output", g.graph.output)):
        for v in values:
            if v.name in g.initializer_names:
                continue
            t = v.type.tensor_type
            if not t.HasField("shape"):
                add(f"graph {kind}", f"{kind} {v.name!r} has no shape: TensorRT needs every rank at build time")
            if t.elem_type == _INT64:
                add(f"graph {kind}", f"{kind} {v.name!r} is INT64: native in TensorRT >= 10 (older versions cast it "
                    "to INT32); keep values within int32 if the engine must also run on TensorRT < 10", WARNING)
            elif t.elem_type in (11, 8):
                add(f"graph {kind}", f"{kind} {v.name!r} is {_TYPE_NAMES[t.elem_type]}, which TensorRT does not "
                    "take as engine I/O")


def _check_shape_chains(g: "_Graph", add) -> None:
    reported: set[tuple[str, str]] = set()
    for node in g.graph.node:
        for index in SHAPE_INPUTS.get(node.op_type, ()):
            if len(node.input) <= index or not node.input[index]:
                continue
            tensor = node.input[index]
            target = f"the shape input {index} ({tensor!r}) of {node.op_type} {node.name!r}"
            if _RANK_INPUTS.get(node.op_type) == index and g.length(tensor) is None:
                add(node, f"input {index} has no static length: the output rank is not known at build time "
                    "(TensorRT needs static ranks)")
            for bad, why in _trace_shape_input(g, tensor):
                key = (getattr(bad, "name", bad), target)
                if key in reported:
                    continue
                reported.add(key)
                if isinstance(bad, str):  # a graph input
                    add(node, f"{target} depends on the values of graph input {bad!r}: a data-dependent shape "
                        "TensorRT can only handle with an output allocator; derive it from Shape instead")
                else:
                    sev = ERROR if bad.op_type in SHAPE_BREAKING_OPS else WARNING
                    add(bad, f"feeds {target}: {why}", sev)


def _trace_shape_input(g: "_Graph", tensor: str):
    """Walk producers backwards from a shape input; yield (offending node or graph-input name, why)."""
    seen: set[str] = set()
    queue = deque([tensor])
    while queue:
        name = queue.popleft()
        if not name or name in seen or name in g.constants:
            continue
        seen.add(name)
        if name in g.graph_inputs:
            yield name, "graph input values"
            continue
        node = g.producer.get(name)
        if node is None or node.op_type in _SHAPE_SOURCES:
            continue
        if node.op_type not in SHAPE_SAFE_OPS:
            yield node, (f"{node.op_type} is not a layer TensorRT computes shape tensors with "
                         "(Shape, Concat, Gather, Slice, elementwise, reduce, reshape); compute the shape from "
                         "Shape of an existing tensor instead")
        queue.extend(node.input)  # keep going: a OneHot behind a Tile is a second problem


def _check_data_dependent(g: "_Graph", add) -> None:
    for node in g.graph.node:
        if node.op_type not in DATA_DEPENDENT_OPS:
            continue
        reaches = _reaches_output(g, node)
        if reaches:
            add(node, f"data-dependent output shape reaches graph output {reaches!r}: the runtime sizes buffers "
                "once from the profile maxima; pad to a fixed size inside the graph instead")
        else:
            add(node, "data-dependent shape inside the graph: TensorRT must synchronise with the host here, "
                "which also rules out CUDA-graph capture", WARNING)


def _reaches_output(g: "_Graph", node) -> str | None:
    seen: set[str] = set()
    queue = deque(o for o in node.output if o)
    while queue:
        name = queue.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in g.output_names:
            return name
        for consumer, _ in g.consumers.get(name, ()):
            queue.extend(o for o in consumer.output if o)
    return None


def _check_large_int64(g: "_Graph", add) -> None:
    heavy = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"}
    for node in g.graph.node:
        if node.op_type in heavy:
            continue  # already an error from the type check
        for out in node.output:
            if not out or g.elem_type(out) != _INT64 or out in g.output_names:
                continue
            n = g.volume_at_max(out)
            if n is not None and n > LARGE_INT64_ELEMENTS:
                add(node, f"computes a large INT64 tensor {out!r} ({n} elements at the profile maxima): 64-bit "
                    "integer arithmetic is slow on GPUs; cast to INT32 in the export", WARNING)


# --- graph index ------------------------------------------------------------------------------

class _Graph:
    """Producers, consumers, constants, types and shapes of one (shape-inferred) ONNX graph."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers[name].append((n, i))
        self.initializer_names = {t.name for t in graph.initializer}
        self._initializers = {t.name: t for t in graph.initializer}
        self._constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.constants = self.initializer_names | set(self._constant_nodes)
        self.graph_inputs = {v.name for v in graph.input} - self.initializer_names
        self.output_names = {v.name for v in graph.output}
        self._values = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}

    def elem_type(self, name: str) -> int | None:
        if name in self._initializers:
            return self._initializers[name].data_type
        v = self._values.get(name)
        if v is not None and v.type.HasField("tensor_type"):
            return v.type.tensor_type.elem_type or None
        node = self._constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return a.t.data_type
        return None

    def dims(self, name: str) -> list | None:
        if name in self._initializers:
            return list(self._initializers[name].dims)
        v = self._values.get(name)
        if v is None or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]

    def length(self, name: str) -> int | None:
        """Static length of a 1-D tensor, or None."""
        d = self.dims(name)
        if d is None or len(d) != 1 or not isinstance(d[0], int):
            return None
        return d[0]

    def volume_at_max(self, name: str) -> int | None:
        d = self.dims(name)
        if d is None:
            return None
        n = 1
        for x in d:
            if isinstance(x, int):
                n *= x
            elif x in DYNAMIC_DIMS:
                n *= DYNAMIC_DIMS[x].max
            else:
                return None
        return n

    def constant_value(self, name: str):
        from onnx import numpy_helper

        if name in self._initializers:
            t = self._initializers[name]
            if t.data_location == 1:  # EXTERNAL: weights are not loaded here
                return None
            return numpy_helper.to_array(t)
        node = self._constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def _all_nodes(graph, functions=()):
    """Nodes of a graph, its subgraphs (If/Loop/Scan bodies) and its local functions."""
    stack = [graph]
    for f in functions:
        stack.append(f)
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            for a in node.attribute:
                if a.type == a.GRAPH:
                    stack.append(a.g)
                elif a.type == a.GRAPHS:
                    stack.extend(a.graphs)


def _attr_str(attrs, name: str, default: str) -> str:
    a = attrs.get(name)
    return a.s.decode() if a is not None else default


def _attr_int(attrs, name: str, default: int) -> int:
    a = attrs.get(name)
    return int(a.i) if a is not None else default


# --- command line -----------------------------------------------------------------------------

def onnx_files(paths: Sequence[Path]) -> list[Path]:
    """The ONNX files named, or every ``*.onnx`` of a named directory (an artifact) but the graphs
    written for ONNX Runtime (their contrib ops are ONNX Runtime's, not TensorRT's)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob("*.onnx") if not f.name.endswith(ONNXRUNTIME_SUFFIX))
            if not found:
                raise UserError(f"{p} has no .onnx files; pass an engines directory or ONNX files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist; pass an engines directory or ONNX files")
    return files


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m export.trt_check", description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="engines directory or ONNX files")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    args = p.parse_args(argv)
    n_err = 0
    for path in onnx_files(args.paths):
        findings = check_graph(path)
        n_err += len(errors(findings))
        for f in findings:
            if f.severity == ERROR or not args.quiet:
                print(f)
        print(f"{path}: {len(errors(findings))} errors, {len(findings) - len(errors(findings))} warnings",
              file=sys.stderr)
    print(f"support matrix: {SUPPORT_MATRIX_SOURCE}", file=sys.stderr)
    return 1 if n_err else 0


if __name__ == "__main__":
    run_cli(main)
