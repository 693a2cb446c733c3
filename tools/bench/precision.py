"""Numerics and speed of the FP16 / INT8 graphs on CPU: parity tables, conversion times, latency.

    python -m tools.bench.precision checkpoints OUT [--seed N] [--owl-arch owlv2-b16|tiny] [--sam-arch hiera-small|...]
        writes full-size random-weight OWLv2-B/16 (960 px) and SAM2.1-hiera-small checkpoints
        (Hugging Face format, the tiny checkpoints' real CLIP BPE tokenizer; SAM2 with its video
        modules, as the released one) to OUT/owlv2, OUT/sam2
    python -m tools.bench.precision parity --engines DIR --owl-model DIR --sam-model DIR
                                             [--images N] [--json FILE]
        task-level parity of every precision in DIR against the FP32 PyTorch pipeline
        (transformers' Owlv2ForObjectDetection / Sam2Model with their processors): detections
        matched by IoU, top-5 labels, masks IoU, and per-graph output cosine vs PyTorch
    python -m tools.bench.precision latency --engines DIR [--runs 3] [--threads 2] [--json FILE]
        ONNX Runtime CPU latency of each graph at every precision in DIR (median of --runs)

Random weights: every parameter is re-drawn with ``tools.tiny_checkpoints.reinitialise`` (PyTorch's
default initialisers scaled to keep activations of order 1, plus OWLv2's class-head biases and
SAM2's object-score bias), because Hugging Face's std-0.02 init gives SAM2 masks of ~1e-4 against
which any comparison passes. A random ViT has no outlier channels and flat attention, which is not
what a trained one looks like: these numbers say whether the graphs are sound at full size, not
what a trained model's INT8 accuracy will be. Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, run_cli, whole_number
from runtime.manifest import PRECISIONS
from runtime.metrics import mask_iou
from tools.bench.common import (OWL_ARCHES, OWL_B16, SAM_ARCHES, checkpoint_biases, median_ms, parameters_m,
                                random_owl, random_sam, sam2_config, sam2_processor, with_machine, write_json)
from tools.bench.synthetic import synthetic_image

def write_fullsize_checkpoints(out: Path, seed: int = 0, log=print, owl_arch: str = OWL_B16,
                               sam_arch: str = "hiera-small") -> tuple[Path, Path]:
    """Random-weight OWLv2 and SAM2 checkpoints of ``owl_arch`` / ``sam_arch`` under ``out`` (owlv2/,
    sam2/), re-initialised to order-1 outputs with the tiny checkpoints' biases, the tiny BPE tokenizer."""
    from tools.tiny_checkpoints import build_tokenizer

    out = Path(out)
    # SAM2 as a sam2_video checkpoint, as facebook/sam2.1-hiera-small is: Sam2Model loads its image
    # weights, Sam2VideoModel (export.build --video) also its memory modules
    makers = (("owlv2", lambda: random_owl(owl_arch, seed, tokenizer=build_tokenizer())),
              ("sam2", lambda: random_sam(sam_arch, seed, video=True)))
    for name, make in makers:  # one model in memory at a time
        loaded = make()
        checkpoint_biases(loaded.model)
        log(f"writing {out / name} ({parameters_m(loaded.model):.0f} M parameters)")
        loaded.model.save_pretrained(out / name)
        loaded.processor.save_pretrained(out / name)
        if name == "sam2":  # so that Sam2VideoProcessor loads too
            sam2_processor(sam2_config(sam_arch), video=True).video_processor.save_pretrained(out / name)
        del loaded
    return out / "owlv2", out / "sam2"


