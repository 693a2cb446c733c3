"""Text-prompted segmentation in one call: prompts -> boxes (OWLv2) -> masks (SAM2).

    from runtime import Pipeline
    pipe = Pipeline.load("engines/default", backend="auto", precision="fp16")
    r = pipe.predict("photo.jpg", ["cat", "dog"], threshold=0.1)
    r.boxes, r.scores, r.labels, r.masks

``Pipeline.load`` verifies the artifact before it opens anything and logs which backend and precision
it chose and why (``choose_backend``). The data flow of one image, the verification and the stream
policy: docs/ARCHITECTURE.md ("One image, from file to masks").
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from runtime.backends import call_all, close_after, close_graphs, onnxruntime_opener, recording_opener
from runtime.errors import ArtifactError, UserError, one_line
from runtime.graphs import (BATCH, IMAGE_HEIGHT, IMAGE_WIDTH, OWL_HEAD, OWL_IMAGE, OWL_PIXELS, OWL_TEXT,
                            SAM2_DECODER, SAM2_DECODER_MULTIMASK, SAM2_IMAGE, SAM2_MASKS, SAM2_PIXELS)
from runtime.images import load_image
from runtime.manifest import ONNXRUNTIME, PRECISIONS, Manifest, export_command, load_manifest
from runtime.metrics import box_iou
from runtime.owl import OwlDetector
from runtime.profiling import StageTimer
from runtime.resample import fitted_size, size_groups
from runtime.sam2 import Sam2Segmenter

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "Result", "BackendChoice", "choose_backend", "verify_artifact", "nms"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")
DEFAULT_PROMPT_TEMPLATE = "a photo of {}"
DEFAULT_THRESHOLD = 0.1


@dataclass
class Result:
    """Detections and masks of one image. Rows are in the reference's order (OWLv2 patch order)
    unless NMS or ``max_detections`` was asked for; then by decreasing score."""

    boxes: np.ndarray  # (N, 4) float32 xyxy in input-image pixels (not clipped, as the reference)
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64, index into the prompt list
    masks: np.ndarray  # (N, H, W) bool, H, W of the input image
    prompts: tuple[str, ...] = field(default=())  # the prompts as given (before the template)

    def __len__(self) -> int:
        return int(len(self.scores))


# ----------------------------------------------------------------------------------------------
# What this machine has: probes that tests replace. Engine records, their GPU tags and their
# verification are the TensorRT backend's (runtime.backends.tensorrt, pure Python until used).


def _trt_module():
    from runtime.backends import tensorrt as trt_backend

    return trt_backend


def tensorrt_version() -> tuple[str | None, str]:
    """``(version, "")`` when a usable ``tensorrt`` imports, else ``(None, why not)``."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there, its shared libraries are not
        return None, f"tensorrt is not importable ({one_line(e)}); pip install 'owlsam-trt[trt]'"
    version = str(getattr(tensorrt, "__version__", "0"))
    trt_backend = _trt_module()
    try:
        major = trt_backend.tensorrt_major(version)
    except UserError as e:
        return None, str(e)
    if major < trt_backend.MIN_TENSORRT_MAJOR:
        return None, f"TensorRT {version} is older than {trt_backend.MIN_TENSORRT_MAJOR} (strongly typed engines)"
    return version, ""


def cuda_device() -> tuple[Any | None, str]:
    """``(DeviceInfo of the current CUDA device, "")`` through cuda-python, else ``(None, why not)``."""
    try:
        return _trt_module().cuda_device(), ""
    except UserError as e:
        return None, str(e)
    except Exception as e:  # a driver-less machine can raise from inside the bindings
        return None, f"no usable CUDA driver ({one_line(e)})"


def _tensorrt_opener() -> tuple[Callable[..., Any] | None, str]:
    try:
        return _trt_module().tensorrt_opener, ""
    except (ImportError, OSError, AttributeError) as e:
        return None, f"the TensorRT backend of this toolkit does not load ({one_line(e)})"


# ----------------------------------------------------------------------------------------------
# Choosing the backend.


