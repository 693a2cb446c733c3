"""python -m tools.bench.gpu_evidence: its CUDA checks against the recording CUDA double (so the
checks' logic is tested here, and that they can fail), the one-line refusal without a GPU, the
tracking half on the CPU, and, where a GPU is, the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "runtime"))
from fake_cudart import RecordingCudaRuntime  # noqa: E402 - tests/runtime/fake_cudart.py

from tools.bench.gpu_evidence import GRAPH_BYTES, cuda_layer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("two_streams_round_trip", "cuda_graph_replay", "refused_capture", "copy_bandwidth")
SMALL_TRACKING = ("--objects", "1", "2", "--frames", "1", "--warmup", "6", "--size", "48x64", "--modes", "eager-fp32",
                  "--threads", "1")


class ShortDeviceCopies(RecordingCudaRuntime):
    """Device-to-device copies that drop their last byte: a GPU giving wrong bytes."""

    def memcpy_async(self, dst, src, nbytes, kind, stream):
        super().memcpy_async(dst, src, nbytes - (kind == "DeviceToDevice"), kind, stream)


def test_the_checks_pass_on_a_correct_runtime_and_free_everything():
    rt = RecordingCudaRuntime()  # raises OrderingError on a missing event wait or a free before a synchronise
    nbytes, replays = 3 << 20, 7
    report = cuda_layer(rt, nbytes, replays, deadline=float("inf"))
    assert list(report["checks"]) == list(CHECKS)
    for name, check in report["checks"].items():
        assert check["passed"], (name, check)
        assert check["seconds"] >= 0
    assert report["teardown_errors"] == [] and rt.live() == []
    graph = report["checks"]["cuda_graph_replay"]
    assert graph["replays"] == replays and graph["bytes"] == min(nbytes, GRAPH_BYTES)
    assert rt.calls.count("graph_launch") == replays and rt.calls.count("graph_exec_destroy") == 1
    assert rt.calls.count("stream_wait_event") == 2  # the two round trips
    assert set(report["checks"]["copy_bandwidth"]["gb_per_s"]) == {"HostToDevice", "DeviceToHost", "DeviceToDevice"}
    assert all(v > 0 for v in report["checks"]["copy_bandwidth"]["gb_per_s"].values())


def test_wrong_bytes_fail_the_checks_that_compare_them():
    rt = ShortDeviceCopies()
    report = cuda_layer(rt, 1 << 16, 3, deadline=float("inf"))
    checks = report["checks"]
    for name in ("two_streams_round_trip", "cuda_graph_replay", "refused_capture"):
        assert not checks[name]["passed"], name
        assert "1 of" in checks[name]["error"] and "bytes differ" in checks[name]["error"], checks[name]
    assert checks["copy_bandwidth"]["passed"]  # it times copies, it does not compare them
    assert rt.live() == []


def test_a_failing_cuda_call_fails_its_check_and_the_rest_still_run():
    rt = RecordingCudaRuntime()
    rt.fail("graph_launch", "cudaErrorLaunchFailure")
    report = cuda_layer(rt, 1 << 16, 3, deadline=float("inf"))
    checks = report["checks"]
    graph = checks["cuda_graph_replay"]
    assert not graph["passed"] and "DeviceFault" in graph["error"] and "cudaErrorLaunchFailure" in graph["error"]
    assert rt.calls.count("graph_exec_destroy") == 1  # the captured graph is freed after the failure
    assert all(checks[n]["passed"] for n in CHECKS if n != "cuda_graph_replay")
    assert report["teardown_errors"] == [] and rt.live() == []


def test_a_spent_budget_skips_the_checks():
    rt = RecordingCudaRuntime()
    report = cuda_layer(rt, 1 << 16, 3, deadline=time.perf_counter() - 1)
    assert report["checks"] == {n: {"skipped": "time budget spent"} for n in CHECKS}
    assert "memcpy_async" not in rt.calls and rt.live() == []


def _no_gpu_reason() -> str | None:
    from runtime.backends.tensorrt import cuda_device_status

    ok, why = cuda_device_status()
    return None if ok else why


def test_without_a_gpu_the_command_stops_with_one_line(run_module, one_error_line):
    if _no_gpu_reason() is None:
        pytest.skip("a CUDA device is visible here")
    t0 = time.perf_counter()
    r = run_module("tools.bench.gpu_evidence", check=None)
    one_error_line(r, "no CUDA GPU through cuda-bindings", "--device cpu")
    assert time.perf_counter() - t0 < 60 and r.stdout == ""  # before torch is loaded or any work done


def test_without_cuda_bindings_the_command_stops_with_one_line(tmp_path, one_error_line):
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "__init__.py").write_text("")  # a `cuda` package with no `bindings`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    r = subprocess.run([sys.executable, "-m", "tools.bench.gpu_evidence"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    one_error_line(r, "no CUDA GPU through cuda-bindings", "cuda-python", "cuda.bindings")


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--budget-s", "0"], "--budget-s: 0 must be at least 1"),
    (["--copy-mib", "x"], "not a whole number"),
    (["--objects", "0"], "--objects: 0 must be at least 1"),  # a flag of tools.bench.torch_tracking
    (["--modes", "fp8"], "unknown mode fp8"),
])
def test_bad_flags_are_one_line_errors(run_module, one_error_line, flags, fragment):
    one_error_line(run_module("tools.bench.gpu_evidence", *flags, check=None), fragment)


@pytest.mark.slow
def test_on_the_cpu_the_tracking_half_runs_and_the_report_is_json(run_module, tiny_checkpoints, tmp_path):
    out = tmp_path / "evidence.json"
    r = run_module("tools.bench.gpu_evidence", "--device", "cpu", "--model", tiny_checkpoints.sam, *SMALL_TRACKING,
                   "--json", out)  # exit status 0
    report = json.loads(r.stdout)
    assert report == json.loads(out.read_text())
    assert report["passed"] and report["complete"] and report["device"] == "cpu"
    assert "skipped" in report["cuda_layer"]
    rows = report["tracking"]["results"]
    assert [(row["mode"], row["objects"]) for row in rows] == [("eager-fp32", 1), ("eager-fp32", 2)]
    assert all(row["ms_per_frame"] > 0 and row["wall_s"] > 0 for row in rows)
    assert report["tracking"]["config"]["device"] == "cpu"
    assert 0 < report["elapsed_s"] < 420


def test_rows_past_the_budget_are_skipped_with_the_reason(tiny_checkpoints):
    from tools.bench import torch_tracking

    args = torch_tracking.parse_args(["--device", "cpu", "--model", str(tiny_checkpoints.sam), *SMALL_TRACKING])
    report = torch_tracking.measure(args, say=lambda _: None, deadline=time.perf_counter())
    rows = report["results"]
    assert [(row["mode"], row["objects"]) for row in rows] == [("eager-fp32", 1), ("eager-fp32", 2)]
    assert all(row["skipped"].startswith("time budget") and "ms_per_frame" not in row for row in rows)
    assert "| eager-fp32 | 1 | skipped |" in report["markdown"]


@pytest.mark.gpu
def test_on_a_gpu_every_check_passes_and_the_rows_are_measured(run_module, tmp_path):
    why = _no_gpu_reason()
    if why is not None:
        pytest.skip(f"needs a CUDA device: {why}")
    r = run_module("tools.bench.gpu_evidence", "--arch", "tiny", "--objects", "1", "4", "--frames", "2", "--warmup",
                   "6", "--size", "96x128", "--copy-mib", "16", "--replays", "10", "--json", tmp_path / "e.json",
                   timeout=480)
    report = json.loads(r.stdout)
    assert report["passed"] and report["complete"], report
    assert report["environment"]["gpu"] and report["environment"]["driver_cuda"]
    assert all(c["passed"] for c in report["cuda_layer"]["checks"].values())
    bandwidth = report["cuda_layer"]["checks"]["copy_bandwidth"]["gb_per_s"]
    assert all(v > 1.0 for v in bandwidth.values()), bandwidth  # any GPU copies 16 MiB faster than 1 GB/s
    rows = report["tracking"]["results"]
    assert [(row["mode"], row["objects"]) for row in rows] == [
        ("eager-fp32", 1), ("eager-fp32", 4), ("autocast-fp16", 1), ("autocast-fp16", 4)]
    assert all(row["peak_gpu_memory_gib"] > 0 for row in rows)
