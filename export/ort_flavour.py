"""The graphs written for ONNX Runtime on CPU: the manifest's ``onnxruntime`` entries.

The portable graphs are standard ONNX that TensorRT parses and fuses its own way; ONNX Runtime's
CPU kernels want other graphs:

* :func:`fuse_for_onnxruntime` (FP32, ``<graph>.ort.onnx``): onnxscript's ORT fusions put attention
  into ``com.microsoft.MultiHeadAttention``, whose CPU kernel is MLAS flash attention (no head's
  scores are materialised), residual + LayerNorm into SkipLayerNormalization and bias + GELU into
  BiasGelu. Not into the packed-QKV ``Attention`` op: its CPU kernel materialises the scores (one
  ViT-B block at 3601 tokens peaked at 0.83 GB with it, 0.25 GB with MultiHeadAttention).
* :func:`quantize_for_onnxruntime` (INT8, ``<graph>.int8.ort.onnx``): that graph quantised with ONNX
  Runtime's own ``quantize_static``: Q/DQ with asymmetric u8 activations (MinMax ranges) and
  symmetric s8 per-channel weights on the MatMuls with constant weights, the Gemms and the Convs,
  which ONNX Runtime fuses into integer kernels (QLinearMatMul, QGemm, QLinearConv: VNNI where the
  CPU has it). Attention, normalisation and everything else stay FP32.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from export import first_line
from export.graph_export import check_signature
from runtime.graphs import GraphSpec

log = logging.getLogger(__name__)

#: Ops ONNX Runtime's quantiser quantises: the MatMuls with a constant weight (``MatMulConstBOnly``),
#: the Gemms and the Convs. Attention is fused FP32 (MultiHeadAttention) and stays so.
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: Float ops of ONNX Runtime's optimised graph that would run a quantised layer dequantise-then-FP32.
FLOAT_COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "ConvTranspose")
#: Integer kernels of the optimised graph (what the Q/DQ pairs around a layer fuse into).
INTEGER_OPS = ("QLinearMatMul", "QGemm", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "MatMulInteger", "ConvInteger", "QAttention")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def model_files(path: Path) -> list[Path]:
    """``path`` and the external data files its tensors live in (an ORT flavour may share its
    portable graph's weights file)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    data = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = next(e.value for e in t.external_data if e.key == "location")
            if location not in data:
                data.append(location)
    return [path] + [path.parent / d for d in data]


# ----------------------------------------------------------------------------------------------
# FP32: fusions into ONNX Runtime's contrib ops.


def _fusions():
    """onnxscript's ORT fusions, in the order its ``optimize_for_ort`` applies them, without the one
    into the packed-QKV ``Attention`` op (see the module docstring) and without the decoder-LLM ones
    (rotary embeddings, GQA, RMS norm) these graphs do not have."""
    from functools import partial

    from onnxscript.rewriter.ort_fusions import (bias_gelu, erfgelu, gelu, mha, mha_bias, mha_scale, sdpa,
                                                 sdpa_via_mha, skip_normalization)

    return (
        ("erf_gelu", erfgelu.fuse_erfgelu),
        ("skip_layer_normalization", skip_normalization.fuse_skip_layer_normalization),
        ("sdpa", partial(sdpa.fuse_sdpa, apply_shape_inference=True)),
        ("mha", mha.fuse_mha1),
        ("mha", mha.fuse_mha2),
        ("mha_scale", mha_scale.fuse_mha_scale),
        ("mha_bias", mha_bias.fuse_mha_bias),
        ("gelu", gelu.fuse_gelu),
        ("bias_gelu", bias_gelu.fuse_bias_gelu),
        ("sdpa_via_mha", sdpa_via_mha.replace_sdpa_by_mha),
    )


def _fuse(model) -> dict[str, int]:
    """Apply the fusions to the ``onnx_ir`` model in place; the count of each."""
    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer
    from onnxscript.rewriter.ort_fusions import shape_optimization

    common_passes.ShapeInferencePass()(model)
    optimizer.optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimizer.optimize(model)
    counts: Counter[str] = Counter()
    for name, fuse in _fusions():
        counts[name] += fuse(model)
    optimizer.optimize(model)  # inlines what a fusion started and none finished
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    common_passes.RemoveInitializersFromInputsPass()(model)
    return {k: v for k, v in counts.items() if v}


def contrib_op_counts(path: Path) -> dict[str, int]:
    """The ``com.microsoft`` ops of the graph at ``path`` and how many of each."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft").items()))


def fuse_for_onnxruntime(src: Path, dst: Path, spec: GraphSpec) -> dict[str, Any] | None:
    """Write the FP32 ONNX Runtime flavour of the portable FP32 graph ``src`` to ``dst``; the
    manifest's record of it (``files``: ``dst`` and the weights file it shares with ``src``), or
    None when no fusion applies (ONNX Runtime then runs ``src``). Parity is the caller's."""
    import onnx_ir as ir

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    try:
        model = ir.load(str(src))
        fusions = _fuse(model)
        if not fusions:
            return None
        # Beside src, untouched weights stay in its external data file (no second copy of them), the
        # few the fusions made (e.g. concatenated Q/K/V biases) go into dst itself; elsewhere dst gets
        # its own external data file where src has one.
        shared = src.parent.resolve() == dst.parent.resolve()
        external = None if shared or len(model_files(src)) == 1 else f"{dst.name}.data"
        ir.save(model, str(dst), external_data=external)
    except Exception as e:
        raise RuntimeError(f"the ONNX Runtime fusions of {spec.name} failed in onnxscript: {first_line(e)}") from e
    check_signature(spec, dst)
    seconds = time.perf_counter() - t0
    log.info("%s: ONNX Runtime flavour in %.1f s, fusions %s", spec.name, seconds, fusions)
    return {
        "files": model_files(dst),
        "precision": "fp32",
        "fusions": fusions,
        "contrib_ops": contrib_op_counts(dst),
        "converter": f"onnxscript {_version('onnxscript')} ort_fusions (MultiHeadAttention, not packed Attention)",
        "seconds": round(seconds, 2),
    }


# ----------------------------------------------------------------------------------------------
# INT8: ONNX Runtime's quantize_static.


_RENAMED_OUTPUT = "_QuantizeLinear_Input"


def activation_params(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """``{tensor: (scale, zero point)}`` of every activation quantizer of a Q/DQ graph (weights,
    whose QuantizeLinear input is an initializer or which have no QuantizeLinear, are left out)."""
    inits = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            scale = float(onnx.numpy_helper.to_array(inits[node.input[1]]))
            zero = int(onnx.numpy_helper.to_array(inits[node.input[2]])) if len(node.input) > 2 else 0
            # a quantised graph output keeps its name on the DequantizeLinear; its producer's output is
            # renamed <name>_QuantizeLinear_Input: the calibrated tensor (and override key) is <name>
            name = node.input[0].removesuffix(_RENAMED_OUTPUT)
            out[name if name in outputs else node.input[0]] = (scale, zero)
    return out


def optimised_graph_ops(path: Path, work: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """What ONNX Runtime's CPU execution provider makes of the graph at ``path``: the op counts of
    its optimised graph (``SessionOptions.optimized_model_filepath``), and the float compute nodes
    (MatMul, Gemm, Conv and their fused forms) that read a DequantizeLinear's output, i.e. layers
    that would run dequantise-then-FP32."""
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="owlsam-ort-opt-", dir=work))
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(tmp / "optimised.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimised.onnx.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(str(tmp / "optimised.onnx"), load_external_data=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    producers = {o: n for n in model.graph.node for o in n.output}
    float_on_dq = [n.name or n.op_type for n in model.graph.node if n.op_type in FLOAT_COMPUTE_OPS
                   and any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)]
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items())), float_on_dq


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = iter([dict(f) for f in feeds])

    def get_next(self):
        return next(self._feeds, None)


