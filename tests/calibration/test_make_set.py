"""``python -m calibration.make_set``: a calibration folder from a video or an image folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calibration.images import read_calibration_images
from calibration.make_set import make_set
from runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_from_a_folder_copies_readable_images_spread_over_it(tmp_path, make_image):
    src = tmp_path / "photos"
    (src / "day2").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(make_image(50, 70, seed=i)).save(src / ("day2" if i >= 3 else "") / f"p{i}.jpg")
    (src / "broken.png").write_text("nope")
    files = make_set(src, tmp_path / "calib", count=4, progress=False)
    assert len(files) == 4 and all(f.parent == tmp_path / "calib" for f in files)
    assert sorted(p.name for p in (tmp_path / "calib").iterdir()) == sorted(f.name for f in files)
    originals = {f.read_bytes() for f in src.rglob("*.jpg")}
    assert all(f.read_bytes() in originals for f in files)  # copied byte for byte
    assert len(read_calibration_images(tmp_path / "calib", count=4, progress=False)) == 4


def test_from_a_video_takes_frames_spread_over_it(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    container = av.open(str(video), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(25):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    files = make_set(video, tmp_path / "frames", count=4, progress=False)
    assert [f.name for f in files] == ["frame_000000.png", "frame_000008.png", "frame_000016.png", "frame_000024.png"]
    levels = [np.asarray(Image.open(f)).mean() for f in files]
    assert levels == sorted(levels) and levels[-1] - levels[0] > 150  # frames from the start to the end


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calibration.make_set", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing", "garbage video", "single image", "out not empty"])
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, make_image, case):
    out = tmp_path / "out"
    if case == "missing":
        source, fragment = tmp_path / "nope.mp4", "does not exist"
    elif case == "garbage video":
        pytest.importorskip("av")
        source, fragment = tmp_path / "clip.mp4", "not a readable video"
        source.write_text("not a video")
    elif case == "single image":
        source, fragment = tmp_path / "one.png", "single image"
        Image.fromarray(make_image(20, 20)).save(source)
    else:
        source, fragment = tmp_path / "imgs", "is not empty"
        source.mkdir()
        Image.fromarray(make_image(20, 20)).save(source / "a.png")
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    r = run("--from", str(source), "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr
    if case == "out not empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_make_set_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="at least 1"):
        make_set(tmp_path, tmp_path / "o", count=0)
