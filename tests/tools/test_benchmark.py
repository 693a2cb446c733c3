"""python -m tools.benchmark: per-stage JSON, markdown table and chart, PyTorch reference both ways,
targets computed from the measurements, loud skips and one-line errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from PIL import Image

from _tensorrt import tensorrt_importable

from runtime.profiling import PIPELINE_STAGES


@pytest.fixture(scope="module")
def benchmark(run_module):
    """``benchmark(*args, check=0)``: ``python -m tools.benchmark args`` (conftest's ``run_module``)."""
    return functools.partial(run_module, "tools.benchmark", timeout=600)


@pytest.fixture(scope="module")
def report(benchmark, tiny_artifact, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    benchmark("--engines", tiny_artifact, "--runs", "2", "--warmup", "1", "--prompts", "2", "--boxes", "3",
              "--prompt-sweep", "1", "3", "--threads", "1", "--out", out)
    return json.loads((out / "benchmark.json").read_text()), out


def test_every_stage_is_timed_for_the_runtime_and_both_pytorch_pipelines(report):
    data, _ = report
    by_name = {r["name"]: r for r in data["results"]}
    assert list(by_name) == ["onnxruntime fp32", "pytorch fair", "pytorch sowlv2"]
    assert data["stages"] == list(PIPELINE_STAGES)
    per_image_stages = [s for s in PIPELINE_STAGES if s != "owl_text"]
    for r in data["results"]:
        assert set(per_image_stages) <= set(r["stages_ms"]), r["name"]
        assert all(r["stages_ms"][s] > 0 for s in per_image_stages), (r["name"], r["stages_ms"])
        assert r["text_ms"] > 0
        assert r["images_per_s"] == pytest.approx(1000.0 / r["per_image_ms"])
        assert len(r["samples_ms"]) == 2  # runs x images
    ort = by_name["onnxruntime fp32"]
    # the stages are spans inside predict, run one after the other on ONNX Runtime
    assert sum(ort["stages_ms"].values()) <= ort["per_image_ms"] * 1.02 + 0.5
    assert not ort["text_per_image"] and by_name["pytorch sowlv2"]["text_per_image"]
    assert [len(b) for b in ort["boxes"].values()] == [3]  # exactly --boxes boxes decoded


def test_the_result_names_the_graph_files_and_the_environment(report):
    """Which file of each graph ran (ONNX Runtime's flavour where the artifact has one), and the CPU and
    package versions the numbers depend on."""
    data, _ = report
    ort = next(r for r in data["results"] if r["name"] == "onnxruntime fp32")
    assert ort["graph_files"]["owl_image"] == "owl_image.ort.onnx" and ort["graph_files"]["owl_head"] == "owl_head.onnx"
    machine = data["machine"]
    for pkg in ("torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime"):
        assert machine["packages"][pkg], pkg
    assert isinstance(machine["cpu"]["features"], list) and machine["cpu"]["model"]
    table = (report[1] / "benchmark.md").read_text()
    assert f"onnxruntime {machine['packages']['onnxruntime']}" in table and machine["cpu"]["model"] in table


def test_targets_follow_from_the_measurements(report):
    data, _ = report
    by_name = {r["name"]: r for r in data["results"]}
    t = data["targets"]
    ratio = by_name["onnxruntime fp32"]["images_per_s"] / by_name["pytorch fair"]["images_per_s"]
    assert t["onnxruntime_fp32_vs_pytorch_fair"]["value"] == pytest.approx(ratio)
    ort = by_name["onnxruntime fp32"]
    share = sum(ort["stages_ms"][s] for s in ("preprocess", "owl_head_post", "mask_post")) / ort["per_image_ms"]
    assert t["pre_post_share_onnxruntime_fp32"]["value"] == pytest.approx(share)
    sweep = t["prompt_sweep_difference"]["ms_per_image"]
    assert set(sweep) == {"1", "3"} and all(v > 0 for v in sweep.values())
    assert t["prompt_sweep_difference"]["value"] == pytest.approx(abs(sweep["3"] - sweep["1"]) / sweep["1"])
    assert t["onnxruntime_fp32_vs_pytorch_fair"]["passed"] == (ratio >= 1.5)
    assert t["pre_post_share_onnxruntime_fp32"]["passed"] == (share <= 0.10)


def test_target_lines_say_pass_or_fail_with_units():
    from tools.benchmark import _target, target_line

    assert target_line("speed", _target(1.62, ">=", 1.5, "x")) == "PASS speed: 1.62x (target >= 1.5x)"
    assert target_line("share", _target(0.123, "<=", 0.10, "%")) == "FAIL share: 12.3 % (target <= 10 %)"


def test_markdown_table_and_chart_are_written(report):
    data, out = report
    table = (out / "benchmark.md").read_text()
    assert "| stage (ms) | onnxruntime fp32 | pytorch fair | pytorch sowlv2 |" in table
    assert "| speed-up vs pytorch fair |" in table and "command: `" in table
    for key, t in data["targets"].items():
        assert f"- {'PASS' if t['passed'] else 'FAIL'} {key}: " in table
    for s in PIPELINE_STAGES:
        assert f"| {s}" in table
    with Image.open(out / "benchmark.png") as im:
        assert im.format == "PNG" and im.width >= 600 and im.height >= 200
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is importable here: nothing is skipped for its absence")
def test_a_missing_backend_is_skipped_loudly_with_its_reason(report):
    data, _ = report
    assert any(s.startswith("tensorrt: ") and "tensorrt is not importable" in s for s in data["skipped"]), data["skipped"]


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is importable here")
def test_a_requested_backend_that_cannot_run_is_an_error(benchmark, one_error_line, tiny_artifact, tmp_path):
    r = benchmark("--engines", tiny_artifact, "--backends", "tensorrt", "--precisions", "fp32", "--torch", "off",
                  "--out", tmp_path, check=None)
    one_error_line(r, "cannot benchmark tensorrt fp32: backend tensorrt was requested but tensorrt is not importable")
    assert not list(tmp_path.iterdir())


def test_bad_input_is_one_line(benchmark, one_error_line, tiny_artifact, tmp_path):
    r = benchmark("--engines", tmp_path / "nope", "--torch", "off", "--out", tmp_path / "o", check=None)
    one_error_line(r, "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = benchmark("--engines", tiny_artifact, "--images", empty, "--torch", "off", "--out", tmp_path / "o", check=None)
    one_error_line(r, f"--images {empty}: no readable images")
    r = benchmark("--engines", tiny_artifact, "--runs", "0", check=None)
    one_error_line(r, "--runs: 0 must be at least 1")
    r = benchmark("--engines", tiny_artifact, "--precisions", "int8", "--backends", "onnxruntime", "--torch", "off",
                  "--out", tmp_path / "o", check=None)
    one_error_line(r, "cannot benchmark onnxruntime int8", "has no int8 graphs")
    assert not (tmp_path / "o").exists()


def test_a_folder_of_images_of_any_size_with_a_bad_file(benchmark, tiny_artifact, make_image, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_image(120, 200, seed=3)).save(images / "a.png")
    Image.fromarray(make_image(90, 60, seed=4)).save(images / "b.jpg")
    (images / "c.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    r = benchmark("--engines", tiny_artifact, "--images", images, "--runs", "2", "--warmup", "0", "--boxes", "2",
                  "--torch", "off", "--prompt-sweep", "--no-chart", "--out", out)
    assert "skipped: " in r.stderr and "c.png" in r.stderr
    data = json.loads((out / "benchmark.json").read_text())
    assert data["config"]["image_sizes"] == ["200x120", "60x90"]
    (ort,) = data["results"]
    assert len(ort["samples_ms"]) == 4 and set(ort["boxes"]) == {"a.png", "b.jpg"}
    assert "prompt_sweep_difference" not in data["targets"] and not (out / "benchmark.png").exists()
