"""What a batch buys on ONNX Runtime (CPU): per-image time and peak memory of an artifact's image encoders
at each batch size (the evidence behind ``tools.serve``'s default ``--max-batch`` on onnxruntime).

    python -m tools.bench.batching --engines DIR [--batches 1 2 4] [--runs 3] [--threads N]
                                   [--flavours onnxruntime portable] [--json FILE]

``owl_image`` and ``sam2_image`` (what every served image goes through, batched), each flavour in its
own child process, on random pixels, with ``--threads`` intra-op threads and thread spinning off, so
that process-CPU time is work done, not waiting (a machine shared with other work slows every batch
size alike). Memory: each batch size once,
smallest first, after which the process's peak resident memory (``VmHWM``, reset once the session has
loaded) less its memory after loading is what running that batch needed (``activations``). Time: then
``--runs`` rounds of every batch size, alternating, so that a change in the machine's load hits all
alike; per image, the median wall and process-CPU time. The process's peak after those rounds is what
batches of varying size (as Triton forms them) needed: ONNX Runtime's arena, grown for one size, is
not always reused for another. Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.bench.common import rss_mb, with_machine, write_json

GRAPHS = ("owl_image", "sam2_image")
FLAVOURS = ("onnxruntime", "portable")


def _peak_rss_mb() -> float:
    """The peak resident memory since :func:`_reset_peak` (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise OSError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current RSS


def measure(engines: str, graph: str, flavour: str, batches: list[int], runs: int,
            threads: int | None) -> list[dict[str, Any]]:
    """Child process: one graph in one flavour at every batch size."""
    import numpy as np

    from runtime.backends.onnxruntime import import_onnxruntime
    from runtime.graphs import BATCH, GRAPHS as SPECS, resolve_shape
    from runtime.manifest import load_manifest

    ort = import_onnxruntime()
    manifest = load_manifest(engines)
    spec = SPECS[graph]
    path = (manifest.onnxruntime_graph_path if flavour == "onnxruntime" else manifest.graph_path)(graph, "fp32")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {b: {t.name: rng.standard_normal(resolve_shape(t, manifest.sizes, {BATCH: b})).astype(t.dtype)
                 for t in spec.inputs} for b in batches}
    loaded = rss_mb()
    _reset_peak()
    peaks = {}
    for b in sorted(batches):  # also the warm-up: ONNX Runtime's arena grows to what the batch needs
        session.run(None, feeds[b])
        peaks[b] = _peak_rss_mb()
    wall: dict[int, list[float]] = {b: [] for b in batches}
    cpu: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(runs):
        for b in batches:
            w, c = time.perf_counter(), time.process_time()
            session.run(None, feeds[b])
            wall[b].append((time.perf_counter() - w) * 1000 / b)
            cpu[b].append((time.process_time() - c) * 1000 / b)
    mixed = _peak_rss_mb()
    return [{"graph": graph, "flavour": flavour, "file": path.name, "batch": b,
             "wall_ms_per_image": float(np.median(wall[b])), "cpu_ms_per_image": float(np.median(cpu[b])),
             "wall_ms": wall[b], "loaded_mb": loaded, "peak_mb": peaks[b], "activations_mb": peaks[b] - loaded,
             "peak_mixed_mb": mixed, "load_average": os.getloadavg()[0]} for b in batches]


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3f}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| graph | flavour (file) | batch | wall ms / image | CPU ms / image | vs batch 1 (wall) | "
             "loaded MB | peak MB | activations MB | activations / image MB | peak MB, sizes alternating |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ones = {(r["graph"], r["flavour"]): r for r in results if r["batch"] == 1}
    for r in results:
        one = ones.get((r["graph"], r["flavour"]))
        speed = f"{one['wall_ms_per_image'] / r['wall_ms_per_image']:.2f}×" if one else "-"
        lines.append(f"| {r['graph']} | {r['flavour']} ({r['file']}) | {r['batch']} | {_ms(r['wall_ms_per_image'])} | "
                     f"{_ms(r['cpu_ms_per_image'])} | {speed} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['activations_mb']:.0f} | {r['activations_mb'] / r['batch']:.0f} | {r['peak_mixed_mb']:.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tools.bench.batching", description=__doc__.split("\n")[0])
    p.add_argument("--engines", required=True, metavar="DIR")
    p.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS))
    p.add_argument("--batches", nargs="+", type=whole_number(1), default=[1, 2, 4], metavar="N")
    p.add_argument("--runs", type=whole_number(1), default=3, metavar="N", help="timed rounds (default 3)")
    p.add_argument("--threads", type=whole_number(1), metavar="N", help="ONNX Runtime threads (default: its own)")
    p.add_argument("--flavours", nargs="+", choices=FLAVOURS, default=[FLAVOURS[0]],
                   help="onnxruntime: what the pipeline runs (default); portable: the graphs TensorRT builds from")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # graph flavour
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.engines, *args.worker, args.batches, args.runs, args.threads)))
        return 0
    results = []
    for graph in args.graphs:
        for flavour in args.flavours:
            cmd = [sys.executable, "-m", "tools.bench.batching", "--engines", str(args.engines), "--runs", str(args.runs),
                   "--batches", *map(str, args.batches), *(["--threads", str(args.threads)] if args.threads else []),
                   "--worker", graph, flavour]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                why = "killed: out of memory?" if r.returncode < 0 else " ".join(r.stderr.strip().splitlines()[-1:])
                raise UserError(f"{graph} ({flavour}) failed with status {r.returncode} ({why}); try fewer --batches")
            results += json.loads(r.stdout.strip().splitlines()[-1])
            print("\n".join(markdown(results).splitlines()[-len(args.batches):]), file=sys.stderr)
    print(markdown(results))
    if args.json:
        write_json(args.json, with_machine("tools.bench.batching", results, argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
