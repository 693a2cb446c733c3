"""``python -m tools.parity``: does an artifact, on this machine's backend, give the PyTorch pipeline's
detections and masks on your images? A table per precision and stage with PASS/FAIL against the
documented acceptance, a JSON report, and exit status 1 on any FAIL (needs torch + transformers).

    python -m tools.parity --engines DIR [--images DIR] [--backend auto|tensorrt|onnxruntime]
                           [--precision fp32 fp16 int8] [--owl-model ID|DIR] [--sam-model ID|DIR]
                           [--prompts P ...] [--threshold T] [--multimask] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from export.acceptance import (acceptance, check_masks, choice_rule, cosine_rows, match_detections, score_tolerance,
                               threshold_border)
from runtime.errors import ArtifactError, OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.manifest import PRECISIONS, load_manifest
from tools.bench.common import command_line, load_images, write_json

BACKENDS = ("auto", "tensorrt", "onnxruntime")
DEFAULT_PROMPTS = ("cat", "dog", "person", "red car", "bird")
#: Generated images when no --images are given: several sizes and aspect ratios.
GENERATED_SIZES = ((480, 640), (640, 480), (333, 500))
STAGES = ("owl_text", "detection", "segmentation", "pipeline")


def generated_images() -> list[tuple[str, np.ndarray]]:
    from tools.bench.synthetic import synthetic_image

    return [(f"synthetic-{w}x{h}", synthetic_image(h, w, seed=11 + i, num_shapes=6, rectangles=True, noise=0.02))
            for i, (h, w) in enumerate(GENERATED_SIZES)]


def plan(manifest, backend: str, precisions: Sequence[str] | None, multimask: bool) -> tuple[list[Any], list[str]]:
    """``([BackendChoice], [skip reasons])``: every precision asked for must run; by default each one the
    artifact has that ``backend`` can run, the others skipped with the reason."""
    from runtime.pipeline import choose_backend

    choices, skipped = [], []
    for p in precisions or PRECISIONS:
        try:
            choices.append(choose_backend(manifest, backend, p, multimask))
        except (UserError, ArtifactError) as e:
            if precisions:
                raise
            skipped.append(f"{p}: {e}")
    if not choices:
        raise UserError(f"nothing to check in {manifest.root}: " + "; ".join(skipped))
    return choices, skipped


def reference_outputs(reference, images, texts: list[str], threshold: float) -> list[dict[str, Any]]:
    """Per image: the reference's detections and, for its boxes, SAM2's candidates."""
    out = []
    for name, image in images:
        det = reference.detect(image, texts, threshold)
        candidates = reference.sam2_candidates(image, det.boxes) if len(det.boxes) else None
        out.append({"name": name, "detections": det, "candidates": candidates})
        print(f"[reference] {name}: {len(det.boxes)} detections", file=sys.stderr, flush=True)
    return out


def _take(candidates: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in candidates.items()}


def check_precision(pipe, images, refs, prompts: list[str], threshold: float, multimask: bool) -> dict[str, Any]:
    """Every stage of one opened pipeline against the reference: the text embeddings; detections (OWLv2
    graphs, post-processing); masks for the reference's boxes (SAM2 graphs); the whole pipeline."""
    precision = pipe.precision
    acc = acceptance(precision)
    rule = choice_rule(multimask)
    border, max_err = threshold_border(precision), score_tolerance(precision)
    texts = pipe.texts(prompts)
    cos = cosine_rows(pipe.owl.query_embeds(texts), refs[0]["detections"].text_embeds)
    stages: dict[str, dict[str, Any]] = {
        "owl_text": {"min_cosine": float(cos.min()), "passed": bool(cos.min() >= acc.min_cosine)}}
    det_rows, seg_rows, pipe_rows = [], [], []
    for (name, image), ref in zip(images, refs, strict=True):
        rd = ref["detections"]
        reference = (rd.boxes, rd.scores, rd.labels)
        (d,) = pipe.owl.detect([image], texts, threshold)
        det_rows.append(match_detections(reference, (d.boxes, d.scores, d.labels), acc, threshold, border, max_err))
        r = pipe.predict(image, prompts, threshold)
        m = match_detections(reference, (r.boxes, r.scores, r.labels), acc, threshold, border, max_err)
        pipe_rows.append((m, None))
        if ref["candidates"] is None:
            continue
        feats = pipe.sam.image_features([image])
        masks = pipe.sam.segment_features(feats, 0, image.shape[:2], rd.boxes, clip_boxes=False).masks
        seg_rows.append(check_masks(masks, ref["candidates"], acc.min_mask_iou, rule))
        pipe_rows[-1] = (m, check_masks(r.masks[m.got_rows], _take(ref["candidates"], m.ref_rows), acc.min_mask_iou,
                                        rule))
    stages["detection"] = _detection_summary(det_rows)
    stages["segmentation"] = _mask_summary(seg_rows)
    masks = [c for _, c in pipe_rows if c is not None]
    stages["pipeline"] = {**_detection_summary([m for m, _ in pipe_rows]), **_mask_summary(masks)}
    stages["pipeline"]["passed"] = all(m.passed for m, _ in pipe_rows) and all(c.passed for c in masks)
    return {"acceptance": {**acc.__dict__, "max_score_error": max_err, "threshold_border": border,
                           "choice": {"rule": rule.name, "epsilon": rule.epsilon, "unit": rule.unit}},
            "stages": stages, "passed": all(s["passed"] for s in stages.values())}