def engine_precisions(manifest: Manifest) -> list[str]:
    """Precisions at which the manifest lists any TensorRT engine."""
    have = set()
    networks = set(manifest.precision_graphs)  # the pixel graphs' FP32 engines serve every precision
    for name, by_precision in (manifest.data.get("engines") or {}).items():
        if name in networks and isinstance(by_precision, dict):
            have |= {p for p, per_gpu in by_precision.items() if per_gpu}
    return [p for p in PRECISIONS if p in have]


def required_graphs(multimask: bool = False) -> tuple:
    return (OWL_TEXT, OWL_PIXELS, OWL_IMAGE, OWL_HEAD, SAM2_PIXELS, SAM2_IMAGE,
            SAM2_DECODER_MULTIMASK if multimask else SAM2_DECODER, SAM2_MASKS)


def onnx_precisions(manifest: Manifest, graphs: Iterable, flavour: str = ONNXRUNTIME) -> list[str]:
    """Precisions at which every one of ``graphs`` has an ONNX file ONNX Runtime runs: with the
    default flavour, INT8 only in ONNX Runtime's own flavour (``Manifest.onnxruntime_graph_path``)."""
    have = None
    for spec in graphs:
        if spec.fixed_precision is not None:  # one file for every precision: checked when opened
            continue
        entry = manifest.graphs.get(spec.name)
        got = set(entry.get("files", {})) if isinstance(entry, dict) else set()
        if flavour == ONNXRUNTIME:
            got = {p for p in got if p != "int8"} | set((entry or {}).get(ONNXRUNTIME) or {})
        have = got if have is None else have & got
    return [p for p in PRECISIONS if p in (have or set())]


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # "tensorrt" or "onnxruntime"
    precision: str
    reason: str
    engines: tuple = ()  # runtime.backends.tensorrt.EngineRecord of each graph TensorRT will load
    environment: Any = None  # runtime.backends.tensorrt.TrtEnvironment they were checked against

    def describe(self) -> str:
        return f"backend {self.backend}, precision {self.precision}: {self.reason}"


def _tensorrt_blocker(manifest: Manifest, precision: str, graphs: Sequence) -> tuple[str, str, tuple, Any]:
    """``(kind, why, engines, environment)``: kind "" when TensorRT can run, "environment" when this
    machine lacks something, "artifact" when the engines are missing or were built elsewhere."""
    try:
        trt_backend = _trt_module()
    except (ImportError, OSError) as e:
        return "environment", f"the TensorRT backend of this toolkit does not load ({one_line(e)})", (), None
    version, why = tensorrt_version()
    if version is None:
        return "environment", why, (), None
    opener, why = _tensorrt_opener()
    if opener is None:
        return "environment", why, (), None
    device, why = cuda_device()
    if device is None:
        return "environment", why, (), None
    env = trt_backend.TrtEnvironment(tensorrt_version=version, device=device)
    have = engine_precisions(manifest)
    hint = trt_backend.rebuild_hint(manifest.root)
    if not have:
        return "artifact", f"{manifest.root} has no TensorRT engines; build them on this GPU ({device}) with {hint}", (), env
    if precision not in have:
        return ("artifact", f"{manifest.root} has no {precision} TensorRT engines (it has engines at {', '.join(have)}); "
                f"build them with {hint}", (), env)
    chosen = []
    for spec in graphs:
        try:
            rec = trt_backend.select_engine_record(manifest, spec.name, spec.runs_at(precision), env)
        except ArtifactError as e:  # none for this graph, or only for other GPUs: names both sides
            return "artifact", str(e), (), env
        if rec.tensorrt_version != version:
            return ("artifact", f"{manifest.root}: the {precision} engines were built with TensorRT {rec.tensorrt_version}, "
                    f"this runtime has TensorRT {version}; engines are tied to a TensorRT version: rebuild with {hint} "
                    f"(or install tensorrt=={rec.tensorrt_version})", (), env)
        chosen.append(rec)
    return "", f"TensorRT {version} on {device}, {precision} engines built for them", tuple(chosen), env


