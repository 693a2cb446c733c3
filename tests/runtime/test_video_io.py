"""Frame sources: video files (PyAV), folders, arrays; truncated, empty, corrupt and variable-rate input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.video_io import VideoReadError, open_frames
from tools.bench.synthetic import MovingShapes

av = pytest.importorskip("av")


def write_video(path: Path, frames, fps: int = 25, faststart: bool = True, pts=None) -> Path:
    """H.264 in MP4 (moov first with faststart, so that a truncated file still opens)."""
    container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream("libx264", rate=fps)
    frames = list(frames)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    if pts is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(f, format="rgb24")
        if pts is not None:
            vf.pts, vf.time_base = pts[i], Fraction(1, 1000)
        for packet in stream.encode(vf):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", MovingShapes(20, 96, 128, seed=1))


def test_video_file_round_trip(clip):
    source = open_frames(clip)
    assert source.info.fps == 25 and source.info.num_frames == 20 and source.info.decoder == "pyav"
    assert (source.info.width, source.info.height) == (128, 96)
    frames = list(source)
    assert len(frames) == 20 and all(f.shape == (96, 128, 3) and f.dtype == np.uint8 for f in frames)
    original = MovingShapes(20, 96, 128, seed=1).frame(7)
    assert np.abs(frames[7].astype(int) - original).mean() < 6  # lossy codec, same picture
    with pytest.raises(UserError, match="read once"):
        iter(source)


@pytest.fixture(scope="module")
def cut_clip(clip, tmp_path_factory) -> Path:
    """``clip`` cut short, past its first key frame: it opens, and decoding breaks part-way."""
    cut = tmp_path_factory.mktemp("cut") / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.85)])
    return cut


def test_frames_are_decoded_lazily(cut_clip):
    """Frames come out one by one as they are decoded: the truncated clip's first frame arrives
    before its break, which a reader decoding the whole file up front would have hit already."""
    source = open_frames(cut_clip)
    it = iter(source)
    first = next(it)
    assert first.shape == (96, 128, 3) and first.dtype == np.uint8
    source.close()  # stopping early is fine: the break is never reached
    with pytest.raises(VideoReadError) as e:  # it is there, further on
        for _ in open_frames(cut_clip):
            pass
    assert e.value.frames_read >= 1


def test_truncated_video_yields_frames_up_to_the_break(cut_clip):
    cut = cut_clip
    got = []
    with pytest.raises(VideoReadError) as e:
        for frame in open_frames(cut):
            got.append(frame)
    assert 0 < len(got) < 20 and e.value.frames_read == len(got)
    assert "\n" not in str(e.value) and f"{len(got)} frames" in str(e.value)


def test_truncated_video_without_index_is_unreadable(tmp_path):
    path = write_video(tmp_path / "late_index.mp4", MovingShapes(10, 64, 64), faststart=False)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="not a readable video") as e:
        open_frames(cut)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, fragment", [
    (b"", "zero-length"),
    (b"this is not a video at all" * 100, "not a readable video"),
])
def test_bad_files(tmp_path, content, fragment):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment) as e:
        list(open_frames(path))
    assert "\n" not in str(e.value)


def test_video_without_frames(tmp_path):
    path = tmp_path / "empty.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()  # header written, no frame
    container.close()
    with pytest.raises(UserError, match="no decodable frames|not a readable video|no video stream"):
        list(open_frames(path))


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.wav"
    container = av.open(str(path), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with pytest.raises(UserError, match="no video stream"):
        open_frames(path)


def test_variable_frame_rate(tmp_path):
    """Irregular timestamps: every frame comes out once, in order; fps is the average rate."""
    video = MovingShapes(12, 64, 64, seed=2)
    pts = [0, 40, 50, 130, 140, 150, 300, 340, 380, 390, 500, 540]
    path = write_video(tmp_path / "vfr.mp4", list(video), fps=25, pts=pts)
    source = open_frames(path)
    frames = list(source)
    assert len(frames) == 12
    for t in (0, 3, 11):
        assert np.abs(frames[t].astype(int) - video.frame(t)).mean() < 8
    assert source.info.fps is not None and source.info.fps > 0


def test_folder_of_frames_in_natural_order(tmp_path):
    video = MovingShapes(11, 32, 48, seed=0)
    for t in range(11):
        Image.fromarray(video.frame(t)).save(tmp_path / f"frame_{t + 1}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert source.info.num_frames == 11 and source.info.decoder == "folder"
    frames = list(source)
    assert all(np.array_equal(f, video.frame(t)) for t, f in enumerate(frames))  # 1, 2, ..., 10, 11


def test_folder_with_a_broken_frame(tmp_path):
    video = MovingShapes(3, 32, 48, seed=0)
    for t in range(3):
        Image.fromarray(video.frame(t)).save(tmp_path / f"{t:03d}.png")
    (tmp_path / "001.png").write_bytes(b"broken")
    got = []
    with pytest.raises(VideoReadError, match="frame 1 .001.png. is unreadable") as e:
        for f in open_frames(tmp_path):
            got.append(f)
    assert len(got) == 1 and e.value.frames_read == 1


def test_arrays_and_iterators():
    video = MovingShapes(4, 32, 48, seed=0)
    assert len(list(open_frames(iter(video)))) == 4
    assert len(list(open_frames(np.stack(list(video))))) == 4
    gray = [np.zeros((8, 8), np.uint8)]
    assert list(open_frames(gray))[0].shape == (8, 8, 3)  # converted as load_image does
    with pytest.raises(UserError, match="no frames"):
        list(open_frames(iter([])))
    with pytest.raises(UserError, match="not an HxWx3"):
        list(open_frames(["frame.png"]))
    with pytest.raises(UserError, match="cannot read frames from a int"):
        open_frames(3)


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing.mp4", "no such file"),
    (lambda p: p, "holds no image frames"),
])
def test_missing_inputs(tmp_path, make, fragment):
    with pytest.raises(UserError, match=fragment):
        open_frames(make(tmp_path))


def test_opencv_decoder_gives_the_frames_pyav_gives(clip):
    pytest.importorskip("cv2")
    source = open_frames(clip, decoder="opencv")
    assert source.info.decoder == "opencv" and source.info.fps == pytest.approx(25)
    assert (source.info.num_frames, source.info.width, source.info.height) == (20, 128, 96)
    frames = list(source)
    reference = list(open_frames(clip, decoder="pyav"))
    assert len(frames) == 20 and all(f.shape == (96, 128, 3) and f.dtype == np.uint8 and f.flags.c_contiguous
                                     for f in frames)
    for got, ref in zip(frames, reference):  # same stream, two YUV->RGB conversions: a level or two apart
        diff = np.abs(got.astype(int) - ref).mean()
        assert diff < 2.0, diff
        assert np.abs(got[..., ::-1].astype(int) - ref).mean() > 5 * max(diff, 1.0)  # RGB, not OpenCV's BGR


def test_opencv_decoder_reports_a_truncated_or_unreadable_file(clip, tmp_path):
    pytest.importorskip("cv2")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.85)])
    got = []
    with pytest.raises(VideoReadError) as e:
        for frame in open_frames(cut, decoder="opencv"):
            got.append(frame)
    assert 0 < len(got) < 20 and e.value.frames_read == len(got) and "\n" not in str(e.value)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(UserError, match="not a readable video .OpenCV cannot open it."):
        open_frames(junk, decoder="opencv")
