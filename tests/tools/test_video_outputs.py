"""SOWLv2's video outputs: per-object and merged mask/overlay videos, per-frame PNGs, tracks.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.tracker import TrackedFrame, mask_boxes
from runtime.video_io import VideoReadError, open_frames
from tools.outputs import OutputOptions
from tools.bench.synthetic import MovingShapes
from tools.video_outputs import VideoOutputs, run_video, sampled

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


def write_all(root: Path, results, prompts, fps=12.0, copies=1, **kw) -> VideoOutputs:
    out = VideoOutputs(root, prompts, fps, **kw)
    for r in results:
        out.write(r, copies)
    out.close()
    return out


def test_layout_and_frame_counts(tmp_path):
    out = write_all(tmp_path, fake_results(6), ["cat", "red car"])
    assert out.frames == 6
    video = tmp_path / "video"
    assert sorted(p.name for p in (video / "binary").iterdir()) == ["merged_mask.mp4", "obj1_cat_mask.mp4",
                                                                    "obj2_red_car_mask.mp4"]  # SOWLv2's README names
    assert count_frames(video / "binary" / "obj1_cat_mask.mp4") == (6, (34, 48))  # odd sides padded to even
    assert count_frames(video / "overlay" / "obj1_cat_overlay.mp4")[0] == 6
    assert count_frames(video / "binary" / "obj2_red_car_mask.mp4")[0] == 4  # from its first frame on
    assert count_frames(video / "binary" / "merged_mask.mp4")[0] == 6
    assert count_frames(video / "overlay" / "merged_overlay.mp4")[0] == 6
    assert open_frames(video / "binary" / "merged_mask.mp4").info.fps == 12
    frames = sorted(p.name for p in (tmp_path / "binary" / "frames").iterdir())  # per-frame PNGs, as SOWLv2
    assert frames[0] == "000001_obj1_cat_mask.png" and "000003_obj2_red_car_mask.png" in frames and len(frames) == 10
    assert len(list((tmp_path / "overlay" / "merged").iterdir())) == 6
    tracks = json.loads((tmp_path / "tracks.json").read_text())
    assert tracks["frames"] == 6 and tracks["fps"] == 12
    assert tracks["objects"] == [
        {"id": 1, "label": 0, "prompt": "cat", "first_frame": 1, "last_frame": 6, "frames_present": 6},
        {"id": 2, "label": 1, "prompt": "red car", "first_frame": 3, "last_frame": 6, "frames_present": 3},
    ]
    # the mask video shows the mask: white where the mask is, black elsewhere (lossy codec)
    first = list(open_frames(video / "binary" / "obj1_cat_mask.mp4"))[0][:33, :47].mean(axis=2)
    mask = next(iter(fake_results(1))).masks[0]
    assert first[mask].mean() > 200 and first[~mask].mean() < 40
    # the overlay PNG: the frame, the mask blended 50 % in the first prompt's SOWLv2 colour (red)
    frame0 = next(iter(fake_results(1)))
    png = np.asarray(Image.open(tmp_path / "overlay" / "frames" / "000001_obj1_cat_overlay.png"))
    np.testing.assert_array_equal(png[mask], (0.5 * frame0.image[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8))


def test_repeated_frames_are_written_again(tmp_path):
    write_all(tmp_path, fake_results(3), ["cat", "dog"], copies=2)
    frames = sorted(p.name for p in (tmp_path / "binary" / "merged").iterdir())
    assert frames == [f"{j:06d}_merged_mask.png" for j in range(1, 7)]
    a, b = (np.asarray(Image.open(tmp_path / "binary" / "merged" / f)) for f in frames[:2])
    np.testing.assert_array_equal(a, b)
    assert count_frames(tmp_path / "video" / "binary" / "merged_mask.mp4")[0] == 6
    assert json.loads((tmp_path / "tracks.json").read_text())["objects"][1]["first_frame"] == 5


@pytest.mark.parametrize("options,frames,pngs,merged_video", [
    (OutputOptions(binary=False), True, {"overlay"}, True),
    (OutputOptions(overlay=False, merged=False), True, {"binary"}, False),
    (OutputOptions(binary=False, overlay=False), True, set(), True),
    (OutputOptions(), False, set(), True),
])
def test_flags(tmp_path, options, frames, pngs, merged_video):
    """As SOWLv2's tests: --no-binary/--no-overlay drop PNG trees, the videos are written whatever
    those flags; --no-merged (README) drops merged PNGs and videos; --no-frames every PNG."""
    write_all(tmp_path, fake_results(3), ["cat", "dog"], options=options, frames=frames)
    assert {p.name for p in tmp_path.iterdir()} == pngs | {"video", "tracks.json"}
    for kind in pngs:
        assert (tmp_path / kind / "merged").exists() == options.merged
    for kind in ("binary", "overlay"):
        names = {p.name for p in (tmp_path / "video" / kind).iterdir()}
        assert {n for n in names if n.startswith("obj")} == {f"obj1_cat_{'mask' if kind == 'binary' else kind}.mp4",
                                                             f"obj2_dog_{'mask' if kind == 'binary' else kind}.mp4"}
        assert any(n.startswith("merged") for n in names) == merged_video


def test_nothing_tracked_writes_nothing(tmp_path):
    def empty(n):
        for r in fake_results(n):
            yield TrackedFrame(r.index, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, *r.masks.shape[1:]), bool),
                               np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, bool), r.image)

    out = write_all(tmp_path / "o", empty(3), ["cat"])
    assert out.frames == 3 and not (tmp_path / "o").exists()


def test_sampling_keeps_the_duration():
    def kept(n, source_fps, fps):
        return [(int(f[0, 0, 0]), c) for f, c in sampled((np.full((1, 1, 3), i, np.uint8) for i in range(n)), source_fps, fps)]

    slower = kept(30, 30, 24)  # one second of 30 fps at 24: 24 frames, 6 dropped, none repeated
    assert sum(c for _, c in slower) == 24 and all(c == 1 for _, c in slower) and len(slower) == 24
    assert [i for i, _ in kept(10, 10, 4)] == [0, 2, 5, 7]  # the frame on screen at 0, .25, .5, .75 s
    faster = kept(10, 10, 24)  # a slower source: every frame, repeated to 24 fps (as ffmpeg -r)
    assert len(faster) == 10 and sum(c for _, c in faster) == 24 and {c for _, c in faster} == {2, 3}
    assert kept(5, None, 24) == [(i, 1) for i in range(5)]  # unknown rate: every frame once
    assert kept(7, 29.97, 29.97) == [(i, 1) for i in range(7)]


def test_bad_output_and_fps(tmp_path):
    from tools.outputs import StagedOutput

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        StagedOutput(blocker)
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


def test_infer_cli_on_a_video_sampled_below_its_rate(tiny_video_artifact, tmp_path):
    """``python -m tools.infer`` on an MP4 at --fps 5 of a 10 fps clip: half the frames, the duration
    kept, SOWLv2's video tree (its tests' patterns), end to end in a subprocess."""
    import re
    import subprocess
    import sys

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(6, 64, 80, num_shapes=2, seed=1))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "tools.infer", "--engines", str(tiny_video_artifact), "--input",
                        str(clip), "--prompt", "cat", "--output", str(out), "--redetect-every", "3", "--fps", "5",
                        "--threshold", "0"], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 frames at 5 fps" in r.stderr and "backend onnxruntime" in r.stderr
    assert count_frames(out / "video" / "overlay" / "merged_overlay.mp4") == (3, (64, 80))
    assert open_frames(out / "video" / "binary" / "merged_mask.mp4").info.fps == 5  # 3 frames / 5 fps = 6 / 10 fps
    tracks = json.loads((out / "tracks.json").read_text())
    assert tracks["frames"] == 3 and tracks["objects"]
    for kind, suffix in (("binary", "mask"), ("overlay", "overlay")):
        videos = [p.name for p in (out / "video" / kind).iterdir()]
        assert f"merged_{suffix}.mp4" in videos
        assert all(re.fullmatch(rf"obj\d+_.*_{suffix}\.mp4", v) for v in videos if v.startswith("obj"))
        assert len(videos) == len(tracks["objects"]) + 1
        merged = sorted(p.name for p in (out / kind / "merged").iterdir())
        assert merged == [f"{j:06d}_merged_{suffix}.png" for j in (1, 2, 3)]
        assert all(re.fullmatch(rf"\d{{6}}_obj\d+_cat_{suffix}\.png", p.name) for p in (out / kind / "frames").iterdir())


def test_truncated_video_keeps_the_frames_before_the_break(tiny_video_artifact, tmp_path, monkeypatch, capsys):
    """A decoding error part-way: the frames before it are written and committed, then one error line."""
    import runtime.video_io as video_io
    from runtime.errors import run_cli
    from runtime.video_io import FrameSource, VideoInfo
    from tools.infer import main

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(6, 64, 80, num_shapes=2, seed=1))

    def broken(source, decoder="auto"):
        def frames():
            for i, f in enumerate(MovingShapes(6, 64, 80, num_shapes=2, seed=1)):
                if i == 4:
                    raise VideoReadError(f"{source}: decoding stopped at frame 4 (test)", 4)
                yield f

        return FrameSource(VideoInfo(str(source), 10.0, 6, 80, 64, "pyav"), frames())

    monkeypatch.setattr(video_io, "open_frames", broken)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--engines", str(tiny_video_artifact), "--input", str(clip), "--prompt", "cat", "--output",
                       str(out), "--fps", "10", "--threshold", "0"])
    assert e.value.code == 2 and "decoding stopped at frame 4" in capsys.readouterr().err
    assert json.loads((out / "tracks.json").read_text())["frames"] == 4
    assert count_frames(out / "video" / "binary" / "merged_mask.mp4")[0] == 4


def test_video_with_an_artifact_exported_without_video_is_one_line(tiny_artifact, tmp_path, run_module, one_error_line):
    """tools.infer on a video and Pipeline.track with a --video-less artifact: the re-export hint, no KeyError."""
    from runtime.errors import ArtifactError
    from runtime.pipeline import Pipeline

    clip = write_clip(tmp_path / "clip.mp4", MovingShapes(3, 64, 80, num_shapes=1, seed=3))
    r = run_module("tools.infer", "--engines", tiny_artifact, "--input", clip, "--prompt", "cat", "--output",
                   tmp_path / "out", "--backend", "onnxruntime", check=None)
    line = one_error_line(r, "no video graphs", "re-export it with python -m export.build ")
    assert line.split(" to track objects")[0].endswith("--video"), line
    with Pipeline.load(tiny_artifact, backend="onnxruntime") as pipe:
        with pytest.raises(ArtifactError, match="re-export it with python -m export.build .* --video to track"):
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
        summary = run_video(pipe, clip, ["cat", "dog"], out, fps=10, redetect_every=4, progress=False)
    assert summary["frames"] == 8 and summary["fps"] == 10 and summary["objects"] > 0
    tracks = json.loads((out / "tracks.json").read_text())
    assert len(tracks["objects"]) == summary["objects"]
    assert {o["first_frame"] for o in tracks["objects"]} <= {1, 5}  # detection frames 0 and 4
    assert count_frames(out / "video" / "overlay" / "merged_overlay.mp4") == (8, (96, 128))
    for o in tracks["objects"]:
        name = f"obj{o['id']}_{o['prompt']}_mask.mp4"
        assert count_frames(out / "video" / "binary" / name)[0] == 9 - o["first_frame"]
