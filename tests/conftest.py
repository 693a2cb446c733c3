"""Shared fixtures: tiny random checkpoints and one FP32 artifact built from them, per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.synthetic import synthetic_image


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    from tools.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoints, tmp_path_factory) -> Path:
    """An engines directory exported with ``python -m export.build`` (in-process) on the tiny models."""
    from export.build import main

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--engines", "skip"])
    return out


@pytest.fixture(scope="session")
def tiny_video_artifact(tiny_checkpoints, tmp_path_factory) -> Path:
    """Like ``tiny_artifact``, exported with ``--video``: every graph, SAM2's memory modules included."""
    from export.build import main

    out = tmp_path_factory.mktemp("video_artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--video", "--engines", "skip"])
    return out


#: Sizes of the generated calibration images (JPEG and PNG alternating): any size, any aspect.
CALIBRATION_IMAGE_SIZES = ((480, 640), (640, 480), (300, 300), (720, 1280), (200, 500), (500, 200))


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """Six generated calibration images (no downloaded data)."""
    from PIL import Image

    out = tmp_path_factory.mktemp("calibration") / "images"
    out.mkdir()
    for i, (h, w) in enumerate(CALIBRATION_IMAGE_SIZES):
        Image.fromarray(synthetic_image(h, w, seed=100 + i)).save(out / f"calib_{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    return out


@pytest.fixture(scope="session")
def tiny_precision_artifact(tiny_checkpoints, calibration_dir, tmp_path_factory) -> Path:
    """An engines directory exported with ``--fp16 --int8 --calib-dir`` on the tiny models."""
    from export.build import main

    out = tmp_path_factory.mktemp("precision_artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--fp16", "--int8", "--calib-dir", str(calibration_dir),
          "--calib-count", "6", "--engines", "skip"])
    return out


@pytest.fixture(scope="session")
def tiny_video_precision_artifact(tiny_checkpoints, calibration_dir, tmp_path_factory) -> Path:
    """An engines directory exported with ``--fp16 --int8 --video --calib-dir``: every graph at every
    precision, SAM2's memory modules calibrated on clips the FP32 tracker runs over the images."""
    from export.build import main

    out = tmp_path_factory.mktemp("video_precision_artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--fp16", "--int8", "--video", "--calib-dir", str(calibration_dir),
          "--calib-count", "6", "--engines", "skip"])
    return out


@pytest.fixture(scope="session")
def make_image():
    return synthetic_image
