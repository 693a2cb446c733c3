"""GPU evidence in one bounded command, for the few minutes a GPU machine without TensorRT is lent.

    python -m tools.bench.gpu_evidence [--json FILE] [--budget-s 420] [--device cuda|cpu] [--copy-mib 64]
                                       [--replays 100] [flags of tools.bench.torch_tracking]

Prints one JSON report. ``cuda_layer``: the runtime's own CUDA layer (``runtime.backends.tensorrt``'s
Stream, Event, PinnedBuffer, DeviceBuffer, memcpy_async and capture_graph on cuda-bindings, no
TensorRT) checked byte for byte and its copies timed. ``tracking``: ``tools.bench.torch_tracking``'s
PyTorch tracking baselines (1, 4, 16 objects, eager FP32 and FP16 autocast by default). Work that
would end after ``--budget-s`` is skipped with the reason. Without cuda-bindings or a GPU it stops at
once with one line naming what is missing; ``--device cpu`` runs the tracking half alone on the CPU
(a check of the plumbing). Exit status 1 when a check, a row or a part failed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np

from runtime.backends import call_all
from runtime.backends.cuda import CopyKind, CudaRuntime
from runtime.errors import OneLineArgumentParser, UserError, one_line, run_cli, whole_number
from tools.bench import torch_tracking
from tools.bench.common import command_line, write_json

PROG = "python -m tools.bench.gpu_evidence"
GRAPH_BYTES = 4 << 20  # what each CUDA-graph replay copies (and the host compares)
BATCHES, COPIES = 5, 5  # bandwidth: median of BATCHES, each COPIES copies between two stream synchronises


class CheckFailed(Exception):
    """A check ran and the GPU's answer was wrong."""


def differs(got: np.ndarray, want: np.ndarray) -> None:
    if not np.array_equal(got, want):
        bad = np.flatnonzero(got != want)
        raise CheckFailed(f"{bad.size} of {want.size} bytes differ, the first at byte {bad[0]}")


