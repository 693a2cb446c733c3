"""python -m tools.bench.serving on the tiny artifact: every level measured, the report and chart written."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("serve_extra")


@pytest.mark.slow
def test_serving_benchmark_writes_its_report(tiny_artifact, run_module, tmp_path):
    out = tmp_path / "bench"
    run_module("tools.bench.serving", "--engines", tiny_artifact, "--concurrency", "1", "3", "--requests", "2",
               "--size", "64x96", "--prompts", "2", "--out", out, timeout=600)
    report = json.loads((out / "serving.json").read_text())
    assert report["direct"]["requests"] == 4  # alternating with the 2 served requests at concurrency 1, per variant
    assert set(report["served"]) == {"batching", "no batching"}
    # the batching server batches as far as the artifact allows (the server's own default on onnxruntime is 1)
    assert report["config"]["max_batch"] == json.loads((tiny_artifact / "manifest.json").read_text())["profiles"]["batch"]["max"] > 1
    for levels in report["served"].values():
        assert {n: s["requests"] for n, s in levels.items()} == {"1": 2, "3": 6}
        for s in levels.values():
            assert 0 < s["p50_ms"] <= s["p99_ms"] and s["throughput_per_s"] > 0
    assert "server overhead at concurrency 1" in (out / "serving.md").read_text()
    assert (out / "serving.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