def _detection_summary(matches) -> dict[str, Any]:
    ious = np.concatenate([m.box_iou for m in matches]) if matches else np.zeros(0)
    errs = np.concatenate([m.score_error for m in matches]) if matches else np.zeros(0)
    return {"rule": matches[0].rule if matches else "",
            "reference": int(sum(m.judged for m in matches)),
            "matched": int(sum(len(m.got_rows) for m in matches)),
            "missing": int(sum(len(m.missing) for m in matches)), "extra": int(sum(len(m.extra) for m in matches)),
            "at_threshold": int(sum(m.at_threshold for m in matches)),
            "min_box_iou": float(ious.min()) if len(ious) else None,
            "max_score_error": float(errs.max()) if len(errs) else None,
            "labels_agree": bool(all(m.labels_agree.all() for m in matches)),
            "passed": all(m.passed for m in matches)}


def _mask_summary(checks) -> dict[str, Any]:
    iou = np.concatenate([c.iou for c in checks]) if checks else np.zeros(0)
    best = np.concatenate([np.where(c.flipped, c.other_iou, c.iou) for c in checks]) if checks else np.zeros(0)
    flips = [f for c in checks for f in c.flips()]
    return {"masks": int(len(iou)), "min_mask_iou": float(best.min()) if len(best) else None,
            "mean_mask_iou": float(best.mean()) if len(best) else None,
            "min_mask_iou_with_choice": float(iou.min()) if len(iou) else None,
            "flips": len(flips), "flips_accepted": sum(f["accepted"] for f in flips),
            "flip_margins": [f["margin"] for f in flips],
            "passed": all(c.passed for c in checks)}


