"""Precision in the graph: FP16 mixed precision and INT8 Q/DQ versions of the FP32 exports.

:func:`convert_fp16` (ModelOpt AutoCast, the graph's :class:`KeepFp32` policy kept in FP32) and
:func:`quantize_int8` (ModelOpt ONNX PTQ: explicit Q/DQ, per-channel weights, FP16 elsewhere) each read
one FP32 ONNX file and write one precision file; :func:`write_precisions` runs them for an export and
checks each against PyTorch by cosine per output, SAM2's decoders before their discrete choices (flips
counted apart, accepted at ties only: :func:`precision_parity`). Why these choices: docs/ARCHITECTURE.md
("Precision decisions").
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx

from export import first_line
from export.graph_export import EXTERNAL_DATA_BYTES, check_signature, onnx_files
from export.parity import ChoiceFlip
from runtime.errors import UserError
from runtime.graphs import GraphSpec, PrecisionAcceptance

log = logging.getLogger(__name__)

# The exporter records, per node, the module path it came from (``pkg.torch.onnx.name_scopes``:
# ['', 'det', 'det.box_head', ..., op name]); policies select nodes by these paths.
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
#: Scope of the nodes written by the exported wrapper's own ``forward`` (not by a submodule).
ROOT_SCOPE = "<root>"


# ----------------------------------------------------------------------------------------------
# What stays FP32.


@dataclass(frozen=True)
class KeepFp32:
    """Nodes of a graph kept in FP32 when the rest goes to FP16, and why (recorded in the manifest).

    ``op_types`` are kept wherever they occur; ``scopes`` are module paths of the exported wrapper
    (prefixes: ``det.box_head`` covers ``det.box_head.dense0``), :data:`ROOT_SCOPE` being the
    wrapper's own glue code.
    """

    op_types: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op_types": list(self.op_types), "scopes": list(self.scopes), "why": self.why}


# Decided from measurement (tools/bench/precision.py: `ranges` for FP32 value ranges, FP16 variants
# on the full-size random-weight architectures; numbers in the closing report of issue 5). On CPU every
# variant, even all-FP16, stays above cosine 0.99999 at full size: ONNX Runtime computes FP16 ops in
# FP32 between casts, so what it cannot show (FP16 accumulation inside an op) is decided from the ranges:
_NORMS = ("LayerNormalization",)  # variance = a row sum of (x-mean)^2: up to 1e4 measured (random weights;
#                                  trained ViTs have outlier channels of |x| ~ 100s), FP16 tops at 65504
_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare", "ReduceMax", "ReduceMin")
#               ^ SAM2's mask areas reach 1.8e4 measured and 65536 (a full 256x256 mask) > 65504
_SOFTMAX = ("Softmax",)  # the text graph's attention mask adds float32 min (-3.4e38) to the scores
_COMMON = _NORMS + _SOFTMAX + _REDUCTIONS
_SAM_HEADS = ("mask_decoder.iou_prediction_head", "mask_decoder.pred_obj_score_head", ROOT_SCOPE)

FP16_POLICY: dict[str, KeepFp32] = {
    "owl_text": KeepFp32(_COMMON, (), "LayerNorm and Softmax (the attention mask is float32 min), the "
                         "query embedding's L2 norm"),
    "owl_image": KeepFp32(
        _COMMON,
        ("det.class_head", "det.box_head", "det.objectness_head", "det.sigmoid", ROOT_SCOPE),
        "LayerNorm, Softmax, reductions; the class, box and objectness heads with the box bias and the "
        "embedding normalisation: about 2 % of the FLOPs, FP32 there cuts the FP16 error of every output "
        "by 25-30 % (full size: boxes 0.34 -> 0.27 px at 960, logit shift 1.8e-3 -> 1.3e-3)",
    ),
    "owl_head": KeepFp32((), (ROOT_SCOPE,), "all of it: cosine similarities shifted and scaled, a few "
                         "kFLOPs per query, scores thresholded at 0.1"),
    "sam2_image": KeepFp32(_COMMON, (), "LayerNorm, Softmax and reductions"),
    "sam2_decoder": KeepFp32(
        _COMMON, _SAM_HEADS,
        "LayerNorm, Softmax, reductions; the IoU and object-score heads; the wrapper's glue: box "
        "coordinates up to 1024 px (FP16 steps 0.5-1 px there) and the single-mask selection, whose "
        "mask areas reach 65536 > 65504",
    ),
    "sam2_decoder_multimask": KeepFp32(
        _COMMON, _SAM_HEADS,
        "LayerNorm, Softmax, reductions; the IoU and object-score heads; the box-coordinate glue",
    ),
    # video: measured on the feeds the FP32 tracker gives them (calibration.video), tiny checkpoints
    "sam2_prompt_decoder": KeepFp32(
        _COMMON, _SAM_HEADS,
        "as sam2_decoder (it is that decoder, plus the -1024 gate and the mask token): with only LayerNorm, "
        "Softmax and reductions in FP32 the single-mask stability selection flipped on the tracker's prompts "
        "(mask-logit cosine 0.854; 1.0 with the glue and heads in FP32)",
    ),
    "sam2_track_decoder": KeepFp32(
        _COMMON, _SAM_HEADS,
        "as sam2_decoder_multimask, plus the best-of-multimask choice by predicted IoU and the -1024 gate in "
        "the glue (mask-logit cosine 0.999999 without, 1.0 with, on the tracker's calls)",
    ),
}
DEFAULT_POLICY = KeepFp32(_COMMON, (), "LayerNorm, Softmax and reductions (default for graphs without a measured policy)")


def policy_for(graph: str) -> KeepFp32:
    return FP16_POLICY.get(graph, DEFAULT_POLICY)


def node_module(node: onnx.NodeProto) -> str:
    """The module path a node was exported from, :data:`ROOT_SCOPE` for the wrapper's own code."""
    for p in node.metadata_props:
        if p.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ROOT_SCOPE
            modules = [s for s in scopes[:-1] if s]  # the last entry is the op's own name
            return modules[-1] if modules else ROOT_SCOPE
    return ROOT_SCOPE


