"""python -m tools.bench.torch_tracking on CPU with the tiny SAM2 checkpoint: a row per object count
and mode with consistent numbers, the configuration recorded, and one-line errors for bad flags."""

from __future__ import annotations

import functools
import json
import math

import pytest

STAGES = ("preprocess", "image_encoder", "tracking", "postprocess")


@pytest.fixture(scope="module")
def baseline(run_module):
    """``baseline(*args, check=0)``: ``python -m tools.bench.torch_tracking args`` (``run_module``)."""
    return functools.partial(run_module, "tools.bench.torch_tracking")


@pytest.fixture(scope="module")
def report(baseline, tiny_checkpoints, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("tracking_baseline") / "report.json"
    r = baseline("--device", "cpu", "--model", tiny_checkpoints.sam, "--objects", "1", "2", "--frames", "2",
                 "--warmup", "6", "--size", "48x64", "--modes", "eager-fp32,autocast-fp16", "--threads", "1",
                 "--json", out)  # exit status 0, no traceback
    return json.loads(out.read_text()), r.stdout


def test_a_row_per_mode_and_object_count(report):
    data, _ = report
    # autocast-fp16 on CPU runs bfloat16 autocast, and says so
    assert [(r["mode"], r["objects"]) for r in data["results"]] == [
        ("eager-fp32", 1), ("eager-fp32", 2), ("autocast-bf16", 1), ("autocast-bf16", 2)]
    for r in data["results"]:
        assert "error" not in r, r.get("traceback")
        assert r["frames"] == 2 and r["ms_per_frame"] > 0
        assert math.isclose(r["frames_per_s"], 1000.0 / r["ms_per_frame"], rel_tol=1e-9)
        assert set(r["stages_ms"]) == set(STAGES) and all(v > 0 for v in r["stages_ms"].values())
        # every timed frame's stages are inside its wall time
        for i, frame_ms in enumerate(r["samples_ms"]["frame"]):
            assert sum(r["samples_ms"][s][i] for s in STAGES) <= frame_ms
        assert len(r["samples_ms"]["frame"]) == 2
        assert r["mask_shape"] == [r["objects"], 1, 48, 64]
        assert r["peak_gpu_memory_gib"] is None  # CPU
    notes = {r["note"] for r in data["results"]}
    assert notes == {None, "autocast-fp16 requested on CPU: ran bfloat16 autocast instead"}


def test_the_configuration_and_machine_are_recorded(report, tiny_checkpoints):
    data, stdout = report
    c = data["config"]
    assert c["device"] == "cpu" and data["machine"]["device"] == "cpu"
    assert c["model"] == c["model_dir"] == str(tiny_checkpoints.sam)
    assert (c["objects"], c["frames"], c["warmup"], c["size_hw"]) == ([1, 2], 2, 6, [48, 64])
    assert c["num_maskmem"] == 7 and c["torch_threads"] == 1 and c["params_m"] > 0
    assert "tools.bench.torch_tracking" in data["command"]
    assert data["markdown"] in stdout
    assert "| eager-fp32 | 2 |" in stdout and "| autocast-bf16 | 1 |" in stdout


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--objects", "0"], "must be at least 1"),
    (["--modes", "eager-fp32,fp8"], "unknown mode fp8"),
    (["--size", "8x8"], "too small"),
    (["--frames", "x"], "not a whole number"),
    (["--arch", "hiera-large"], "invalid choice"),
    (["--arch", "hiera-tiny", "--model", "somewhere"], "not allowed with"),
    (["--model", "/nonexistent/sam2"], "has no config.json"),
])
def test_bad_flags_are_one_line_errors(baseline, one_error_line, flags, fragment):
    one_error_line(baseline(*flags, check=None), fragment)


def test_a_warmup_that_leaves_the_bank_part_empty_is_refused(baseline, one_error_line, tiny_checkpoints):
    r = baseline("--device", "cpu", "--model", tiny_checkpoints.sam, "--warmup", "5", check=None)
    one_error_line(r, "use --warmup 6 or more")
