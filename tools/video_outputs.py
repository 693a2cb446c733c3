"""SOWLv2's outputs of a video (``tools.infer``), written on a writer thread while the tracker runs.

The video is sampled at ``fps`` (SOWLv2's ``--fps``, default 24, as its ``ffmpeg -r``): output frame
``j`` is the source frame on screen at time ``j / fps``, so the duration is kept — frames are dropped
from a faster source and repeated from a slower one (a repeat is written again, not tracked again).
Frames are numbered from 1 with six digits; ``id`` is the tracker's object id (from 1); ``prompt`` as
``tools.outputs.prompt_slug``::

    binary/frames/{frame}_obj{id}_{prompt}_mask.png       every frame, every tracked object (0/255)
    binary/merged/{frame}_merged_mask.png
    overlay/frames/{frame}_obj{id}_{prompt}_overlay.png
    overlay/merged/{frame}_merged_overlay.png
    video/binary/obj{id}_{prompt}_mask.mp4                per object, from its first frame
    video/overlay/obj{id}_{prompt}_overlay.mp4
    video/binary/merged_mask.mp4, video/overlay/merged_overlay.mp4
    tracks.json                                           per object: id, prompt, first/last frame, frames present

As SOWLv2 (its README and tests): ``--no-binary``/``--no-overlay`` drop the PNG trees (the videos
are written whatever those flags), ``--no-merged`` the merged PNGs and videos; ``frames=False``
(``--no-frames``) drops every PNG. A frame without tracked objects writes nothing, and a video in
which nothing is ever detected writes no file. Videos are H.264 (libx264, yuv420p, CRF 18, no
look-ahead so that dozens of open encoders stay small); odd sides are padded by one black pixel.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import shutil
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from runtime.errors import UserError
from tools.outputs import (BINARY, OVERLAY, OutputOptions, PromptColors, blend, image_jobs, prompt_slug,
                           write_atomic)

log = logging.getLogger("tools.video")

VIDEO = "video"
TRACKS_NAME = "tracks.json"
DEFAULT_FPS = 24.0  # SOWLv2's --fps


def sampled(frames: Iterable[np.ndarray], source_fps: float | None, fps: float) -> Iterator[tuple[np.ndarray, int]]:
    """``(frame, copies)`` of the source frames kept at ``fps``: source frame ``i`` (on screen from
    ``i / source_fps``) stands for the output frames ``j`` with ``j / fps`` in its interval; frames
    that stand for none are skipped. An unknown source rate keeps every frame once."""
    if not source_fps:
        yield from ((f, 1) for f in frames)
        return
    ratio = Fraction(fps).limit_denominator(1001) / Fraction(source_fps).limit_denominator(1001)
    emitted = 0
    for i, frame in enumerate(frames):
        upto = math.ceil((i + 1) * ratio)
        if upto > emitted:
            yield frame, upto - emitted
            emitted = upto


class _Writer:
    """One H.264 stream, opened on the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.container = av.open(str(path), "w")
        except Exception as e:  # av.error.*: unwritable path or format
            raise UserError(f"cannot write {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            "check the --output folder") from None
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "veryfast",
                                                                              "tune": "zerolatency"})
        self.stream.pix_fmt = "yuv420p"
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray, copies: int = 1) -> None:
        import av

        h, w = rgb.shape[:2]
        if self.size is None:
            self.size = (h + h % 2, w + w % 2)
            self.stream.height, self.stream.width = self.size
        if (h, w) != self.size:
            padded = np.zeros((*self.size, 3), np.uint8)
            padded[:h, :w] = rgb
            rgb = padded
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for _ in range(copies):
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        if self.container is None:
            return
        try:
            if self.size is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None


def _gray_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask.view(np.uint8) * np.uint8(255))[:, :, None], 3, axis=2)


def _copy_as(path: Path, frames: Sequence[str]) -> Path:
    """Copies of a frame's file under the numbers of its repeats (``000007_...`` -> ``000008_...``)."""
    suffix = path.name[len(frames[0]):]
    for f in frames[1:]:
        shutil.copyfile(path, path.with_name(f + suffix))
    return path


