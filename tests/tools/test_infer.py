"""owlsam-detect (python -m tools.infer): SOWLv2's command line and output tree, detections.json, YAML config,
the output folder and device choices, and one-line errors."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _tensorrt import tensorrt_importable
from tools.outputs import PALETTE

ROOT = Path(__file__).resolve().parents[2]

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


# SOWLv2's expectations (its README and tests/integration/test_output_structure.py).
INDIVIDUAL = re.compile(r"\d{6}_obj\d+_.*_(mask|overlay)\.png")
MERGED_NAMES = {"binary": re.compile(r"\d{6}_merged_mask\.png"), "overlay": re.compile(r"\d{6}_merged_overlay\.png")}


def check_sowlv2_tree(out: Path, binary=True, overlay=True, merged=True) -> None:
    """SOWLv2's validate_output_structure, plus: no empty folder anywhere, names as its README."""
    for kind, enabled in (("binary", binary), ("overlay", overlay)):
        if not enabled:
            assert not (out / kind).exists(), kind
            continue
        frames = list((out / kind / "frames").iterdir())
        assert frames and all(INDIVIDUAL.fullmatch(p.name) and p.name.endswith(
            "_mask.png" if kind == "binary" else "_overlay.png") for p in frames), frames
        if merged:
            names = [p.name for p in (out / kind / "merged").iterdir()]
            assert len(names) == 1 and MERGED_NAMES[kind].fullmatch(names[0]), names
        else:
            assert not (out / kind / "merged").exists()
    for d in out.rglob("*"):
        if d.is_dir():
            assert any(d.iterdir()), f"empty folder {d}"


def test_single_image_writes_sowlv2_layout_and_coco_results(infer, tiny_artifact, photo, pipe, tmp_path):
    path, image = photo
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", path, "--prompt", *PROMPTS, "--output", out)
    assert "info:" in r.stderr and "backend onnxruntime, precision fp32" in r.stderr
    expected = pipe.predict(image, PROMPTS)
    n = len(expected)
    assert n > 1 and set(expected.labels.tolist()) == {0, 1}
    check_sowlv2_tree(out)
    slugs = ["cat", "red_car"]
    names = [f"000001_obj{k}_{slugs[label]}" for k, label in enumerate(expected.labels, 1)]  # obj1 first, as README
    assert sorted(p.name for p in (out / "binary" / "frames").iterdir()) == sorted(f"{s}_mask.png" for s in names)
    assert sorted(p.name for p in (out / "overlay" / "frames").iterdir()) == sorted(f"{s}_overlay.png" for s in names)
    # SOWLv2's palette, handed to prompts in the order they are first detected
    first_seen = list(dict.fromkeys(expected.labels.tolist()))
    color = {label: PALETTE[first_seen.index(label)] for label in first_seen}
    for name, mask, label in zip(names, expected.masks, expected.labels):
        png = read_png(out / "binary" / "frames" / f"{name}_mask.png")
        assert png.dtype == np.uint8 and png.shape == mask.shape and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, mask)
        overlay = read_png(out / "overlay" / "frames" / f"{name}_overlay.png")
        np.testing.assert_array_equal(overlay[~mask], image[~mask])
        sowlv2 = (0.5 * image[mask] + 0.5 * np.array(color[label], np.uint8)).astype(np.uint8)  # its formula
        np.testing.assert_array_equal(overlay[mask], sowlv2)
    merged = read_png(out / "binary" / "merged" / "000001_merged_mask.png")
    np.testing.assert_array_equal(merged == 255, expected.masks.any(axis=0))
    merged_overlay = read_png(out / "overlay" / "merged" / "000001_merged_overlay.png")
    sequential = image.copy()  # SOWLv2 blends each mask in turn onto the previous result
    for mask, label in zip(expected.masks, expected.labels):
        sequential[mask] = (0.5 * sequential[mask] + 0.5 * np.array(color[label], np.uint8)).astype(np.uint8)
    np.testing.assert_array_equal(merged_overlay, sequential)

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


