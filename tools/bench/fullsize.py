"""Export time, peak memory and CPU latency (PyTorch eager vs ONNX Runtime) of the exported graphs.

    python -m tools.bench.fullsize [--arch owlv2-b16|hiera-small|hiera-tiny|tiny | --model DIR]
                                     [--graphs owl_image sam2_decoder ...] [--prompts 4] [--boxes 1 16]
                                     [--runs 3] [--threads 2] [--parity] [--out DIR] [--json FILE]

Without ``--model`` the model has random weights and the real architecture of
``google/owlv2-base-patch16-ensemble`` (``owlv2-b16``: ``Owlv2Config()`` with the vision tower at
960 px, patch 16) or ``facebook/sam2.1-hiera-small`` (or ``-tiny``): timings and memory do not
depend on the weights, and no hub access is needed (the OWLv2 tokenizer is the tiny checkpoints'
BPE, whose ids all exist in the real vocabulary). ``--model DIR`` measures a local checkpoint instead.

Each graph is measured in its own child process, so that its peak resident memory (``ru_maxrss``)
is its own: model construction + export, then + the latency runs. Latency is the median of
``--runs`` timed runs after one warm-up, at batch 1, with ``--threads`` intra-op threads for both
PyTorch and ONNX Runtime. The result is a markdown table on stdout (and JSON with ``--json``).
Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.bench.common import (INITS, OWL_ARCHES, OWL_B16, SAM_ARCHES, load_model, median_ms, parameters_m,
                                peak_rss_mb, with_machine, write_json)

ARCHES = tuple(dict.fromkeys((*OWL_ARCHES, *SAM_ARCHES)))


def family_of(graph: str) -> str:
    from runtime.graphs import GRAPHS

    return GRAPHS[graph].family


def measure_graph(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: build, export and time one graph."""
    import numpy as np
    import torch

    from export.graph_export import export_example_dims, export_to_onnx
    from export.parity import check_export_parity, failures
    from export.owl import owl_graph_exports, owl_sizes
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import NUM_BOXES, NUM_PROMPTS

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    family = family_of(args.worker)
    loaded = load_model(family, args.arch, args.model, args.seed, args.init)
    sizes, exports = (owl_sizes, owl_graph_exports) if family == "owl" else (sam2_sizes, sam2_graph_exports)
    graph = {g.spec.name: g for g in exports(loaded, sizes(loaded))}[args.worker]
    spec = graph.spec
    build_s = time.perf_counter() - t0
    rss_build = peak_rss_mb()

    # the decoder's example features come from the image encoder: compute them before the clock
    graph.make_inputs(export_example_dims(spec), np.random.default_rng(0))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    t0 = time.perf_counter()
    files = export_to_onnx(graph, path)
    export_s = time.perf_counter() - t0
    rss_export = peak_rss_mb()

    result: dict[str, Any] = {
        "graph": spec.name,
        "model": loaded.source,
        "params_m": parameters_m(graph.module),
        "build_s": build_s,
        "export_s": export_s,
        "onnx_mb": sum(f.stat().st_size for f in files) / 2**20,
        "rss_build_mb": rss_build,
        "rss_export_mb": rss_export,
        "latency": [],
    }
    session = OrtGraph(path, spec, intra_op_threads=args.threads)
    counts = {NUM_BOXES: args.boxes, NUM_PROMPTS: args.prompts}
    varied = [d for d in spec.dynamic_dims if d in counts]
    for n in (counts[varied[0]] if varied else [None]):
        dims = {d: 1 for d in spec.dynamic_dims} | ({varied[0]: n} if varied else {})
        feeds = graph.make_inputs(dims, np.random.default_rng(1))
        ms = median_ms({"eager": lambda: graph.torch_outputs(feeds), "ort": lambda: session.run(feeds)}, args.runs)
        result["latency"].append({"dims": dims, "eager_ms": ms["eager"], "ort_ms": ms["ort"]})
    result["load_average"] = os.getloadavg()[0]
    result["rss_total_mb"] = peak_rss_mb()
    if args.parity:
        rows = check_export_parity(graph, path)
        result["parity"] = {
            "passed": not failures(rows),
            "max_abs": {name: max(r.max_abs for r in rows if r.output == name) for name in spec.output_names},
        }
    return result


