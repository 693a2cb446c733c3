"""SOWLv2's output tree for images, written on worker threads beside the predictions (``tools.infer``,
``tools.client``).

One image's files (``F``: its frame number, six digits — the number of a file whose stem is digits,
else 000001; ``k``: objects numbered from 1 in detection order; ``prompt``: ``prompt_slug``)::

    binary/frames/F_obj{k}_{prompt}_mask.png       0/255 gray, one per object
    binary/merged/F_merged_mask.png                the union of the image's masks
    overlay/frames/F_obj{k}_{prompt}_overlay.png   the image, the mask blended 50 % in its prompt's colour
    overlay/merged/F_merged_overlay.png            every mask blended in turn, in detection order

A single image writes them under OUT, a folder's images each under ``OUT/<folder_names(...)>``;
``OUT/detections.json`` holds the COCO results (RLE masks) of every image. Colours are SOWLv2's
palette, given to prompts in the order they are first detected in a run. An image without
detections writes nothing, and no folder is left empty. ``OutputWriter`` does all of it; the output
folder is written as a hidden sibling and renamed into place at the end (``StagedOutput``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np

from runtime import rle
from runtime.errors import UserError
from tools.png import PngCanvas

BINARY, OVERLAY, FRAMES, MERGED = "binary", "overlay", "frames", "merged"
DETECTIONS_NAME = "detections.json"

#: SOWLv2's overlay colours (RGB), in the order it hands them to prompts.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 0, 0), (0, 128, 0),
    (0, 0, 128), (128, 128, 0), (0, 128, 128), (128, 0, 128), (255, 128, 0), (255, 0, 128), (0, 255, 128),
    (128, 255, 0), (0, 128, 255), (128, 0, 255), (192, 192, 192), (255, 215, 0), (138, 43, 226), (75, 0, 130),
    (240, 128, 128), (32, 178, 170),
)

_UNSAFE = re.compile(r"[^\w.\-]+")  # keep letters, digits, _, ., - (Unicode letters too)
_MAX_SLUG = 64


def prompt_slug(prompt: str) -> str:
    """A prompt as a file-name part: spaces to ``_`` (as SOWLv2), anything unsafe in a name too."""
    slug = _UNSAFE.sub("_", prompt.strip().replace(" ", "_")).strip("._") or "prompt"
    return slug[:_MAX_SLUG]


def frame_number(stem: str) -> str:
    """SOWLv2's six-digit frame number of an image: its stem's number when the stem is digits, else 1."""
    return f"{int(stem) if stem.isascii() and stem.isdigit() else 1:06d}"


def folder_names(files: Sequence[Path]) -> list[str]:
    """The sub-folder of each image of a folder: its stem in lower case (as SOWLv2). Stems that
    collide (``a.jpg``, ``A.png``) get their suffix appended (``a_jpg``, ``a_png``), and a name still
    taken (``a_png.jpg`` beside those) a counter: no two images share a folder."""
    stems = [f.stem.lower() for f in files]
    counts = Counter(stems)
    names = [f"{s}_{f.suffix.lstrip('.').lower()}" if counts[s] > 1 else s for s, f in zip(stems, files, strict=True)]
    taken: set[str] = set()
    out = []
    for name in names:
        unique, k = name, 1
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        out.append(unique)
    return out


class PromptColors:
    """A colour per prompt, from ``PALETTE`` in the order prompts are first seen (one map per run, as SOWLv2)."""

    def __init__(self) -> None:
        self._colors: dict[str, tuple[int, int, int]] = {}

    def __call__(self, prompt: str) -> tuple[int, int, int]:
        if prompt not in self._colors:
            self._colors[prompt] = PALETTE[len(self._colors) % len(PALETTE)]
        return self._colors[prompt]


@dataclass(frozen=True)
class OutputOptions:
    binary: bool = True
    overlay: bool = True
    merged: bool = True


# ----------------------------------------------------------------------------------------------
# Pixels


_PIXEL = np.dtype("V3")  # an RGB pixel as one 3-byte item


@functools.lru_cache(maxsize=64)
def _tint(color: tuple[int, ...], width: int) -> np.ndarray:
    """A row of ``width`` pixels of ``color`` (read-only): made once, not per mask and band of rows."""
    row = np.tile(np.asarray(color, np.uint8), width)
    row.flags.writeable = False
    return row


def blend(pixels: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """Blend ``color`` into ``pixels`` (H x W x 3 uint8) where ``mask`` (H x W bool), in place:
    ``floor((p + c) / 2)``, SOWLv2's ``0.5 * p + 0.5 * c`` truncated to uint8. Returns ``pixels``.

    The mean is taken over whole rows (the colour tiled along a row), in chunks of rows that stay in
    cache, and copied back where the mask is set with pixels seen as 3-byte items: numpy's loops over
    a last axis of 3, and a mask repeated per channel, are several times slower."""
    h, w = mask.shape
    if not (h and w):
        return pixels
    tint = _tint(tuple(int(c) for c in color), w)
    step = max(1, (1 << 20) // (3 * w))
    mixed, half = np.empty((2, min(step, h), 3 * w), np.uint8)
    for y in range(0, h, step):
        rows = pixels[y : y + step].reshape(-1, 3 * w)  # a view while pixels' rows are contiguous
        if not np.shares_memory(rows, pixels):
            raise ValueError("blend needs pixels whose rows are contiguous")
        n = len(rows)
        np.bitwise_and(rows, tint, out=mixed[:n])  # the floor of the mean, in uint8 without overflow:
        np.bitwise_xor(rows, tint, out=half[:n])  # (p & c) + (p ^ c) // 2 (// 2: numpy's uint8 >> is not vectorised)
        np.floor_divide(half[:n], 2, out=half[:n])
        np.add(mixed[:n], half[:n], out=mixed[:n])
        np.copyto(rows.view(_PIXEL), mixed[:n].view(_PIXEL), where=mask[y : y + step].astype(bool, copy=False))
    return pixels


def overlay_image(image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A copy of ``image`` with each mask blended in turn in its colour (SOWLv2's merged overlay)."""
    out = image.copy()
    for mask, color in zip(masks, colors, strict=True):
        blend(out, mask, color)
    return out