def cuda_layer(cuda: CudaRuntime, nbytes: int, replays: int, deadline: float) -> dict[str, Any]:
    """Each check on ``cuda``: passed (with its measurements), failed (with why) or skipped once
    ``deadline`` (a ``time.perf_counter()`` value) is past. Everything made is freed at the end."""
    from runtime.backends.tensorrt import (DeviceBuffer, Event, PinnedBuffer, capture_graph, close_streams,
                                           memcpy_async, open_streams)

    pattern = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    report: dict[str, Any] = {"bytes": nbytes, "checks": {}}
    streams: tuple = ()
    made: list[Any] = []  # freed after the streams are done

    def own(thing: Any) -> Any:
        made.append(thing)
        return thing

    try:
        a, b = streams = open_streams(2, cuda)
        src, dst = own(PinnedBuffer(nbytes, cuda)), own(PinnedBuffer(nbytes, cuda))
        d1, d2 = own(DeviceBuffer(nbytes, cuda)), own(DeviceBuffer(nbytes, cuda))
        event = own(Event(cuda))

        def round_trip(first: Any, second: Any) -> None:
            """Pinned -> device -> device on ``first``, an event, then device -> pinned on ``second``."""
            src.bytes[:] = pattern
            dst.bytes[:] = 0
            memcpy_async(d1.ptr, src.ptr, nbytes, "HostToDevice", first)
            memcpy_async(d2.ptr, d1.ptr, nbytes, "DeviceToDevice", first)
            event.record(first)
            event.wait_on(second)  # the device orders the streams; the host does not wait here
            memcpy_async(dst.ptr, d2.ptr, nbytes, "DeviceToHost", second)
            second.synchronize()
            differs(dst.bytes, pattern)

        def two_streams() -> dict[str, Any]:
            round_trip(a, b)
            return {"copies": "H2D, D2D on stream A; event; stream B waits on it; D2H on B"}

        def graph_replay() -> dict[str, Any]:
            n = min(nbytes, GRAPH_BYTES)

            def enqueue() -> bool:
                memcpy_async(d2.ptr, d1.ptr, n, "DeviceToDevice", a)
                memcpy_async(dst.ptr, d2.ptr, n, "DeviceToHost", a)
                return True

            graph = capture_graph(a, enqueue, "the copies could not be captured into a CUDA graph")
            ms = []
            try:
                for i in range(replays):
                    want = pattern[:n] ^ np.uint8(i % 255 + 1)  # new data each replay: a stale copy fails
                    src.bytes[:n] = want
                    dst.bytes[:n] = 0
                    memcpy_async(d1.ptr, src.ptr, n, "HostToDevice", a)  # outside the graph
                    a.synchronize()
                    t0 = time.perf_counter()
                    cuda.graph_launch(graph, a.handle)
                    a.synchronize()
                    ms.append(1e3 * (time.perf_counter() - t0))
                    differs(dst.bytes[:n], want)
            finally:
                cuda.graph_exec_destroy(graph)
            return {"replays": replays, "bytes": n, "graph": "D2D then D2H", "replay_ms_median": statistics.median(ms)}

        def refused_capture() -> dict[str, Any]:
            try:
                capture_graph(a, lambda: False, "refused on purpose")
            except UserError as e:
                refusal = str(e)
            else:
                raise CheckFailed("capture_graph accepted an enqueue that returned False")
            if cuda.peek_error() != "cudaSuccess":
                raise CheckFailed(f"a refused capture left the error {cuda.peek_error()} behind")
            round_trip(a, a)  # the stream works again
            return {"refusal": refusal}

        def bandwidth() -> dict[str, Any]:
            gb_s = {}
            copies: tuple[tuple[CopyKind, Any, Any], ...] = (
                ("HostToDevice", d1, src), ("DeviceToHost", dst, d1), ("DeviceToDevice", d2, d1))
            for kind, to, frm in copies:
                seconds = []
                for _ in range(BATCHES):
                    a.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(COPIES):
                        memcpy_async(to.ptr, frm.ptr, nbytes, kind, a)
                    a.synchronize()
                    seconds.append((time.perf_counter() - t0) / COPIES)
                gb_s[kind] = nbytes / statistics.median(seconds) / 1e9
            return {"gb_per_s": gb_s, "method": f"pinned host memory; median of {BATCHES} batches of {COPIES} "
                                                "copies on one stream, host-timed between stream synchronises"}

        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "two_streams_round_trip": two_streams, "cuda_graph_replay": graph_replay,
            "refused_capture": refused_capture, "copy_bandwidth": bandwidth}
        for name, check in checks.items():
            if time.perf_counter() > deadline:
                report["checks"][name] = {"skipped": "time budget spent"}
                continue
            t0 = time.perf_counter()
            try:
                result = {"passed": True, **check()}
            except Exception as e:  # noqa: BLE001 - a failed check is a result: record it, go on
                result = {"passed": False, "error": f"{type(e).__name__}: {one_line(e)}"}
                call_all([s.synchronize for s in streams], raise_first=False)  # the next check starts on idle streams
            report["checks"][name] = result | {"seconds": time.perf_counter() - t0}
    finally:
        errors = call_all([lambda: close_streams(streams), *(m.close for m in made)], raise_first=False)
        report["teardown_errors"] = [f"{type(e).__name__}: {one_line(e)}" for e in errors]
    return report


