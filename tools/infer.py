"""``owlsam-detect`` (= ``python -m tools.infer``): SOWLv2's command line on this toolkit's runtime.

    owlsam-detect --prompt P [P ...] --input IMAGE|FOLDER|VIDEO [--output output] [--threshold 0.1] [--fps 24]
                  [--device cpu|cuda] [--owl-model ID|DIR] [--sam-model ID|DIR] [--no-merged] [--no-binary]
                  [--no-overlay] [--config FILE.yaml]
                  [--engines DIR] [--backend auto|tensorrt|onnxruntime] [--precision fp32|fp16|int8]
                  [--redetect-every N] [--nms-iou X] [--max-detections N] [--no-frames] [--overwrite] [--workers N]

Every SOWLv2 flag with SOWLv2's meaning and default, then this toolkit's own. Without ``--engines`` the
models of ``--owl-model``/``--sam-model`` are exported once into a cache (``tools.model_cache``).
``--config`` reads the same options from YAML (keys as the long options, ``-`` or ``_``); a value
given on the command line wins over the file, the file over the defaults. Outputs: SOWLv2's tree
(``tools.outputs``, ``tools.video_outputs``), written beside the predictions.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from export.models import DEFAULT_OWL_MODEL, DEFAULT_SAM_MODEL  # SOWLv2's defaults too; no torch imported
from runtime.errors import ArtifactError, OneLineArgumentParser, UserError, run_cli
from runtime.manifest import PRECISIONS
from runtime.pipeline import BACKENDS

log = logging.getLogger("tools.infer")

DEVICES = ("cpu", "cuda")
DEFAULTS: dict[str, Any] = {
    # SOWLv2's options and defaults
    "output": "output", "threshold": 0.1, "fps": 24.0, "device": None,  # None: auto (a GPU when usable)
    "owl_model": DEFAULT_OWL_MODEL, "sam_model": DEFAULT_SAM_MODEL, "merged": True, "binary": True, "overlay": True,
    # this toolkit's
    "engines": None, "backend": "auto", "precision": "fp32", "nms_iou": None, "max_detections": None,
    "workers": None, "redetect_every": None, "frames": True, "overwrite": False,
}
REQUIRED = ("input", "prompt")


# ----------------------------------------------------------------------------------------------
# Option values: one converter per option, shared by the command line and the YAML file.


def _number(text: Any) -> float:
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _unit_float(text: Any) -> float:
    value = _number(text)
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
    value = _number(text)
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


def _text(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise argparse.ArgumentTypeError(f"{value!r} is not a path or name")


def _prompts(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise argparse.ArgumentTypeError(f"{value!r} is not a prompt or a list of prompts")
    return items


CONVERTERS = {
    "input": _text, "output": _text, "prompt": _prompts, "threshold": _unit_float, "fps": _positive_float,
    "device": _choice(DEVICES), "owl_model": _text, "sam_model": _text,
    "merged": _boolean, "binary": _boolean, "overlay": _boolean,
    "engines": _text, "backend": _choice(BACKENDS), "precision": _choice(PRECISIONS), "nms_iou": _iou,
    "max_detections": _count, "workers": _count, "redetect_every": _count, "frames": _boolean, "overwrite": _boolean,
}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="owlsam-detect", argument_default=argparse.SUPPRESS,
                              description="Text-prompted segmentation (OWLv2 boxes, SAM2 masks) of an image, a folder "
                              "of images or a video, with SOWLv2's options and outputs.")
    s = p.add_argument_group("SOWLv2's options")
    s.add_argument("--prompt", nargs="+", metavar="P", help="text prompts, e.g. --prompt cat 'red car'")
    s.add_argument("--input", metavar="PATH", help="an image, a folder of images or a video file")
    s.add_argument("--output", metavar="DIR", help="output folder (default: output)")
    s.add_argument("--owl-model", metavar="ID|DIR", help=f"OWLv2 hub id or checkpoint folder (default {DEFAULT_OWL_MODEL})")
    s.add_argument("--sam-model", metavar="ID|DIR", help=f"SAM2 hub id or checkpoint folder (default {DEFAULT_SAM_MODEL})")
    s.add_argument("--threshold", type=_unit_float, metavar="T", help="detection score threshold (default 0.1)")
    s.add_argument("--fps", type=_positive_float, metavar="F", help="video: frames sampled per second (default 24)")
    s.add_argument("--device", type=_choice(DEVICES), metavar="cpu|cuda",
                   help="cpu: ONNX Runtime on the CPU; cuda: the GPU or an error (default: the GPU when usable)")
    s.add_argument("--no-merged", dest="merged", action="store_false", help="no merged masks, overlays and videos")
    s.add_argument("--no-binary", dest="binary", action="store_false", help="no binary/ mask PNGs")
    s.add_argument("--no-overlay", dest="overlay", action="store_false", help="no overlay/ PNGs")
    s.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of these options (command line wins)")
    o = p.add_argument_group("this toolkit's options")
    o.add_argument("--engines", metavar="DIR", help="an engines folder (python -m export.build); default: the "
                   "models above, exported once into the cache (OWLSAM_CACHE)")
    o.add_argument("--backend", type=_choice(BACKENDS), metavar="|".join(BACKENDS), help="default auto")
    o.add_argument("--precision", type=_choice(PRECISIONS), metavar="|".join(PRECISIONS), help="default fp32")
    o.add_argument("--redetect-every", type=_count, metavar="N",
                   help="video: run OWLv2 every N frames to pick up new objects (default: first frame only)")
    o.add_argument("--nms-iou", type=_iou, metavar="X", help="non-maximum suppression per prompt at this IoU (default: none)")
    o.add_argument("--max-detections", type=_count, metavar="N", help="keep the N best detections per image")
    o.add_argument("--no-frames", dest="frames", action="store_false", help="video: no per-frame PNGs, videos only")
    o.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder (default: refuse)")
    o.add_argument("--workers", type=_count, metavar="N", help="threads that decode and write (default: CPU count)")
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
        if key.startswith("no_") and key[3:] in ("merged", "binary", "overlay", "frames"):
            key, value = key[3:], (not value) if isinstance(value, bool) else value
        if key not in CONVERTERS:
            raise UserError(f"{path}: unknown option {raw_key!r}; known: {', '.join(sorted(CONVERTERS))}")
        try:
            out[key] = CONVERTERS[key](value)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{path}: {raw_key}: {e}") from None
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Defaults, then the ``--config`` file, then what the command line gives (SOWLv2's precedence)."""
    given = vars(build_parser().parse_args(argv))
    config = read_config(given.pop("config")) if "config" in given else {}
    merged = {**DEFAULTS, **config, **given}
    missing = [k for k in REQUIRED if merged.get(k) is None]
    if missing:
        raise UserError(f"missing {', '.join('--' + k for k in missing)} (on the command line or in --config)")
    if not merged["prompt"]:
        raise UserError("no prompts given; pass at least one with --prompt")
    merged["explicit"] = set(config) | set(given)
    return argparse.Namespace(**merged)


