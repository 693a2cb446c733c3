"""Generated images and videos for tests, calibration and measurements (no downloaded data).

    from tools.bench.synthetic import MovingShapes, synthetic_image
    image = synthetic_image(480, 640, seed=0)   # HxWx3 uint8: smooth background, a few bright shapes
    video = MovingShapes(num_frames=30, height=96, width=128, num_shapes=3, seed=0)
    for frame in video: ...            # HxWx3 uint8 RGB, generated on demand
    video.boxes(0)                     # (num_shapes, 4) float32 xyxy of each shape on frame 0

Shapes (discs and rectangles of distinct colours) move at constant speed and bounce off the borders
over a smoothly drifting background; everything is a pure function of the seed and frame index, so
a 10,000-frame stream costs no memory. Only numpy is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class _Shape:
    kind: str  # "disc" or "rect"
    x: float  # centre at frame 0
    y: float
    vx: float  # pixels per frame
    vy: float
    rx: float  # half sizes (radius for a disc: rx == ry)
    ry: float
    colour: tuple[int, int, int]


def _bounce(p0: float, v: float, t: int, lo: float, hi: float) -> float:
    """Position at frame t of a point moving at v from p0 and reflecting between lo and hi."""
    span = hi - lo
    if span <= 0:
        return lo
    q = (p0 - lo + v * t) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


class MovingShapes:
    """``num_frames`` frames of ``height`` x ``width`` with ``num_shapes`` shapes (``None``: endless)."""

    def __init__(self, num_frames: int | None = 30, height: int = 96, width: int = 128, num_shapes: int = 3,
                 seed: int = 0, speed: float = 1.5) -> None:
        if height < 16 or width < 16:
            raise ValueError(f"frames of {height}x{width} are too small for shapes; use at least 16x16")
        self.num_frames, self.height, self.width, self.seed = num_frames, height, width, seed
        rng = np.random.default_rng(seed)
        side = min(height, width)
        palette = [(230, 50, 40), (40, 200, 70), (50, 80, 230), (240, 220, 40), (200, 60, 220), (40, 220, 220)]
        shapes = []
        for i in range(num_shapes):
            r = float(rng.uniform(0.08, 0.16) * side)
            kind = "disc" if i % 2 == 0 else "rect"
            rx, ry = (r, r) if kind == "disc" else (r, float(r * rng.uniform(0.6, 1.4)))
            angle = rng.uniform(0, 2 * np.pi)
            shapes.append(_Shape(kind, float(rng.uniform(rx, width - rx)), float(rng.uniform(ry, height - ry)),
                                 float(speed * np.cos(angle)), float(speed * np.sin(angle)), rx, ry,
                                 palette[i % len(palette)]))
        self.shapes = tuple(shapes)
        self._phase = rng.uniform(0, 2 * np.pi, 3)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._yy, self._xx = yy, xx

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("an endless MovingShapes has no length")
        return self.num_frames

    def centres(self, t: int) -> list[tuple[float, float]]:
        return [(_bounce(s.x, s.vx, t, s.rx, self.width - s.rx), _bounce(s.y, s.vy, t, s.ry, self.height - s.ry))
                for s in self.shapes]

    def boxes(self, t: int) -> np.ndarray:
        """xyxy box of each shape on frame t (pixels, float32)."""
        return np.array([[cx - s.rx, cy - s.ry, cx + s.rx, cy + s.ry]
                         for s, (cx, cy) in zip(self.shapes, self.centres(t))], np.float32).reshape(-1, 4)

    def frame(self, t: int) -> np.ndarray:
        yy, xx = self._yy, self._xx
        h, w = self.height, self.width
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            img[..., c] = 70 + 40 * np.sin(xx / w * 5 + yy / h * 3 + self._phase[c] + 0.02 * t)
        for s, (cx, cy) in zip(self.shapes, self.centres(t)):
            if s.kind == "disc":
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= s.rx**2
            else:
                inside = (np.abs(xx - cx) <= s.rx) & (np.abs(yy - cy) <= s.ry)
            img[inside] = s.colour
        return np.clip(img, 0, 255).astype(np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        t = 0
        while self.num_frames is None or t < self.num_frames:
            yield self.frame(t)
            t += 1


def synthetic_image(h: int, w: int, seed: int = 0, num_shapes: int = 4, rectangles: bool = False,
                    noise: float = 0.0) -> np.ndarray:
    """A still HxWx3 uint8 RGB image: a smooth background with ``num_shapes`` bright discs (or, with
    ``rectangles``, discs and rectangles) and optional Gaussian ``noise``: content that resizes and
    calibrates like a photo does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        img[..., c] = 0.5 + 0.3 * np.sin(fy * yy / h * 6.28 + ph) * np.cos(fx * xx / w * 6.28)
    for _ in range(num_shapes):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        r = rng.uniform(0.05, 0.25) * min(h, w)
        if rectangles and rng.uniform() >= 0.5:
            shape = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < 1.5 * r)
        else:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[shape] = rng.uniform(0, 1, 3)
    if noise:
        img += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)