def test_folder_with_odd_names_gets_a_sub_folder_per_image(infer, tiny_artifact, tmp_path, make_image, pipe):
    folder = tmp_path / "in"
    folder.mkdir()
    images = {"My Photo.JPG": make_image(60, 90, seed=40), "UPPER.PNG": make_image(70, 50, seed=41),
              "0042.png": make_image(64, 64, seed=42), "a.png": make_image(40, 40, seed=43),
              "A.bmp": make_image(40, 40, seed=44)}
    for name, im in images.items():
        Image.fromarray(im).save(folder / name, format="JPEG" if name.endswith("JPG") else None, quality=95)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", folder, "--prompt", "cat", "--output", out, "--threshold", "0")
    assert "notes.txt" in r.stderr and "5 images" in r.stderr
    # SOWLv2: one sub-folder per image, named by its stem in lower case; a number as the frame number
    assert sorted(p.name for p in out.iterdir()) == ["0042", "a_bmp", "a_png", "detections.json", "my photo", "upper"]
    for sub, frame in (("my photo", "000001"), ("upper", "000001"), ("0042", "000042"), ("a_png", "000001")):
        check_sowlv2_tree(out / sub)
        assert (out / sub / "binary" / "merged" / f"{frame}_merged_mask.png").is_file()
        assert read_png(out / sub / "binary" / "frames" / f"{frame}_obj1_cat_mask.png").shape == (
            (40, 40) if sub == "a_png" else read_png(out / sub / "binary" / "merged" / f"{frame}_merged_mask.png").shape)
    rows = json.loads((out / "detections.json").read_text())
    assert {row["file_name"] for row in rows} == set(images)
    assert sorted({row["image_id"] for row in rows}) == [1, 2, 3, 4, 5]


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
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "sub").mkdir()
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", folder, "--prompt", "cat", "--output", out,
              "--threshold", "0", check=1)
    warnings = [line for line in r.stderr.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 1 and "corrupt.jpg" in warnings[0]
    assert not any(line.startswith("error:") for line in r.stderr.splitlines())
    assert "7 images" in r.stderr and "1 skipped" in r.stderr
    for stem, hw in sizes.items():
        assert read_png(out / stem / "binary" / "merged" / "000001_merged_mask.png").shape == hw, stem
        assert (out / stem / "overlay" / "merged" / "000001_merged_overlay.png").is_file()
        assert (out / stem / "binary" / "frames" / "000001_obj1_cat_mask.png").is_file(), stem
    assert not (out / "corrupt").exists()
    rows = json.loads((out / "detections.json").read_text())
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    assert {r["file_name"] for r in rows} == set(names) - {"corrupt.jpg"}
    for row in rows:
        assert row["segmentation"]["size"] == list(sizes[Path(row["file_name"]).stem])


@pytest.mark.parametrize("binary,overlay,merged", [(b, o, m) for b in (True, False) for o in (True, False)
                                                   for m in (True, False)])
def test_output_flags_as_sowlv2(tiny_artifact, photo, tmp_path, binary, overlay, merged):
    """SOWLv2's flag matrix through the console script's entry point (in-process)."""
    from tools.infer import cli

    out = tmp_path / "out"
    flags = [f for f, on in (("--no-binary", binary), ("--no-overlay", overlay), ("--no-merged", merged)) if not on]
    with pytest.raises(SystemExit) as e:
        cli(["--engines", str(tiny_artifact), "--input", str(photo[0]), "--prompt", "cat", "--output", str(out),
             *flags])
    assert e.value.code == 0
    check_sowlv2_tree(out, binary, overlay, merged)
    assert (out / "detections.json").is_file()
    if not (binary or overlay):
        assert not list(out.rglob("*.png"))


def test_console_script_is_declared():
    import tomllib

    from tools.infer import cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["owlsam-detect"] == "tools.infer:cli" and callable(cli)


def test_yaml_config_keys_and_precedence(infer, tiny_artifact, photo, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(  # SOWLv2's keys, hyphens and underscores, a single prompt as a string
        f"prompt: red car\ninput: '{photo[0]}'\noutput: {out}\nthreshold: 1.0\nmerged: false\nfps: 15\n"
        f"owl-model: google/owlv2-base-patch16-ensemble\nsam_model: facebook/sam2.1-hiera-small\ndevice: cpu\n")
    r = infer("--config", config, "--engines", tiny_artifact, "--threshold", "0.1", "--prompt", "cat")
    assert "is not what --engines" in r.stderr  # the file names models the engines folder was not exported from
    rows = json.loads((out / "detections.json").read_text())
    assert rows, "--threshold 0.1 on the command line beats threshold: 1.0 in the file"
    assert {row["prompt"] for row in rows} == {"cat"}, "--prompt on the command line beats the file's"
    assert not (out / "binary" / "merged").exists(), "merged: false from the file beats the default"

    from tools.infer import parse_args

    args = parse_args(["--config", str(config)])
    assert args.prompt == ["red car"] and args.threshold == 1.0 and args.fps == 15 and args.device == "cpu"
    assert args.output == str(out) and args.merged is False and args.binary is True
    defaults = parse_args(["--input", "x", "--prompt", "p"])
    assert (defaults.output, defaults.threshold, defaults.fps, defaults.device) == ("output", 0.1, 24, None)
    assert (defaults.owl_model, defaults.sam_model) == ("google/owlv2-base-patch16-ensemble",
                                                        "facebook/sam2.1-hiera-small")


def test_no_detections_write_no_files(infer, tiny_artifact, photo, tmp_path):
    out = tmp_path / "out"
    r = infer("--engines", tiny_artifact, "--input", photo[0], "--prompt", "cat", "--output", out, "--threshold", "1")
    assert "0 detections" in r.stderr
    assert out.is_dir() and not list(out.iterdir())


def test_existing_output_is_refused_or_replaced(infer, one_error_line, tiny_artifact, photo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    base = ["--engines", tiny_artifact, "--input", photo[0], "--prompt", "cat", "--output", out]
    one_error_line(infer(*base, check=None), "not empty", "mine.txt", "--overwrite")
    assert (out / "mine.txt").read_text() == "keep" and not list(tmp_path.glob(".out.*"))
    infer(*base, "--overwrite")
    assert not (out / "mine.txt").exists() and (out / "detections.json").is_file()
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_device_choice(infer, one_error_line, tiny_artifact, photo, tmp_path):
    base = ["--engines", tiny_artifact, "--input", photo[0], "--prompt", "cat"]
    r = infer(*base, "--output", tmp_path / "cpu", "--device", "cpu")
    assert "backend onnxruntime" in r.stderr
    one_error_line(infer(*base, "--output", tmp_path / "x", "--device", "cpu", "--backend", "tensorrt", check=None),
                   "--device cpu", "--backend tensorrt")
    try:
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        cuda = False
    if not cuda:
        one_error_line(infer(*base, "--output", tmp_path / "y", "--device", "cuda", check=None),
                       "--device cuda cannot be met", "TensorRT", "CUDA provider", "--device cpu")
    assert not (tmp_path / "y").exists()


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
    assert read_png(out / "binary" / "frames" / "000001_obj1_cat_mask.png").shape == (6000, 8000)


# Inputs whose names collide once turned into output names: a shared stem (a.jpg, a.png), a suffix
# spelled out by another file (a_png.jpg), a space that becomes "_" ("a b.jpg", a_b.jpg), and case,
# which some filesystems ignore (A.JPG).
CLASHING_NAMES = ["a.jpg", "a.png", "a_png.jpg", "a b.jpg", "a_b.jpg", "A.JPG", "b.png"]


def test_output_names_never_repeat():
    from tools.outputs import folder_names

    names = folder_names([Path("in") / n for n in CLASHING_NAMES])
    assert len({n.casefold() for n in names}) == len(CLASHING_NAMES), names
    assert names[-1] == "b", "a stem used once stays as it is"


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
    from runtime.manifest import load_manifest

    art = tmp_path_factory.mktemp("tampered") / "a"
    shutil.copytree(tiny_artifact, art)
    with open(load_manifest(art).onnxruntime_graph_path("owl_image", "fp32", verify=False), "ab") as f:
        f.write(b"\0")  # the file ONNX Runtime opens (its own flavour where the export wrote one)
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
        (["--engines", tiny_artifact, "--output", out, "--prompt", "cat"], ["missing --input"]),
        ([*base[:3], tmp_path / "nope.jpg", *base[4:], "--prompt", "cat"], ["nope.jpg", "does not exist"]),
        ([*base[:3], corrupt, *base[4:], "--prompt", "cat"], ["corrupt.png"]),
        ([*base[:3], video, *base[4:], "--prompt", "cat"], ["clip.mp4"]),
        ([*base, "--prompt", "cat", "--fps", "0"], ["--fps", "must be positive"]),
        ([*base, "--prompt", "cat", "--device", "tpu"], ["--device", "'tpu' is not one of cpu, cuda"]),
        ([*base[:5], a_file, "--prompt", "cat"], ["file.txt", "not a folder"]),
        (["--engines", tmp_path / "missing", *base[2:], "--prompt", "cat"], ["does not exist"]),
        (["--engines", tampered, *base[2:], "--prompt", "cat"], ["owl_image", "does not match the manifest"]),
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
    if tensorrt_importable():
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