def format_markdown(results: list[dict[str, Any]], threads: int, runs: int) -> str:
    lines = [
        "| model | graph | params (M) | export (s) | ONNX (MB) | peak RSS export (GB) | peak RSS +latency (GB) "
        "| dims | eager (ms) | ORT (ms) | eager/ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, lat in enumerate(r["latency"]):
            head = (
                f"| {r['model']} | {r['graph']} | {r['params_m']:.2f} | {r['export_s']:.1f} | {r['onnx_mb']:.1f} "
                f"| {r['rss_export_mb'] / 1024:.2f} | {r['rss_total_mb'] / 1024:.2f} "
                if i == 0
                else "| | | | | | | "
            )
            dims = ", ".join(f"{k}={v}" for k, v in lat["dims"].items())
            lines.append(
                f"{head}| {dims} | {lat['eager_ms']:.1f} | {lat['ort_ms']:.1f} | {lat['eager_ms'] / lat['ort_ms']:.2f} |"
            )
    lines.append("")
    loads = ", ".join(f"{r['load_average']:.1f}" for r in results)
    lines.append(
        f"Latency: median of {runs} runs after one warm-up, eager and ORT alternating, {threads} intra-op "
        f"threads, CPU ({os.cpu_count()} cores; 1-min load average at the end of each graph: {loads})."
    )
    for r in results:
        if "parity" in r:
            p = r["parity"]
            worst = ", ".join(f"{k} {v:.2g}" for k, v in p["max_abs"].items())
            lines.append(f"Parity {r['graph']}: {'PASSED' if p['passed'] else 'FAILED'} (max-abs {worst})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from runtime.graphs import GRAPHS

    p = OneLineArgumentParser(prog="python -m tools.bench.fullsize", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=ARCHES, help="random-weight architecture (default: owlv2-b16 for OWL "
                     "graphs, hiera-small for SAM2 graphs; tiny: the tiny test architecture, for both)")
    src.add_argument("--model", help="a local checkpoint directory (of the graphs' family) instead of random weights")
    image_graphs = sorted(n for n, g in GRAPHS.items() if not g.video)  # tools.bench.tracking times video
    p.add_argument("--graphs", nargs="+", choices=image_graphs, default=image_graphs)
    p.add_argument("--prompts", nargs="+", type=whole_number(), default=[4], help="prompt counts to time")
    p.add_argument("--boxes", nargs="+", type=whole_number(), default=[1, 16], help="decoder box counts to time")
    p.add_argument("--runs", type=whole_number(), default=3, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=whole_number(), default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=INITS, default="order1",
                   help="random weights: re-initialised to order-1 outputs (default) or transformers' init")
    p.add_argument("--parity", action="store_true", help="also run the export parity check per graph")
    p.add_argument("--out", help="where the ONNX files go (default: a temporary directory, removed)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--worker", choices=image_graphs, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def arch_for(graph: str, arch: str | None) -> str:
    family = family_of(graph)
    if arch is None:
        return OWL_B16 if family == "owl" else "hiera-small"
    if arch not in (OWL_ARCHES if family == "owl" else SAM_ARCHES):
        raise UserError(f"--arch {arch} has no graph {graph}; pick graphs of its family with --graphs")
    return arch


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure_graph(args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="sam2-measure-") as tmp:
        out = args.out or tmp
        results = []
        for name in args.graphs:
            cmd = [sys.executable, "-m", "tools.bench.fullsize", "--worker", name, "--out", out,
                   "--runs", str(args.runs), "--threads", str(args.threads), "--seed", str(args.seed),
                   "--boxes", *map(str, args.boxes), "--prompts", *map(str, args.prompts), "--init", args.init]
            cmd += ["--model", args.model] if args.model else ["--arch", arch_for(name, args.arch)]
            cmd += ["--parity"] if args.parity else []
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                print(f"{name}: the measuring process failed with status {proc.returncode}", file=sys.stderr)
                return proc.returncode
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        write_json(args.json, with_machine("tools.bench.fullsize", results, argv))
    print(format_markdown(results, args.threads, args.runs))
    return 0


if __name__ == "__main__":
    run_cli(main)
