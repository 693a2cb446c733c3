"""Calibration inputs of SAM2's video graphs, recorded from the FP32 tracker on short clips.

The memory graphs' inputs are the tracker's own state, so they are not made here: the FP32 tracker
(:class:`runtime.tracker.Sam2Tracker`) runs with each graph wrapped in a recording proxy over clips
made of the calibration images (a slow camera move into each), and the feeds of its calls are kept.
Why clips of that kind, which frames are kept and in which order: docs/ARCHITECTURE.md ("Calibrating
SAM2's memory").
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol

import numpy as np

from calibration.images import CalibrationImages, spread_order
from runtime.backends import GraphRunner
from runtime.graphs import (NUM_BOXES, NUM_OBJECTS, SAM2_MEMORY_ATTENTION, SAM2_MEMORY_ENCODER, SAM2_OBJECT_POINTER,
                            SAM2_TRACK_DECODER, GraphSpec)
from runtime.preprocessing import Sam2Preprocessing
from runtime.tracker import TRACKING_GRAPHS, Sam2Tracker, ort_objects_per_call, tracker_limits

#: The video graphs whose calibration feeds are the tracker's recorded calls.
RECORDED_GRAPHS = (SAM2_MEMORY_ATTENTION.name, SAM2_TRACK_DECODER.name, SAM2_OBJECT_POINTER.name,
                   SAM2_MEMORY_ENCODER.name)
#: Sizes of the artifact the tracker needs (``export.sam2_video.sam2_video_sizes`` adds them).
VIDEO_SIZES = ("sam_num_maskmem", "sam_max_object_pointers", "sam_memory_tokens", "sam_memory_dim", "sam_embed_dim")


@dataclass(frozen=True)
class VideoClips:
    """How calibration images become tracked clips (see the module docstring)."""

    clips: int = 4  # calibration images made into clips, spread over the set
    objects: int = 4  # objects started on each clip's first frame
    runs: int = 16  # feeds kept per recorded graph, over all clips
    frames: int | None = None  # frames per clip; None: sam_max_object_pointers + 1
    zoom: float = 0.8  # window side on the last frame, as a fraction of the image's
    drift: float = 0.1  # distance the window's centre moves, as a fraction of the image

    def __post_init__(self) -> None:
        if self.clips < 1 or self.objects < 1 or self.runs < 1 or (self.frames is not None and self.frames < 2):
            raise ValueError(f"video calibration needs at least one clip, object and run and two frames, got {self}")
        if not (0.0 < self.zoom <= 1.0 and 0.0 <= self.drift <= 1.0 - self.zoom + 1e-9):
            raise ValueError(f"video calibration window: zoom in (0, 1] and drift <= 1 - zoom, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_frame(image: np.ndarray, t: int, frames: int, zoom: float, drift: float, direction: np.ndarray) -> np.ndarray:
    """Frame ``t`` of the clip made of ``image``: the window of side ``1 - (1 - zoom) * t / (frames - 1)``
    of the image, its centre moved by ``drift * t / (frames - 1)`` of the image along ``direction``
    (a unit vector, x then y) and kept inside, resized back to the image's size (bilinear)."""
    if t == 0:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    f = t / (frames - 1)
    side = 1.0 - (1.0 - zoom) * f
    cx, cy = w * (0.5 + drift * f * direction[0]), h * (0.5 + drift * f * direction[1])
    x0 = float(np.clip(cx - side * w / 2, 0.0, w - side * w))
    y0 = float(np.clip(cy - side * h / 2, 0.0, h - side * h))
    box = (x0, y0, x0 + side * w, y0 + side * h)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR, box=box))


class _Recorder:
    """A graph runner that runs the wrapped one and, while ``active``, keeps a copy of each call's
    feeds in ``calls``."""

    def __init__(self, runner, calls: list[dict[str, np.ndarray]] | None) -> None:
        self.spec: GraphSpec = runner.spec
        self._runner = runner
        self.calls = calls
        self.active = False

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.active and self.calls is not None:
            self.calls.append({n: np.array(feeds[n], dtype=t.dtype, copy=True)
                               for n, t in zip(self.spec.input_names, self.spec.inputs, strict=True)})
        return self._runner.run(feeds)


