"""SOWLv2's video outputs: per-object and merged mask/overlay videos, per-frame PNGs, tracks.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.tracker import TrackedFrame, mask_boxes
from runtime.video_io import VideoReadError, open_frames
from tools.outputs import OutputOptions
from tools.bench.synthetic import MovingShapes
from tools.video_outputs import VideoOutputs, run_video, write_video_outputs

av = pytest.importorskip("av")


def fake_results(n: int, h: int = 33, w: int = 47):
    """Object 1 from frame 0, object 2 (label 1) from frame 2, absent on frame 3."""
    video = MovingShapes(n, h, w, seed=0)
    for t in range(n):
        ids = [1] if t < 2 else [1, 2]
        masks = np.zeros((len(ids), h, w), bool)
        masks[0, 2:10, 3 + t : 12 + t] = True
        scores = np.ones(len(ids), np.float32)
        if len(ids) > 1:
            if t != 3:
                masks[1, 15:25, 20:30] = True
            else:
                scores[1] = -2.0
        yield TrackedFrame(t, np.array(ids), np.array([0, 1][: len(ids)]), masks, mask_boxes(masks), scores,
                           np.array([t == 0, t == 2][: len(ids)]), video.frame(t))


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    frames = list(open_frames(path))
    return len(frames), frames[0].shape[:2]


def test_layout_and_frame_counts(tmp_path):
    n = write_video_outputs(fake_results(6), tmp_path, ["cat", "red car"], fps=12, save_frames=True, progress=False)
    assert n == 6
    video = tmp_path / "video"
    assert count_frames(video / "binary" / "1_mask.mp4") == (6, (34, 48))  # odd sides padded to even
    assert count_frames(video / "overlay" / "1_overlay.mp4")[0] == 6
    assert count_frames(video / "binary" / "2_mask.mp4")[0] == 4  # from its first frame on
    assert count_frames(video / "binary" / "merged_mask.mp4")[0] == 6
    assert count_frames(video / "overlay" / "merged_overlay.mp4")[0] == 6
    assert open_frames(video / "binary" / "merged_mask.mp4").info.fps == 12
    frames = sorted(p.name for p in (tmp_path / "binary" / "frames").iterdir())
    assert frames[0] == "000001_obj1_cat_mask.png" and "000003_obj2_red_car_mask.png" in frames and len(frames) == 10
    assert len(list((tmp_path / "overlay" / "merged").iterdir())) == 6
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert tracks["frames"] == 6 and tracks["fps"] == 12
    assert tracks["objects"] == [
        {"id": 1, "label": 0, "prompt": "cat", "first_frame": 1, "last_frame": 6, "frames_present": 6},
        {"id": 2, "label": 1, "prompt": "red car", "first_frame": 3, "last_frame": 6, "frames_present": 3},
    ]
    # the mask video shows the mask: white where the mask is, black elsewhere (lossy codec)
    first = list(open_frames(video / "binary" / "1_mask.mp4"))[0][:33, :47].mean(axis=2)
    mask = next(iter(fake_results(1))).masks[0]
    assert first[mask].mean() > 200 and first[~mask].mean() < 40


def test_options_and_no_frames(tmp_path):
    write_video_outputs(fake_results(3), tmp_path, ["cat", "dog"], fps=25,
                        options=OutputOptions(binary=True, overlay=False, merged=False), progress=False)
    assert sorted(p.name for p in (tmp_path / "video" / "binary").iterdir()) == ["1_mask.mp4", "2_mask.mp4"]
    assert not (tmp_path / "video" / "overlay").exists() and not (tmp_path / "binary" / "frames").exists()


def test_outputs_are_finished_when_the_input_breaks(tmp_path):
    def broken():
        for i, r in enumerate(fake_results(5)):
            if i == 3:
                raise VideoReadError("clip.mp4: decoding stopped at frame 3 (...)", 3)
            yield r

    with pytest.raises(VideoReadError):
        write_video_outputs(broken(), tmp_path, ["cat", "dog"], fps=25, progress=False)
    assert count_frames(tmp_path / "video" / "binary" / "merged_mask.mp4")[0] == 3
    assert json.loads((tmp_path / "tracks.json").read_text())["frames"] == 3


def test_bad_output_and_fps(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        VideoOutputs(blocker, ["cat"], 25)
    with pytest.raises(UserError, match="--fps must be positive"):
        VideoOutputs(tmp_path / "o", ["cat"], 0)


def write_clip(path: Path, frames, fps: int = 10) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    frames = list(frames)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for f in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_infer_cli_on_a_video(tiny_video_artifact, tmp_path):
    """``python -m tools.infer`` on an MP4: the README's video command, end to end in a subprocess."""
    import subprocess
    import sys

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(6, 64, 80, num_shapes=2, seed=1))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "tools.infer", "--engines", str(tiny_video_artifact), "--input",
                        str(clip), "--prompt", "cat", "--output", str(out), "--redetect-every", "3", "--fps", "5",
                        "--backend", "onnxruntime"], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "6 frames" in r.stderr
    assert count_frames(out / "video" / "overlay" / "merged_overlay.mp4") == (6, (64, 80))


