"""A folder of calibration images: which files, which of them decode, and a digest of the set.

Images are searched recursively (hidden files and folders skipped) by suffix, sorted by path, and
``count`` of them chosen evenly spread over that order (frames dumped from a video are not all taken
from its first seconds). A file that does not decode (corrupt, truncated, not an image despite its
name) is skipped with its reason and the next unchosen file takes its place; fewer than
``min_images`` readable images is an error. Every error is a one-line ``UserError`` naming the
folder and the fix.

Decoded images are not kept: :meth:`CalibrationImages.load` decodes again when the calibration
inputs are built, so that a set of large photos costs one image of memory at a time. The digest is
the sha256 of the chosen files' relative paths and contents, in order: with the graphs' hashes it
keys the cache of calibration ranges.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError
from runtime.images import load_image
from runtime.manifest import sha256_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Fewer readable images than this is an error: ranges from a handful of images are noise.
MIN_CALIBRATION_IMAGES = 4
DEFAULT_CALIBRATION_COUNT = 32
MAKE_SET_HINT = "python -m calibration.make_set --from VIDEO|DIR --out DIR"


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), or a UserError saying why there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"calibration folder {folder} does not exist; pass a folder of images to --calib-dir "
                        f"(make one with {MAKE_SET_HINT})")
    if not folder.is_dir():
        raise UserError(f"--calib-dir {folder} is a file, not a folder; pass a folder of calibration images")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"calibration folder {folder} is not readable (permission denied); make it readable")
    found: list[Path] = []
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(root) / name)
    if errors and not found:
        e = errors[0]
        raise UserError(f"calibration folder {folder} is not readable ({e.strerror or e}); make it readable")
    if not found:
        raise UserError(f"calibration folder {folder} has no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}); "
                        f"add some, or make a set with {MAKE_SET_HINT}")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def spread_order(n: int, count: int) -> list[int]:
    """Indices ``0..n-1``: first ``count`` spread evenly over the range, then the others in order."""
    count = min(count, n)
    chosen = sorted({int(i) for i in np.linspace(0, n - 1, count).round()}) if count > 0 else []
    chosen_set = set(chosen)
    return chosen + [i for i in range(n) if i not in chosen_set]


@dataclass
class CalibrationImages:
    """The chosen, readable images of a calibration folder (paths; decode with :meth:`load`)."""

    folder: Path
    paths: list[Path]
    requested: int
    available: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    digest: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as an HxWx3 uint8 RGB array (the runtime's ``load_image``)."""
        return load_image(self.paths[i])

    def names(self) -> list[str]:
        return [p.relative_to(self.folder).as_posix() for p in self.paths]

    def record(self) -> dict[str, Any]:
        """What the manifest says about the set."""
        return {
            "folder": str(self.folder),
            "requested": self.requested,
            "available": self.available,
            "used": len(self.paths),
            "skipped": len(self.skipped),
            "skipped_files": [f"{name}: {why}" for name, why in self.skipped[:20]],
            "sha256": self.digest,
        }


def read_calibration_images(folder: str | os.PathLike, count: int = DEFAULT_CALIBRATION_COUNT,
                            min_images: int = MIN_CALIBRATION_IMAGES, progress: bool = True) -> CalibrationImages:
    """Choose ``count`` readable images of ``folder`` (each decoded once to check it)."""
    folder = Path(folder)
    if count < 1:
        raise UserError(f"--calib-count must be at least 1, got {count}")
    files = list_image_files(folder)
    order = spread_order(len(files), count)
    chosen: list[int] = []
    skipped: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=min(count, len(files)), desc="reading calibration images", unit="image", leave=False,
                   file=sys.stderr)
    try:
        for i in order:
            if len(chosen) == count:
                break
            path = files[i]
            try:
                load_image(path)
            except UserError as e:
                skipped.append((path.relative_to(folder).as_posix(), _reason(str(e), path)))
                continue
            chosen.append(i)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    chosen.sort()
    need = min(min_images, count)
    if len(chosen) < need:
        example = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(
            f"only {len(chosen)} of {len(files)} images in {folder} are readable ({len(skipped)} skipped{example}); "
            f"calibration needs at least {need}: add readable JPEG/PNG images"
        )
    if skipped:
        log.warning("skipped %d unreadable calibration image(s) in %s, e.g. %s: %s", len(skipped), folder, *skipped[0])
    if len(chosen) < count:
        log.warning("calibrating with %d images of %s (--calib-count asks for %d)", len(chosen), folder, count)
    paths = [files[i] for i in chosen]
    h = hashlib.sha256()
    for p in paths:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return CalibrationImages(folder, paths, count, len(files), skipped, h.hexdigest())


def _reason(message: str, path: Path) -> str:
    """The part of a load_image error after the file name (it starts with the path)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
