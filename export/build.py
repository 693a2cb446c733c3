"""``python -m export.build``: export the graphs, prove parity, write an engines directory.

    python -m export.build --owl-model ID|DIR --sam-model ID|DIR --out DIR --fp32 --engines skip
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.graphs import DYNAMIC_DIMS, BATCH, IMAGE_HEIGHT, NUM_BOXES, NUM_PROMPTS, GraphSpec, with_max
from runtime.manifest import ONNXRUNTIME, PARITY_NAME, MANIFEST_NAME, SCHEMA_VERSION, TOKENIZER_DIR, graph_file_name

log = logging.getLogger("export.build")

PROMPT_TEMPLATE = "a photo of {}"
DEFAULT_THRESHOLD = 0.1
#: What ``--from DIR`` has no use for: options of the export, whose graphs DIR already holds.
EXPORT_ONLY_OPTIONS = {"fp16": "--fp16", "int8": "--int8", "video": "--video", "calib_dir": "--calib-dir",
                       "calib_count": "--calib-count", "calib_method": "--calib-method",
                       "max_image_side": "--max-image-side"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from export.models import DEFAULT_OWL_MODEL, DEFAULT_SAM_MODEL

    p = OneLineArgumentParser(prog="python -m export.build", description=__doc__.split("\n")[0])
    p.add_argument("--owl-model", default=DEFAULT_OWL_MODEL, help="OWLv2 hub id or local checkpoint directory")
    p.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, help="SAM2 hub id or local checkpoint directory")
    p.add_argument("--out", type=Path, default=Path("engines/default"), help="engines directory to write")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an engines directory")
    p.add_argument("--fp32", action="store_true", help="FP32 graphs only (always written: the reference)")
    p.add_argument("--fp16", action="store_true", help="also write FP16 mixed-precision graphs")
    p.add_argument("--int8", action="store_true", help="also write INT8 Q/DQ graphs (needs --calib-dir)")
    p.add_argument("--calib-dir", type=Path, help="folder of calibration images for --int8 (JPEG/PNG, any size)")
    p.add_argument("--calib-count", type=whole_number(), default=None,
                   help="calibration images to use, spread over the folder (default 32, at least 4)")
    p.add_argument("--calib-method", choices=("entropy", "max"), default=None,
                   help="INT8 activation range calibration (default entropy; it falls back to max, on record, "
                   "where it fails)")
    p.add_argument("--video", action="store_true", help="also export SAM2's memory modules for tracking")
    p.add_argument("--engines", choices=("auto", "require", "skip"), default="auto",
                   help="build TensorRT engines: auto = where TensorRT and a GPU exist")
    p.add_argument("--max-prompts", type=whole_number(), help=f"profile maximum of {NUM_PROMPTS}")
    p.add_argument("--max-boxes", type=whole_number(), help=f"profile maximum of {NUM_BOXES}")
    p.add_argument("--max-batch", type=whole_number(), help=f"profile maximum of {BATCH}")
    p.add_argument("--max-image-side", type=whole_number(), metavar="PIXELS",
                   help=f"largest image height and width the pixel graphs take (default "
                   f"{DYNAMIC_DIMS[IMAGE_HEIGHT].max}); the runtime downscales larger images to fit")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                   help="build TensorRT engines for an exported engines directory (no export)")
    p.add_argument("--opt-level", type=int, choices=range(6), default=3, metavar="0-5",
                   help="TensorRT builder optimisation level (default 3)")
    p.add_argument("--workspace-gb", type=_positive_float, help="TensorRT workspace limit in GiB (default: the GPU's memory)")
    return p.parse_args(argv)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def check_requests(args: argparse.Namespace) -> None:
    """Refuse what this version cannot do before any work starts: loudly, never a silent fallback."""
    if args.int8 and args.calib_dir is None:
        raise UserError("--int8 needs --calib-dir DIR (a folder of calibration images)")
    if not args.int8 and (args.calib_dir is not None or args.calib_count is not None):
        raise UserError("--calib-dir/--calib-count are for --int8 calibration; add --int8 or drop them")
    from calibration.images import MIN_CALIBRATION_IMAGES

    if args.calib_count is not None and args.calib_count < MIN_CALIBRATION_IMAGES:
        raise UserError(f"--calib-count {args.calib_count} is too few; calibrate on at least {MIN_CALIBRATION_IMAGES} images")
    if args.engines == "require":  # fail now, not after a long export
        from export.engine import tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            raise UserError(f"--engines require: cannot build TensorRT engines here ({why}); export with "
                            "--engines skip and build on the target GPU with --from DIR --engines require")


def check_from_request(args: argparse.Namespace) -> None:
    """``--from DIR`` builds engines for the graphs DIR holds: refuse export options it would ignore."""
    given = [flag for attr, flag in EXPORT_ONLY_OPTIONS.items() if getattr(args, attr) not in (None, False)]
    if given:
        raise UserError(f"--from DIR only builds engines for the graphs DIR holds, so {'/'.join(given)} would do "
                        "nothing; drop them, or re-export without --from to change the graphs")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("owlsam-trt", "torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "nvidia-modelopt"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _io_record(spec: GraphSpec) -> dict[str, Any]:
    def one(t):
        return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}

    return {"inputs": [one(t) for t in spec.inputs], "outputs": [one(t) for t in spec.outputs]}


def build(args: argparse.Namespace) -> Path:
    from export.artifact import check_output_dir, file_record, staged_directory, write_json
    from export.graph_export import export_to_onnx
    from export.models import load_owl, load_sam
    from export.owl import owl_graph_exports, owl_sizes
    from export.pixels import image_ranges, pixel_graph_exports, pixel_sizes
    from export.ort_flavour import fuse_for_onnxruntime
    from export.parity import check_export_parity, failures, format_table, ParityError
    from export.preprocessing import owl_preprocessing_from_processor, sam2_preprocessing_from_processor
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from export.trt_check import check_graph, raise_on_errors

    check_output_dir(args.out, args.force)
    t_start = time.perf_counter()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    precisions = [p for p in ("fp16", "int8") if getattr(args, p)]
    calib_images = None
    if args.int8:  # fail on a bad calibration folder or a missing ModelOpt before the long export
        from calibration.images import DEFAULT_CALIBRATION_COUNT, read_calibration_images

        calib_images = read_calibration_images(args.calib_dir, args.calib_count or DEFAULT_CALIBRATION_COUNT)
        say(f"calibration set: {len(calib_images)} images of {args.calib_dir}"
            + (f" ({len(calib_images.skipped)} unreadable skipped)" if calib_images.skipped else ""))
    if precisions:
        from export.precision import import_modelopt

        import_modelopt()

    say(f"loading OWLv2 from {args.owl_model}")
    owl = load_owl(args.owl_model)
    say(f"loading SAM2 from {args.sam_model}")
    sam = load_sam(args.sam_model)
    sizes = {**owl_sizes(owl), **sam2_sizes(sam), **pixel_sizes()}
    owl_pre = owl_preprocessing_from_processor(owl.processor)
    sam_pre = sam2_preprocessing_from_processor(sam.processor, mask_size=sizes["sam_mask_size"])
    profiles = with_max(DYNAMIC_DIMS, num_prompts=args.max_prompts, num_boxes=args.max_boxes, batch=args.max_batch)
    profiles = image_ranges(profiles, owl_pre, sam_pre, args.max_image_side)
    graphs = (owl_graph_exports(owl, sizes) + sam2_graph_exports(sam, sizes)
              + pixel_graph_exports(owl_pre, sam_pre, sizes, profiles))
    if args.video:  # SAM2's memory modules, from Sam2VideoModel of the same checkpoint
        from export.sam2_video import load_sam_video, sam2_video_graph_exports, sam2_video_sizes, video_ranges

        say(f"loading SAM2's video modules from {args.sam_model}")
        sam_video = load_sam_video(args.sam_model)
        sizes.update(sam2_video_sizes(sam_video, sizes))
        graphs += sam2_video_graph_exports(sam_video, sizes)
    if args.video:
        profiles = video_ranges(sizes, profiles)

    with staged_directory(args.out) as tmp:
        records: dict[str, Any] = {}
        rows = []
        for i, graph in enumerate(graphs, 1):
            name = graph.spec.name
            t0 = time.perf_counter()
            files = export_to_onnx(graph, tmp / graph_file_name(name, "fp32"), seed=args.seed)
            raise_on_errors(check_graph(files[0]), files[0].name)  # fail before TensorRT would
            ort = fuse_for_onnxruntime(files[0], tmp / graph_file_name(name, "fp32", ONNXRUNTIME), graph.spec)
            t1 = time.perf_counter()
            graph_rows = check_export_parity(graph, files[0], seed=args.seed,
                                             flavours={ONNXRUNTIME: ort["files"][0]} if ort else None)
            rows += graph_rows
            bad = failures(graph_rows)
            worst = max(r.max_abs for r in graph_rows)
            fused = ", ".join(f"{n} {op}" for op, n in ort["contrib_ops"].items()) if ort else "nothing to fuse"
            say(f"[{i}/{len(graphs)}] {name}: exported in {t1 - t0:.1f} s (ONNX Runtime flavour: {fused}), parity "
                f"{'FAILED' if bad else 'PASSED'} (worst max-abs {worst:.2g}, {len(graph_rows)} checks, "
                f"{time.perf_counter() - t1:.1f} s)")
            records[name] = {
                "family": graph.spec.family,
                **_io_record(graph.spec),
                "files": {"fp32": {"files": [file_record(tmp, f) for f in files]}},
            }
            if ort:
                records[name][ONNXRUNTIME] = {"fp32": {**ort, "files": [file_record(tmp, f) for f in ort["files"]]}}
        table = format_table(rows)
        parity = {"fp32": {"passed": not failures(rows), "rows": [r.__dict__ for r in rows]}}
        write_json(tmp / PARITY_NAME, parity)
        if failures(rows):
            say(table)
            raise ParityError(
                f"{len(failures(rows))} of {len(rows)} parity checks failed (table above); "
                "the exported graphs disagree with PyTorch, nothing was written"
            )
        log.info("parity table:\n%s", table)

        tok_dir = tmp / TOKENIZER_DIR
        owl.processor.tokenizer.save_pretrained(str(tok_dir))
        if not (tok_dir / "tokenizer.json").is_file():
            raise UserError(f"{args.owl_model}: its tokenizer has no fast (tokenizer.json) form, which the runtime needs")

        precision_parity: dict[str, Any] = {}
        calibration_record = None
        if precisions:
            networks = [g for g in graphs if g.spec.fixed_precision is None]  # pixel graphs stay FP32
            outcome, precision_parity = _write_precisions(tmp, networks, precisions, args, calib_images, owl_pre,
                                                          sam_pre, sizes, profiles, parity, say)
            for name, entries in outcome.entries.items():
                records[name]["files"].update(entries)
            for name, entries in outcome.onnxruntime.items():
                records[name].setdefault(ONNXRUNTIME, {}).update(entries)
            calibration_record = outcome.calibration

        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "toolkit": _versions(),
            "sources": {"owl": owl.source_record(), "sam": sam.source_record()},
            "preprocessing": {"owl": owl_pre.to_dict(), "sam": sam_pre.to_dict()},
            "pipeline": {"prompt_template": PROMPT_TEMPLATE, "threshold": DEFAULT_THRESHOLD},
            "sizes": sizes,
            "profiles": {d: {"min": r.min, "opt": r.opt, "max": r.max} for d, r in profiles.items()},
            "graphs": records,
            "tokenizer": [file_record(tmp, f) for f in sorted(tok_dir.iterdir())],
            "engines": {},
            "parity": {"fp32": {"passed": True, "checks": len(rows), "worst_max_abs": max(r.max_abs for r in rows)},
                       **{p: _precision_summary(r) for p, r in precision_parity.items()}},
        }
        if calibration_record is not None:
            manifest["calibration"] = calibration_record
        write_json(tmp / MANIFEST_NAME, manifest)
    say(f"wrote {args.out} in {time.perf_counter() - t_start:.1f} s ({len(graphs)} graphs, parity PASSED)")
    return args.out


def _write_precisions(tmp: Path, graphs, precisions: list[str], args: argparse.Namespace, calib_images, owl_pre,
                      sam_pre, sizes: dict[str, int], profiles, parity: dict[str, Any], say):
    """FP16 / INT8 graphs of every exported graph and their parity rows per precision (added to
    ``parity``, written to parity.json), or a ParityError naming the failures: nothing is written then."""
    from calibration.inputs import CalibrationInputs
    from export.artifact import file_record, write_json
    from export.ort_flavour import write_onnxruntime_int8
    from export.parity import ParityError
    from export.precision import (format_flips, format_precision_table, precision_failures, rejected_flips,
                                  write_precisions)
    from runtime.manifest import is_artifact

    inputs = None
    if calib_images is not None:
        inputs = CalibrationInputs(tmp, calib_images, owl_pre, sam_pre, sizes["owl_text_length"],
                                   prompt_template=PROMPT_TEMPLATE, seed=args.seed, sizes=sizes,
                                   max_dims={d: r.max for d, r in profiles.items()})
    previous = args.out if is_artifact(args.out) else None
    try:
        outcome = write_precisions(tmp, graphs, precisions, file_record=file_record, inputs=inputs, previous=previous,
                                   method=args.calib_method or "entropy", seed=args.seed,
                                   onnxruntime_int8=write_onnxruntime_int8, say=say)
    finally:
        if inputs is not None:
            inputs.close()
    by_precision = {p: ([r for r in outcome.rows if r.precision == p], [f for f in outcome.flips if f.precision == p])
                    for p in precisions}
    for p, (mine, flips) in by_precision.items():
        parity[p] = {"passed": not precision_failures(mine) and not rejected_flips(flips),
                     "rows": [r.__dict__ for r in mine], "flips": [f.__dict__ for f in flips]}
    write_json(tmp / PARITY_NAME, parity)
    bad = precision_failures(outcome.rows) + rejected_flips(outcome.flips)
    table = format_precision_table(outcome.rows) + ("\n" + format_flips(outcome.flips) if outcome.flips else "")
    if bad:
        say(table)
        worst = ", ".join(sorted({f"{r.graph}{'' if r.flavour == 'portable' else ' (ort)'} {r.precision}" for r in bad}))
        raise ParityError(
            f"{len(bad)} of {len(outcome.rows) + len(outcome.flips)} precision parity checks failed ({worst}; table "
            "above); nothing was written: export without that precision, or calibrate on more representative images"
        )
    log.info("precision parity table:\n%s", table)
    return outcome, by_precision


def _precision_summary(checks) -> dict[str, Any]:
    rows, flips = checks
    return {"passed": all(r.passed for r in rows) and all(f.accepted for f in flips), "checks": len(rows),
            "worst_cosine": min((r.cosine for r in rows), default=None),
            # discrete choices decided otherwise than the FP32 reference, at ties (parity.json lists them)
            "choice_flips": len(flips), "worst_flip_margin": max((f.margin for f in flips), default=None)}


def build_engines_from(root: Path, args: argparse.Namespace) -> bool:
    """``--from DIR``: build TensorRT engines for every precision graph of an exported artifact, in
    place; ``--max-*`` replace the profile maxima (the manifest's ``profiles`` follow, so the runtime
    chunks by what the engines take). Returns whether engines were built."""
    from export.artifact import write_json
    from export.engine import EngineOptions, build_engines, skipped_note, tensorrt_status
    from runtime.graphs import DimRange
    from runtime.manifest import PRECISIONS, load_manifest

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    if args.engines == "skip":
        raise UserError("--from DIR builds engines; --engines skip would do nothing (use auto or require)")
    data = load_manifest(root).data
    ok, why = tensorrt_status()
    if not ok:
        if args.engines == "require":
            raise UserError(f"--engines require: cannot build TensorRT engines here: {why}")
        say(skipped_note(root, why))
        return False
    current = {d: DimRange(r["min"], r["opt"], r["max"], DYNAMIC_DIMS[d].parity_sizes)
               for d, r in data["profiles"].items() if d in DYNAMIC_DIMS}
    profiles = with_max(current, num_prompts=args.max_prompts, num_boxes=args.max_boxes, batch=args.max_batch)
    data["profiles"] = {**data["profiles"], **{d: {"min": r.min, "opt": r.opt, "max": r.max} for d, r in profiles.items()}}
    precisions = [p for p in PRECISIONS if any(p in g["files"] for g in data["graphs"].values())]
    options = EngineOptions(optimization_level=args.opt_level,
                            workspace_bytes=int(args.workspace_gb * 2**30) if args.workspace_gb else None)
    data["engines"] = build_engines(root, data, precisions, options, say=say)
    data["engines_note"] = f"engines built with {why}"
    write_json(root / MANIFEST_NAME, data)
    say(f"wrote {len(precisions)} precision(s) of engines into {root}")
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_dir is not None:
        check_from_request(args)
        build_engines_from(args.from_dir, args)
        return 0
    check_requests(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
    build(args)
    if args.engines == "skip":
        from runtime.backends.tensorrt import rebuild_hint

        print(f"engines skipped (--engines skip); build them on the target GPU with {rebuild_hint(args.out)}",
              file=sys.stderr)
    else:
        build_engines_from(args.out, args)
    return 0


if __name__ == "__main__":
    run_cli(main)
