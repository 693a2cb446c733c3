"""``python -m tools.infer``: text-prompted segmentation of an image or a folder of images.

    python -m tools.infer --engines DIR --input IMAGE|FOLDER --prompt P [P ...] --output DIR
                          [--threshold T] [--backend auto|tensorrt|onnxruntime] [--precision fp32|fp16|int8]
                          [--nms-iou X] [--max-detections N] [--no-merged] [--no-binary] [--no-overlay]
                          [--config FILE.yaml] [--workers N]

Writes SOWLv2's layout (``binary/frames``, ``binary/merged``, ``overlay/frames``, ``overlay/merged``;
see ``tools/outputs.py``) and ``detections.json`` (COCO results with RLE masks). A folder is read in
name order, non-recursively, skipping hidden files; a file that is not a readable image is reported
and skipped, the rest processed (exit status 1 when any was skipped). Decoding and PNG writing run on
a small thread pool beside inference, with at most ``--workers`` images decoded ahead and
``--workers`` results waiting to be written, so memory stays flat whatever the folder size.

``--config`` reads the same options from a YAML file (keys as the long options, ``-`` or ``_``;
``merged``/``binary``/``overlay`` as booleans); the command line takes precedence. SOWLv2's
``owl_model``, ``sam_model`` and ``device`` keys are ignored with a warning (the models are
those of the engines directory).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli
from runtime.manifest import PRECISIONS
from runtime.pipeline import BACKENDS

log = logging.getLogger("tools.infer")

DEFAULTS: dict[str, Any] = {
    "threshold": None,  # the artifact's (0.1)
    "backend": "auto",
    "precision": "fp32",
    "nms_iou": None,
    "max_detections": None,
    "merged": True,
    "binary": True,
    "overlay": True,
    "workers": 2,
    "fps": None,  # the input video's
    "redetect_every": None,  # first frame only
    "save_frames": False,
}
REQUIRED = ("engines", "input", "prompt", "output")
SOWLV2_ONLY_KEYS = {"owl_model", "sam_model", "device"}


# ----------------------------------------------------------------------------------------------
# Option values: one converter per option, shared by the command line and the YAML file.


def _unit_float(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def _iou(text: Any) -> float:
    value = _unit_float(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("0 would suppress every overlapping box; use a value in (0, 1]")
    return value


def _count(text: Any) -> int:
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1 or (isinstance(text, float) and text != value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return value


def _positive_float(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _choice(choices: tuple[str, ...]):
    def convert(text: Any) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return convert


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _prompts(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise argparse.ArgumentTypeError(f"{value!r} is not a prompt or a list of prompts")
    return items


CONVERTERS = {
    "engines": str, "input": str, "output": str, "prompt": _prompts,
    "threshold": _unit_float, "nms_iou": _iou, "max_detections": _count, "workers": _count,
    "backend": _choice(BACKENDS), "precision": _choice(PRECISIONS),
    "merged": _boolean, "binary": _boolean, "overlay": _boolean,
    "fps": _positive_float, "redetect_every": _count, "save_frames": _boolean,
}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tools.infer",
                              description="Text-prompted segmentation (OWLv2 boxes, SAM2 masks) of an image or a folder.",
                              argument_default=argparse.SUPPRESS)
    p.add_argument("--engines", metavar="DIR", help="engines directory (python -m export.build --out DIR)")
    p.add_argument("--input", metavar="IMAGE|FOLDER", help="an image file or a folder of images")
    p.add_argument("--prompt", nargs="+", metavar="P", help="text prompts, e.g. --prompt cat 'red car'")
    p.add_argument("--output", metavar="DIR", help="output folder (created)")
    p.add_argument("--threshold", type=_unit_float, metavar="T", help="score threshold (default: the artifact's, 0.1)")
    p.add_argument("--backend", type=_choice(BACKENDS), metavar="|".join(BACKENDS), help="default auto")
    p.add_argument("--precision", type=_choice(PRECISIONS), metavar="|".join(PRECISIONS), help="default fp32")
    p.add_argument("--nms-iou", type=_iou, metavar="X", help="non-maximum suppression per prompt at this IoU (default: none)")
    p.add_argument("--max-detections", type=_count, metavar="N", help="keep the N best detections per image")
    p.add_argument("--no-merged", dest="merged", action="store_false", help="no binary/merged, overlay/merged")
    p.add_argument("--no-binary", dest="binary", action="store_false", help="no binary/ masks")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="no overlay/ images")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of these options (command line wins)")
    p.add_argument("--fps", type=_positive_float, metavar="F", help="frame rate of the output videos (default: the input's)")
    p.add_argument("--redetect-every", type=_count, metavar="N",
                   help="video: run OWLv2 every N frames to pick up new objects (default: first frame only)")
    p.add_argument("--save-frames", action="store_true", help="video: also write per-frame PNGs")
    p.add_argument("--workers", type=_count, metavar="N", help="threads that decode and write images (default 2)")
    return p


def read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read the config file {path} ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path} is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value, not a {type(data).__name__}")
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key in SOWLV2_ONLY_KEYS:
            log.warning("%s: %r is ignored (the models and device are those of the engines directory)", path, raw_key)
            continue
        if key.startswith("no_") and key[3:] in ("merged", "binary", "overlay"):
            key, value = key[3:], (not value) if isinstance(value, bool) else value
        if key not in CONVERTERS:
            raise UserError(f"{path}: unknown option {raw_key!r}; known: {', '.join(sorted(CONVERTERS))}")
        try:
            out[key] = CONVERTERS[key](value)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{path}: {raw_key}: {e}") from None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    given = vars(build_parser().parse_args(argv))
    config = read_config(given.pop("config")) if "config" in given else {}
    merged = {**DEFAULTS, **config, **given}
    missing = [k for k in REQUIRED if merged.get(k) is None]
    if missing:
        raise UserError(f"missing {', '.join('--' + k for k in missing)} (on the command line or in --config)")
    if not merged["prompt"]:
        raise UserError("no prompts given; pass at least one with --prompt")
    return argparse.Namespace(**merged)


# ----------------------------------------------------------------------------------------------
# Inputs.


def list_inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"input {path} does not exist; pass an image or video file, or a folder of images")
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    if not files:
        raise UserError(f"input folder {path} has no files; pass a folder of images")
    return files


def unique_stems(files: list[Path]) -> list[str]:
    """File stems as output names, no two alike even where the filesystem ignores case: stems that
    repeat (a.jpg, a.png; "a b.jpg", a_b.jpg) get their suffix appended, then a name still taken
    (a_png.jpg beside those) a counter."""
    from tools.outputs import stem_slug

    stems = [stem_slug(f.stem) for f in files]
    counts = Counter(s.casefold() for s in stems)
    names = [f"{s}_{stem_slug(f.suffix.lstrip('.'))}" if counts[s.casefold()] > 1 else s for s, f in zip(stems, files)]
    taken: set[str] = set()
    out = []
    for name in names:
        unique, k = name, 1
        while unique.casefold() in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique.casefold())
        out.append(unique)
    return out


# ----------------------------------------------------------------------------------------------
# Running.


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("runtime.pipeline").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = list_inputs(Path(args.input))

    from runtime.pipeline import Pipeline, check_prompts
    from runtime.video_io import is_video_file
    from tools.outputs import OutputOptions, prepare_output, write_detections

    prompts = list(check_prompts(args.prompt))
    options = OutputOptions(binary=args.binary, overlay=args.overlay, merged=args.merged)
    out = Path(args.output)
    pipe = Pipeline.load(args.engines, backend=args.backend, precision=args.precision)
    if is_video_file(args.input):
        return _run_video(pipe, Path(args.input), prompts, out, options, args)  # its folders: VideoOutputs
    predict_kw = dict(threshold=args.threshold, nms_iou=args.nms_iou, max_detections=args.max_detections)
    with pipe:
        prepare_output(out, options)
        t0 = time.perf_counter()
        if Path(args.input).is_file():
            rows, skipped = _run_one(pipe, files[0], prompts, predict_kw, out, options), []
        else:
            rows, skipped = _run_folder(pipe, files, prompts, predict_kw, out, options, args.workers)
    write_detections(out, rows)
    done = len(files) - len(skipped)
    print(f"wrote {out}: {done} image{'s' * (done != 1)}, {len(rows)} detection{'s' * (len(rows) != 1)}"
          f"{f', {len(skipped)} skipped' if skipped else ''} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


def _run_video(pipe, path: Path, prompts, out: Path, options, args) -> int:
    from tools.video_outputs import run_video

    t0 = time.perf_counter()
    with pipe:
        summary = run_video(pipe, path, prompts, out, options=options, fps=args.fps,
                            redetect_every=args.redetect_every, threshold=args.threshold, save_frames=args.save_frames)
    print(f"wrote {out}: {summary['frames']} frames, {summary['objects']} objects in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _run_one(pipe, path: Path, prompts, predict_kw, out: Path, options) -> list[dict[str, Any]]:
    from runtime.images import load_image
    from tools.outputs import coco_records, write_image_outputs

    image = load_image(path)
    result = pipe.predict(image, prompts, **predict_kw)
    write_image_outputs(out, unique_stems([path])[0], image, result, options)
    return coco_records(result, 1, path.name)


def _run_folder(pipe, files: list[Path], prompts, predict_kw, out: Path, options, workers: int):
    """Decode ahead and write behind on ``workers`` threads each, inference on this thread."""
    from tqdm import tqdm

    from runtime.images import load_image
    from tools.outputs import coco_records, write_image_outputs

    stems = unique_stems(files)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def skip(path: Path, message: str) -> None:
        skipped.append((path, message))
        bar.write(f"warning: skipped {path.name}: {message}", file=sys.stderr)

    def write(image, result, stem: str, image_id: int, name: str) -> list[dict[str, Any]]:
        write_image_outputs(out, stem, image, result, options)
        return coco_records(result, image_id, name)

    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as readers, \
            ThreadPoolExecutor(workers, thread_name_prefix="write") as writers:
        todo = iter(enumerate(files))
        reads: deque[tuple[int, Path, Future]] = deque()
        writes: deque[Future] = deque()

        def read_next() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                reads.append((nxt[0], nxt[1], readers.submit(load_image, nxt[1])))

        for _ in range(workers):
            read_next()
        try:
            while reads:
                i, path, future = reads.popleft()
                read_next()
                try:
                    image = future.result()
                    result = pipe.predict(image, prompts, **predict_kw)
                except UserError as e:
                    skip(path, str(e).removeprefix(f"{path}: "))
                    bar.update()
                    continue
                while len(writes) >= workers:
                    rows += writes.popleft().result()
                writes.append(writers.submit(write, image, result, stems[i], i + 1, path.name))
                del image, result
                bar.update()
            while writes:
                rows += writes.popleft().result()
        finally:
            for f in writes:
                f.cancel()
            for _, _, f in reads:
                f.cancel()
            bar.close()
    return rows, skipped  # in image order: the writes are collected first in, first out


if __name__ == "__main__":
    _setup_logging()  # here, not in main(): in-process callers keep their own logging
    run_cli(main)
