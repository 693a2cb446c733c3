"""``python -m calibration.make_set``: a calibration folder from a video or from images you have.

    python -m calibration.make_set --from VIDEO|DIR --out DIR [--count N] [--force]

From a video (read by ``runtime.video_io``: PyAV, else OpenCV; ``pip install 'owlsam-trt[video]'``):
``N`` frames spread evenly over the whole video,
written as lossless PNG (``frame_000123.png``, the frame's index). From a folder: ``N`` of its
readable images (searched recursively, spread evenly over the sorted list; unreadable files skipped
with a count), copied byte for byte so that calibration decodes exactly what you gave. Calibrate
on what the deployment will see: frames of the cameras, photos of the domain.

The folder is written next to ``--out`` and renamed into place when complete; an existing non-empty
``--out`` is refused unless ``--force``. Then: ``python -m export.build --int8 --calib-dir DIR``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from calibration.images import DEFAULT_CALIBRATION_COUNT, IMAGE_SUFFIXES, list_image_files, read_calibration_images
from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.video_io import VideoReadError, open_frames

log = logging.getLogger(__name__)

def _count_frames(path: Path) -> int:
    """Frames of the video: as its container announces, else counted by decoding it once."""
    with open_frames(path) as source:
        if source.info.num_frames:
            return int(source.info.num_frames)
        n = 0
        try:
            for _ in source:
                n += 1
        except VideoReadError as e:
            if not e.frames_read:
                raise  # not even the first frame decodes: its one-line error says why
            n = e.frames_read
        return n


def frames_from_video(path: Path, out: Path, count: int, progress: bool = True) -> list[Path]:
    """Write ``count`` frames of the video at ``path``, evenly spread over it, as PNG files in ``out``
    (decoded by ``runtime.video_io``: PyAV, else OpenCV)."""
    from PIL import Image

    total = _count_frames(path)
    if total < 1:
        raise UserError(f"--from {path} has no frames; pass a video with frames, or a folder of images")
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, min(count, total)).round()})
    written: list[Path] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(wanted), desc=f"frames of {path.name}", unit="frame", leave=False, file=sys.stderr)
    targets = iter(wanted)
    target = next(targets)
    try:
        with open_frames(path) as source:
            for index, frame in enumerate(source):
                if index != target:
                    continue
                file = out / f"frame_{index:06d}.png"
                Image.fromarray(frame).save(file)
                written.append(file)
                if bar is not None:
                    bar.update(1)
                target = next(targets, None)
                if target is None:
                    break
    except VideoReadError as e:
        if not written:
            raise
        log.warning("%s; keeping the %d frames taken before it", e, len(written))
    finally:
        if bar is not None:
            bar.close()
    return written


def images_from_folder(src: Path, out: Path, count: int, progress: bool = True) -> tuple[list[Path], int]:
    """Copy ``count`` readable images of ``src`` into ``out``; returns (files written, files skipped)."""
    chosen = read_calibration_images(src, count, min_images=1, progress=progress)
    written = []
    for i, (path, name) in enumerate(zip(chosen.paths, chosen.names())):
        target = out / f"{i:05d}_{name.replace('/', '_')}"
        shutil.copyfile(path, target)
        written.append(target)
    return written, len(chosen.skipped)


def make_set(source: Path, out: Path, count: int = DEFAULT_CALIBRATION_COUNT, force: bool = False,
             progress: bool = True) -> list[Path]:
    """Make the calibration folder ``out`` from a video file or an image folder; returns its files."""
    source, out = Path(source), Path(out)
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    if not source.exists():
        raise UserError(f"--from {source} does not exist; pass a video file or a folder of images")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; choose another --out or pass --force to replace it")
    if source.is_dir():
        list_image_files(source)  # its errors (no images, unreadable) before anything is written
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"--from {source} is a single image; pass a folder of images (or a video)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if source.is_dir():
            files, skipped = images_from_folder(source, tmp, count, progress)
            note = f" ({skipped} unreadable skipped)" if skipped else ""
        else:
            files, note = frames_from_video(source, tmp, count, progress), ""
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {len(files)} calibration images to {out}{note}", file=sys.stderr)
    return [out / f.name for f in files]


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m calibration.make_set", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", required=True, type=Path, metavar="VIDEO|DIR",
                   help="a video file, or a folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="the calibration folder to write")
    p.add_argument("--count", type=whole_number(), default=DEFAULT_CALIBRATION_COUNT,
                   help=f"images to take, spread evenly (default {DEFAULT_CALIBRATION_COUNT})")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    make_set(args.source, args.out, args.count, args.force)
    return 0


if __name__ == "__main__":
    run_cli(main)