class VideoOutputs:
    """Tracked frames in, SOWLv2's video outputs out. ``write`` queues a frame (blocking while
    ``queue_size`` frames wait) for the writer thread, which encodes the videos and hands the PNGs to
    ``workers`` threads; ``close`` finishes every file and writes ``tracks.json``."""

    def __init__(self, root: Path, prompts: Sequence[str], fps: float, options: OutputOptions = OutputOptions(),
                 frames: bool = True, workers: int | None = None, queue_size: int = 4) -> None:
        try:
            import av  # noqa: F401
        except ImportError:
            raise UserError("writing videos needs PyAV; pip install av") from None
        if not fps > 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.root, self.prompts, self.fps = Path(root), list(prompts), float(fps)
        self.options, self.frames_png = options, frames
        self.slugs = [prompt_slug(p) for p in self.prompts]
        self.colors = PromptColors()
        self._objects: dict[int, dict[str, Any]] = {}  # id -> writers and summary
        self._merged: dict[str, _Writer] = {}
        self.frames = 0  # output frames
        self._png_pool = ThreadPoolExecutor(workers or 2, thread_name_prefix="png")
        self._png_jobs: deque[Future] = deque()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------
    def write(self, result: Any, copies: int = 1) -> None:
        """Queue one ``runtime.tracker.TrackedFrame`` (with its ``image``), standing for ``copies`` output frames."""
        if result.image is None:
            raise ValueError("TrackedFrame without its image: video outputs need the frame")
        self._raise()
        self._queue.put((result, copies))

    def close(self) -> Path | None:
        """Finish every file; returns the ``tracks.json`` written (None when nothing was tracked)."""
        self._queue.put(None)
        self._thread.join()
        errors = [] if self._error is None else [str(self._error)]
        for f in self._png_jobs:
            try:
                f.result()
            except Exception as e:
                errors.append(str(e))
        self._png_pool.shutdown()
        for writer in [w for o in self._objects.values() for w in o["writers"].values()] + list(self._merged.values()):
            try:
                writer.close()
            except Exception as e:  # keep closing the others; report the first
                errors.append(f"{writer.path}: {e}")
        path = None
        if self._objects:
            tracks = [{k: v for k, v in o.items() if k != "writers"} for o in self._objects.values()]
            path = self.root / TRACKS_NAME
            text = json.dumps({"frames": self.frames, "fps": self.fps, "objects": tracks}, indent=1) + "\n"
            try:
                write_atomic(path, lambda f: f.write(text.encode()))
            except OSError as e:
                errors.append(f"{path}: {e.strerror or e}")
        if errors:
            raise UserError(f"could not finish {len(errors)} output file(s), first: {errors[0]}")
        return path

    @property
    def objects(self) -> int:
        return len(self._objects)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write_now(*item)
                except BaseException as e:  # reported to the caller by write()/close()
                    self._error = e

    def _object(self, oid: int, label: int, frame: int) -> dict[str, Any]:
        if oid not in self._objects:
            name = f"obj{oid}_{self.slugs[label] if 0 <= label < len(self.slugs) else 'box'}"
            self._objects[oid] = {
                "id": oid, "label": label, "prompt": self.prompts[label] if 0 <= label < len(self.prompts) else None,
                "first_frame": frame, "last_frame": frame, "frames_present": 0,
                "writers": {BINARY: _Writer(self.root / VIDEO / BINARY / f"{name}_mask.mp4", self.fps),
                            OVERLAY: _Writer(self.root / VIDEO / OVERLAY / f"{name}_overlay.mp4", self.fps)}}
        return self._objects[oid]

    def _merged_writer(self, kind: str, name: str) -> _Writer:
        if kind not in self._merged:
            self._merged[kind] = _Writer(self.root / VIDEO / kind / name, self.fps)
        return self._merged[kind]

    def _write_now(self, result: Any, copies: int) -> None:
        first = self.frames + 1
        self.frames += copies
        if not len(result):
            return
        image = result.image
        labels = result.labels.tolist()
        names = [self.slugs[k] if 0 <= k < len(self.slugs) else "box" for k in labels]
        colors = [self.colors(self.prompts[k] if 0 <= k < len(self.prompts) else "box") for k in labels]
        merged = image.copy() if self.options.merged else None
        for oid, label, mask, present, color in zip(result.object_ids.tolist(), labels, result.masks,
                                                    result.present.tolist(), colors, strict=True):
            obj = self._object(oid, label, first)
            obj["last_frame"] = self.frames
            obj["frames_present"] += copies * int(bool(present))
            obj["writers"][BINARY].write(_gray_rgb(mask), copies)
            obj["writers"][OVERLAY].write(blend(image.copy(), mask, color), copies)
            if merged is not None:
                blend(merged, mask, color)
        if merged is not None:
            self._merged_writer(BINARY, "merged_mask.mp4").write(_gray_rgb(np.any(result.masks, axis=0)), copies)
            self._merged_writer(OVERLAY, "merged_overlay.mp4").write(merged, copies)
        if self.frames_png:
            numbers = [f"{j:06d}" for j in range(first, self.frames + 1)]
            jobs = image_jobs(self.root, numbers[0], image, result.masks, names, colors, self.options,
                              object_ids=result.object_ids.tolist())
            while len(self._png_jobs) > 4 * max(len(jobs), 1):  # bounded: the PNGs of a few frames
                self._png_jobs.popleft().result()
            for job in jobs:
                self._png_jobs.append(self._png_pool.submit(
                    (lambda j=job: _copy_as(j(), numbers)) if copies > 1 else job))