def write_synthetic_images(out: Path, count: int, seed: int = 0) -> Path:
    """``count`` synthetic photos-like images (smooth colour fields with a few bright discs and boxes,
    sizes from 240x320 to 1080x1920, JPEG and PNG) under ``out``: a calibration or test set."""
    from PIL import Image

    sizes = [(480, 640), (640, 480), (720, 1280), (1080, 1920), (333, 500), (500, 333), (240, 320), (600, 600)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        img = synthetic_image(h, w, seed + i, num_shapes=6, rectangles=True, noise=0.02)
        Image.fromarray(img).save(out / f"synthetic_{i:03d}.{'jpg' if i % 2 else 'png'}", quality=92)
    return out


# --- precisions: the export step on an existing FP32 artifact ------------------------------------
def write_precision_artifact(args: argparse.Namespace) -> dict[str, Any]:
    """Copy the FP32 artifact ``--engines`` to ``--out`` and add FP16/INT8 graphs as export.build
    would (``--int8-all``: every graph INT8, none kept in FP16, to measure what INT8 does to each)."""
    import shutil

    from calibration.images import read_calibration_images
    from calibration.inputs import CalibrationInputs
    from export.artifact import file_record, write_json
    from export.build import PROMPT_TEMPLATE
    from export.models import load_owl, load_sam
    from export.owl import owl_graph_exports, owl_sizes
    from export.ort_flavour import write_onnxruntime_int8
    from export.precision import format_precision_table, write_precisions
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from runtime.manifest import MANIFEST_NAME, ONNXRUNTIME, PARITY_NAME, load_manifest
    from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

    src, out = Path(args.engines), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in src.iterdir():  # copies: ONNX refuses external data with several hard links
        if f.is_dir():
            shutil.copytree(f, out / f.name)
        else:
            shutil.copyfile(f, out / f.name)
    data = load_manifest(out).data
    owl, sam = load_owl(args.owl_model), load_sam(args.sam_model)
    sizes = {**owl_sizes(owl), **sam2_sizes(sam)}
    graphs = [g for g in owl_graph_exports(owl, sizes) + sam2_graph_exports(sam, sizes) if g.spec.name in data["graphs"]]
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    images = read_calibration_images(args.calib_dir, args.calib_count)
    pre_owl = OwlPreprocessing.from_dict(data["preprocessing"]["owl"])
    pre_sam = Sam2Preprocessing.from_dict(data["preprocessing"]["sam"])
    inputs = CalibrationInputs(out, images, pre_owl, pre_sam, sizes["owl_text_length"], prompt_template=PROMPT_TEMPLATE)
    try:
        outcome = write_precisions(out, graphs, ["fp16", "int8"], file_record=file_record, inputs=inputs,
                                   previous=args.reuse_calibration or src,
                                   method=args.calib_method, keep_fp16={} if args.int8_all else None,
                                   onnxruntime_int8=write_onnxruntime_int8, say=say)
    finally:
        inputs.close()
    total = time.perf_counter() - t0
    for name, entries in outcome.entries.items():
        data["graphs"][name]["files"].update(entries)
    for name, entries in outcome.onnxruntime.items():
        data["graphs"][name].setdefault(ONNXRUNTIME, {}).update(entries)
    data["calibration"] = outcome.calibration
    write_json(out / MANIFEST_NAME, data)
    parity = json.loads((out / PARITY_NAME).read_text())
    for p in ("fp16", "int8"):
        parity[p] = {"rows": [r.__dict__ for r in outcome.rows if r.precision == p],
                     "flips": [f.__dict__ for f in outcome.flips if f.precision == p]}
    write_json(out / PARITY_NAME, parity)
    print(format_precision_table(outcome.rows))
    timings = {name: {p: {k: e.get(k) for k in ("seconds", "calibration_seconds", "calibration_method",
                                                 "calibration_fallback", "activation_quantizers", "kept_higher_precision")
                          if e.get(k) is not None}
                      for p, e in entries.items()} for name, entries in outcome.entries.items()}
    result = {"total_s": total, "timings": timings}
    print(json.dumps(result, indent=1))
    return result


# --- FP32 value ranges at the ops an FP16 graph could keep in FP32 -------------------------------
RANGE_OPS = ("LayerNormalization", "Softmax", "ReduceSum", "ReduceMean", "ReduceL2", "MatMul", "Conv", "Add")
FP16_MAX = 65504.0


def _graph_ranges(path: Path, feeds: dict[str, Any], chunk_size: int, threads: int) -> dict[str, dict[str, float]]:
    """``value_ranges`` of one FP32 graph: per "op role" (e.g. "Softmax in"), the largest |x| over its
    tensors, how many tensors, how many above FP16's maximum; the model is loaded once and run with
    ``chunk_size`` extra outputs at a time."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    watch: list[tuple[str, str, str]] = []  # (op type, role, tensor)
    for node in model.graph.node:
        if node.op_type in RANGE_OPS:
            watch += [(node.op_type, "in", t) for t in node.input[:1] if t and t not in inits]
            watch += [(node.op_type, "out", node.output[0])]
    tensors = sorted({t for _, _, t in watch})
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    graph_outputs = len(model.graph.output)
    known = {o.name for o in model.graph.output}
    values: dict[str, dict[str, float]] = {}
    for start in range(0, len(tensors), chunk_size):
        chunk = tensors[start:start + chunk_size]
        del model.graph.output[graph_outputs:]  # the previous chunk's extra outputs
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in chunk if t not in known)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = sess.run(chunk, feeds)
        for t, v in zip(chunk, outs):
            v = np.asarray(v)
            if v.dtype.kind != "f" or v.size == 0:
                continue
            a = v.astype(np.float64)
            rec = {"max_abs": float(np.abs(a).max())}
            if a.ndim >= 1 and a.shape[-1] > 1:
                rec["max_row_sq_dev"] = float(((a - a.mean(-1, keepdims=True)) ** 2).sum(-1).max())
            values[t] = rec
        del outs, sess
    stats: dict[str, dict[str, float]] = {}
    for op, role, t in watch:
        if t not in values:
            continue
        s = stats.setdefault(f"{op} {role}", {"max_abs": 0.0, "tensors": 0, "above_fp16_max": 0})
        s["max_abs"] = max(s["max_abs"], values[t]["max_abs"])
        s["tensors"] += 1
        s["above_fp16_max"] += values[t]["max_abs"] > FP16_MAX
        if op == "LayerNormalization" and role == "in":
            s["max_row_sq_dev"] = max(s.get("max_row_sq_dev", 0.0), values[t].get("max_row_sq_dev", 0.0))
    return stats


def value_ranges(args: argparse.Namespace) -> dict[str, Any]:
    """Run each FP32 graph on realistic inputs with the inputs/outputs of ``RANGE_OPS`` nodes as extra
    outputs (a few at a time), and report per op type: the largest |input| and |output|; for
    LayerNormalization the largest sum over a row of (x - mean)^2 (what an FP16 variance accumulates);
    for Softmax the largest |input| (exp overflows FP16 above 11.1 unless the max is subtracted).
    Values above 65504 are infinite in FP16."""
    from calibration.images import read_calibration_images
    from calibration.inputs import CalibrationInputs
    from runtime.manifest import load_manifest
    from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

    manifest = load_manifest(args.engines)
    images = read_calibration_images(args.calib_dir, 2, min_images=1, progress=False)
    inputs = CalibrationInputs(manifest.root, images, OwlPreprocessing.from_dict(manifest.preprocessing("owl")),
                               Sam2Preprocessing.from_dict(manifest.preprocessing("sam")),
                               manifest.sizes["owl_text_length"], progress=False)
    report: dict[str, Any] = {}
    try:
        for name in args.graphs or manifest.precision_graphs:
            report[name] = _graph_ranges(manifest.graph_path(name, "fp32"), inputs.feeds(name, limit=1)[0],
                                         args.chunk, args.threads)
            print(f"{name}: " + "; ".join(f"{k} max|x| {v['max_abs']:.3g}"
                                          + (f" row sum (x-mean)^2 {v['max_row_sq_dev']:.3g}" if "max_row_sq_dev" in v else "")
                                          for k, v in report[name].items()), file=sys.stderr, flush=True)
    finally:
        inputs.close()
    lines = ["| graph | op (tensor) | tensors | max abs | LN: max row sum (x-mean)^2 | > 65504 |", "|---|---|---|---|---|---|"]
    for g, st in report.items():
        for k, v in st.items():
            lines.append(f"| {g} | {k} | {v['tensors']} | {v['max_abs']:.3g} | "
                         f"{v['max_row_sq_dev']:.3g} | " if "max_row_sq_dev" in v else
                         f"| {g} | {k} | {v['tensors']} | {v['max_abs']:.3g} | - | ")
            lines[-1] += f"{v['above_fp16_max']} |"
    print("\n".join(lines))
    return report


# --- task-level parity against transformers --------------------------------------------------
PROMPTS = ["cat", "dog", "person", "red car", "bird"]


def task_parity(args: argparse.Namespace) -> dict[str, Any]:
    """Detections and masks of each precision of ``--engines`` against the transformers pipeline."""
    import numpy as np
    import torch

    from export.acceptance import compare_detections
    from export.reference import ReferencePipeline
    from runtime.backends import onnxruntime_opener
    from runtime.graphs import PRECISION_ACCEPTANCE, SAM2_DECODER_MULTIMASK
    from runtime.manifest import load_manifest
    from runtime.owl import OwlDetector
    from runtime.sam2 import Sam2Segmenter

    torch.set_num_threads(args.threads)
    manifest = load_manifest(args.engines)
    precisions = [p for p in PRECISIONS if all(p in manifest.graphs[n]["files"] for n in manifest.precision_graphs)]
    ort_int8 = all(manifest.onnxruntime_entry(name, "int8") for name in manifest.precision_graphs)
    reference = ReferencePipeline.load(args.owl_model, args.sam_model)
    sam_model, sam_proc = reference.sam.model, reference.sam.processor
    texts = [f"a photo of a {p}" for p in PROMPTS]
    sizes = [(480, 640), (720, 1280), (640, 480), (500, 500)]
    images = [synthetic_image(*sizes[i % len(sizes)], seed=1000 + i, num_shapes=6, rectangles=True, noise=0.02)
              for i in range(args.images)]
    rng = np.random.default_rng(0)
    boxes = []
    for img in images:
        h, w = img.shape[:2]
        x0, y0 = rng.uniform(0, 0.6 * w, args.boxes), rng.uniform(0, 0.6 * h, args.boxes)
        bw, bh = rng.uniform(0.1, 0.4, args.boxes) * w + 8, rng.uniform(0.1, 0.4, args.boxes) * h + 8
        boxes.append(np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], 1).astype(np.float32))
    refs = []
    for img, bx in zip(images, boxes):
        r = reference.detect(img, texts, args.threshold)
        det = (r.boxes, r.scores, r.labels)
        inputs = sam_proc(images=img, input_boxes=[bx.tolist()], return_tensors="pt")
        with torch.inference_mode():  # one encoder pass: the multimask call reuses its image embeddings
            out = sam_model(**inputs, multimask_output=False)
            prompts = {k: v for k, v in inputs.items() if k != "pixel_values"}
            multi = sam_model(image_embeddings=out.image_embeddings, **prompts, multimask_output=True)
        masks = sam_proc.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()[:, 0]
        best = multi.iou_scores[0].argmax(-1).numpy()
        multi_masks = sam_proc.post_process_masks(multi.pred_masks, inputs["original_sizes"])[0].numpy()
        refs.append((det, (masks, multi_masks[np.arange(len(bx)), best])))
    results: dict[str, Any] = {}
    # (label, precision, graphs at FP16, flavour): what ONNX Runtime runs (its own INT8 where the artifact
    # has it), then the portable INT8 graphs TensorRT builds from, fake-quantised
    runs = [(p, p, None, "onnxruntime") for p in precisions if p != "int8" or ort_int8]
    if "int8" in precisions:
        runs.append(("int8 (portable)", "int8", None, "portable"))
        if args.int8_keep_fp16:  # INT8 as export.build writes it by default
            runs.append(("int8 (portable; text, head, decoders FP16)", "int8", set(args.int8_keep_fp16), "portable"))
    for label, p, keep, flavour in runs:
        opener = onnxruntime_opener(manifest, precision=p, intra_op_threads=args.threads, flavour=flavour)
        if keep:
            int8_open, fp16_open = opener, onnxruntime_opener(manifest, precision="fp16", intra_op_threads=args.threads)
            opener = lambda spec, a=int8_open, b=fp16_open, k=keep: (b if spec.name in k else a)(spec)  # noqa: E731
        owl, seg = OwlDetector.from_manifest(manifest, opener), Sam2Segmenter.from_manifest(manifest, opener)
        # the multimask decoder on the same sam2_image graph (its features are computed once, by seg)
        seg_multi = Sam2Segmenter(seg.pixels, seg.image, opener(SAM2_DECODER_MULTIMASK), seg.upsample.graph,
                                  seg.preprocessing, seg.max_boxes, seg.upsample.max_masks)
        dets, ious, multi_ious = [], [], []
        for img, bx, (ref_det, (ref_masks, ref_multi)) in zip(images, boxes, refs):
            (d,) = owl.detect([img], texts, threshold=args.threshold)
            dets.append(compare_detections(ref_det, (d.boxes, d.scores, d.labels)))
            feats = seg.image_features([img])
            ious.append(mask_iou(seg.segment_features(feats, 0, img.shape[:2], bx).masks, ref_masks))
            multi_ious.append(mask_iou(seg_multi.segment_features(feats, 0, img.shape[:2], bx).masks, ref_multi))
        iou, multi_iou = np.concatenate(ious), np.concatenate(multi_ious)
        results[label] = {
            "detections_ref": sum(d["ref"] for d in dets), "detections_got": sum(d["got"] for d in dets),
            "det_min_iou": min(d["min_iou"] for d in dets), "det_matched_095": float(np.mean([d["matched_095"] for d in dets])),
            "top5_agree": float(np.mean([d["topk_agree"] for d in dets])),
            "mask_min_iou": float(iou.min()), "mask_mean_iou": float(iou.mean()), "masks": int(len(iou)),
            "multimask_min_iou": float(multi_iou.min()), "multimask_mean_iou": float(multi_iou.mean()),
        }
        acc = PRECISION_ACCEPTANCE.get(p)
        if acc is not None:
            results[label]["acceptance"] = acc.__dict__
    lines = ["| precision | detections ref/got | det. min IoU (same label) | matched IoU>=0.95 | top-5 labels agree "
             "| masks | mask min / mean IoU (single-mask decoder) | min / mean IoU (multimask decoder) |",
             "|---|---|---|---|---|---|---|---|"]
    for p, r in results.items():
        lines.append(f"| {p} | {r['detections_ref']}/{r['detections_got']} | {r['det_min_iou']:.4f} | "
                     f"{r['det_matched_095']:.1%} | {r['top5_agree']:.1%} | {r['masks']} | {r['mask_min_iou']:.4f} / "
                     f"{r['mask_mean_iou']:.4f} | {r['multimask_min_iou']:.4f} / {r['multimask_mean_iou']:.4f} |")
    print("\n".join(lines))
    print(graph_table(Path(args.engines)))
    return results


def graph_table(root: Path) -> str:
    """Worst cosine and max-abs per graph, output and precision, from the artifact's parity.json (INT8
    twice: ONNX Runtime's own flavour, "int8 ort", and the portable graphs TensorRT builds from)."""
    from runtime.manifest import PARITY_NAME

    parity = json.loads((root / PARITY_NAME).read_text())
    columns = ("fp16", "int8 ort", "int8")
    lines = ["| graph | output | " + " | ".join(f"{c} cosine (min) | {c} max-abs" for c in columns) + " |",
             "|---|---|" + "---|---|" * len(columns)]
    cells: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for p in ("fp16", "int8"):
        for r in parity.get(p, {}).get("rows", []):
            column = f"{p} ort" if r.get("flavour") == "onnxruntime" and p == "int8" else p
            k = (r["graph"], r["output"])
            c, m = cells.setdefault(k, {}).get(column, (2.0, 0.0))
            cells[k][column] = (min(c, r["cosine"]), max(m, r["max_abs"]))
    for (g, o), v in cells.items():
        lines.append(f"| {g} | {o} | " + " | ".join(f"{v[c][0]:.6f} | {v[c][1]:.3g}" if c in v else "- | -"
                                                    for c in columns) + " |")
    return "\n".join(lines)


# --- latency ---------------------------------------------------------------------------------
def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    """ONNX Runtime CPU latency of every graph at every precision of ``--engines``: the portable graphs
    and ONNX Runtime's flavours ("ort": fused attention in FP32, ORT's own INT8); the portable INT8
    graph twice, with ONNX Runtime's Q/DQ fusion and without (the parity mode)."""
    from calibration.images import read_calibration_images
    from calibration.inputs import CalibrationInputs
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import GRAPHS
    from runtime.manifest import ONNXRUNTIME, load_manifest
    from runtime.preprocessing import OwlPreprocessing, Sam2Preprocessing

    manifest = load_manifest(args.engines)
    images = read_calibration_images(args.calib_dir, 1, min_images=1, progress=False)
    inputs = CalibrationInputs(manifest.root, images, OwlPreprocessing.from_dict(manifest.preprocessing("owl")),
                               Sam2Preprocessing.from_dict(manifest.preprocessing("sam")),
                               manifest.sizes["owl_text_length"], progress=False, sizes=manifest.sizes,
                               max_dims={d: r["max"] for d, r in manifest.data["profiles"].items()})
    rows = []
    try:
        for name in args.graphs or manifest.precision_graphs:
            spec = GRAPHS[name]
            feeds = inputs.feeds(name, limit=1)[0]
            files = manifest.graphs[name]["files"]
            ort = manifest.graphs[name].get(ONNXRUNTIME) or {}
            variants = {"fp32": (files["fp32"], False)}
            if "fp32" in ort:
                variants["fp32 ort"] = (ort["fp32"], False)
            if "fp16" in files:
                variants["fp16"] = (files["fp16"], False)
            if ort.get("int8", {}).get("precision") == "int8":
                variants["int8 ort"] = (ort["int8"], False)
            if "int8" in files and files["int8"].get("precision", "int8") == "int8":
                variants["int8 (Q/DQ fused)"] = (files["int8"], False)
                variants["int8 (fusion off)"] = (files["int8"], True)
            sessions = {k: OrtGraph(manifest.root / e["files"][0]["path"], spec, intra_op_threads=args.threads,
                                    disable_qdq_fusion=off) for k, (e, off) in variants.items()}
            ms = median_ms({k: (lambda s=s: s.run(feeds)) for k, s in sessions.items()}, args.runs)
            dims = {d: int(feeds[t.name].shape[a]) for t in spec.inputs for a, d in t.dynamic_axes.items()}
            rows.append({"graph": name, "dims": dims, "ms": ms})
            print(f"{name}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()), file=sys.stderr, flush=True)
    finally:
        inputs.close()
    keys = ["fp32", "fp32 ort", "fp16", "int8 ort", "int8 (Q/DQ fused)", "int8 (fusion off)"]
    lines = ["| graph | dims | " + " | ".join(f"{k} (ms)" for k in keys) + " | fp32 ort/int8 ort |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        cells = [f"{r['ms'][k]:.1f}" if k in r["ms"] else "-" for k in keys]
        fp32 = r["ms"].get("fp32 ort", r["ms"]["fp32"])
        ratio = f"{fp32 / r['ms']['int8 ort']:.2f}" if "int8 ort" in r["ms"] else "-"
        dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items()) or "-"
        lines.append(f"| {r['graph']} | {dims} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append("")
    lines.append(f"Median of {args.runs} runs after one warm-up, variants alternating, {args.threads} intra-op threads, "
                 f"CPU ({os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f}).")
    print("\n".join(lines))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m tools.bench.precision", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("checkpoints", help="write full-size random-weight checkpoints")
    c.add_argument("out", type=Path)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--owl-arch", choices=OWL_ARCHES, default=OWL_B16, help="tiny: the tiny test architecture")
    c.add_argument("--sam-arch", choices=SAM_ARCHES, default="hiera-small", help="tiny: the tiny test architecture")
    c = sub.add_parser("images", help="write synthetic calibration/test images")
    c.add_argument("out", type=Path)
    c.add_argument("--count", type=whole_number(0), default=16)
    c.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("precisions", help="add FP16 and INT8 graphs to a copy of an FP32 artifact")
    c.add_argument("--engines", required=True, type=Path, help="an FP32 engines directory")
    c.add_argument("--owl-model", required=True)
    c.add_argument("--sam-model", required=True)
    c.add_argument("--calib-dir", required=True, type=Path)
    c.add_argument("--calib-count", type=whole_number(), default=16)
    c.add_argument("--calib-method", choices=("entropy", "max"), default="entropy")
    c.add_argument("--int8-all", action="store_true", help="quantize every graph (none kept in FP16)")
    c.add_argument("--reuse-calibration", type=Path, help="an artifact whose calibration/ cache may be reused")
    c.add_argument("--out", required=True, type=Path)
    c = sub.add_parser("parity", help="task-level parity of every precision against transformers")
    c.add_argument("--engines", required=True, type=Path)
    c.add_argument("--owl-model", required=True)
    c.add_argument("--sam-model", required=True)
    c.add_argument("--images", type=whole_number(), default=4)
    c.add_argument("--boxes", type=whole_number(), default=6)
    c.add_argument("--threshold", type=float, default=0.1)
    c.add_argument("--threads", type=whole_number(), default=2)
    c.add_argument("--int8-keep-fp16", nargs="*", default=["owl_text", "owl_head", "sam2_decoder", "sam2_decoder_multimask"],
                   help="also measure INT8 with these graphs at FP16 (export.build's default)")
    c = sub.add_parser("latency", help="ONNX Runtime CPU latency per graph and precision")
    c.add_argument("--engines", required=True, type=Path)
    c.add_argument("--calib-dir", required=True, type=Path, help="images to make realistic inputs from")
    c.add_argument("--graphs", nargs="+")
    c.add_argument("--runs", type=whole_number(), default=3)
    c.add_argument("--threads", type=whole_number(), default=2)
    c = sub.add_parser("ranges", help="FP32 value ranges at LayerNorm/Softmax/reductions/... (FP16 headroom)")
    c.add_argument("--engines", required=True, type=Path)
    c.add_argument("--calib-dir", required=True, type=Path, help="images to make realistic inputs from")
    c.add_argument("--graphs", nargs="+")
    c.add_argument("--chunk", type=whole_number(), default=6, help="extra outputs per run (memory)")
    c.add_argument("--threads", type=whole_number(), default=2)
    for c in sub.choices.values():
        c.add_argument("--json", type=Path, help="also write the result as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: Any = None
    if args.command == "checkpoints":
        write_fullsize_checkpoints(args.out, args.seed, owl_arch=args.owl_arch, sam_arch=args.sam_arch)
    elif args.command == "images":
        write_synthetic_images(args.out, args.count, args.seed)
    elif args.command == "precisions":
        result = write_precision_artifact(args)
    elif args.command == "parity":
        result = task_parity(args)
    elif args.command == "ranges":
        result = value_ranges(args)
    elif args.command == "latency":
        result = latency(args)
    if result is not None and args.json:
        write_json(args.json, with_machine("tools.bench.precision", result, argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