# ----------------------------------------------------------------------------------------------
# Inputs.


def list_images(folder: Path) -> list[Path]:
    """A folder's images (by suffix, as SOWLv2), in name order; other files are named and left alone."""
    from runtime.video_io import IMAGE_SUFFIXES

    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("%s: %d file(s) that are not images by their suffix left alone: %s", folder, len(others),
                    ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
    if not images:
        raise UserError(f"input folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a folder "
                        "of images, an image or a video")
    return images


# ----------------------------------------------------------------------------------------------
# Models: the engines folder, the device.


def engines_dir(args: argparse.Namespace, video: bool) -> tuple[Path, Any]:
    """``(engines folder, rebuild or None)``: ``--engines``, else the cached export of the models."""
    if args.engines is not None:
        _warn_models_ignored(args)
        return Path(args.engines), None
    from tools.model_cache import cached_artifact

    return cached_artifact(args.owl_model, args.sam_model, args.precision, video)


def _warn_models_ignored(args: argparse.Namespace) -> None:
    from runtime.manifest import load_manifest

    if not {"owl_model", "sam_model"} & args.explicit:
        return
    sources = load_manifest(args.engines).data.get("sources") or {}
    for key, family in (("owl_model", "owl"), ("sam_model", "sam")):
        given = getattr(args, key)
        if key in args.explicit and given != (sources.get(family) or {}).get("model"):
            log.warning("--%s %s is not what --engines %s was exported from (%s); the engines folder's models run",
                        key.replace("_", "-"), given, args.engines, (sources.get(family) or {}).get("model"))


def _ort_cuda() -> bool:
    from runtime.backends.onnxruntime import import_onnxruntime

    return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()


def device_choice(engines: Path, device: str | None, backend: str, precision: str) -> tuple[str, tuple[str, ...]]:
    """``(backend, ONNX Runtime providers)`` for ``--device``: cpu is ONNX Runtime on the CPU; cuda is
    TensorRT when it can run this artifact, else ONNX Runtime's CUDA provider, else an error naming
    why; unset, ``--backend`` decides and ONNX Runtime takes its CUDA provider where it has one."""
    cpu = ("CPUExecutionProvider",)
    if device is None:
        return backend, (("CUDAExecutionProvider",) + cpu if backend != "tensorrt" and _ort_cuda() else cpu)
    if device == "cpu":
        if backend == "tensorrt":
            raise UserError("--device cpu and --backend tensorrt contradict each other (TensorRT runs on CUDA); drop one")
        return "onnxruntime", cpu
    why_not_trt = "--backend onnxruntime was asked for"
    if backend in ("auto", "tensorrt"):
        from runtime.manifest import load_manifest
        from runtime.pipeline import choose_backend

        try:
            choose_backend(load_manifest(engines), "tensorrt", precision)
            return "tensorrt", cpu
        except UserError as e:
            if backend == "tensorrt":
                raise UserError(f"--device cuda: {e}") from None
            why_not_trt = str(e)
    if _ort_cuda():
        return "onnxruntime", ("CUDAExecutionProvider",)
    raise UserError(f"--device cuda cannot be met: TensorRT cannot run ({why_not_trt.rstrip('.')}) and ONNX Runtime has "
                    "no CUDA provider (pip install 'owlsam-trt[gpu]', without [ort]); or pass --device cpu")


def _check_providers(pipe: Any, providers: tuple[str, ...]) -> None:
    """ONNX Runtime quietly runs on the CPU when its CUDA provider cannot start: an error for
    --device cuda (providers: CUDA alone), a log line otherwise."""
    if providers[0] == "CPUExecutionProvider" or pipe.backend != "onnxruntime":
        return
    for graph in (pipe.owl.image, pipe.sam.image, pipe.sam.decoder):
        session = getattr(graph, "session", None)
        if session is None or providers[0] in session.get_providers():
            continue
        if len(providers) == 1:
            raise UserError(f"--device cuda: ONNX Runtime could not start {providers[0]} for {graph.spec.name} "
                            f"(it runs {', '.join(session.get_providers())}); check the CUDA install or pass --device cpu")
        log.warning("ONNX Runtime could not start %s for %s; it runs on %s", providers[0], graph.spec.name,
                    ", ".join(session.get_providers()))
        return
    log.info("ONNX Runtime runs on %s", providers[0])


def load_pipeline(args: argparse.Namespace, video: bool):
    from runtime.pipeline import Pipeline

    engines, rebuild = engines_dir(args, video)

    def load(root: Path):
        backend, providers = device_choice(root, args.device, args.backend, args.precision)
        return Pipeline.load(root, backend=backend, precision=args.precision, providers=providers), providers

    try:
        pipe, providers = load(engines)
    except ArtifactError as e:
        if rebuild is None:
            raise
        pipe, providers = load(rebuild(str(e)))  # a cached export that fails verification: exported again
    try:
        _check_providers(pipe, providers)
    except BaseException:
        pipe.close()
        raise
    return pipe


# ----------------------------------------------------------------------------------------------
# Running.


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from runtime.pipeline import check_prompts
    from runtime.video_io import is_video_file
    from tools.outputs import OutputOptions, StagedOutput

    source = Path(args.input)
    if not source.exists():
        raise UserError(f"input {source} does not exist; pass an image, a folder of images or a video file")
    prompts = list(check_prompts(args.prompt))
    options = OutputOptions(binary=args.binary, overlay=args.overlay, merged=args.merged)
    video = source.is_file() and is_video_file(source)
    files = list_images(source) if source.is_dir() else [source]
    StagedOutput(args.output, args.overwrite).abort()  # refuse a bad --output before any model work
    t0 = time.perf_counter()
    pipe = load_pipeline(args, video)
    with pipe:
        if video:
            return _run_video(pipe, source, prompts, options, args, t0)
        return _run_images(pipe, files, source.is_dir(), prompts, options, args, t0)


def _run_video(pipe, path: Path, prompts, options, args, t0: float) -> int:
    from runtime.video_io import VideoReadError
    from tools.outputs import StagedOutput
    from tools.video_outputs import run_video

    for key in ("nms_iou", "max_detections"):
        if getattr(args, key) is not None:
            log.warning("--%s applies to images; a video's objects are all tracked", key.replace("_", "-"))
    staged = StagedOutput(args.output, args.overwrite)
    try:
        summary = run_video(pipe, path, prompts, staged.path, options=options, fps=args.fps,
                            redetect_every=args.redetect_every, threshold=args.threshold, frames=args.frames,
                            workers=args.workers)
    except VideoReadError:
        staged.commit()  # the frames before the break, finished
        raise
    except BaseException:
        staged.abort()
        raise
    out = staged.commit()
    print(f"wrote {out}: {summary['frames']} frames at {summary['fps']:g} fps, {summary['objects']} objects in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _run_images(pipe, files: list[Path], is_folder: bool, prompts, options, args, t0: float) -> int:
    predict_kw = dict(threshold=args.threshold, nms_iou=args.nms_iou, max_detections=args.max_detections)
    out, skipped = run_images(pipe, files, is_folder, prompts, args.output, options, overwrite=args.overwrite,
                              workers=args.workers, **predict_kw)
    n, found = len(files) - len(skipped), len(out.rows)
    print(f"wrote {out.root}: {n} image{'s' * (n != 1)}, {found} detection{'s' * (found != 1)}, {out.files} files"
          f"{f', {len(skipped)} skipped' if skipped else ''} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


def run_images(pipe, files: list[Path], is_folder: bool, prompts, output: str | Path, options, *,
               overwrite: bool = False, workers: int | None = None, progress: bool = True, **predict_kw):
    """Predict and write SOWLv2's tree for ``files``: decoded ahead on two threads, predicted on this
    one, written behind by an ``OutputWriter`` (so a folder's writing overlaps the next image's
    prediction). Returns ``(the closed writer, skipped files)``; a folder's unreadable images are
    reported and skipped, a single image's error raised."""
    from tqdm import tqdm

    from runtime.images import load_image
    from tools.outputs import OutputWriter, folder_names

    folders = folder_names(files) if is_folder else [""]
    skipped: list[Path] = []
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
               disable=len(files) == 1 or not progress)
    with OutputWriter(output, options, overwrite=overwrite, workers=workers) as out, \
            ThreadPoolExecutor(2, thread_name_prefix="decode") as readers:
        todo = iter(range(len(files)))
        reads: deque[tuple[int, Future]] = deque()

        def read_next() -> None:
            i = next(todo, None)
            if i is not None:
                reads.append((i, readers.submit(load_image, files[i])))

        read_next()
        read_next()
        try:
            while reads:
                i, future = reads.popleft()
                read_next()
                try:
                    image = future.result()
                    result = pipe.predict(image, prompts, **predict_kw)
                except UserError as e:
                    if not is_folder:
                        raise
                    skipped.append(files[i])
                    bar.write(f"warning: skipped {files[i].name}: {str(e).removeprefix(f'{files[i]}: ')}", file=sys.stderr)
                else:
                    out.add(image, result, name=files[i].name, folder=folders[i])
                    del image, result
                bar.update()
        finally:
            for _, f in reads:
                f.cancel()
            bar.close()
    return out, skipped


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging() -> None:
    """Warnings and above on stderr, and the backend choice of ``Pipeline.load`` (INFO)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("runtime.pipeline").setLevel(logging.INFO)
    logging.getLogger("tools.infer").setLevel(logging.INFO)


def cli(argv: list[str] | None = None) -> None:
    """The ``owlsam-detect`` console script."""
    setup_logging()  # here, not in main(): in-process callers keep their own logging
    run_cli(main, argv)


if __name__ == "__main__":
    cli()