def run_video(pipe: Any, path: Path, prompts: Sequence[str], out: Path, *, options: OutputOptions = OutputOptions(),
              fps: float = DEFAULT_FPS, redetect_every: int | None = None, threshold: float | None = None,
              frames: bool = True, progress: bool = True, workers: int | None = None,
              **tracker_options) -> dict[str, Any]:
    """The video branch of ``tools.infer``: sample the video at ``path`` at ``fps``, track
    ``prompts`` through it with ``pipe`` (a ``runtime.Pipeline``: its artifact, backend, precision,
    OWLv2 detector and prompt template) and write SOWLv2's video outputs into the folder ``out``.
    Returns a summary.

    A truncated video: the frames before the break are tracked and written, the outputs finished,
    then the ``VideoReadError`` propagates (the CLI prints it as one line).
    """
    from tqdm import tqdm

    from runtime.tracker import Sam2Tracker, track
    from runtime.video_io import open_frames

    with open_frames(path) as source:
        source_fps = source.info.fps
        if source_fps is None:
            log.warning("%s: no frame rate known; every frame is kept, videos written at %g fps", path, fps)
        copies: deque[int] = deque()

        def kept() -> Iterator[np.ndarray]:
            for frame, n in sampled(source, source_fps, fps):
                copies.append(n)
                yield frame

        total = source.info.num_frames
        if total and source_fps:
            total = math.ceil(total * Fraction(fps).limit_denominator(1001) / Fraction(source_fps).limit_denominator(1001))
        outputs = VideoOutputs(out, prompts, fps, options, frames, workers)
        # closed on the way out, as in Pipeline.track: the tracker's CUDA streams (TensorRT) with it
        try:
            with Sam2Tracker.open(pipe.manifest, pipe.backend, pipe.precision, **tracker_options) as tracker, \
                    tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, desc="tracking") as bar:
                t = pipe.default_threshold if threshold is None else float(threshold)
                for result in track(kept(), tracker, pipe.owl, pipe.texts(list(prompts)), redetect_every=redetect_every,
                                    threshold=t):
                    n = copies.popleft()
                    outputs.write(result, n)
                    bar.update(n)
                    bar.set_postfix(objects=len(result), refresh=False)
        except BaseException:
            try:
                outputs.close()  # the frames before the error, finished
            except UserError as e:
                log.warning("%s", e)
            raise
        outputs.close()
    return {"frames": outputs.frames, "objects": outputs.objects, "fps": fps, "source_fps": source_fps,
            "stage_ms_per_frame": tracker.timer.per_frame_ms()}