def environment(cuda: CudaRuntime) -> dict[str, Any]:
    """The GPU, and the CUDA driver, runtime and cuda-bindings versions."""
    from cuda.bindings import __version__ as bindings_version
    from cuda.bindings import runtime as cudart

    from runtime.backends.cudart import check

    def version(v: int) -> str:
        return f"{v // 1000}.{v % 1000 // 10}"

    name, (major, minor) = cuda.device()
    free, total = check(cudart.cudaMemGetInfo(), "cudaMemGetInfo")
    return {"gpu": name, "compute_capability": f"{major}.{minor}", "memory_gib": total / 2**30,
            "free_gib": free / 2**30,
            "driver_cuda": version(check(cudart.cudaDriverGetVersion(), "cudaDriverGetVersion")),
            "runtime_cuda": version(check(cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
            "cuda_bindings": bindings_version}


def preflight() -> CudaRuntime:
    """The runtime's cuda-bindings with a visible GPU, and PyTorch with CUDA, or one line on what is missing."""
    from runtime.backends.tensorrt import cuda_bindings

    hint = f"run {PROG} on a machine with an NVIDIA GPU (or pass --device cpu to run only the PyTorch half)"
    try:
        cuda = cuda_bindings()
        cuda.device()
    except UserError as e:
        raise UserError(f"no CUDA GPU through cuda-bindings: {e}; {hint}") from None
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
                        f"install a CUDA build of torch, or {hint}")
    return cuda


def part(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s report, or its error: one part failing does not lose the other's evidence."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - recorded, and the exit status says so
        return {"error": f"{type(e).__name__}: {one_line(e)}", "traceback": traceback.format_exc()[-4000:]}


def parse_args(argv: list[str] | None) -> tuple[Any, Any, list[str]]:
    """(this command's flags, tools.bench.torch_tracking's flags, the arguments they were parsed from)."""
    p = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                              epilog="Other flags go to tools.bench.torch_tracking (see its --help: --arch, --model, "
                                     "--objects, --frames, --warmup, --size, --modes, --threads, --seed).")
    p.add_argument("--json", help="also write the report here (rewritten after each part)")
    p.add_argument("--budget-s", type=whole_number(), default=420,
                   help="seconds from start after which work is skipped (default 420: done in under 8 min)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: the tracking half alone, on the CPU, to check the plumbing")
    p.add_argument("--copy-mib", type=whole_number(), default=64, help="size of the buffers the CUDA checks copy")
    p.add_argument("--replays", type=whole_number(), default=100, help="CUDA-graph replays, each checked")
    args, rest = p.parse_known_args(argv)
    tracking_argv = [*rest, "--device", args.device]
    return args, torch_tracking.parse_args(tracking_argv, prog=PROG), tracking_argv


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args, tracking_args, tracking_argv = parse_args(argv)
    deadline = start + args.budget_s
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cuda = preflight() if args.device == "cuda" else None

    report: dict[str, Any] = {"command": command_line("tools.bench.gpu_evidence", argv), "budget_s": args.budget_s,
                              "device": args.device}

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        if args.json:
            write_json(args.json, report)

    if cuda is None:
        report["cuda_layer"] = {"skipped": "--device cpu: the CUDA layer needs a GPU"}
    else:  # first: seconds long, and the evidence no other tool gives without TensorRT
        report["environment"] = part(lambda: environment(cuda))
        say(f"CUDA layer on {report['environment'].get('gpu')}")
        report["cuda_layer"] = part(lambda: cuda_layer(cuda, args.copy_mib << 20, args.replays, deadline))
    save()
    report["tracking"] = part(lambda: torch_tracking.measure(tracking_args, say, deadline, tracking_argv))
    checks = report["cuda_layer"].get("checks", {}).values()
    rows = report["tracking"].get("results", [])
    parts = (report.get("environment", {}), report["cuda_layer"], report["tracking"])
    report["passed"] = (not any("error" in p for p in parts)
                        and not report["cuda_layer"].get("teardown_errors")
                        and all(c.get("passed", True) for c in checks) and not any("error" in r for r in rows))
    report["complete"] = not any("skipped" in x for x in (*checks, *rows))
    save()
    print(json.dumps(report, indent=1, default=str))
    say(f"{'passed' if report['passed'] else 'FAILED'}, {'complete' if report['complete'] else 'INCOMPLETE'}, "
        f"in {report['elapsed_s']:.0f} s")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_cli(main)