def _blend_edit(masks: Sequence[np.ndarray], extents: Sequence[tuple[int, int, int, int]],
                colors: Sequence[Sequence[int]]) -> Callable[[np.ndarray, int], None]:
    def edit(block: np.ndarray, top: int) -> None:
        for mask, (y0, y1, x0, x1), color in zip(masks, extents, colors, strict=True):
            a, b = max(y0, top), min(y1, top + len(block))  # the mask's rows within this band
            if b > a:
                blend(block[a - top : b - top, x0:x1], mask[a:b, x0:x1], color)

    return edit


def _mask_edit(masks: Sequence[np.ndarray]) -> Callable[[np.ndarray, int], None]:
    def edit(block: np.ndarray, top: int) -> None:
        rows = slice(top, top + len(block))
        union = masks[0][rows].copy()
        for m in masks[1:]:
            np.logical_or(union, m[rows], out=union)
        np.multiply(union.view(np.uint8), np.uint8(255), out=block)

    return edit


def _span(extents: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    spans = [(y0, y1) for y0, y1, _, _ in extents if y1 > y0]
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)


# ----------------------------------------------------------------------------------------------
# Files


def _write(path: Path, data: bytes) -> Path:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); check the --output folder") from None
    return path


def image_jobs(dest: Path, frame: str, image: np.ndarray, masks: np.ndarray, labels: Sequence[str],
               colors: Sequence[Sequence[int]], options: OutputOptions, object_ids: Sequence[int] | None = None,
               extents: Sequence[tuple[int, int, int, int]] | None = None) -> list[Callable[[], Path]]:
    """The PNGs of one image (or video frame) as independent jobs, longest first; each writes one
    file under ``dest`` and returns its path. Creates the folders they need; nothing for no masks.

    ``masks``: (N, H, W) bool; ``labels``: each mask's prompt slug; ``colors``: each mask's colour;
    ``object_ids``: the ``k`` of each mask (default 1..N); ``extents``: each mask's ``rle.mask_extent``
    where the caller has them already."""
    n = len(masks)
    if n == 0 or not (options.binary or options.overlay):
        return []
    ids = list(object_ids) if object_ids is not None else list(range(1, n + 1))
    h, w = image.shape[:2]
    extents = list(extents) if extents is not None else [rle.mask_extent(m) for m in masks]
    canvas = PngCanvas(image) if options.overlay else None
    blank = PngCanvas.blank(h, w) if options.binary else None
    jobs: list[Callable[[], Path]] = []
    for kind, enabled in ((BINARY, options.binary), (OVERLAY, options.overlay)):
        if enabled:
            (dest / kind / FRAMES).mkdir(parents=True, exist_ok=True)
            if options.merged:
                (dest / kind / MERGED).mkdir(parents=True, exist_ok=True)
    if options.merged and canvas is not None:
        path = dest / OVERLAY / MERGED / f"{frame}_merged_overlay.png"
        jobs.append(lambda p=path: _write(p, canvas.png(*_span(extents), _blend_edit(masks, extents, colors))))
    if options.merged and blank is not None:
        path = dest / BINARY / MERGED / f"{frame}_merged_mask.png"
        jobs.append(lambda p=path: _write(p, blank.png(*_span(extents), _mask_edit(masks))))
    for i in range(n):
        name = f"{frame}_obj{ids[i]}_{labels[i]}"
        one_mask, one_extent = [masks[i]], [extents[i]]
        if canvas is not None:
            path = dest / OVERLAY / FRAMES / f"{name}_overlay.png"
            jobs.append(lambda p=path, m=one_mask, e=one_extent, c=[colors[i]]:
                        _write(p, canvas.png(*_span(e), _blend_edit(m, e, c))))
        if blank is not None:
            path = dest / BINARY / FRAMES / f"{name}_mask.png"
            jobs.append(lambda p=path, m=one_mask, e=one_extent: _write(p, blank.png(*_span(e), _mask_edit(m))))
    return jobs