def nodes_kept_fp32(model: onnx.ModelProto, keep: KeepFp32) -> list[str]:
    """Names of the nodes of ``model`` that ``keep`` selects."""
    out = []
    for node in model.graph.node:
        module = node_module(node)
        in_scope = any(module == s or module.startswith(s + ".") for s in keep.scopes)
        if node.op_type in keep.op_types or in_scope:
            out.append(node.name)
    return out


# ----------------------------------------------------------------------------------------------
# Shared helpers.


class _NoGpuNoise(logging.Filter):
    """ModelOpt logs an ERROR on every calibration run of a machine without NVML (no GPU), and a root
    WARNING that bool/index ops (And, Range) have no FP16 form, which is expected: they stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Failed to get GPU count" not in message and "are not supported in 'float16'" not in message


_NO_GPU_NOISE = _NoGpuNoise()


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt at ERROR level, without its GPU-less noise, its prints or its per-tensor progress bars
    (its histogram collector wraps every calibration run in a tqdm over the tensors): our own
    progress bar, one per calibration pass, is the one shown."""
    for name in ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if _NO_GPU_NOISE not in logger.filters:
            logger.addFilter(_NO_GPU_NOISE)
    root = logging.getLogger()
    root.addFilter(_NO_GPU_NOISE)
    patched = None
    try:
        from functools import partial

        import modelopt.onnx.quantization.ort_patching as ort_patching
        from tqdm import tqdm

        patched = (ort_patching, ort_patching.tqdm)
        ort_patching.tqdm = partial(tqdm, disable=True)
    except ImportError:
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(_NO_GPU_NOISE)
        if patched:
            patched[0].tqdm = patched[1]


def modelopt_version() -> str:
    try:
        return importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def import_modelopt():
    """``modelopt.onnx`` or a UserError naming the install command (it pulls in torch: export side only)."""
    try:
        with _quiet_modelopt():
            import modelopt.onnx.autocast  # noqa: F401
            import modelopt.onnx.quantization  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"--fp16/--int8 need NVIDIA ModelOpt ({e.name or e} is missing); pip install 'owlsam-trt[export]' "
            "(nvidia-modelopt==0.47.0 without its [onnx] extra, onnx-graphsurgeon, onnxslim, lief)"
        ) from None
    import modelopt.onnx

    return modelopt.onnx


