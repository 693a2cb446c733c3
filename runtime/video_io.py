"""Video frames, one at a time, from a file (PyAV, else OpenCV), a folder of images or an iterable of arrays.

    source = open_frames("clip.mp4")        # or a folder of frames, or any iterable of HxWx3 uint8 arrays
    source.info.fps, source.info.num_frames  # what the container says (None where unknown)
    for frame in source: ...                 # HxWx3 uint8 RGB, decoded lazily: never the whole video in memory

Errors are ``UserError`` s with one line that names the file and the fix:

* a missing path, a file that is not a video, a video without a video stream: raised by
  ``open_frames``;
* a video with no frames at all (zero-length): raised when iteration ends without a frame;
* a truncated or corrupt video: the frames before the break are yielded, then ``VideoReadError``
  (a ``UserError``) says where decoding stopped and how many frames came through. A file that ends
  early without a decoder error, while the container announced more frames, is reported the same way.

Variable frame rate: every decoded frame is yielded once, in presentation order; ``info.fps`` is the
container's average rate (what an output video at constant rate should use). Frame size changes are
not handled here: the tracker refuses them with a one-line error.

PyAV (``pip install av``) is the default decoder; OpenCV (``opencv-python-headless``) is used when PyAV
is missing, or when asked for. Neither is needed for folders or arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from runtime.errors import UserError
from runtime.images import load_image

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "FrameSource", "VideoReadError", "open_frames", "is_video_file", "IMAGE_SUFFIXES",
           "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                            ".3gp", ".ogv"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DECODERS = ("auto", "pyav", "opencv")


class VideoReadError(UserError):
    """Decoding stopped part-way: ``frames_read`` frames were delivered before the break."""

    def __init__(self, message: str, frames_read: int) -> None:
        super().__init__(message)
        self.frames_read = frames_read


@dataclass(frozen=True)
class VideoInfo:
    source: str
    fps: float | None  # average frame rate; None where unknown (folders, arrays)
    num_frames: int | None  # as announced by the container or folder; None where unknown
    width: int | None
    height: int | None
    decoder: str  # "pyav", "opencv", "folder" or "arrays"


class FrameSource:
    """An iterable of frames with what is known of the video up front. Iterate once."""

    def __init__(self, info: VideoInfo, frames: Iterator[np.ndarray], close=None) -> None:
        self.info = info
        self._frames = frames
        self._close = close
        self._started = False

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise UserError(f"{self.info.source}: frames can be read once; open the source again to re-read it")
        self._started = True
        return self._frames

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_frames(source: Any, decoder: str = "auto") -> FrameSource:
    """A ``FrameSource`` for a video file, a folder of images (sorted by name, numbers in names
    compared as numbers) or an iterable of HxWx3 uint8 arrays."""
    if decoder not in DECODERS:
        raise UserError(f"unknown video decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; check the path")
        if path.is_dir():
            return _folder(path)
        if path.stat().st_size == 0:
            raise UserError(f"{path}: the file is empty (zero-length video); pass a video with frames")
        if decoder == "opencv" or (decoder == "auto" and not _has_module("av")):
            return _opencv(path)
        return _pyav(path)
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise UserError(f"an array of frames must be (N, H, W, 3) uint8, got shape {source.shape}; "
                            "pass a video file, a folder or an iterable of frames")
        source = list(source)
    try:
        iterator = iter(source)
    except TypeError:
        raise UserError(f"cannot read frames from a {type(source).__name__}; pass a video file, a folder of "
                        "images or an iterable of HxWx3 uint8 arrays") from None
    return FrameSource(VideoInfo("frames", None, None, None, None, "arrays"), _arrays(iterator))


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _arrays(frames: Iterator[Any]) -> Iterator[np.ndarray]:
    count = 0
    for frame in frames:
        if not isinstance(frame, np.ndarray):
            raise UserError(f"frame {count} is a {type(frame).__name__}, not an HxWx3 uint8 array")
        yield load_image(frame) if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 else frame
        count += 1
    if count == 0:
        raise UserError("no frames were given (an empty sequence); pass at least one frame")


def _natural_key(path: Path) -> list:
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _folder(path: Path) -> FrameSource:
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise UserError(f"{path}: the folder holds no image frames ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "pass a folder of frames or a video file")

    def frames() -> Iterator[np.ndarray]:
        for i, f in enumerate(files):
            try:
                yield load_image(f)
            except UserError as e:
                raise VideoReadError(f"{path}: frame {i} ({f.name}) is unreadable ({e}); the {i} frames before it "
                                     "were read", i) from None

    return FrameSource(VideoInfo(str(path), None, len(files), None, None, "folder"), frames())


def _pyav(path: Path) -> FrameSource:
    try:
        import av
    except ImportError:
        raise UserError(f"{path}: reading video files needs PyAV (pip install av) or OpenCV "
                        "(pip install opencv-python-headless)") from None
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* (InvalidDataError, ...): not a readable container
        raise UserError(f"{path}: not a readable video ({_first_line(e)}); check the file or re-encode it") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path}: the file has no video stream; pass a video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    announced = int(stream.frames) or None
    # containers without a frame count (mkv, webm...) may still record a duration: an estimate
    duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
        container.duration / 1e6 if container.duration else None)
    estimated = int(round(duration * fps)) if announced is None and duration and fps else None
    ctx = stream.codec_context
    info = VideoInfo(str(path), fps, announced, ctx.width or None, ctx.height or None, "pyav")

    def frames() -> Iterator[np.ndarray]:
        count = 0
        try:
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
                    count += 1
            except av.error.FFmpegError as e:
                raise VideoReadError(f"{path}: decoding stopped at frame {count} ({_first_line(e)}); the {count} "
                                     "frames before it were read (truncated or corrupt file?)", count) from None
            _check_end(path, count, announced)
            if estimated is not None and count < 0.9 * estimated - 1:
                log.warning("%s: decoding ended after %d frames but the container's duration suggests about %d "
                            "(truncated file?)", path, count, estimated)
        finally:
            container.close()

    return FrameSource(info, frames(), container.close)


def _opencv(path: Path) -> FrameSource:
    try:
        import cv2
    except ImportError:
        raise UserError(f"{path}: reading video files needs PyAV (pip install av) or OpenCV "
                        "(pip install opencv-python-headless)") from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: not a readable video (OpenCV cannot open it); check the file or re-encode it")
    fps = cap.get(cv2.CAP_PROP_FPS) or None
    announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None, int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None
    info = VideoInfo(str(path), fps, announced, w, h, "opencv")

    def frames() -> Iterator[np.ndarray]:
        count = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield np.ascontiguousarray(bgr[:, :, ::-1])
                count += 1
            _check_end(path, count, announced)
        finally:
            cap.release()

    return FrameSource(info, frames(), cap.release)


def _check_end(path: Path, count: int, announced: int | None) -> None:
    if count == 0:
        raise UserError(f"{path}: the video has no decodable frames (zero-length or corrupt); pass a video with frames")
    if announced is not None and count < announced:
        raise VideoReadError(f"{path}: the file ended after {count} of the {announced} frames its header announces "
                             f"(truncated?); the {count} frames were read", count)


def _first_line(e: BaseException) -> str:
    """The reason of an exception in one short line (PyAV's errors repeat the errno and the path)."""
    import re

    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return re.sub(r":\s*'[^']*'$", "", text)