def choose_backend(manifest: Manifest, backend: str = "auto", precision: str = "fp32",
                   multimask: bool = False) -> BackendChoice:
    """Which backend runs ``manifest`` at ``precision``, and why; raises when the request cannot be met."""
    if backend not in BACKENDS:
        raise UserError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    graphs = required_graphs(multimask)
    onnx_have = onnx_precisions(manifest, graphs)

    def lacks_precision(extra: str = "") -> ArtifactError:
        has = f"ONNX graphs at {', '.join(onnx_have) or 'no precision'}"
        if precision not in onnx_have and precision in onnx_precisions(manifest, graphs, flavour="portable"):
            has += f"; its {precision} graphs are TensorRT's, exported before ONNX Runtime had its own"
        engines_have = engine_precisions(manifest)
        if engines_have:
            has += f", TensorRT engines at {', '.join(engines_have)}"
        return ArtifactError(f"{manifest.root} has no {precision} graphs ({has}){extra}; choose one of those or "
                             f"re-export with {export_command(manifest.root, manifest.data, precision=precision)}")

    if backend == "onnxruntime":
        if precision not in onnx_have:
            raise lacks_precision()
        return BackendChoice("onnxruntime", precision, "requested")
    kind, why, engines, env = _tensorrt_blocker(manifest, precision, graphs)
    if backend == "tensorrt":
        if kind == "environment":
            raise UserError(f"backend tensorrt was requested but {why}; or use backend onnxruntime")
        if kind == "artifact":
            raise ArtifactError(why)
        return BackendChoice("tensorrt", precision, f"requested; {why}", engines, env)
    if not kind:
        return BackendChoice("tensorrt", precision, why, engines, env)
    if precision not in onnx_have:
        raise lacks_precision(f" and TensorRT cannot be used: {why}")
    return BackendChoice("onnxruntime", precision, f"auto: not tensorrt because {why}")


def verify_artifact(engines_dir: str | os.PathLike, backend: str = "auto", precision: str = "fp32",
                    multimask: bool = False) -> tuple[Manifest, BackendChoice]:
    """What :meth:`Pipeline.load` checks before it opens anything, with its errors: the manifest, the
    backend choice, and the sha256 (and for TensorRT the version and GPU) of every file it would load."""
    manifest = load_manifest(engines_dir)
    choice = choose_backend(manifest, backend, precision, multimask)
    for rec in manifest.data.get("tokenizer") or []:
        manifest.verify_file(rec["path"], rec["sha256"])
    if choice.backend == "onnxruntime":
        for spec in required_graphs(multimask):
            manifest.onnxruntime_graph_path(spec.name, spec.runs_at(choice.precision), verify=True)
    else:
        trt_backend = _trt_module()
        for rec in choice.engines:  # sha256, TensorRT version, GPU name and compute capability
            trt_backend.verify_engine_record(manifest, rec, choice.environment)
    return manifest, choice