def write_image_outputs(dest: Path, frame: str, image: np.ndarray, result: Any, options: OutputOptions,
                        colors: PromptColors) -> list[Path]:
    """Every PNG of one image (``result``: a ``runtime.Result``), on this thread; returns the paths."""
    labels = [result.prompts[int(k)] for k in result.labels]
    jobs = image_jobs(Path(dest), frame, image, result.masks, [prompt_slug(p) for p in labels],
                      [colors(p) for p in labels], options)
    return [job() for job in jobs]


def coco_records(result: Any, image_id: int, file_name: str,
                 extents: Sequence[tuple[int, int, int, int]] | None = None) -> list[dict[str, Any]]:
    """COCO results rows of one image: ``category_id`` is the prompt index + 1, ``bbox`` is
    ``[x, y, w, h]`` clipped to the image, ``segmentation`` compressed RLE; ``prompt`` and
    ``file_name`` are extra keys that COCO tools ignore."""
    rows = []
    h, w = result.masks.shape[1:]  # (N, H, W), also when N is 0
    known = extents if extents is not None else [None] * len(result.masks)  # each mask's rle.mask_extent, if known
    for box, score, label, mask, extent in zip(result.boxes, result.scores, result.labels, result.masks, known,
                                               strict=True):
        x0, x1 = (float(np.clip(v, 0, w)) for v in (box[0], box[2]))
        y0, y1 = (float(np.clip(v, 0, h)) for v in (box[1], box[3]))
        rows.append({
            "image_id": int(image_id),
            "file_name": file_name,
            "category_id": int(label) + 1,
            "prompt": result.prompts[int(label)],
            "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
            "score": round(float(score), 6),
            "segmentation": rle.encode(mask, extent),
        })
    return rows


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` by ``write(binary file)`` into a temporary file beside it, renamed over ``path``
    once complete: a reader never sees half a file, and a failure leaves no temporary file behind.
    The file gets the usual permissions (0666 less the umask). OSError propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets, not results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_detections(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(root) / DETECTIONS_NAME
    text = json.dumps(rows, separators=(",", ":")) + "\n"
    try:
        write_atomic(path, lambda f: f.write(text.encode()))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); check the --output folder") from None
    return path


# ----------------------------------------------------------------------------------------------
# The output folder


class StagedOutput:
    """The output folder, written as a hidden sibling (``.NAME.partial-PID``) and renamed into place
    by ``commit``: a failed run leaves the folder as it was. An existing folder that is not empty
    is refused unless ``overwrite``; then ``commit`` replaces it as a whole."""

    def __init__(self, root: str | os.PathLike, overwrite: bool = False) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"output {root} exists and is not a folder; choose another --output")
        if self.root.is_dir() and not overwrite:
            held = sorted(p.name for p in self.root.iterdir())
            if held:
                raise UserError(f"output folder {root} is not empty (it holds {', '.join(held[:3])}"
                                f"{', ...' if len(held) > 3 else ''}); pass --overwrite to replace it, or choose "
                                "another --output")
        self.path = self.root.parent / f".{self.root.name}.partial-{os.getpid()}"
        try:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"cannot create the output folder {root} ({e.strerror or e}); choose a writable "
                            "--output") from None

    def commit(self) -> Path:
        old = self.root.parent / f".{self.root.name}.old-{os.getpid()}"
        try:
            if self.root.exists():
                self.root.rename(old)
            self.path.rename(self.root)
        except OSError as e:
            raise UserError(f"cannot move the results into {self.root} ({e.strerror or e}); they are in "
                            f"{self.path}") from None
        shutil.rmtree(old, ignore_errors=True)
        return self.root

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class OutputWriter:
    """Writes images' results into SOWLv2's tree: ``add`` queues an image's PNGs on ``workers``
    threads and returns (waiting only while ``max_pending`` images are still being written, so
    memory stays bounded); ``close`` waits for the rest, writes ``detections.json`` and renames the
    folder into place; an error (or ``abort``) leaves the output folder as it was.

        with OutputWriter("out", overwrite=False) as out:
            out.add(image, pipe.predict(image, prompts), name="a.jpg", folder="a")   # folder "": OUT itself
    """

    def __init__(self, root: str | os.PathLike, options: OutputOptions = OutputOptions(), *, overwrite: bool = False,
                 workers: int | None = None, max_pending: int = 2) -> None:
        self.options = options
        self.colors = PromptColors()
        self.rows: list[dict[str, Any]] = []  # detections.json's, complete after close()
        self.images = 0
        self.files = 0
        self._staged = StagedOutput(root, overwrite)
        self._pool = ThreadPoolExecutor(workers or max(2, os.cpu_count() or 2), thread_name_prefix="write")
        self._pending: deque[Future] = deque()  # per image still written: its plan's future
        self._records: list[Future] = []  # per image: its plan's future, (COCO rows, file futures)
        self._max_pending = max(1, max_pending)

    @property
    def root(self) -> Path:
        return self._staged.root

    def add(self, image: np.ndarray, result: Any, *, name: str, folder: str = "") -> None:
        """Queue one image's outputs: ``name`` is its file name (``detections.json``, frame number),
        ``folder`` its sub-folder of the output ("" for a single image). Returns at once: even the
        planning (mask extents, RLE) runs on the pool."""
        while len(self._pending) >= self._max_pending:
            self._finish(self._pending.popleft())
        self.images += 1
        image_id = self.images
        labels = [result.prompts[int(k)] for k in result.labels]
        colors = [self.colors(p) for p in labels]  # here: first-seen order is the order of the images
        dest = self._staged.path / folder if folder else self._staged.path

        def plan() -> tuple[list[dict[str, Any]], list[Future]]:
            """The image's files queued, then its COCO rows (RLE) while the pool writes them; each
            mask's extent computed once for both."""
            extents = [rle.mask_extent(m) for m in result.masks]
            jobs = image_jobs(dest, frame_number(Path(name).stem), image, result.masks,
                              [prompt_slug(p) for p in labels], colors, self.options, extents=extents)
            files = [self._pool.submit(job) for job in jobs]
            return coco_records(result, image_id, name, extents), files

        planned = self._pool.submit(plan)
        self._records.append(planned)
        self._pending.append(planned)

    def _finish(self, planned: Future) -> None:
        for f in planned.result()[1]:
            f.result()
            self.files += 1

    def close(self) -> Path:
        """Wait for every file, write ``detections.json`` (when anything was detected) and move the
        folder into place; returns it."""
        try:
            while self._pending:
                self._finish(self._pending.popleft())
            self.rows = [row for f in self._records for row in f.result()[0]]
            if self.rows:
                write_detections(self._staged.path, self.rows)
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown()
        return self._staged.commit()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._staged.abort()

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
