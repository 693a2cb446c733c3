"""SOWLv2's video outputs, written while frames stream through the tracker (for ``python -m tools.infer``).

Layout (SOWLv2's names; ``id`` is the tracker's object id, from 1; frames are numbered from 1 with
six digits; ``prompt`` as in ``tools.outputs.prompt_slug``)::

    OUT/video/binary/{id}_mask.mp4         per object: its mask (white on black), from its first frame
    OUT/video/overlay/{id}_overlay.mp4     per object: the frame with the mask blended in its prompt's colour
    OUT/video/binary/merged_mask.mp4       every frame: the union of the masks
    OUT/video/overlay/merged_overlay.mp4   every frame: every mask blended
    with --save-frames, the per-frame PNGs of tools.outputs:
    OUT/binary/frames/{frame:06d}_obj{id}_{prompt}_mask.png, OUT/binary/merged/{frame:06d}_merged_mask.png,
    OUT/overlay/frames/{frame:06d}_obj{id}_{prompt}_overlay.png, OUT/overlay/merged/{frame:06d}_merged_overlay.png
    OUT/tracks.json                        per object: id, prompt, first and last frame, frames present

Objects that start later (re-detection) get videos from their first frame on; a frame where an
object is absent shows an empty mask. Videos are H.264 (libx264, yuv420p, CRF 18, no look-ahead so
that dozens of open encoders stay small) at ``fps`` (the source's average rate unless --fps is
given; a variable-rate source is written at constant rate, every frame once); a frame of odd width or
height is padded by one black pixel, as yuv420p needs even sides. Nothing is held per frame: every
output is appended as the frame arrives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from runtime.errors import UserError
from tools.outputs import (BINARY, FRAMES, MERGED, OVERLAY, OutputOptions, _save_png, blend, color_of, prompt_slug,
                           write_atomic)

VIDEO = "video"
TRACKS_NAME = "tracks.json"
DEFAULT_FPS = 30.0


class _Writer:
    """One H.264 stream, opened on the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        import av
        from fractions import Fraction

        self.path = path
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

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if self.size is None:
            self.size = (h + h % 2, w + w % 2)
            self.stream.height, self.stream.width = self.size
        if (h, w) != self.size:
            padded = np.zeros((*self.size, 3), np.uint8)
            padded[:h, :w] = rgb
            rgb = padded
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
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