def _value(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """The per-precision, per-stage table with PASS/FAIL."""
    lines = ["| precision | stage | measured | acceptance | result |", "|---|---|---|---|---|"]
    for precision, r in results.items():
        a, s = r["acceptance"], r["stages"]
        verdict = lambda st: "PASS" if st["passed"] else "**FAIL**"  # noqa: E731
        lines.append(f"| {precision} | owl_text | query embeddings cosine (min) {_value(s['owl_text']['min_cosine'], 6)} "
                     f"| >= {a['min_cosine']} | {verdict(s['owl_text'])} |")
        for stage in ("detection", "pipeline"):
            d = s[stage]
            err = f", score error (max) {_value(d['max_score_error'])}" if d["max_score_error"] is not None else ""
            lines.append(
                f"| {precision} | {stage}: detections | {d['matched']} matched of {d['reference']}, {d['missing']} missing, "
                f"{d['extra']} extra ({d['at_threshold']} at the threshold); box IoU (min) {_value(d['min_box_iou'])}{err} "
                f"| {d['rule']}" + (f", score error <= {a['max_score_error']}" if a["max_score_error"] else "")
                + f" | {verdict(d) if stage == 'detection' else ''} |")
        choice = a["choice"]
        for stage in ("segmentation", "pipeline"):
            m = s[stage]
            margins = ", ".join(f"{v:.3g}" for v in m["flip_margins"])
            lines.append(
                f"| {precision} | {stage}: masks | {m['masks']} masks, IoU (min / mean) {_value(m['min_mask_iou'])} / "
                f"{_value(m['mean_mask_iou'])}; {m['flips']} {choice['rule']} flips"
                + (f" (margins {margins} {choice['unit']})" if margins else "")
                + f" | IoU >= {a['min_mask_iou']}; a flip only at margin <= {choice['epsilon']} {choice['unit']} "
                f"| {verdict(m) if stage == 'segmentation' else verdict(s['pipeline'])} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    p = OneLineArgumentParser(prog="python -m tools.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", required=True, type=Path, help="the artifact (python -m export.build --out)")
    p.add_argument("--images", help="a folder of images (default: generated ones of three sizes)")
    p.add_argument("--max-images", type=whole_number(), default=8, help="use at most this many images of --images")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None,
                   help="default: every precision the artifact has and the backend can run")
    p.add_argument("--owl-model", help="PyTorch reference OWLv2 (default: the manifest's source)")
    p.add_argument("--sam-model", help="PyTorch reference SAM2 (default: the manifest's source)")
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the artifact's)")
    p.add_argument("--multimask", action="store_true", help="judge the three-mask decoder (best by predicted IoU)")
    p.add_argument("--torch-device", choices=("cpu", "cuda"), default="cpu",
                   help="where the PyTorch reference runs (FP32, TF32 off; default cpu)")
    p.add_argument("--threads", type=whole_number(), default=None, help="intra-op threads of ONNX Runtime and PyTorch")
    p.add_argument("--json", type=Path, default=Path("parity-report.json"), help="the report (default %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest = load_manifest(args.engines)
    threshold = args.threshold
    if threshold is None:
        threshold = float((manifest.data.get("pipeline") or {}).get("threshold", 0.1))
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {threshold}")
    choices, skipped = plan(manifest, args.backend, args.precision, args.multimask)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    images = load_images(args.images, args.max_images) if args.images else generated_images()

    import torch

    from export.reference import ReferencePipeline, check_same_source, reference_sources
    from runtime.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.torch_device == "cuda" and not torch.cuda.is_available():
        raise UserError("--torch-device cuda, but PyTorch sees no CUDA device; use --torch-device cpu")
    owl_source, sam_source = reference_sources(manifest, args.owl_model, args.sam_model)
    print(f"[reference] {owl_source} + {sam_source} on {args.torch_device}", file=sys.stderr, flush=True)
    reference = ReferencePipeline.load(owl_source, sam_source, args.torch_device)
    for loaded in (reference.owl, reference.sam):
        check_same_source(manifest, loaded)
    template = str((manifest.data.get("pipeline") or {}).get("prompt_template", "{}"))
    refs = reference_outputs(reference, images, [template.format(p) for p in args.prompts], threshold)
    if not any(len(r["detections"].boxes) for r in refs):
        raise UserError(f"the reference finds nothing at threshold {threshold} in these images: nothing to compare; "
                        "pass other --images, --prompts or a lower --threshold")

    results: dict[str, Any] = {}
    for choice in choices:
        print(f"[{choice.backend} {choice.precision}] {choice.reason}", file=sys.stderr, flush=True)
        with Pipeline.load(args.engines, choice.backend, choice.precision, multimask=args.multimask,
                           intra_op_threads=args.threads) as pipe:
            results[choice.precision] = {"backend": choice.backend, "reason": choice.reason,
                                         **check_precision(pipe, images, refs, args.prompts, threshold, args.multimask)}
    passed = all(r["passed"] for r in results.values())
    report = {
        "command": command_line("tools.parity", argv), "engines": str(args.engines),
        "sources": {"owl": owl_source, "sam": sam_source, "torch_device": args.torch_device},
        "images": [{"name": n, "size_hw": list(im.shape[:2])} for n, im in images],
        "prompts": list(args.prompts), "threshold": threshold, "multimask": args.multimask,
        "results": results, "skipped": skipped, "passed": passed,
    }
    text = table(results)
    print(text)
    write_json(args.json, report)
    print(f"{'PASS' if passed else 'FAIL'}: wrote {args.json}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(main)
