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

from runtime.errors import OneLineArgumentParser, UserError, run_cli
from runtime.graphs import DYNAMIC_DIMS, BATCH, NUM_BOXES, NUM_PROMPTS, GraphSpec, with_max
from runtime.manifest import PARITY_NAME, MANIFEST_NAME, SCHEMA_VERSION, TOKENIZER_DIR, graph_file_name

log = logging.getLogger("export.build")

PROMPT_TEMPLATE = "a photo of {}"
DEFAULT_THRESHOLD = 0.1


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
    p.add_argument("--calib-dir", type=Path, help="folder of calibration images for --int8")
    p.add_argument("--video", action="store_true", help="also export SAM2's memory modules for tracking")
    p.add_argument("--engines", choices=("auto", "require", "skip"), default="auto",
                   help="build TensorRT engines: auto = where TensorRT and a GPU exist")
    p.add_argument("--max-prompts", type=_positive, help=f"profile maximum of {NUM_PROMPTS}")
    p.add_argument("--max-boxes", type=_positive, help=f"profile maximum of {NUM_BOXES}")
    p.add_argument("--max-batch", type=_positive, help=f"profile maximum of {BATCH}")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def check_requests(args: argparse.Namespace) -> None:
    """Refuse what this version cannot do before any work starts: loudly, never a silent fallback."""
    if args.int8 and args.calib_dir is None:
        raise UserError("--int8 needs --calib-dir DIR (a folder of calibration images)")
    for flag in ("fp16", "int8", "video"):
        if getattr(args, flag):
            raise UserError(f"--{flag} is not available in this version of the toolkit yet; export with --fp32")
    if args.engines == "require":
        raise UserError(
            "--engines require: this version cannot build TensorRT engines yet; use --engines skip "
            "(ONNX graphs run with --backend onnxruntime)"
        )


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("owlsam-trt", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
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
    from export.parity import check_export_parity, failures, format_table, ParityError
    from export.preprocessing import owl_preprocessing_from_processor, sam2_preprocessing_from_processor
    from export.sam2 import sam2_graph_exports, sam2_sizes

    check_output_dir(args.out, args.force)
    t_start = time.perf_counter()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr

    say(f"loading OWLv2 from {args.owl_model}")
    owl = load_owl(args.owl_model)
    say(f"loading SAM2 from {args.sam_model}")
    sam = load_sam(args.sam_model)
    sizes = {**owl_sizes(owl), **sam2_sizes(sam)}
    graphs = owl_graph_exports(owl, sizes) + sam2_graph_exports(sam, sizes)
    profiles = with_max(DYNAMIC_DIMS, num_prompts=args.max_prompts, num_boxes=args.max_boxes, batch=args.max_batch)

    with staged_directory(args.out) as tmp:
        records: dict[str, Any] = {}
        rows = []
        for i, graph in enumerate(graphs, 1):
            name = graph.spec.name
            t0 = time.perf_counter()
            files = export_to_onnx(graph, tmp / graph_file_name(name, "fp32"), seed=args.seed)
            t1 = time.perf_counter()
            graph_rows = check_export_parity(graph, files[0], seed=args.seed)
            rows += graph_rows
            bad = failures(graph_rows)
            worst = max(r.max_abs for r in graph_rows)
            say(f"[{i}/{len(graphs)}] {name}: exported in {t1 - t0:.1f} s, parity "
                f"{'FAILED' if bad else 'PASSED'} (worst max-abs {worst:.2g}, {len(graph_rows)} checks, "
                f"{time.perf_counter() - t1:.1f} s)")
            records[name] = {
                "family": graph.spec.family,
                **_io_record(graph.spec),
                "files": {"fp32": {"files": [file_record(tmp, f) for f in files]}},
            }
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

        engines_note = _engines_note(args.engines)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "toolkit": _versions(),
            "sources": {"owl": owl.source_record(), "sam": sam.source_record()},
            "preprocessing": {
                "owl": owl_preprocessing_from_processor(owl.processor).to_dict(),
                "sam": sam2_preprocessing_from_processor(sam.processor).to_dict(),
            },
            "pipeline": {"prompt_template": PROMPT_TEMPLATE, "threshold": DEFAULT_THRESHOLD},
            "sizes": sizes,
            "profiles": {d: {"min": r.min, "opt": r.opt, "max": r.max} for d, r in profiles.items()},
            "graphs": records,
            "tokenizer": [file_record(tmp, f) for f in sorted(tok_dir.iterdir())],
            "engines": {},
            "engines_note": engines_note,
            "parity": {"fp32": {"passed": True, "checks": len(rows), "worst_max_abs": max(r.max_abs for r in rows)}},
        }
        write_json(tmp / MANIFEST_NAME, manifest)
    say(engines_note)
    say(f"wrote {args.out} in {time.perf_counter() - t_start:.1f} s ({len(graphs)} graphs, parity PASSED)")
    return args.out


def _engines_note(mode: str) -> str:
    if mode == "skip":
        return "engines skipped (--engines skip); the ONNX graphs run with --backend onnxruntime"
    return ("engines skipped: this version cannot build TensorRT engines yet; "
            "the ONNX graphs run with --backend onnxruntime")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_requests(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
    build(args)
    return 0


if __name__ == "__main__":
    run_cli(main)