def zigzag(items: list, shortest_first: bool) -> list:
    """``items`` (ordered by bank length) as last, first, second to last, second, … (or first, last, …)."""
    out, lo, hi = [], 0, len(items) - 1
    take_hi = not shortest_first
    while lo <= hi:
        if take_hi:
            out.append(items[hi])
            hi -= 1
        else:
            out.append(items[lo])
            lo += 1
        take_hi = not take_hi
    return out


def evenly(items: list, count: int) -> list:
    """``count`` of ``items`` evenly spaced, first and last included (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in sorted({int(round(x)) for x in np.linspace(0, len(items) - 1, count)})]


class ClipSource(Protocol):
    """What a recording needs of the calibration inputs it belongs to
    (:class:`calibration.inputs.CalibrationInputs` is one)."""

    images: CalibrationImages
    sam: Sam2Preprocessing
    seed: int
    progress: bool

    def decoder_boxes(self, i: int) -> np.ndarray: ...

    def fp32_graph(self, name: str) -> GraphRunner: ...


class VideoRecording:
    """Tracks the clips of a :class:`ClipSource` on its FP32 graphs and keeps the feeds of the
    recorded graphs, one clip at a time, on demand."""

    def __init__(self, inputs: ClipSource, sizes: Mapping[str, int], max_dims: Mapping[str, int],
                 settings: VideoClips) -> None:
        self.inputs = inputs
        self.sizes = dict(sizes)
        self.settings = settings
        self.frames = settings.frames or int(sizes["sam_max_object_pointers"]) + 1
        self.images = spread_order(len(inputs.images), settings.clips)[: settings.clips]
        self.max_objects_per_call = int(max_dims[NUM_OBJECTS])
        self.max_boxes_per_call = int(max_dims[NUM_BOXES])
        self.limits = tracker_limits({d: {"max": v} for d, v in max_dims.items()})
        self.objects_per_call = min(ort_objects_per_call(sizes), self.max_objects_per_call)
        self._clips: dict[int, dict[str, list[dict[str, np.ndarray]]]] = {}

    def record(self) -> dict[str, Any]:
        """What the cache key and the manifest say about the clips (with the resolved sizes)."""
        return {**self.settings.to_dict(), "frames": self.frames, "objects_per_call": self.objects_per_call}

    def feeds(self, graph: str, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        if graph not in RECORDED_GRAPHS:
            raise KeyError(f"{graph!r} is not a recorded video graph")
        n_clips = len(self.images) if limit is None else min(limit, len(self.images))
        per_clip = [self._clip(c)[graph] for c in range(n_clips)]
        out = []
        for k in range(max((len(p) for p in per_clip), default=0)):
            out += [p[k] for p in per_clip if k < len(p)]
        return out if limit is None else out[:limit]

    def _clip(self, c: int) -> dict[str, list[dict[str, np.ndarray]]]:
        if c not in self._clips:
            self._clips[c] = self._track_clip(c)
        return self._clips[c]

    def _track_clip(self, c: int) -> dict[str, list[dict[str, np.ndarray]]]:
        i = self.images[c]
        inputs = self.inputs
        calls: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in RECORDED_GRAPHS}
        graphs = {g.name: _Recorder(inputs.fp32_graph(g.name), calls.get(g.name)) for g in TRACKING_GRAPHS}
        tracker = Sam2Tracker(graphs, inputs.sam, self.sizes, self.max_objects_per_call, self.max_boxes_per_call,
                              **self.limits, objects_per_call=self.objects_per_call, max_objects=self.settings.objects)
        image = inputs.images.load(i)
        boxes = inputs.decoder_boxes(i)[: self.settings.objects]
        rng = np.random.default_rng([inputs.seed, i, 1])
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        steps = range(self.frames)
        if inputs.progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"tracking calibration clip {c + 1}/{len(self.images)}", unit="frame",
                         leave=False, file=sys.stderr)
        per_clip = max(1, -(-self.settings.runs // len(self.images)))
        keep = {0, *evenly(list(range(1, self.frames)), per_clip)}
        with tracker:  # closed however the clip ends
            for t in steps:
                frame = clip_frame(image, t, self.frames, self.settings.zoom, self.settings.drift, direction)
                for g in graphs.values():
                    g.active = t in keep
                tracker.step(frame, boxes if t == 0 else None, dedupe=False)
        del tracker, graphs
        return {name: zigzag(kept, shortest_first=c % 2 == 1) for name, kept in calls.items()}

    def close(self) -> None:
        self._clips.clear()