def _fix_unknown_dims(model: onnx.ModelProto) -> None:
    """AutoCast writes every dimension it cannot infer as the symbol ``unk``; ONNX Runtime then takes
    all of them for one size and fails re-using buffers (``{1,7,1,128} != {1,7,9,128}`` in the SAM2
    decoder). An unknown dimension must be left without a name."""
    for vi in list(model.graph.value_info) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param == "unk":
                d.ClearField("dim_param")


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` (external data above the exporter's threshold, as the FP32 export); return its files."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return onnx_files(path)


def _check_written(spec: GraphSpec, path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=False)
    check_signature(spec, path)


@dataclass
class PrecisionGraph:
    """A written precision graph: its files and what goes into the manifest about it."""

    precision: str
    files: list[Path]
    record: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, float] | None = None  # INT8: activation scales (to cache)


# ----------------------------------------------------------------------------------------------
# FP16.


def _autocast(src: Path, keep: KeepFp32, model_for_nodes: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """AutoCast ``src`` to FP16 with ``keep`` in FP32; returns (model, nodes kept FP32, node count)."""
    import_modelopt()
    from modelopt.onnx.autocast import convert_to_mixed_precision
    from modelopt.onnx.autocast.nodeclassifier import NodeRuleBase

    kept = nodes_kept_fp32(model_for_nodes, keep)

    class Rule(NodeRuleBase):
        def __init__(self, names):
            self.names = set(names)

        def _check_inner(self, node):
            return node.name in self.names

        def _log_skipped(self, node, **kwargs):
            pass

    with _quiet_modelopt():
        model = convert_to_mixed_precision(
            onnx_path=str(src),
            low_precision_type="fp16",
            keep_io_types=True,
            data_max=np.inf,
            providers=["cpu"],
            custom_rule=Rule(kept) if kept else None,
        )
    _fix_unknown_dims(model)
    return model, len(kept), len(model_for_nodes.graph.node)


def convert_fp16(src: Path, dst: Path, spec: GraphSpec, keep: KeepFp32 | None = None) -> PrecisionGraph:
    """Write the FP16 mixed-precision version of the FP32 graph ``src`` to ``dst``.

    Inputs and outputs stay FP32 (the runtime and the engine bindings do not change with the
    precision); the nodes ``keep`` selects (default: the graph's :data:`FP16_POLICY`) stay FP32.
    """
    keep = keep or policy_for(spec.name)
    t0 = time.perf_counter()
    original = onnx.load(str(src), load_external_data=False)
    try:
        model, kept, total = _autocast(Path(src), keep, original)
    except UserError:
        raise
    except Exception as e:
        raise RuntimeError(f"FP16 conversion of {spec.name} failed in ModelOpt AutoCast: {first_line(e)}") from e
    files = save_model(model, Path(dst))
    _check_written(spec, Path(dst))
    seconds = time.perf_counter() - t0
    log.info("%s: FP16 in %.1f s, %d of %d nodes kept FP32", spec.name, seconds, kept, total)
    return PrecisionGraph("fp16", files, {
        "precision": "fp16",
        "kept_fp32": {**keep.to_dict(), "nodes": kept, "of": total},
        "converter": f"nvidia-modelopt {modelopt_version()} autocast (keep_io_types, data_max=inf)",
        "seconds": round(seconds, 2),
    })


# ----------------------------------------------------------------------------------------------
# INT8.

CALIBRATION_METHODS = ("entropy", "max")


class FeedReader:
    """ONNX Runtime's ``CalibrationDataReader`` over a list of feed dicts, as ModelOpt uses it (it peeks
    at the first feed for its placement analysis, then runs them all once, one at a time). With
    ``progress``, each full pass shows a progress bar on stderr."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], progress: str | None = None) -> None:
        if not feeds:
            raise ValueError("no calibration feeds")
        self.feeds = [dict(f) for f in feeds]
        self.progress = progress
        self._next = 0
        self._bar = None

    def get_next(self):
        if self._next >= len(self.feeds):
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            return None
        if self.progress and self._bar is None and self._next == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.feeds), desc=self.progress, unit="run", leave=False)
        item = self.feeds[self._next]
        self._next += 1
        if self._bar is not None:
            self._bar.update(1)
        return item

    def get_first(self):
        return self.feeds[0]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Scale of every activation quantizer of a Q/DQ graph: ``{tensor name: scale}`` (weights, whose
    QuantizeLinear input is an initializer, are per-channel and not calibrated: left out)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            out[node.input[0]] = float(onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.float32))
    return out


def set_activation_scales(model: onnx.ModelProto, scales: Mapping[str, float]) -> None:
    """Write cached ``scales`` into the activation quantizers of ``model`` (same tensors, or an error)."""
    have = activation_scales(model)
    if set(have) != set(scales):
        raise KeyError(f"cached scales cover {len(scales)} tensors, the graph quantizes {len(have)} "
                       f"({len(set(have) ^ set(scales))} differ)")
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in scales:
            old = inits[node.input[1]]
            new = onnx.numpy_helper.from_array(np.array(scales[node.input[0]], dtype=np.float32), old.name)
            old.CopyFrom(new)
    # the matching DequantizeLinear nodes share the scale initializer (ModelOpt/ORT name it
    # ``<tensor>_scale`` and use it for both): nothing else to update.


def quantize_int8(
    src: Path,
    dst: Path,
    spec: GraphSpec,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    method: str = "entropy",
    scales: Mapping[str, float] | None = None,
    keep: KeepFp32 | None = None,
    progress: str | None = None,
) -> PrecisionGraph:
    """Write the INT8 Q/DQ version of the FP32 graph ``src`` to ``dst``.

    ``feeds`` are the calibration inputs, one dict per run (from :mod:`calibration.inputs`). With
    ``scales`` (cached activation scales of an earlier calibration of the same graph and set), only
    the first feed is run, for ModelOpt's placement analysis, and the cached scales are written in.
    Everything not quantized is then FP16 with ``keep`` (default: the graph's policy) in FP32.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {CALIBRATION_METHODS}")
    keep = keep or policy_for(spec.name)
    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    # ModelOpt rewrites the model it quantizes in place (onnx.shape_inference.infer_shapes_path): it
    # works on a copy, in a folder of the artifact being built, so that the FP32 graph keeps its hash.
    # ModelOpt names intermediate files with path.replace(".onnx", ...) on the whole path: no ".onnx"
    # may appear in the folder's path.
    work = dst.parent / f".int8-work-{spec.name}-{os.getpid()}"
    if ".onnx" in str(work.resolve()):
        work = Path(tempfile.mkdtemp(prefix=f"owlsam-int8-{spec.name}-"))
    used, fallback = method, None
    try:
        work.mkdir(exist_ok=True)
        qdq_path = work / "qdq-fp32.onnx"

        def fresh_copy() -> Path:
            for f in onnx_files(src):
                shutil.copyfile(f, work / f.name)
            return work / src.name

        qdq = None
        if scales is not None:
            _modelopt_quantize(fresh_copy(), qdq_path, FeedReader(list(feeds)[:1]), "max")
            qdq = onnx.load(str(qdq_path))
            try:
                set_activation_scales(qdq, scales)
            except KeyError as e:
                raise CacheMismatch(str(e)) from None
            # saving with external data moves the big weights out of ``qdq``; the scale initializers
            # (scalars, under save_model's 1 KiB threshold) and the nodes, all that is read below, stay
            save_model(qdq, qdq_path)
            used = "cached"
        else:
            try:
                _modelopt_quantize(fresh_copy(), qdq_path, FeedReader(feeds, progress=progress), method)
            except Exception as e:  # noqa: BLE001 - the histogram calibrator's failures: fall back, loudly
                if method != "entropy" or not _raised_in_calibrator(e):
                    raise
                fallback = f"entropy calibration failed ({first_line(e)}); used max calibration instead"
                log.warning("%s: %s", spec.name, fallback)
                used = "max"
                _modelopt_quantize(fresh_copy(), qdq_path, FeedReader(feeds, progress=progress), "max")
        t_cal = time.perf_counter() - t0
        if qdq is None:
            qdq = onnx.load(str(qdq_path))
        found = activation_scales(qdq)
        quantized = _quantized_op_counts(qdq)
        total = len(qdq.graph.node)
        del qdq  # AutoCast reads the Q/DQ graph from its file
        if not found:
            raise NothingToQuantize(f"ModelOpt placed no quantizer in {spec.name}")
        # node names survive quantization, module scopes do not: select from the FP32 graph
        model, kept, _ = _autocast(qdq_path, keep, onnx.load(str(src), load_external_data=False))
    except (UserError, CacheMismatch, NothingToQuantize):
        raise
    except Exception as e:
        raise RuntimeError(f"INT8 quantization of {spec.name} failed in ModelOpt: {first_line(e)}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    files = save_model(model, dst)
    _check_written(spec, dst)
    seconds = time.perf_counter() - t0
    log.info("%s: INT8 in %.1f s (%s calibration), %d activation quantizers", spec.name, seconds, used, len(found))
    return PrecisionGraph("int8", files, {
        "precision": "int8",
        "quantizer": f"nvidia-modelopt {modelopt_version()} onnx ptq (int8, symmetric, per-channel weights)",
        "calibration_method": used,
        "calibration_fallback": fallback,
        "activation_quantizers": len(found),
        "quantized_ops": quantized,
        "high_precision": "fp16",
        "kept_fp32": {**keep.to_dict(), "nodes": kept, "of": total},
        "calibration_seconds": round(t_cal, 2),
        "seconds": round(seconds, 2),
    }, scales=found)


def _raised_in_calibrator(e: BaseException) -> bool:
    """Whether ``e`` comes from ONNX Runtime's calibrators (e.g. "Too many bins for data range" of the
    entropy histogram on the text graph), not from anything else ModelOpt does."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.endswith(("quantization/calibrate.py", "quantization/ort_patching.py")) and \
                ("collect" in code.co_name or "histogram" in code.co_name.lower() or "compute" in code.co_name):
            return True
        tb = tb.tb_next
    return False


class NothingToQuantize(Exception):
    """ModelOpt's placement rules put no quantizer in the graph (the caller keeps it in FP16)."""


class CacheMismatch(Exception):
    """Cached scales do not fit the Q/DQ placement of the graph (the caller recalibrates)."""


def _quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    counts: dict[str, int] = {}
    seen = set()
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        for c in consumers.get(n.output[0], []):
            if c.name not in seen and c.op_type not in ("QuantizeLinear", "Cast"):
                seen.add(c.name)
                counts[c.op_type] = counts.get(c.op_type, 0) + 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _ort_quantization_restored() -> Iterator[None]:
    """ModelOpt patches ONNX Runtime's calibrators and quantizers for its own calibration
    (``modelopt.onnx.quantization.ort_patching``) and leaves them patched, after which ONNX Runtime's
    own ``quantize_static`` (export.ort_flavour) fails: put every attribute back as it was."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer, quantize

    owners = (calibrate, quantize, calibrate.CalibraterBase, calibrate.MinMaxCalibrater, calibrate.HistogramCalibrater,
              calibrate.HistogramCollector, qdq_quantizer.QDQQuantizer, base_quantizer.BaseQuantizer)
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, before in saved:
            for name in set(vars(owner)) - set(before):
                delattr(owner, name)
            for name, value in before.items():
                if vars(owner).get(name) is not value:
                    setattr(owner, name, value)


def _modelopt_quantize(src: Path, out: Path, reader: FeedReader, method: str) -> None:
    import_modelopt()
    from modelopt.onnx.quantization import quantize

    reader.rewind()
    first = reader.get_first()
    shapes = ",".join(f"{k}:{'x'.join(str(d) for d in v.shape)}" for k, v in first.items())
    with _quiet_modelopt(), _ort_quantization_restored():
        quantize(
            onnx_path=str(src),
            quantize_mode="int8",
            calibration_data_reader=reader,
            calibration_method=method,
            calibration_shapes=shapes,
            calibration_eps=["cpu"],
            high_precision_dtype="fp32",  # FP16 comes after, with the graph's FP32 policy
            use_external_data_format=src.with_name(src.name + ".data").exists(),
            output_path=str(out),
            log_level="ERROR",
        )
    if not out.is_file():
        raise RuntimeError("ModelOpt wrote no quantized model")


# ----------------------------------------------------------------------------------------------
# The export step: every graph at every requested precision, parity against PyTorch per precision.

#: Graphs that stay FP16 in an ``--int8`` artifact, and why (measured; see the module docstring of
#: tools/bench/precision.py for how). Their ``int8`` entry in the manifest points at the FP16 file.
INT8_KEEP_FP16: dict[str, str] = {
    "owl_text": "runs once per prompt set, not per image; INT8 moved the labels of the tiny pipeline's five best "
                "detections (85 % agree, 100 % with it FP16) and its entropy calibration fails (max fallback)",
    "owl_head": "one activation x activation MatMul of normalised embeddings: ModelOpt places no quantizer in it",
    "sam2_decoder": "INT8 flips SAM2's single-mask stability selection (tiny: mask-logit cosine 0.39; full size "
                    "0.999) and the decoder costs ~1/10 of the encoder",
    "sam2_decoder_multimask": "as sam2_decoder: the decoder costs ~1/10 of the encoder, FP16 keeps its masks",
    "sam2_prompt_decoder": "as sam2_decoder (it is that decoder, run once per new object): INT8 flips the single-mask "
                           "stability selection (tiny, on the decoders' calibration feeds: mask-logit cosine 0.51)",
    "sam2_track_decoder": "as sam2_decoder_multimask: graph cosine 0.9991 passes, but INT8 alone (FP32 elsewhere) moved "
                          "the tiny tracker's masks to IoU 0.896 against FP32 (mean 0.960; 4 generated clips x 10 frames), "
                          "below the INT8 mask acceptance 0.90, while the memory attention, memory encoder and object "
                          "pointer together in INT8 keep 0.92 (the memory attention, over up to 7 memory frames, is "
                          "the heavy one)",
}
#: Calibration runs the INT8 parity check uses (the first ones: in-sample).
INT8_PARITY_RUNS = 4


@dataclass
class PrecisionParity:
    """One output of one graph at one precision against the FP32 PyTorch module."""

    graph: str
    precision: str
    inputs: str  # "random" (the export's parity inputs) or "calibration" (the first calibration runs)
    dims: dict[str, int]
    output: str
    shape: list[int]
    max_abs: float
    cosine: float
    min_cosine: float
    passed: bool
    problem: str = ""
    flavour: str = "portable"  # or "onnxruntime": the graph ONNX Runtime runs (runtime.manifest.ONNXRUNTIME)


def compare_precision(graph: str, precision: str, inputs: str, dims: Mapping[str, int], name: str, ref: np.ndarray,
                      got: np.ndarray | None, min_cosine: float) -> PrecisionParity:
    from export.parity import cosine

    def row(shape, max_abs, cos, problem=""):
        return PrecisionParity(graph, precision, inputs, dict(dims), name, list(shape), max_abs, cos, min_cosine,
                               not problem, problem)

    if got is None:
        return row(ref.shape, float("nan"), 0.0, "missing output")
    if got.shape != ref.shape:
        return row(got.shape, float("nan"), 0.0, f"shape {list(got.shape)} != reference {list(ref.shape)}")
    if not np.all(np.isfinite(got)) and np.all(np.isfinite(ref)):
        return row(got.shape, float("nan"), 0.0, "non-finite values")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    cos = cosine(ref, got)
    return row(got.shape, float(diff.max()) if diff.size else 0.0, cos,
               "" if cos >= min_cosine else f"cosine {cos:.6f} < {min_cosine}")


def precision_parity(graph, path: Path, precision: str, runs: Sequence[tuple[str, Mapping[str, int], Mapping[str, np.ndarray]]],
                     acceptance: PrecisionAcceptance, flavour: str = "portable"
                     ) -> tuple[list[PrecisionParity], list[ChoiceFlip]]:
    """``graph`` (an ``export.graph_export.GraphExport``) at ``path`` in ONNX Runtime against its
    PyTorch module on each ``(inputs label, dims, feeds)`` of ``runs``; Q/DQ fusion off for the
    portable INT8 graphs (TensorRT's), on for ONNX Runtime's own (``flavour="onnxruntime"``).

    A graph with discrete choices is judged before them: every candidate against the reference's,
    and the chosen outputs against the reference's candidates chosen as the graph chose. Choices
    that differ from the reference's are the flips returned, each accepted only where the
    reference's margin is at most ``acceptance.flip_margins`` of its choice.
    """
    from export.graph_export import candidates_exposed
    from export.parity import replay_choices
    from runtime.backends.onnxruntime import OrtGraph

    spec = graph.spec
    rows, flips = [], []
    with candidates_exposed(path, spec) as (exposed, view):
        session = OrtGraph(exposed, view, disable_qdq_fusion=precision == "int8" and flavour == "portable")
        for label, dims, feeds in runs:
            ref = graph.torch_outputs(feeds)
            got = session.run(feeds)
            if graph.choices is not None:
                chosen, found = replay_choices(graph, ref, got)
                ref = {**ref, **chosen}
                for choice, item, margin in found:
                    limit = float(acceptance.flip_margins.get(choice, 0.0))
                    flips.append(ChoiceFlip(spec.name, precision, label, dict(dims), choice, item, margin, limit,
                                            margin <= limit, flavour))
            rows += [compare_precision(spec.name, precision, label, dims, t.name, ref[t.name], got.get(t.name),
                                       acceptance.min_cosine) for t in view.outputs]
    for r in rows:
        r.flavour = flavour
    return rows, flips


def rejected_flips(flips: Sequence[ChoiceFlip]) -> list[ChoiceFlip]:
    return [f for f in flips if not f.accepted]


def format_flips(flips: Sequence[ChoiceFlip]) -> str:
    """One line per flip: graph, precision, inputs, the item, the choice and the reference's margin."""
    lines = []
    for f in flips:
        dims = ",".join(f"{k}={v}" for k, v in f.dims.items()) or "-"
        verdict = "accepted" if f.accepted else "REJECTED"
        graph = f.graph if f.flavour == "portable" else f"{f.graph} (ort)"
        lines.append(f"{graph} {f.precision} {f.inputs} {dims} item {f.item}: {f.choice} flipped at reference "
                     f"margin {f.margin:.4g} (at most {f.max_margin:g}): {verdict}")
    return "\n".join(lines)


def format_precision_table(rows: Sequence[PrecisionParity]) -> str:
    header = (f"{'graph':<24} {'prec':<5} {'inputs':<11} {'dims':<24} {'output':<22} {'max-abs':>10} {'cosine':>10} "
              f"{'min':>7} result")
    lines = [header, "-" * len(header)]
    for r in rows:
        dims = ",".join(f"{k}={v}" for k, v in r.dims.items()) or "-"
        verdict = "PASSED" if r.passed else f"FAILED ({r.problem})"
        graph = r.graph if r.flavour == "portable" else f"{r.graph} (ort)"
        lines.append(f"{graph:<24} {r.precision:<5} {r.inputs:<11} {dims:<24} {r.output:<22} {r.max_abs:>10.3g} "
                     f"{r.cosine:>10.6f} {r.min_cosine:>7g} {verdict}")
    return "\n".join(lines)


def _dims_of(spec: GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    dims = {}
    for t in spec.inputs:
        for axis, d in t.dynamic_axes.items():
            dims[d] = int(feeds[t.name].shape[axis])
    return dims


@dataclass
class PrecisionOutcome:
    """What the export step adds to the artifact: per graph and precision the manifest entry
    (``files`` relative to the artifact, as the FP32 entry), the parity rows and the calibration record."""

    entries: dict[str, dict[str, dict[str, Any]]]
    rows: list[PrecisionParity]
    calibration: dict[str, Any] | None
    flips: list[ChoiceFlip] = field(default_factory=list)
    #: per graph and precision, the ONNX Runtime flavour's manifest entry (``--int8``: ``int8``)
    onnxruntime: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def write_precisions(
    root: Path,
    graphs: Sequence[Any],
    precisions: Sequence[str],
    *,
    file_record,
    inputs=None,
    previous: Path | None = None,
    method: str = "entropy",
    seed: int = 0,
    keep_fp16: Mapping[str, str] | None = None,
    onnxruntime_int8=None,
    say=lambda msg: None,
) -> PrecisionOutcome:
    """Write ``<graph>.fp16.onnx`` / ``<graph>.int8.onnx`` for every graph into ``root`` (the staged
    artifact holding the FP32 exports) and check them against PyTorch.

    ``keep_fp16`` (default :data:`INT8_KEEP_FP16`) names the graphs an INT8 artifact keeps in FP16
    and why. ``graphs`` are the ``GraphExport`` values of the export; ``inputs`` a
    :class:`calibration.inputs.CalibrationInputs` (needed for ``int8``; left open: whoever made it
    closes it); ``previous`` an earlier artifact at the output path whose ``calibration/`` cache may
    be reused; ``file_record(root, path)`` makes the manifest's file records. With ``int8``,
    ``onnxruntime_int8`` (``export.ort_flavour.write_onnxruntime_int8``, passed in so that module may
    use this one) writes ONNX Runtime's own INT8 graphs from the same calibration.
    """
    from calibration.cache import ScaleCache
    from calibration.inputs import calibration_key, graph_digest
    from runtime.graphs import PRECISION_ACCEPTANCE
    from runtime.manifest import graph_file_name

    root = Path(root)
    unknown = sorted(set(precisions) - {"fp16", "int8"})
    if unknown:
        raise ValueError(f"unknown precisions {unknown}")
    if "int8" in precisions and inputs is None:
        raise UserError("--int8 needs --calib-dir DIR (a folder of calibration images)")
    entries: dict[str, dict[str, dict[str, Any]]] = {g.spec.name: {} for g in graphs}
    rows: list[PrecisionParity] = []
    flips: list[ChoiceFlip] = []

    def parity(graph, path: Path, precision: str, runs) -> list[PrecisionParity]:
        found_rows, found_flips = precision_parity(graph, path, precision, runs, PRECISION_ACCEPTANCE[precision])
        rows.extend(found_rows)
        flips.extend(found_flips)
        return found_rows
    by_name = {g.spec.name: g for g in graphs}

    keep_fp16 = INT8_KEEP_FP16 if keep_fp16 is None else keep_fp16
    int8_plan: dict[str, str | None] = {}  # graph -> None (INT8) or why it stays FP16
    if "int8" in precisions:
        for name in by_name:
            if name in keep_fp16:
                int8_plan[name] = keep_fp16[name]
            elif not inputs.supports(name):
                raise ValueError(f"the calibration inputs have no feeds for {name} (the video graphs need the "
                                 "artifact's sizes): nothing would calibrate it")
            else:
                int8_plan[name] = None
    need_fp16 = [n for n in by_name if "fp16" in precisions or int8_plan.get(n)]

    # FP16 (also for the graphs an INT8 artifact keeps in FP16); each file hashed once
    fp16_records: dict[str, list[dict[str, Any]]] = {}

    def to_fp16(name: str) -> PrecisionGraph:
        result = convert_fp16(root / graph_file_name(name, "fp32"), root / graph_file_name(name, "fp16"),
                              by_name[name].spec)
        fp16_records[name] = [file_record(root, f) for f in result.files]
        return result

    def kept_fp16_entry(name: str, why: str) -> dict[str, Any]:
        """The ``int8`` entry of a graph kept in FP16: its FP16 files (converted now if not yet)."""
        if name not in fp16_records:
            to_fp16(name)
        return {"files": [dict(r) for r in fp16_records[name]], "precision": "fp16", "kept_higher_precision": why}

    for i, name in enumerate(need_fp16, 1):
        graph = by_name[name]
        result = to_fp16(name)
        entry = {"files": [dict(r) for r in fp16_records[name]], **result.record}
        graph_rows: list[PrecisionParity] = []
        if "fp16" in precisions:
            entries[name]["fp16"] = entry
            graph_rows = parity(graph, result.files[0], "fp16", _random_runs(graph, seed))
        say(f"[fp16 {i}/{len(need_fp16)}] {name}: {result.record['kept_fp32']['nodes']} of "
            f"{result.record['kept_fp32']['of']} nodes kept FP32, converted in {result.record['seconds']:.1f} s"
            + (f", parity {_verdict(graph_rows, flips, name, 'fp16')}" if graph_rows else ""))

    calibration_record = None
    if "int8" in precisions:
        cache = ScaleCache(root, [previous] if previous is not None else [])
        shas = {name: graph_digest(root, name) for name in by_name if inputs.supports(name)}
        calibration_record = {**inputs.images.record(), "settings": inputs.settings(), "method": method, "graphs": {}}
        order = list(by_name)
        for i, name in enumerate(order, 1):
            graph = by_name[name]
            why = int8_plan[name]
            if why:
                entries[name]["int8"] = kept_fp16_entry(name, why)
                runs = _calibration_runs(inputs, name) if inputs.supports(name) else _random_runs(graph, seed)
            else:
                key = calibration_key(name, shas, inputs, method)
                cached = cache.lookup(name, key)
                t0 = time.perf_counter()
                if cached is not None:
                    feeds = inputs.feeds(name, limit=1)
                    try:
                        result = quantize_int8(root / graph_file_name(name, "fp32"), root / graph_file_name(name, "int8"),
                                               graph.spec, feeds, scales=cached["scales"])
                        cache_file = cache.copy_entry(name, cached)
                        result.record["calibration_method"] = cached["method"]
                        result.record["calibration_fallback"] = cached.get("fallback")
                        reused = True
                    except CacheMismatch as e:
                        log.warning("%s: cached calibration does not fit the graph (%s); calibrating again", name, e)
                        cached = None
                if cached is None:
                    feeds = inputs.feeds(name)
                    try:
                        result = quantize_int8(root / graph_file_name(name, "fp32"), root / graph_file_name(name, "int8"),
                                               graph.spec, feeds, method=method, progress=f"calibrating {name}")
                    except NothingToQuantize as e:
                        why = f"{e}: it stays FP16"
                        log.warning("%s", why)
                        entries[name]["int8"] = kept_fp16_entry(name, why)
                        parity(graph, root / entries[name]["int8"]["files"][0]["path"], "int8",
                               _calibration_runs(inputs, name))
                        say(f"[int8 {i}/{len(order)}] {name}: kept FP16 ({why})")
                        continue
                    cache_file = cache.store(name, key, result.scales, method=result.record["calibration_method"],
                                             fallback=result.record["calibration_fallback"],
                                             seconds=result.record["calibration_seconds"], runs=len(feeds))
                    reused = False
                seconds = time.perf_counter() - t0
                cache_record = file_record(root, cache_file)
                result.record["calibration_cache"] = {**cache_record, "reused": reused}
                entries[name]["int8"] = {"files": [file_record(root, f) for f in result.files], **result.record}
                calibration_record["graphs"][name] = {
                    "method": result.record["calibration_method"], "fallback": result.record["calibration_fallback"],
                    "runs": inputs.runs(name), "reused": reused, "seconds": round(seconds, 2),
                    "cache": cache_record["path"],
                }
                runs = _calibration_runs(inputs, name)
            path = root / entries[name]["int8"]["files"][0]["path"]
            graph_rows = parity(graph, path, "int8", runs) if runs else []
            what = f"kept FP16 ({why.split(':')[0]})" if why else (
                f"{entries[name]['int8']['activation_quantizers']} activation quantizers, "
                + ("cached ranges reused" if calibration_record['graphs'][name]['reused']
                   else f"{calibration_record['graphs'][name]['method']} calibration on {inputs.runs(name)} runs")
                + f" in {calibration_record['graphs'][name]['seconds']:.1f} s")
            say(f"[int8 {i}/{len(order)}] {name}: {what}"
                + (f", parity {_verdict(graph_rows, flips, name, 'int8')}" if graph_rows else ""))
    onnxruntime: dict[str, dict[str, dict[str, Any]]] = {}
    if "int8" in precisions and onnxruntime_int8 is not None:  # from the same calibration set and cache
        onnxruntime, ort_rows, ort_flips, calibration_record["onnxruntime"] = onnxruntime_int8(
            root, graphs, int8_plan, inputs, cache, shas, file_record=file_record, seed=seed, say=say)
        rows += ort_rows
        flips += ort_flips
    return PrecisionOutcome(entries, rows, calibration_record, flips, onnxruntime)


def _random_runs(graph, seed: int) -> list[tuple[str, dict[str, int], dict[str, np.ndarray]]]:
    """The export parity's inputs: every parity size of every dynamic dimension, same seeds."""
    from export.parity import parity_runs

    return [("random", dims, feeds) for dims, feeds in parity_runs(graph, seed)]


def _calibration_runs(inputs, name: str) -> list[tuple[str, dict[str, int], dict[str, np.ndarray]]]:
    from runtime.graphs import GRAPHS

    feeds = inputs.feeds(name, limit=INT8_PARITY_RUNS)
    return [("calibration", _dims_of(GRAPHS[name], f), f) for f in feeds]


def _verdict(rows: Sequence[PrecisionParity], flips: Sequence[ChoiceFlip], graph: str, precision: str,
             flavour: str = "portable") -> str:
    mine = [f for f in flips if f.graph == graph and f.precision == precision and f.flavour == flavour]
    bad = [r for r in rows if not r.passed] or rejected_flips(mine)
    worst = min(r.cosine for r in rows)
    flipped = (f", {len(mine)} choice flip(s) at reference margins up to {max(f.margin for f in mine):.3g}"
               if mine else "")
    return f"{'FAILED' if bad else 'PASSED'} (worst cosine {worst:.5f}, {len(rows)} checks{flipped})"


def precision_failures(rows: Sequence[PrecisionParity]) -> list[PrecisionParity]:
    return [r for r in rows if not r.passed]