def test_video_with_an_artifact_exported_without_video_is_one_line(tiny_artifact, tmp_path, run_module, one_error_line):
    """tools.infer on a video and Pipeline.track with a --video-less artifact: the re-export hint, no KeyError."""
    from runtime.errors import ArtifactError
    from runtime.pipeline import Pipeline

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(3, 64, 80, num_shapes=1, seed=3))
    r = run_module("tools.infer", "--engines", tiny_artifact, "--input", clip, "--prompt", "cat", "--output",
                   tmp_path / "out", "--backend", "onnxruntime", check=None)
    one_error_line(r, "no video graphs", "export.build --video")
    with Pipeline.load(tiny_artifact, backend="onnxruntime") as pipe:
        with pytest.raises(ArtifactError, match="re-export it with python -m export.build --video"):
            next(pipe.track(clip, boxes=np.array([[5, 5, 40, 40]], np.float32)))


def test_pipeline_track_yields_one_result_per_frame(tiny_video_artifact):
    from runtime.pipeline import Pipeline

    video = MovingShapes(5, 64, 80, num_shapes=2, seed=2)
    boxes = np.array([[5, 5, 40, 40]], np.float32)
    with Pipeline.load(tiny_video_artifact, backend="onnxruntime") as pipe:
        frames = list(pipe.track((video.frame(t) for t in range(5)), boxes=boxes))
    assert [f.index for f in frames] == list(range(5))
    assert all(f.masks.shape[1:] == (64, 80) for f in frames)
    assert all(f.object_ids.tolist() == [1] for f in frames)


def test_run_video_end_to_end(tiny_video_artifact, tmp_path):
    """A generated MP4 through the exported graphs (ONNX Runtime) into SOWLv2's video outputs."""
    from runtime.pipeline import Pipeline

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(8, 96, 128, num_shapes=3, seed=0))
    out = tmp_path / "out"
    with Pipeline.load(tiny_video_artifact, backend="onnxruntime") as pipe:
        summary = run_video(pipe, clip, ["cat", "dog"], out, redetect_every=4, progress=False)
    assert summary["frames"] == 8 and summary["fps"] == 10 and summary["objects"] > 0
    tracks = json.loads((out / "tracks.json").read_text())
    assert len(tracks["objects"]) == summary["objects"]
    assert {o["first_frame"] for o in tracks["objects"]} <= {1, 5}  # detection frames 0 and 4
    assert count_frames(out / "video" / "overlay" / "merged_overlay.mp4") == (8, (96, 128))
    for o in tracks["objects"]:
        assert count_frames(out / "video" / "binary" / f"{o['id']}_mask.mp4")[0] == 9 - o["first_frame"]
