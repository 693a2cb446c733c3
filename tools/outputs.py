"""Writers for ``python -m tools.infer``: SOWLv2's output layout plus a COCO results file.

Layout (SOWLv2's names; ``i`` counts the objects of an image from 0, as SOWLv2's code
does; ``stem`` and ``prompt`` have spaces turned into underscores)::

    OUT/binary/frames/{stem}_obj{i}_{prompt}_mask.png       0/255 grayscale, one per object
    OUT/binary/merged/{stem}_merged_mask.png                union of the image's masks
    OUT/overlay/frames/{stem}_obj{i}_{prompt}_overlay.png   the image, the mask blended 50% in its colour
    OUT/overlay/merged/{stem}_merged_overlay.png            every mask blended, in detection order
    OUT/detections.json                                     COCO results, masks as compressed RLE

Colours are per prompt (label), the same in every image. ``--no-binary`` / ``--no-overlay`` drop a
whole tree, ``--no-merged`` the two ``merged`` folders. An image without detections still gets its
merged mask (all zero) and merged overlay (the image itself).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
from PIL import Image

from runtime import rle
from runtime.errors import UserError

BINARY, OVERLAY, FRAMES, MERGED = "binary", "overlay", "frames", "merged"
DETECTIONS_NAME = "detections.json"

#: Overlay colours, by label: the ten "tab10" colours, then their lighter "tab20" companions.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)

_UNSAFE = re.compile(r"[^\w.\-]+")  # keep letters, digits, _, ., - (Unicode letters too)
_MAX_SLUG = 64


def prompt_slug(prompt: str) -> str:
    """A prompt as a file-name part: spaces to ``_`` (as SOWLv2), anything unsafe to ``_`` too."""
    slug = _UNSAFE.sub("_", prompt.strip().replace(" ", "_")).strip("._") or "prompt"
    return slug[:_MAX_SLUG]


def stem_slug(stem: str) -> str:
    """An input file's stem as a file-name part: spaces to ``_`` (as SOWLv2), nothing unsafe."""
    return _UNSAFE.sub("_", stem.replace(" ", "_")) or "image"


def color_of(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


@dataclass(frozen=True)
class OutputOptions:
    binary: bool = True
    overlay: bool = True
    merged: bool = True


def prepare_output(root: Path, options: OutputOptions) -> None:
    """Create the output folders (or fail with one line when ``root`` cannot be used)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"output {root} exists and is not a folder; choose another --output")
    dirs = []
    for kind, enabled in ((BINARY, options.binary), (OVERLAY, options.overlay)):
        if enabled:
            dirs.append(root / kind / FRAMES)
            if options.merged:
                dirs.append(root / kind / MERGED)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {root} ({e.strerror or e}); choose a writable --output") from None


def blend(image: np.ndarray, mask: np.ndarray, color: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """``image`` with ``mask`` pixels replaced by ``0.5 * pixel + 0.5 * color`` (rounded down), as SOWLv2."""
    out = image.copy() if out is None else out
    ys, xs = np.nonzero(mask)
    if len(ys):
        px = out[ys, xs].astype(np.uint16)
        out[ys, xs] = ((px + np.asarray(color, np.uint16)) >> 1).astype(np.uint8)
    return out


def _save_png(path: Path, array: np.ndarray) -> None:
    try:
        Image.fromarray(array).save(path, format="PNG", compress_level=1)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); check the --output folder") from None


def write_image_outputs(root: Path, stem: str, image: np.ndarray, result: Any, options: OutputOptions) -> list[Path]:
    """Every PNG of one image (``result``: a ``runtime.Result``); returns the paths written."""
    written: list[Path] = []
    slugs = [prompt_slug(p) for p in result.prompts]
    for i, (mask, label) in enumerate(zip(result.masks, result.labels, strict=True)):
        name = f"{stem}_obj{i}_{slugs[int(label)]}"
        if options.binary:
            path = root / BINARY / FRAMES / f"{name}_mask.png"
            _save_png(path, mask.astype(np.uint8) * np.uint8(255))
            written.append(path)
        if options.overlay:
            path = root / OVERLAY / FRAMES / f"{name}_overlay.png"
            _save_png(path, blend(image, mask, color_of(label)))
            written.append(path)
    if options.merged:
        if options.binary:
            union = np.any(result.masks, axis=0)  # (H, W) all False when there are no masks
            path = root / BINARY / MERGED / f"{stem}_merged_mask.png"
            _save_png(path, union.astype(np.uint8) * np.uint8(255))
            written.append(path)
        if options.overlay:
            merged = image.copy()
            for mask, label in zip(result.masks, result.labels, strict=True):
                blend(merged, mask, color_of(label), out=merged)
            path = root / OVERLAY / MERGED / f"{stem}_merged_overlay.png"
            _save_png(path, merged)
            written.append(path)
    return written


def coco_records(result: Any, image_id: int, file_name: str) -> list[dict[str, Any]]:
    """COCO results rows of one image: ``category_id`` is the prompt index + 1, ``bbox`` is
    ``[x, y, w, h]`` clipped to the image, ``segmentation`` compressed RLE; ``prompt`` and
    ``file_name`` are extra keys that COCO tools ignore."""
    rows = []
    h, w = result.masks.shape[1:]  # (N, H, W), also when N is 0
    for box, score, label, mask in zip(result.boxes, result.scores, result.labels, result.masks, strict=True):
        x0, x1 = (float(np.clip(v, 0, w)) for v in (box[0], box[2]))
        y0, y1 = (float(np.clip(v, 0, h)) for v in (box[1], box[3]))
        rows.append({
            "image_id": int(image_id),
            "file_name": file_name,
            "category_id": int(label) + 1,
            "prompt": result.prompts[int(label)],
            "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
            "score": round(float(score), 6),
            "segmentation": rle.encode(mask),
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
    path = root / DETECTIONS_NAME
    text = json.dumps(rows, separators=(",", ":")) + "\n"
    try:
        write_atomic(path, lambda f: f.write(text.encode()))
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}); check the --output folder") from None
    return path