def quantize_for_onnxruntime(
    src: Path,
    dst: Path,
    spec: GraphSpec,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    params: Mapping[str, tuple[float, int]] | None = None,
):
    """Write the INT8 ONNX Runtime flavour of the FP32 graph ``src`` (its ONNX Runtime flavour where
    it has one) to ``dst``; returns ``(PrecisionGraph, activation params)``.

    ``feeds`` are the calibration inputs (:mod:`calibration.inputs`, the set the portable INT8 graph
    is calibrated on). With ``params`` (cached ``{tensor: (scale, zero point)}`` of an earlier
    calibration of the same graph and set) only the first feed is run, for the quantiser's placement,
    and the cached values are written in. Raises when ONNX Runtime would run a quantised layer in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.precision import CacheMismatch, PrecisionGraph, save_model

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".int8-ort-{spec.name}-", dir=dst.parent))
    try:
        files = model_files(src)
        for f in files:
            shutil.copyfile(f, work / f.name)
        external = len(files) > 1
        pre, qdq = work / "pre.onnx", work / "qdq.onnx"
        # quant_pre_process: ONNX shape inference and ORT's basic optimisations, so that the
        # quantiser sees every tensor's shape (its symbolic shape inference does not know the
        # contrib ops: skipped)
        quant_pre_process(str(work / src.name), str(pre), skip_symbolic_shape=True, save_as_external_data=external,
                          external_data_location="pre.onnx.data")
        options: dict[str, Any] = {"MatMulConstBOnly": True}
        if params is not None:  # the quantiser derives weights' and biases' scales from these, as calibrated
            options["TensorQuantOverrides"] = {t: [{"scale": np.array(s, np.float32), "zero_point": np.array(z, np.uint8)}]
                                               for t, (s, z) in params.items()}
        quantize_static(
            str(pre), str(qdq), _Reader(list(feeds)[:1] if params is not None else feeds),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=True, op_types_to_quantize=list(QUANTIZED_OPS), calibrate_method=CalibrationMethod.MinMax,
            extra_options=options, use_external_data_format=external,
        )
        t_cal = time.perf_counter() - t0
        model = onnx.load(str(qdq))
        found = activation_params(model)
        if params is not None and set(found) != set(params):
            raise CacheMismatch(f"cached ranges cover {len(params)} tensors, the graph quantizes {len(found)} "
                                f"({len(set(found) ^ set(params))} differ)")
        if not found:
            raise RuntimeError(f"ONNX Runtime's quantiser placed no quantizer in {spec.name}")
        dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        quantized = Counter(n.op_type for n in model.graph.node
                            if n.op_type in QUANTIZED_OPS and dequantized & set(n.input))
        files = save_model(model, dst)
        del model
    except CacheMismatch:
        raise
    except Exception as e:
        raise RuntimeError(f"ONNX Runtime INT8 quantization of {spec.name} failed: {first_line(e)}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check_signature(spec, dst)
    kernels, in_float = optimised_graph_ops(dst, work=dst.parent)
    if in_float:
        raise RuntimeError(f"ONNX Runtime runs {len(in_float)} quantised layers of {spec.name} in float "
                           f"(dequantise-then-FP32: {', '.join(in_float[:5])}): its Q/DQ fusion did not apply")
    seconds = time.perf_counter() - t0
    log.info("%s: ONNX Runtime INT8 in %.1f s, %d activation quantizers", spec.name, seconds, len(found))
    return PrecisionGraph("int8", files, {
        "precision": "int8",
        "quantizer": (f"onnxruntime {_version('onnxruntime')} quantize_static (QDQ, u8 asymmetric activations, "
                      f"s8 symmetric per-channel weights; {', '.join(QUANTIZED_OPS)} with constant weights)"),
        "calibration_method": "cached" if params is not None else "minmax",
        "activation_quantizers": len(found),
        "quantized_ops": dict(sorted(quantized.items())),
        "ort_kernels": {k: v for k, v in kernels.items() if k in INTEGER_OPS or k in FLOAT_COMPUTE_OPS
                        or k == "MultiHeadAttention"},
        "calibration_seconds": round(t_cal, 2),
        "seconds": round(seconds, 2),
    }, scales={k: v[0] for k, v in found.items()}), found


# ----------------------------------------------------------------------------------------------
# The export step (given to export.precision.write_precisions for --int8 by its callers).

#: Why the graphs the INT8 plan keeps at higher precision are FP32, not FP16, in ONNX Runtime.
KEPT_FP32 = "FP32 in ONNX Runtime, whose CPU kernels compute FP16 through casts (slower than FP32)"


def _files_digest(paths: Sequence[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in paths:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def write_onnxruntime_int8(root: Path, graphs: Sequence[Any], plan: Mapping[str, str | None], inputs, cache, shas,
                           *, file_record, seed: int = 0, say=lambda msg: None):
    """``<graph>.int8.ort.onnx`` for each graph the INT8 plan quantises (``plan``: graph -> None, or
    why it stays at higher precision: then its ``int8`` entry is its FP32 ONNX Runtime graph), from
    the calibration ``inputs`` and ``cache`` the portable INT8 graphs use (entries
    ``<graph>.onnxruntime``), each checked against PyTorch like every INT8 graph but with ONNX
    Runtime's Q/DQ fusion on, SAM2's decoders before their discrete choices. Returns (manifest entries
    per graph, parity rows, choice flips, calibration record)."""
    from calibration.inputs import calibration_key
    from export.precision import CacheMismatch, _calibration_runs, _random_runs, _verdict, precision_parity
    from runtime.graphs import PRECISION_ACCEPTANCE
    from runtime.manifest import ONNXRUNTIME, graph_file_name

    root = Path(root)
    acceptance = PRECISION_ACCEPTANCE["int8"]
    entries: dict[str, dict[str, dict[str, Any]]] = {}
    rows: list = []
    flips: list = []
    record: dict[str, Any] = {}
    for i, graph in enumerate(graphs, 1):
        name = graph.spec.name
        fused = root / graph_file_name(name, "fp32", ONNXRUNTIME)
        source = fused if fused.is_file() else root / graph_file_name(name, "fp32")
        why = plan[name]
        runs = _calibration_runs(inputs, name) if inputs.supports(name) else []
        if not why:
            key = {**calibration_key(name, shas, inputs, "minmax"), "flavour": ONNXRUNTIME,
                   "source_sha256": _files_digest(model_files(source)), "onnxruntime": _version("onnxruntime")}
            cache_name = f"{name}.{ONNXRUNTIME}"
            cached = cache.lookup(cache_name, key)
            dst = root / graph_file_name(name, "int8", ONNXRUNTIME)
            t0 = time.perf_counter()
            result = None
            if cached is not None:
                params = {t: (s, cached["zero_points"][t]) for t, s in cached["scales"].items()}
                try:
                    result, found = quantize_for_onnxruntime(source, dst, graph.spec, inputs.feeds(name, limit=1),
                                                             params=params)
                    cache_file = cache.copy_entry(cache_name, cached)
                except CacheMismatch as e:
                    log.warning("%s: cached ONNX Runtime calibration does not fit the graph (%s); calibrating again", name, e)
            if result is None:
                feeds = inputs.feeds(name)
                result, found = quantize_for_onnxruntime(source, dst, graph.spec, feeds)
                cache_file = cache.store(cache_name, key, {t: p[0] for t, p in found.items()}, method="minmax",
                                         fallback=None, seconds=result.record["calibration_seconds"], runs=len(feeds),
                                         zero_points={t: p[1] for t, p in found.items()})
            cache_record = file_record(root, cache_file)
            reused = cached is not None and result.record["calibration_method"] == "cached"
            entries[name] = {"int8": {"files": [file_record(root, f) for f in result.files], **result.record,
                                      "calibration_cache": {**cache_record, "reused": reused}}}
            record[name] = {"method": "minmax", "runs": inputs.runs(name), "reused": reused,
                            "seconds": round(time.perf_counter() - t0, 2), "cache": cache_record["path"]}
            what = (f"{result.record['activation_quantizers']} activation quantizers, integer kernels "
                    + ", ".join(f"{n} {op}" for op, n in result.record["ort_kernels"].items() if op in INTEGER_OPS))
        else:
            entries[name] = {"int8": {"files": [file_record(root, f) for f in model_files(source)], "precision": "fp32",
                                      "kept_higher_precision": f"{why}; {KEPT_FP32}"}}
            runs = runs or _random_runs(graph, seed)
            what = "kept FP32"
        path = root / entries[name]["int8"]["files"][0]["path"]
        graph_rows, graph_flips = (precision_parity(graph, path, "int8", runs, acceptance, flavour=ONNXRUNTIME)
                                   if runs else ([], []))
        rows += graph_rows
        flips += graph_flips
        say(f"[int8 onnxruntime {i}/{len(graphs)}] {name}: {what}"
            + (f", parity {_verdict(graph_rows, graph_flips, name, 'int8', ONNXRUNTIME)}" if graph_rows else ""))
    return entries, rows, flips, record
