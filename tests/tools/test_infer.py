"""python -m tools.infer: SOWLv2's layout, detections.json, flags, YAML config, and one-line errors."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.outputs import PALETTE

PROMPTS = ["cat", "red car"]

# pycocotools 2.0.x under numpy 2: a DeprecationWarning about __array__(copy=...) per call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def infer(run_module):
    """``infer(*args, check=0)``: ``python -m tools.infer args`` (conftest's ``run_module``)."""
    return functools.partial(run_module, "tools.infer")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def photo(tmp_path_factory, make_image) -> tuple[Path, np.ndarray]:
    """A lossless RGB image with a space in its name (SOWLv2 writes it with an underscore)."""
    image = make_image(180, 240, seed=31)
    path = tmp_path_factory.mktemp("in") / "street scene.png"
    Image.fromarray(image).save(path)
    return path, image


@pytest.fixture(scope="module")
def pipe(tiny_artifact):
    from runtime import Pipeline

    with Pipeline.load(tiny_artifact, backend="onnxruntime") as p:
        yield p


def test_single_image_writes_sowlv2_layout_and_coco_results(infer, tiny_artifact, photo, pipe, tmp_path):
    path, image = photo
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", path, "--prompt", *PROMPTS, "--output", out)
    assert "info:" in r.stderr and "backend onnxruntime, precision fp32" in r.stderr
    expected = pipe.predict(image, PROMPTS)
    n = len(expected)
    assert n > 1
    slugs = ["cat", "red_car"]
    names = [f"street_scene_obj{i}_{slugs[label]}" for i, label in enumerate(expected.labels)]
    assert sorted(p.name for p in (out / "binary" / "frames").iterdir()) == sorted(f"{s}_mask.png" for s in names)
    assert sorted(p.name for p in (out / "overlay" / "frames").iterdir()) == sorted(f"{s}_overlay.png" for s in names)
    assert [p.name for p in (out / "binary" / "merged").iterdir()] == ["street_scene_merged_mask.png"]
    assert [p.name for p in (out / "overlay" / "merged").iterdir()] == ["street_scene_merged_overlay.png"]

    for name, mask, label in zip(names, expected.masks, expected.labels):
        png = read_png(out / "binary" / "frames" / f"{name}_mask.png")
        assert png.dtype == np.uint8 and png.shape == mask.shape and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, mask)
        overlay = read_png(out / "overlay" / "frames" / f"{name}_overlay.png")
        np.testing.assert_array_equal(overlay[~mask], image[~mask])
        blended = (image[mask].astype(np.uint16) + np.array(PALETTE[label])) // 2
        np.testing.assert_array_equal(overlay[mask], blended)
    merged = read_png(out / "binary" / "merged" / "street_scene_merged_mask.png")
    np.testing.assert_array_equal(merged == 255, expected.masks.any(axis=0))
    merged_overlay = read_png(out / "overlay" / "merged" / "street_scene_merged_overlay.png")
    untouched = ~expected.masks.any(axis=0)
    np.testing.assert_array_equal(merged_overlay[untouched], image[untouched])
    assert not np.array_equal(merged_overlay, image)

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    rows = json.loads((out / "detections.json").read_text())
    assert len(rows) == n
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 180, "width": 240, "file_name": path.name}],
                  "categories": [{"id": i + 1, "name": p} for i, p in enumerate(PROMPTS)], "annotations": []}
    gt.createIndex()
    dt = gt.loadRes(str(out / "detections.json"))
    assert len(dt.getAnnIds()) == n
    for row, box, score, label, mask in zip(rows, expected.boxes, expected.scores, expected.labels, expected.masks):
        assert row["image_id"] == 1 and row["file_name"] == path.name
        assert row["category_id"] == label + 1 and row["prompt"] == PROMPTS[label]
        assert row["score"] == pytest.approx(float(score), abs=1e-6)
        x0, x1 = np.clip(box[0::2], 0, 240)
        y0, y1 = np.clip(box[1::2], 0, 180)
        assert row["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-2)
        np.testing.assert_array_equal(mask_utils.decode(row["segmentation"]).astype(bool), mask)


def _write_mode_images(folder: Path, make_image) -> dict[str, tuple[int, int]]:
    """One file per kind users have, and the upright (H, W) each should come out with."""
    rgb = make_image(60, 90, seed=32)
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(folder / "rotated.jpg", quality=95, exif=exif)
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(folder / "dot.png")
    return {"gray": (60, 90), "alpha": (60, 90), "palette": (60, 90), "gray16": (60, 90),
            "cmyk": (60, 90), "rotated": (90, 60), "dot": (1, 1)}


def test_folder_of_every_kind_with_bad_files_reported_and_skipped(infer, tiny_artifact, tmp_path, make_image):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = _write_mode_images(folder, make_image)
    good = folder / "cmyk.jpg"
    (folder / "corrupt.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", folder, "--prompt", "cat", "--output", out,
              "--threshold", "0", check=1)
    warnings = [line for line in r.stderr.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 2 and any("corrupt.jpg" in w for w in warnings) and any("notes.txt" in w for w in warnings)
    assert not any(line.startswith("error:") for line in r.stderr.splitlines())
    assert "7 images" in r.stderr and "2 skipped" in r.stderr
    for stem, hw in sizes.items():
        merged = read_png(out / "binary" / "merged" / f"{stem}_merged_mask.png")
        assert merged.shape == hw, stem
        assert (out / "overlay" / "merged" / f"{stem}_merged_overlay.png").is_file()
        assert list((out / "binary" / "frames").glob(f"{stem}_obj0_cat_mask.png")), stem
    rows = json.loads((out / "detections.json").read_text())
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    assert {r["file_name"] for r in rows} == set(names) - {"corrupt.jpg", "notes.txt"}
    for row in rows:
        assert names[row["image_id"] - 1] == row["file_name"]
        assert row["segmentation"]["size"] == list(sizes[Path(row["file_name"]).stem])


@pytest.mark.parametrize("flags,present,absent", [
    (["--no-merged"], ["binary/frames", "overlay/frames"], ["binary/merged", "overlay/merged"]),
    (["--no-binary"], ["overlay/frames", "overlay/merged"], ["binary"]),
    (["--no-overlay", "--no-merged"], ["binary/frames"], ["overlay", "binary/merged"]),
])
def test_output_flags(tiny_artifact, photo, tmp_path, flags, present, absent):
    from tools.infer import main

    out = tmp_path / "out"
    assert main(["--engines", str(tiny_artifact), "--input", str(photo[0]), "--prompt", "cat", "--output", str(out),
                 *flags]) == 0
    for rel in present:
        assert any((out / rel).iterdir()), rel
    for rel in absent:
        assert not (out / rel).exists(), rel
    assert (out / "detections.json").is_file()


def test_yaml_config_with_command_line_precedence(infer, tiny_artifact, photo, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"engines: {tiny_artifact}\ninput: '{photo[0]}'\nprompt: [cat, red car]\noutput: {out}\n"
        "threshold: 1.0\nmerged: false\nowl_model: google/owlv2-base-patch16-ensemble\ndevice: cuda\n")
    r = infer("--config", config, "--threshold", "0.1")
    assert "'owl_model' is ignored" in r.stderr and "'device' is ignored" in r.stderr
    rows = json.loads((out / "detections.json").read_text())
    assert len(rows) > 0, "--threshold 0.1 on the command line beats threshold: 1.0 in the file"
    assert {row["prompt"] for row in rows} <= set(PROMPTS)
    assert not (out / "binary" / "merged").exists(), "merged: false from the file applies"


def test_zero_detections_still_write_outputs(infer, tiny_artifact, photo, tmp_path):
    path, image = photo
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", path, "--prompt", "cat", "--output", out, "--threshold", "1")
    assert "0 detections" in r.stderr
    assert json.loads((out / "detections.json").read_text()) == []
    assert not read_png(out / "binary" / "merged" / "street_scene_merged_mask.png").any()
    np.testing.assert_array_equal(read_png(out / "overlay" / "merged" / "street_scene_merged_overlay.png"), image)
    assert list((out / "binary" / "frames").iterdir()) == []


def test_long_prompt_is_truncated_with_a_warning(infer, tiny_artifact, photo, tmp_path):
    long = " ".join(["red car"] * 12)
    r = infer("--engines", tiny_artifact, "--input", photo[0], "--prompt", long, "--output", tmp_path / "o")
    assert any(line.startswith("warning:") and "truncated" in line for line in r.stderr.splitlines()), r.stderr


def test_large_image(infer, tiny_artifact, tmp_path, make_image):
    big = tmp_path / "big.jpg"
    Image.fromarray(make_image(600, 800, seed=33)).resize((8000, 6000), Image.NEAREST).save(big, quality=80)
    out = tmp_path / "out"
    infer("--engines", tiny_artifact, "--input", big, "--prompt", "cat", "--output", out,
          "--threshold", "0", "--max-detections", "1", "--no-overlay")
    assert read_png(out / "binary" / "frames" / "big_obj0_cat_mask.png").shape == (6000, 8000)


# Inputs whose names collide once turned into output names: a shared stem (a.jpg, a.png), a suffix
# spelled out by another file (a_png.jpg), a space that becomes "_" ("a b.jpg", a_b.jpg), and case,
# which some filesystems ignore (A.JPG).
CLASHING_NAMES = ["a.jpg", "a.png", "a_png.jpg", "a b.jpg", "a_b.jpg", "A.JPG", "b.png"]


def test_output_names_never_repeat():
    from tools.infer import unique_stems

    names = unique_stems([Path("in") / n for n in CLASHING_NAMES])
    assert len({n.casefold() for n in names}) == len(CLASHING_NAMES), names
    assert names[-1] == "b", "a stem used once stays as it is"
    assert all(" " not in n for n in names)


def test_inputs_sharing_a_stem_get_their_own_outputs(infer, tiny_artifact, tmp_path, make_image):
    """Each input of a folder whose names clash gets its own merged mask (told apart by its size)."""
    folder = tmp_path / "in"
    folder.mkdir()
    # sizes all different, so that an output overwritten by another input's shows
    sizes = {name: (40 + 7 * i, 90 - 5 * i) for i, name in enumerate(CLASHING_NAMES)}
    for i, (name, hw) in enumerate(sizes.items()):
        Image.fromarray(make_image(*hw, seed=40 + i)).save(folder / name, format="PNG" if name.endswith("png") else "JPEG")
    out = tmp_path / "out"
    infer("--engines", tiny_artifact, "--input", folder, "--prompt", "cat", "--output", out, "--threshold", "0",
          "--max-detections", "1", "--no-overlay")
    merged = sorted(out.rglob("*merged_mask.png"))
    assert len(merged) == len(CLASHING_NAMES), [p.relative_to(out) for p in merged]
    assert sorted(read_png(p).shape for p in merged) == sorted(sizes.values())
    frames = [p for p in out.rglob("*_mask.png") if p not in merged]
    assert sorted(read_png(p).shape for p in frames) == sorted(sizes.values()), "one object per image, each kept"
    rows = json.loads((out / "detections.json").read_text())
    assert sorted(r["file_name"] for r in rows) == sorted(CLASHING_NAMES)


# ---------------------------------------------------------------------------------------------
# One-line errors, exit status 2, never a traceback.


@pytest.fixture(scope="module")
def tampered(tiny_artifact, tmp_path_factory) -> Path:
    art = tmp_path_factory.mktemp("tampered") / "a"
    shutil.copytree(tiny_artifact, art)
    with open(art / "owl_image.onnx", "ab") as f:
        f.write(b"\0")
    return art


def test_bad_inputs_are_one_line_errors(infer, one_error_line, tiny_artifact, photo, tampered, tmp_path):
    img = photo[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 16)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("prompt: [cat\n")
    unknown_key = tmp_path / "unknown.yaml"
    unknown_key.write_text("prompts: cat\n")
    out = tmp_path / "out"
    base = ["--engines", tiny_artifact, "--input", img, "--output", out]
    cases = [
        ([*base, "--prompt"], ["--prompt", "expected at least one argument"]),
        ([*base, "--prompt", ""], ["prompt 0 is empty"]),
        (["--input", img, "--prompt", "cat", "--output", out], ["missing --engines"]),
        ([*base[:3], tmp_path / "nope.jpg", *base[4:], "--prompt", "cat"], ["nope.jpg", "does not exist"]),
        ([*base[:3], corrupt, *base[4:], "--prompt", "cat"], ["corrupt.png"]),
        ([*base[:3], video, *base[4:], "--prompt", "cat"], ["clip.mp4"]),
        ([*base[:5], a_file, "--prompt", "cat"], ["file.txt", "not a folder"]),
        (["--engines", tmp_path / "missing", *base[2:], "--prompt", "cat"], ["does not exist"]),
        (["--engines", tampered, *base[2:], "--prompt", "cat"], ["owl_image.onnx", "does not match the manifest"]),
        ([*base, "--prompt", "cat", "--precision", "fp16"], ["has no fp16 graphs", "fp32"]),
        ([*base, "--prompt", "cat", "--threshold", "2"], ["--threshold", "not in [0, 1]"]),
        ([*base, "--prompt", "cat", "--backend", "cuda"], ["--backend"]),
        ([*base, "--prompt", "cat", "--config", bad_yaml], ["bad.yaml", "not valid YAML"]),
        ([*base, "--prompt", "cat", "--config", unknown_key], ["unknown option 'prompts'"]),
    ]
    for args, needles in cases:
        one_error_line(infer(*args, check=None), *needles)
    assert not (out / "detections.json").exists()


def test_tensorrt_requested_without_tensorrt(infer, one_error_line, tiny_artifact, photo, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is importable here")
    r = infer("--engines", tiny_artifact, "--input", photo[0], "--prompt", "cat", "--output", tmp_path / "o",
              "--backend", "tensorrt", check=None)
    one_error_line(r, "backend tensorrt was requested but tensorrt is not importable")


@pytest.mark.parametrize("engine_gpu,engine_trt,needles", [
    (("NVIDIA L4", (8, 9)), "10.9.0", ["NVIDIA L4 (sm89)", "NVIDIA H100 (sm90)"]),
    (("NVIDIA H100", (9, 0)), "10.3.0", ["TensorRT 10.3.0", "TensorRT 10.9.0"]),
])
def test_artifact_from_another_gpu_or_tensorrt_version(tiny_artifact, photo, tmp_path, monkeypatch, capsys,
                                                       engine_gpu, engine_trt, needles):
    """In-process (the probes are replaced), through the same run_cli entry point as the command."""
    import runtime.pipeline as pl
    from runtime.backends.tensorrt import DeviceInfo, engine_file_name
    from runtime.errors import run_cli
    from runtime.manifest import sha256_file
    from tools.infer import main

    art = tmp_path / "a"
    shutil.copytree(tiny_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    gpu = DeviceInfo(*engine_gpu)
    engines = {}
    for graph in ("owl_text", "owl_image", "owl_head", "sam2_image", "sam2_decoder"):
        name = engine_file_name(graph, "fp32", gpu.slug)
        (art / name).write_bytes(b"engine")
        engines[graph] = {"fp32": {gpu.slug: {
            "file": name, "sha256": sha256_file(art / name), "bytes": 6, "precision": "fp32", "tensorrt": engine_trt,
            "gpu": {"name": gpu.name, "compute_capability": "%d.%d" % gpu.compute_capability}, "profiles": {}}}}
    manifest["engines"] = engines
    (art / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(pl, "tensorrt_version", lambda: ("10.9.0", ""))
    monkeypatch.setattr(pl, "cuda_device", lambda: (DeviceInfo("NVIDIA H100", (9, 0)), ""))
    monkeypatch.setattr(pl, "_tensorrt_opener", lambda: (lambda m, p: pytest.fail("opened"), ""))
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--engines", str(art), "--input", str(photo[0]), "--prompt", "cat",
                       "--output", str(tmp_path / "o"), "--backend", "tensorrt"])
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    for n in needles:
        assert n in errors[0], errors[0]
