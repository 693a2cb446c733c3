"""Serving cost: ``python -m tools.serve`` under load against direct ``Pipeline.predict`` calls.

    python -m tools.bench.serving --engines DIR [--concurrency 1 4 16] [--requests 5] [--size 720x1280]
                                  [--prompts 4] [--threshold T] [--threads N] [--max-batch N]
                                  [--backend onnxruntime] [--precision fp32]
                                  [--grpc] [--out DIR]

The same JPEG bytes and prompts go to the ``owlsam`` model (served alone, one instance, the same
threads) from N client threads (``--requests`` each) for every N of ``--concurrency``, with Triton's
dynamic batching on (``--max-batch``, default the artifact's batch maximum, given to the server
explicitly: its own default on onnxruntime is 1) and off (``--max-batch 1``). Direct: this process
decodes the JPEG and calls ``Pipeline.predict``, alternating with the served requests at concurrency
1 (one at a time, so that a change in the machine's load hits both alike). Latency is per request as
the client sees it; throughput is requests over the wall time of a level. Writes ``serving.json``,
``serving.md`` and ``serving.png`` (latency and throughput vs concurrency).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.graphs import BATCH
from runtime.manifest import PRECISIONS
from runtime.pipeline import BACKENDS
from tools.bench.common import image_size_arg, machine_info
from tools.benchmark import prompt_list
from tools.outputs import write_atomic

PAUSE_S = 0.2


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tools.bench.serving", description=__doc__.split("\n")[0])
    p.add_argument("--engines", required=True, metavar="DIR")
    p.add_argument("--concurrency", type=whole_number(1), nargs="+", default=[1, 4, 16], metavar="N")
    p.add_argument("--requests", type=whole_number(1), default=5, metavar="N", help="per client and level (default 5)")
    p.add_argument("--size", type=image_size_arg, default=(720, 1280), metavar="HxW", help="image size (default 720x1280)")
    p.add_argument("--prompts", type=whole_number(1), default=4, metavar="N", help="default 4")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="score threshold sent with every request (default: the artifact's; random full-size "
                        "weights need a high one, or thousands of boxes are masks)")
    p.add_argument("--threads", type=whole_number(1), metavar="N", help="ONNX Runtime threads (default: its own)")
    p.add_argument("--max-batch", type=whole_number(2), metavar="N",
                   help="the batching server's --max-batch (default: the artifact's batch maximum)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--grpc", action="store_true", help="clients use gRPC (default HTTP)")
    p.add_argument("--out", default="serving-bench", metavar="DIR", help="default serving-bench")
    return p


def _summary(latencies_s: Sequence[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {"requests": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_per_s": float(len(ms) / wall_s)}


class Direct:
    """``Pipeline.predict`` in this process, on the decoded request bytes, timed per call."""

    def __init__(self, args: argparse.Namespace, data: bytes, prompts: list[str]) -> None:
        from runtime import Pipeline

        self.pipe = Pipeline.load(args.engines, backend=args.backend, precision=args.precision,
                                  intra_op_threads=args.threads)
        self.data, self.prompts, self.threshold, self.latencies = data, prompts, args.threshold, []
        self.run()  # warm-up
        self.latencies.clear()

    def run(self) -> None:
        from runtime.images import decode_image

        t = time.perf_counter()
        self.pipe.predict(decode_image(self.data), self.prompts, threshold=self.threshold)
        self.latencies.append(time.perf_counter() - t)


def bench_served(args: argparse.Namespace, data: bytes, prompts: list[str], extra: Sequence[str], log: Path,
                 direct: Direct) -> dict[int, dict[str, float]]:
    from tools.client import Connection
    from tools.serve.interface import OWLSAM
    from tools.serve.server import Endpoints, free_ports, wait_ready

    endpoints = Endpoints("127.0.0.1", *free_ports(3))
    cmd = [sys.executable, "-m", "tools.serve", "--engines", str(args.engines), "--backend", args.backend,
           "--precision", args.precision, "--http-port", str(endpoints.http_port), "--grpc-port",
           str(endpoints.grpc_port), "--metrics-port", str(endpoints.metrics_port), "--drain-timeout", "5",
           "--models", OWLSAM.name, *(["--threads", str(args.threads)] if args.threads else []), *extra]
    url = endpoints.grpc_url if args.grpc else endpoints.http_url
    with open(log, "w") as f:
        server = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        if not wait_ready(server, endpoints, [OWLSAM.name], timeout_s=600):
            raise UserError(f"python -m tools.serve exited with status {server.returncode}; see {log}")
        warm = Connection(url, args.grpc, OWLSAM.name, 3600)
        warm.infer(data, prompts, args.threshold)
        warm.close()
        out = {}
        for n in args.concurrency:
            def client(_: int) -> list[float]:
                conn = Connection(url, args.grpc, OWLSAM.name, 3600)
                times = []
                try:
                    for _ in range(args.requests):
                        if n == 1:  # alternate, with pauses: ONNX Runtime's threads spin a while after a call
                            direct.run()
                            time.sleep(PAUSE_S)
                        t = time.perf_counter()
                        conn.infer(data, prompts, args.threshold)
                        times.append(time.perf_counter() - t)
                        if n == 1:
                            time.sleep(PAUSE_S)
                finally:
                    conn.close()
                return times

            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                latencies = [t for times in pool.map(client, range(n)) for t in times]
            wall = time.perf_counter() - t0 if n > 1 else sum(latencies)  # one at a time: the calls alone
            out[n] = _summary(latencies, wall)
            print(f"  concurrency {n}: p50 {out[n]['p50_ms']:.1f} ms, p99 {out[n]['p99_ms']:.1f} ms, "
                  f"{out[n]['throughput_per_s']:.2f} requests/s", file=sys.stderr)
        return out
    finally:
        server.terminate()
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def markdown(report: dict[str, Any]) -> str:
    c, d = report["config"], report["direct"]
    lines = [f"image {c['size'][0]}x{c['size'][1]} (JPEG), {c['prompts']} prompts, backend {c['backend']} "
             f"{c['precision']}, {c['requests']} requests per client and level, {d['requests']} direct calls",
             "", "| | concurrency | p50 ms | p99 ms | requests/s |", "|---|---:|---:|---:|---:|",
             f"| direct `Pipeline.predict` | 1 | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} | {d['throughput_per_s']:.2f} |"]
    for name, levels in report["served"].items():
        for n, s in levels.items():
            lines.append(f"| served, {name} | {n} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['throughput_per_s']:.2f} |")
    one = report["served"]["batching"].get("1")
    if one:
        overhead = one["p50_ms"] - d["p50_ms"]
        lines += ["", f"server overhead at concurrency 1 (p50): {overhead:.1f} ms, "
                      f"{100 * overhead / d['p50_ms']:.1f} % of the direct per-image time"]
    return "\n".join(lines) + "\n"


def draw_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    d = report["direct"]
    for i, (name, levels) in enumerate(report["served"].items()):
        ns = [int(n) for n in levels]
        colour = plt.get_cmap("tab10").colors[i]
        lat.plot(ns, [s["p50_ms"] for s in levels.values()], "o-", color=colour, label=f"served, {name}: p50")
        lat.plot(ns, [s["p99_ms"] for s in levels.values()], "s--", color=colour, label=f"served, {name}: p99")
        thr.plot(ns, [s["throughput_per_s"] for s in levels.values()], "o-", color=colour, label=f"served, {name}")
    lat.axhline(d["p50_ms"], color="black", lw=1, label="direct Pipeline.predict: p50")
    thr.axhline(d["throughput_per_s"], color="black", lw=1, label="direct Pipeline.predict")
    for ax, ylabel in ((lat, "latency per request, ms"), (thr, "requests per second")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["config"]["concurrency"], [str(n) for n in report["config"]["concurrency"]])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c, m = report["config"], report["machine"]
    fig.suptitle(f"{Path(c['engines']).name}: {c['size'][0]}x{c['size'][1]}, {c['prompts']} prompts, {c['backend']} "
                 f"{c['precision']} — {(m.get('cpu') or {}).get('model')}, {m['cpu_count']} CPUs", fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from tools.bench.synthetic import synthetic_image

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(*args.size, seed=0)).save(buf, format="JPEG", quality=95)
    data, prompts = buf.getvalue(), prompt_list(args.prompts)
    t_start = time.perf_counter()
    direct = Direct(args, data, prompts)
    max_batch = args.max_batch or direct.pipe.manifest.profile_max(BATCH, 1)  # the batching server's
    try:
        if 1 not in args.concurrency:
            for _ in range(args.requests):
                direct.run()
        served = {}
        with tempfile.TemporaryDirectory() as tmp:
            batching = ("--max-batch", str(max_batch))
            for name, extra in {"batching": batching, "no batching": ("--max-batch", "1")}.items():
                print(f"served, {name} ...", file=sys.stderr)
                levels = bench_served(args, data, prompts, extra, Path(tmp) / "serve.log", direct)
                served[name] = {str(n): s for n, s in levels.items()}
    finally:
        direct.pipe.close()
    direct_summary = _summary(direct.latencies, sum(direct.latencies))
    report = {"command": "python -m tools.bench.serving " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": {"engines": str(args.engines), "size": list(args.size), "prompts": args.prompts, "threshold": args.threshold,
                         "backend": args.backend, "precision": args.precision, "threads": args.threads, "max_batch": max_batch,
                         "concurrency": list(args.concurrency), "requests": args.requests,
                         "protocol": "grpc" if args.grpc else "http"},
              "machine": machine_info(), "direct": direct_summary, "served": served,
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_atomic(out / "serving.json", lambda f: f.write((json.dumps(report, indent=1) + "\n").encode()))
    write_atomic(out / "serving.md", lambda f: f.write(markdown(report).encode()))
    draw_chart(report, out / "serving.png")
    print(markdown(report), file=sys.stderr)
    print(f"wrote {out}/serving.json, serving.md, serving.png in {report['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
