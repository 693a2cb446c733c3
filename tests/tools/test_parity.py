"""python -m tools.parity on the tiny artifacts: PASS with exit 0 and a JSON report, FAIL with exit 1 on
a perturbed graph (and in the stage it belongs to), one-line errors for bad input."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tensorrt import tensorrt_importable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parity(run_module):
    """``parity(*args, check=0)``: ``python -m tools.parity args`` (conftest's ``run_module``)."""
    return functools.partial(run_module, "tools.parity", timeout=600)


def scaled_graph_copy(src: Path, dst: Path, graph: str, factor: float) -> Path:
    """A copy of the artifact ``src`` whose FP32 ``graph`` as ONNX Runtime runs it (its own flavour where
    the export wrote one) has every float weight scaled by ``factor``, the manifest's record of the file
    updated (so that only parity can tell)."""
    import onnx
    from onnx import numpy_helper

    from export.artifact import file_record, write_json
    from runtime.manifest import MANIFEST_NAME, load_manifest

    shutil.copytree(src, dst)
    manifest = load_manifest(dst)
    path = manifest.onnxruntime_graph_path(graph, "fp32", verify=False)
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            t.CopyFrom(numpy_helper.from_array(a * np.float32(factor), t.name))
    onnx.save(model, str(path))
    entry = manifest.onnxruntime_entry(graph, "fp32") or manifest.data["graphs"][graph]["files"]["fp32"]
    entry["files"] = [file_record(dst, path)]
    write_json(dst / MANIFEST_NAME, manifest.data)
    return dst


@pytest.fixture(scope="module")
def report(parity, tiny_artifact, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("parity") / "report.json"
    r = parity("--engines", tiny_artifact, "--backend", "onnxruntime", "--threads", "1", "--json", out)
    return json.loads(out.read_text()), r.stdout


def test_the_fp32_artifact_passes_every_stage(report):
    data, stdout = report
    assert data["passed"] is True and list(data["results"]) == ["fp32"]
    fp32 = data["results"]["fp32"]
    assert fp32["backend"] == "onnxruntime" and fp32["passed"]
    assert set(fp32["stages"]) == {"owl_text", "detection", "segmentation", "pipeline"}
    assert all(s["passed"] for s in fp32["stages"].values())
    assert fp32["stages"]["owl_text"]["min_cosine"] >= 0.9999
    for stage in ("detection", "pipeline"):
        d = fp32["stages"][stage]
        assert d["reference"] > 0 and d["matched"] == d["reference"] and d["missing"] == d["extra"] == 0
        assert d["min_box_iou"] >= 0.99 and d["max_score_error"] <= 1e-3
    for stage in ("segmentation", "pipeline"):
        m = fp32["stages"][stage]
        assert m["masks"] == fp32["stages"]["detection"]["reference"] and m["min_mask_iou"] >= 0.99
    assert [i["size_hw"] for i in data["images"]] == [[480, 640], [640, 480], [333, 500]]
    assert data["threshold"] == 0.1 and data["prompts"] == ["cat", "dog", "person", "red car", "bird"]
    assert sorted(s.split(":")[0] for s in data["skipped"]) == ["fp16", "int8"]  # the artifact has FP32 only
    assert "| fp32 | owl_text |" in stdout and "**FAIL**" not in stdout and stdout.count("PASS") == 4


def test_a_perturbed_decoder_fails_in_the_segmentation_stage(parity, tiny_artifact, tmp_path):
    perturbed = scaled_graph_copy(tiny_artifact, tmp_path / "perturbed", "sam2_decoder", 1.5)
    out = tmp_path / "report.json"
    r = parity("--engines", perturbed, "--precision", "fp32", "--threads", "1", "--json", out, check=1)
    data = json.loads(out.read_text())
    stages = data["results"]["fp32"]["stages"]
    assert data["passed"] is False and "FAIL" in r.stderr and "**FAIL**" in r.stdout
    assert stages["owl_text"]["passed"] and stages["detection"]["passed"]
    assert not stages["segmentation"]["passed"] and stages["segmentation"]["min_mask_iou"] < 0.99
    assert not stages["pipeline"]["passed"]


def test_fp16_graphs_on_a_folder_of_images(parity, tiny_precision_artifact, make_image, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_image(480, 640, seed=11)).save(images / "a.png")
    Image.fromarray(make_image(333, 500, seed=13)).save(images / "b.jpg", quality=95)
    (images / "c.png").write_bytes(b"not a png")
    out = tmp_path / "report.json"
    r = parity("--engines", tiny_precision_artifact, "--images", images, "--precision", "fp16", "--threads", "1",
               "--json", out)
    data = json.loads(out.read_text())
    assert "skipped: " in r.stderr and "c.png" in r.stderr
    assert [i["name"] for i in data["images"]] == ["a.png", "b.jpg"]
    fp16 = data["results"]["fp16"]
    assert data["passed"] and fp16["acceptance"]["min_box_iou"] == 0.95 and fp16["acceptance"]["min_mask_iou"] == 0.97
    assert fp16["stages"]["detection"]["reference"] > 0 and fp16["stages"]["segmentation"]["masks"] > 0


def test_bad_input_is_one_line(parity, one_error_line, tiny_artifact, tiny_checkpoints, tmp_path):
    out = tmp_path / "report.json"
    one_error_line(parity("--engines", tmp_path / "nope", "--json", out, check=None), "nope", "does not exist")
    one_error_line(parity("--engines", tiny_artifact, "--precision", "int8", "--json", out, check=None),
                   "has no int8 graphs")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(parity("--engines", tiny_artifact, "--images", empty, "--json", out, check=None),
                   f"--images {empty}: no readable images")
    one_error_line(parity("--engines", tiny_artifact, "--threshold", "2", "--json", out, check=None),
                   "--threshold must be in [0, 1]")
    if not tensorrt_importable():
        one_error_line(parity("--engines", tiny_artifact, "--backend", "tensorrt", "--json", out, check=None),
                       "backend tensorrt was requested but tensorrt is not importable")
    other = tmp_path / "other-owl"
    shutil.copytree(tiny_checkpoints.owl, other)
    config = json.loads((other / "config.json").read_text())
    config["initializer_factor"] = 2.0  # another model as far as the config says
    (other / "config.json").write_text(json.dumps(config))
    one_error_line(parity("--engines", tiny_artifact, "--owl-model", other, "--json", out, check=None),
                   f"{other} is not the checkpoint", "--owl-model")
    assert not out.exists()