class VideoOutputs:
    """Append one tracked frame at a time to SOWLv2's video outputs; ``close`` finishes the files."""

    def __init__(self, root: Path, prompts: Sequence[str], fps: float, options: OutputOptions = OutputOptions(),
                 save_frames: bool = False) -> None:
        try:
            import av  # noqa: F401
        except ImportError:
            raise UserError("writing videos needs PyAV; pip install av") from None
        if not fps > 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.root, self.prompts, self.fps = Path(root), list(prompts), float(fps)
        self.options, self.save_frames = options, save_frames
        self.slugs = [prompt_slug(p) for p in self.prompts]
        self._objects: dict[int, dict[str, Any]] = {}  # id -> writers and summary
        self._merged: dict[str, _Writer] = {}
        self.frames = 0
        dirs = []
        for kind, enabled in ((BINARY, options.binary), (OVERLAY, options.overlay)):
            if enabled:
                dirs.append(self.root / VIDEO / kind)
                if save_frames:
                    dirs.append(self.root / kind / FRAMES)
                    if options.merged:
                        dirs.append(self.root / kind / MERGED)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output {self.root} exists and is not a folder; choose another --output")
        try:
            for d in [self.root, *dirs]:
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {self.root} ({e.strerror or e}); choose a writable --output") from None

    def _label_name(self, label: int) -> str:
        return self.slugs[label] if 0 <= label < len(self.slugs) else "box"

    def _object(self, oid: int, label: int, index: int) -> dict[str, Any]:
        if oid not in self._objects:
            obj = {"id": oid, "label": label, "prompt": self.prompts[label] if 0 <= label < len(self.prompts) else None,
                   "first_frame": index + 1, "last_frame": index + 1, "frames_present": 0, "writers": {}}
            if self.options.binary:
                obj["writers"][BINARY] = _Writer(self.root / VIDEO / BINARY / f"{oid}_mask.mp4", self.fps)
            if self.options.overlay:
                obj["writers"][OVERLAY] = _Writer(self.root / VIDEO / OVERLAY / f"{oid}_overlay.mp4", self.fps)
            self._objects[oid] = obj
        return self._objects[oid]

    def write(self, result: Any) -> None:
        """One ``runtime.tracker.TrackedFrame`` (with its ``image``)."""
        image = result.image
        if image is None:
            raise ValueError("TrackedFrame without its image: video outputs need the frame")
        h, w = image.shape[:2]
        stem = f"{result.index + 1:06d}"
        union = np.zeros((h, w), bool)
        merged = image.copy() if self.options.overlay and self.options.merged else None
        for oid, label, mask, present in zip(result.object_ids.tolist(), result.labels.tolist(), result.masks,
                                             result.present):
            obj = self._object(oid, label, result.index)
            obj["last_frame"] = result.index + 1
            obj["frames_present"] += int(bool(present))
            color = color_of(max(label, 0))
            mask_img = mask.astype(np.uint8) * np.uint8(255)
            overlay = blend(image, mask, color) if self.options.overlay else None
            if BINARY in obj["writers"]:
                obj["writers"][BINARY].write(np.repeat(mask_img[:, :, None], 3, axis=2))
            if overlay is not None:
                obj["writers"][OVERLAY].write(overlay)
            if self.save_frames:
                name = f"{stem}_obj{oid}_{self._label_name(label)}"
                if self.options.binary:
                    _save_png(self.root / BINARY / FRAMES / f"{name}_mask.png", mask_img)
                if overlay is not None:
                    _save_png(self.root / OVERLAY / FRAMES / f"{name}_overlay.png", overlay)
            union |= mask
            if merged is not None:
                blend(merged, mask, color, out=merged)
        if self.options.merged:
            if self.options.binary:
                merged_mask = union.astype(np.uint8) * np.uint8(255)
                self._merged_writer(BINARY, "merged_mask.mp4").write(np.repeat(merged_mask[:, :, None], 3, axis=2))
                if self.save_frames:
                    _save_png(self.root / BINARY / MERGED / f"{stem}_merged_mask.png", merged_mask)
            if merged is not None:
                self._merged_writer(OVERLAY, "merged_overlay.mp4").write(merged)
                if self.save_frames:
                    _save_png(self.root / OVERLAY / MERGED / f"{stem}_merged_overlay.png", merged)
        self.frames += 1

    def _merged_writer(self, kind: str, name: str) -> _Writer:
        if kind not in self._merged:
            self._merged[kind] = _Writer(self.root / VIDEO / kind / name, self.fps)
        return self._merged[kind]

    def close(self) -> Path:
        """Finish every video and write ``tracks.json``; returns its path."""
        errors = []
        for writer in [w for o in self._objects.values() for w in o["writers"].values()] + list(self._merged.values()):
            try:
                writer.close()
            except Exception as e:  # keep closing the others; report the first
                errors.append(f"{writer.path}: {e}")
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

    def __enter__(self) -> "VideoOutputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video_outputs(results: Iterable[Any], root: Path, prompts: Sequence[str], fps: float,
                        options: OutputOptions = OutputOptions(), save_frames: bool = False,
                        total: int | None = None, progress: bool = True) -> int:
    """Consume ``results`` (TrackedFrames) into the outputs, with a progress bar on stderr; returns the
    number of frames written. On an error mid-stream (a truncated video) the outputs written so far
    are finished (valid videos of the frames before the break) before the error propagates."""
    from tqdm import tqdm

    with VideoOutputs(root, prompts, fps, options, save_frames) as out, \
            tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True, desc="tracking") as bar:
        for result in results:
            out.write(result)
            bar.update(1)
            bar.set_postfix(objects=len(result), refresh=False)
    return out.frames


def run_video(pipe: Any, path: Path, prompts: Sequence[str], out: Path, *, options: OutputOptions = OutputOptions(),
              fps: float | None = None, redetect_every: int | None = None, threshold: float | None = None,
              save_frames: bool = False, progress: bool = True, **tracker_options) -> dict[str, Any]:
    """The video branch of ``python -m tools.infer``: track ``prompts`` through the video at ``path``
    with ``pipe`` (a ``runtime.Pipeline``: its artifact, backend, precision, OWLv2 detector and prompt
    template) and write SOWLv2's video outputs under ``out``. Returns a summary.

    A truncated video: the frames before the break are tracked and written, the outputs finished,
    then the ``VideoReadError`` propagates (the CLI prints it as one line).
    """
    import logging

    from runtime.tracker import Sam2Tracker, track
    from runtime.video_io import open_frames

    log = logging.getLogger("tools.video")
    with open_frames(path) as source:
        if fps is None:
            fps = source.info.fps
            if fps is None:
                fps = DEFAULT_FPS
                log.warning("%s: no frame rate known; writing videos at %g fps (set one with --fps)", path, fps)
        # closed on the way out, as in Pipeline.track: the tracker's CUDA streams (TensorRT) with it
        with Sam2Tracker.open(pipe.manifest, pipe.backend, pipe.precision, **tracker_options) as tracker:
            t = pipe.default_threshold if threshold is None else float(threshold)
            queries = pipe.texts(list(prompts))
            frames = write_video_outputs(track(source, tracker, pipe.owl, queries, redetect_every=redetect_every,
                                               threshold=t), out, prompts, fps, options, save_frames,
                                         total=source.info.num_frames, progress=progress)
    return {"frames": frames, "objects": tracker.next_id - 1, "fps": fps,
            "stage_ms_per_frame": tracker.timer.per_frame_ms()}