# ----------------------------------------------------------------------------------------------
# Post-processing options.


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, per_label: bool = True) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, by decreasing score (ties: original order).

    A box is dropped when its IoU with a higher-scoring kept box exceeds ``iou``; with ``per_label``
    only boxes of the same label suppress each other (as ``torchvision.ops.batched_nms``).
    """
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order
    ious = box_iou(boxes[order], boxes[order])
    same = labels[order][:, None] == labels[order][None, :] if per_label else np.ones_like(ious, bool)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= (ious[i] > iou) & same[i]
    return np.asarray(keep, dtype=np.int64)


def _check_threshold(value: Any, name: str, low_open: bool = False) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= t <= 1.0) or (low_open and t == 0.0):
        raise UserError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return t


def check_prompts(prompts: Any) -> tuple[str, ...]:
    """The prompts as a tuple of non-empty strings (a lone string is one prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        items = list(prompts)
    except TypeError:
        raise UserError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not items:
        raise UserError("no prompts given; pass at least one text prompt")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise UserError(f"prompt {i} is a {type(p).__name__}, not a string; pass text prompts")
        if not p.strip():
            raise UserError(f"prompt {i} is empty; pass a word or phrase such as 'cat'")
    return tuple(items)


# ----------------------------------------------------------------------------------------------
# The pipeline.


class Pipeline:
    """OWLv2 detection + SAM2 segmentation on an engines directory. Create with :meth:`load`.

    ``concurrent``: run the OWLv2 image tower and the SAM2 encoder of a batch at the same time.
    Default: on for TensorRT, off for ONNX Runtime on CPU. Measured with full-size random-weight
    graphs (OWLv2-B/16 @960, SAM2.1 hiera-small @1024) pinned to 2 cores, medians of 3: one after
    the other 7.0 s, concurrently (the SAM2 encoder on a helper thread) 7.5 s (2 intra-op threads
    each) and 9.3 s (1 thread each): both sessions are compute-bound and fight for the same cores.
    One after the other also lets the SAM2 encoder be skipped for images without detections.

    Streams (TensorRT, when every image graph has ``enqueue``): the pipeline owns two CUDA streams.
    The OWLv2 image tower is queued on one, the SAM2 encoder on the other (before the host waits for
    anything when ``concurrent``, so the two overlap on the GPU; no helper thread). The class head
    and the decoder take the encoders' outputs on the device: each waits on its producer's event
    (``cudaStreamWaitEvent``) and copies device to device; only OWLv2's boxes and the head's logits
    (for the host's post-processing) and the decoder's outputs come back to the host. The SAM2
    features never leave the GPU.
    """

    def __init__(self, manifest: Manifest, choice: BackendChoice, owl: OwlDetector, sam: Sam2Segmenter,
                 concurrent: bool | None = None) -> None:
        self.manifest = manifest
        self.choice = choice
        self.owl = owl
        self.sam = sam
        # One timer for both models: wall time per stage (runtime.profiling.PIPELINE_STAGES), images counted
        self.timer = StageTimer()
        owl.timer = sam.timer = self.timer
        pipe = manifest.data.get("pipeline") or {}
        self.prompt_template: str = str(pipe.get("prompt_template", DEFAULT_PROMPT_TEMPLATE))
        self.default_threshold: float = float(pipe.get("threshold", DEFAULT_THRESHOLD))
        self.max_batch: int = manifest.profile_max(BATCH, 1)
        #: the largest image the pixel graphs take; larger ones are downscaled to fit (see predict_batch)
        self.max_image_hw: tuple[int, int] = image_profile_max(manifest)
        if concurrent is None:
            concurrent = choice.backend == "tensorrt"
        self.concurrent = bool(concurrent)
        self._executor: ThreadPoolExecutor | None = None
        self._streams: tuple = ()
        # Set by load: the graphs it opened (closed with the pipeline) and the function that opened
        # them (the tracker's graphs are opened with it); a pipeline built here on the caller's
        # models leaves their graphs to the caller.
        self._graphs: tuple = ()
        self._open_graph: Callable[[Any], Any] | None = None
        graphs = (owl.pixels, owl.image, owl.head, sam.pixels, sam.image, sam.decoder)
        if all(callable(getattr(g, "enqueue", None)) for g in graphs):  # TensorRT graphs
            from runtime.backends.tensorrt import close_streams, open_streams

            self._streams = open_streams(2, owl.image.cuda)
            owl.stream, sam.stream = self._streams
            # Contexts and buffers now, not in the first image's calls (which would serialise the encoders)
            try:
                owl.prepare_streams()
                sam.prepare_streams()
            except BaseException:
                call_all([lambda: close_streams(self._streams)], raise_first=False)  # the first error goes on
                raise

    @property
    def backend(self) -> str:
        return self.choice.backend

    @property
    def precision(self) -> str:
        return self.choice.precision

    @classmethod
    def load(cls, engines_dir: str | os.PathLike, backend: str = "auto", precision: str = "fp32", *,
             multimask: bool = False, concurrent: bool | None = None,
             providers: Sequence[str] = ("CPUExecutionProvider",), intra_op_threads: int | None = None) -> "Pipeline":
        """Verify the artifact at ``engines_dir``, choose the backend and open every graph (closed
        by :meth:`close`).

        ``providers``/``intra_op_threads`` apply to ONNX Runtime only (also to the graphs
        :meth:`track` opens). ``multimask`` uses the three-mask decoder (best by predicted IoU)
        instead of the single-mask one.
        """
        manifest, choice = verify_artifact(engines_dir, backend, precision, multimask)
        log.info("%s: %s", manifest.root, choice.describe())

        if choice.backend == "onnxruntime":
            opener = onnxruntime_opener(manifest, choice.precision, providers=providers,
                                        intra_op_threads=intra_op_threads)
        else:
            tensorrt_opener, why = _tensorrt_opener()
            if tensorrt_opener is None:  # checked by choose_backend; a race with an uninstall
                raise UserError(why)
            # CUDA graphs where they pay: the decoder (many small kernels per image; its box counts padded
            # to powers of two, so a few graphs replay). The encoders' large kernels gain little.
            decoder = SAM2_DECODER_MULTIMASK if multimask else SAM2_DECODER
            opener = tensorrt_opener(manifest, choice.precision, cuda_graphs=(decoder.name,))
        opened: list = []
        try:
            owl = OwlDetector.from_manifest(manifest, recording_opener(opener, opened))
            sam = Sam2Segmenter.from_manifest(manifest, recording_opener(opener, opened), multimask=multimask)
            pipeline = cls(manifest, choice, owl, sam, concurrent=concurrent)
        except BaseException:
            close_graphs(opened)
            raise
        pipeline._graphs, pipeline._open_graph = tuple(opened), opener
        return pipeline

    # -- context management ------------------------------------------------------------------
    @property
    def on_streams(self) -> bool:
        """Whether the encoders are queued on the pipeline's CUDA streams (TensorRT)."""
        return bool(self._streams)

    def close(self) -> None:
        """Free the helper thread, the CUDA streams and the graphs :meth:`load` opened (TensorRT
        engines' contexts and buffers; ONNX Runtime graphs have nothing to close)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        streams, self._streams = self._streams, ()
        graphs, self._graphs = self._graphs, ()
        try:
            if streams:
                from runtime.backends.tensorrt import close_streams

                self.owl.stream = self.sam.stream = None
                close_streams(streams)
        finally:
            close_graphs(graphs)  # after the streams: their work on the graphs' buffers is done

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        close_after(self.close, exc)

    def __repr__(self) -> str:
        return f"Pipeline({str(self.manifest.root)!r}, backend={self.backend!r}, precision={self.precision!r})"

    # -- inference ---------------------------------------------------------------------------
    def texts(self, prompts: Sequence[str], wrap_prompts: bool = True) -> list[str]:
        """What the text tower sees: each prompt through the artifact's template (``"a photo of {}"``)."""
        return [self.prompt_template.format(p) if wrap_prompts else p for p in prompts]

    def predict(self, image: Any, prompts: Sequence[str] | str, threshold: float | None = None, *,
                nms_iou: float | None = None, max_detections: int | None = None, per_label_nms: bool = True,
                wrap_prompts: bool = True) -> Result:
        """Boxes, scores, labels and masks of ``image`` (path, PIL image or HxWx3 uint8 RGB array).

        ``threshold``: score threshold (default: the artifact's, 0.1). ``nms_iou``: drop boxes whose
        IoU with a higher-scoring box (of the same label, unless ``per_label_nms=False``) exceeds it;
        default no NMS, as the reference. ``max_detections``: keep the highest-scoring ones. Both are
        applied before SAM2, so suppressed boxes cost no decoder work. ``wrap_prompts=False`` feeds
        the prompts to the text tower as they are.
        """
        return self.predict_batch([image], prompts, threshold, nms_iou=nms_iou, max_detections=max_detections,
                                  per_label_nms=per_label_nms, wrap_prompts=wrap_prompts)[0]

    def track(self, source: Any, prompts: Sequence[str] | str = (), *, redetect_every: int | None = None,
              threshold: float | None = None, boxes: np.ndarray | None = None, wrap_prompts: bool = True,
              **tracker_options: Any):
        """Track objects through a video: yields one ``runtime.tracker.TrackedFrame`` (ids, boxes,
        masks) per frame, frames streamed one at a time (never all in memory).

        ``source``: a video file (PyAV or OpenCV), a folder of frames, or an iterable of HxWx3 uint8
        arrays. OWLv2 detects ``prompts`` on the first frame and every ``redetect_every`` frames; a
        detection that overlaps no tracked object starts a new id; objects follow by SAM2's memory.
        ``boxes`` (K, 4) xyxy start K objects on the first frame. Needs an artifact exported with
        ``--video``.
        """
        from runtime.tracker import Sam2Tracker, track
        from runtime.video_io import open_frames

        prompts_t = check_prompts(prompts) if prompts else ()
        t = self.default_threshold if threshold is None else _check_threshold(threshold, "threshold")
        tracker = Sam2Tracker.open(self.manifest, self.backend, self.precision, open_graph=self._open_graph,
                                   **tracker_options)
        queries = self.texts(prompts_t, wrap_prompts) if prompts_t else ()
        with tracker, open_frames(source) as frames:  # the tracker's streams and graphs close with it
            yield from track(frames, tracker, self.owl, queries, boxes=boxes, redetect_every=redetect_every,
                             threshold=t)

    def predict_batch(self, images: Sequence[Any], prompts: Sequence[str] | str, threshold: float | None = None, *,
                      nms_iou: float | None = None, max_detections: int | None = None, per_label_nms: bool = True,
                      wrap_prompts: bool = True) -> list[Result]:
        """:meth:`predict` for several images, through the graphs' batch dimension (images of one
        size together, in chunks of the artifact's batch profile maximum, each chunk decoded when its
        turn comes). Images may differ in size. An image larger than the artifact's image profile
        (``max_image_hw``, ``export.build --max-image-side``) is downscaled to fit before the graphs
        and its boxes and masks are mapped back to its own size (masks by nearest neighbour)."""
        prompts_t = check_prompts(prompts)
        t = self.default_threshold if threshold is None else _check_threshold(threshold, "threshold")
        if nms_iou is not None:
            nms_iou = _check_threshold(nms_iou, "nms_iou", low_open=True)
        if max_detections is not None and (isinstance(max_detections, bool) or not isinstance(max_detections, (int, np.integer))
                                           or max_detections < 0):
            raise UserError(f"max_detections must be a whole number >= 0, got {max_detections!r}")
        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        images = list(images)
        if not images:
            return []
        with self.timer.wall():
            queries = self.owl.query_embeds(self.texts(prompts_t, wrap_prompts))
        out: list[Result | None] = [None] * len(images)
        for start in range(0, len(images), self.max_batch):
            loaded = [load_image(im) for im in images[start : start + self.max_batch]]
            with self.timer.wall():
                fitted = [fit_image(im, self.max_image_hw) for im in loaded]
                for group in size_groups([im.shape for im in fitted], self.max_batch):
                    results = self._predict_chunk([fitted[i] for i in group], prompts_t, queries, t, nms_iou,
                                                  max_detections, per_label_nms)
                    for i, r in zip(group, results, strict=True):
                        out[start + i] = fit_back(r, loaded[i].shape[:2]) if fitted[i] is not loaded[i] else r
            self.timer.frames += len(loaded)
        return out  # type: ignore[return-value]

    def detect_batch(self, images: Sequence[Any], prompts: Sequence[str] | str, threshold: float | None = None, *,
                     wrap_prompts: bool = True) -> list[Any]:
        """OWLv2 detections only (``runtime.owl.Detections``: boxes, scores, labels) for each image,
        no SAM2 work; sizes handled as in :meth:`predict_batch`."""
        prompts_t = check_prompts(prompts)
        t = self.default_threshold if threshold is None else _check_threshold(threshold, "threshold")
        images = list(images)
        texts = self.texts(prompts_t, wrap_prompts)
        dets: list[Any] = []
        for start in range(0, len(images), self.max_batch):  # each chunk decoded when its turn comes
            loaded = [load_image(im) for im in images[start : start + self.max_batch]]
            with self.timer.wall():
                fitted = [fit_image(im, self.max_image_hw) for im in loaded]
                chunk = self.owl.detect(fitted, texts, t)
                for d, small, image in zip(chunk, fitted, loaded, strict=True):
                    if small is not image:
                        d.boxes = scale_boxes(d.boxes, small.shape[:2], image.shape[:2])
            dets += chunk
            self.timer.frames += len(loaded)
        return dets

    def _predict_chunk(self, chunk: list[np.ndarray], prompts: tuple[str, ...], queries: np.ndarray, threshold: float,
                       nms_iou: float | None, max_detections: int | None, per_label: bool) -> list[Result]:
        hws = [im.shape[:2] for im in chunk]
        sam_feats = None
        if self._streams:  # both queued, on their own streams: they overlap on the GPU
            owl_feats = self.owl.image_features(chunk)
            if self.concurrent:
                sam_feats = self.sam.image_features(chunk)
        elif self.concurrent:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-encoder")
            future = self._executor.submit(self.sam.image_features, chunk)
            try:
                owl_feats = self.owl.image_features(chunk)
            except BaseException:
                future.cancel()
                wait([future])  # never leave the encoder running behind an error
                raise
            sam_feats = future.result()
        else:
            owl_feats = self.owl.image_features(chunk)
        dets = self.owl.detect_features(owl_feats, hws, queries, threshold)
        keeps = [_select(d.boxes, d.scores, d.labels, nms_iou, max_detections, per_label) for d in dets]
        if sam_feats is None and any(len(k) for k in keeps):
            sam_feats = self.sam.image_features(chunk)
        results = []
        for i, (d, keep, (h, w)) in enumerate(zip(dets, keeps, hws, strict=True)):
            boxes = d.boxes[keep]
            if len(boxes):
                masks = self.sam.segment_features(sam_feats, i, (h, w), boxes, clip_boxes=False).masks
            else:
                masks = np.zeros((0, h, w), dtype=bool)
            results.append(Result(boxes.astype(np.float32, copy=False).reshape(-1, 4),
                                  d.scores[keep].astype(np.float32, copy=False),
                                  d.labels[keep].astype(np.int64, copy=False), masks, prompts))
        return results


def image_profile_max(manifest: Manifest) -> tuple[int, int]:
    return manifest.profile_max(IMAGE_HEIGHT), manifest.profile_max(IMAGE_WIDTH)  # type: ignore[return-value]


def fit_image(image: np.ndarray, max_hw: tuple[int, int]) -> np.ndarray:
    """``image`` itself when it is within ``max_hw``, else downscaled to fit (aspect kept; PIL's
    antialiased bilinear), logged once per size."""
    h, w = image.shape[:2]
    if h <= max_hw[0] and w <= max_hw[1]:
        return image
    fh, fw = fitted_size(h, w, *max_hw)
    if _first_fit(h, w):
        log.info("%dx%d is larger than the artifact's image profile (%dx%d): downscaled to %dx%d for the graphs, "
                 "results mapped back (export with --max-image-side to take it as it is)", w, h, max_hw[1], max_hw[0],
                 fw, fh)
    return np.asarray(Image.fromarray(image).resize((fw, fh), Image.Resampling.BILINEAR))


_FITTED: OrderedDict[tuple[int, int], None] = OrderedDict()  # sizes already logged, the 256 latest


def _first_fit(height: int, width: int) -> bool:
    """True the first time a size is seen (a size not seen among the latest 256 is logged again)."""
    key = (height, width)
    if key in _FITTED:
        _FITTED.move_to_end(key)
        return False
    _FITTED[key] = None
    if len(_FITTED) > 256:
        _FITTED.popitem(last=False)
    return True


def fit_back(result: Result, image_hw: tuple[int, int]) -> Result:
    """``result`` of a downscaled image at the original size ``image_hw``: boxes scaled per axis,
    masks by nearest neighbour."""
    h, w = image_hw
    fh, fw = result.masks.shape[1:]
    rows = np.minimum((np.arange(h) * fh) // h, fh - 1)
    cols = np.minimum((np.arange(w) * fw) // w, fw - 1)
    masks = np.take(np.take(result.masks, rows, axis=1), cols, axis=2)  # C order (fancy indexing is not), 20x faster
    return Result(scale_boxes(result.boxes, (fh, fw), image_hw), result.scores, result.labels, masks, result.prompts)


def scale_boxes(boxes: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int]) -> np.ndarray:
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return (boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)


def _select(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, nms_iou: float | None,
            max_detections: int | None, per_label: bool) -> np.ndarray:
    """Indices of the detections to keep: all in order by default; else by decreasing score."""
    if nms_iou is None and max_detections is None:
        return np.arange(len(scores))
    keep = nms(boxes, scores, labels, nms_iou, per_label) if nms_iou is not None else np.argsort(-scores, kind="stable")
    return keep[:max_detections] if max_detections is not None else keep
