"""The Triton Python-backend model behind ``owlsam`` and ``owl_detect``: requests in, ``Pipeline``, responses out.

Triton runs ``TritonPythonModel`` in its Python-backend stub, one process per model instance, each with
its own ``Pipeline`` (and its own text-embedding cache). ``RequestHandler`` holds everything but the
``triton_python_backend_utils`` glue, so tests drive it in-process. A bad request gets its own error
response (one line, no traceback); the other requests of its batch are served.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime import rle
from runtime.errors import UserError
from runtime.graphs import NUM_PROMPTS
from runtime.images import decode_image
from runtime.pipeline import check_prompts
from tools.serve.interface import (BOXES, IMAGE, IMAGE_SIZE, LABELS, MASKS_RLE, PROMPTS, SCORES, TASKS, THRESHOLD,
                                   ModelSpec)

log = logging.getLogger("tools.serve.model")

#: Default limit on the pixels of one request's image (``tools.serve --max-pixels``): 40 MP admits 8K
#: (7680x4320) frames and keeps one request's masks (N x H x W booleans) within a few hundred MB.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Request:
    image: np.ndarray  # (H, W, 3) uint8
    prompts: tuple[str, ...]
    threshold: float | None  # None: the artifact's


def parse_request(inputs: Mapping[str, np.ndarray | None], max_pixels: int | None,
                  max_prompts: int | None = None) -> Request:
    """The request's image, prompts and threshold, or a ``UserError`` naming what is wrong with it.
    Data types, ranks and required inputs were checked by Triton against config.pbtxt already."""
    for name, array in inputs.items():
        if array is not None and array.shape[:1] != (1,):
            raise UserError(f"input {name!r} has batch size {array.shape[0] if array.ndim else 0}; send one image "
                            "per request (batch size 1): the server batches requests itself")
    image = decode_image(bytes(inputs[IMAGE.name].reshape(-1)[0]), IMAGE.name, max_pixels)
    texts = []
    for i, raw in enumerate(inputs[PROMPTS.name].reshape(-1)):
        try:
            texts.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"prompt {i} is not valid UTF-8; send each prompt as UTF-8 text") from None
    prompts = check_prompts(texts)
    if max_prompts is not None and len(prompts) > max_prompts:
        raise UserError(f"{len(prompts)} prompts is more than this server's artifact takes ({max_prompts}); send "
                        f"fewer, or export the artifact with --max-prompts {len(prompts)}")
    threshold = inputs.get(THRESHOLD.name)
    if threshold is not None:
        if threshold.size != 1:
            raise UserError(f"threshold has {threshold.size} values; send one number in [0, 1]")
        threshold = float(threshold.reshape(-1)[0])
        if not 0.0 <= threshold <= 1.0:  # NaN fails too
            raise UserError(f"threshold must be in [0, 1], got {threshold}")
    return Request(image, prompts, threshold)


def rle_json(mask: np.ndarray) -> bytes:
    """One mask as the compact JSON of its COCO compressed RLE, as in ``detections.json``."""
    return json.dumps(rle.encode(mask), separators=(",", ":")).encode()


def encode_result(result: Any, image_hw: Sequence[int], spec: ModelSpec) -> dict[str, np.ndarray]:
    """The output tensors of one request (batch dimension 1) from a ``Result`` or ``Detections``."""
    n = len(result.scores)
    arrays = {
        BOXES.name: np.asarray(result.boxes, BOXES.numpy_dtype).reshape(1, n, 4),
        SCORES.name: np.asarray(result.scores, SCORES.numpy_dtype).reshape(1, n),
        LABELS.name: np.asarray(result.labels, LABELS.numpy_dtype).reshape(1, n),
        IMAGE_SIZE.name: np.asarray([image_hw], IMAGE_SIZE.numpy_dtype),
    }
    if MASKS_RLE.name in spec.output_names:
        arrays[MASKS_RLE.name] = np.array([[rle_json(m) for m in result.masks]], dtype=object).reshape(1, n)
    return {name: arrays[name] for name in spec.output_names}


class RequestHandler:
    """Serves batches of requests with one pipeline: requests that share prompts and threshold go
    through ``predict_batch`` together (the image encoders batched, images of any size); different
    prompt lists are separate groups of the same batch."""

    def __init__(self, pipe: Any, spec: ModelSpec, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.pipe, self.spec, self.max_pixels = pipe, spec, max_pixels
        self.max_prompts = pipe.manifest.profile_max(NUM_PROMPTS, None)

    def handle(self, batch: Sequence[Mapping[str, np.ndarray | None]]) -> list[dict[str, np.ndarray] | str]:
        """Per request: its output arrays, or the one-line message of its error response."""
        out: list[dict[str, np.ndarray] | str] = [""] * len(batch)
        groups: dict[tuple, list[tuple[int, Request]]] = defaultdict(list)
        for i, inputs in enumerate(batch):
            try:
                req = parse_request(inputs, self.max_pixels, self.max_prompts)
            except UserError as e:
                out[i] = str(e)
                continue
            except Exception as e:  # a bug: the traceback goes to the server's log, not to clients
                out[i] = self._internal_error(e, 1)
                continue
            groups[(req.prompts, req.threshold)].append((i, req))
        for (prompts, threshold), members in groups.items():
            images = [req.image for _, req in members]
            try:
                results = self._run(images, prompts, threshold)
                for (i, req), result in zip(members, results, strict=True):
                    out[i] = encode_result(result, req.image.shape[:2], self.spec)
            except UserError as e:
                for i, _ in members:
                    out[i] = str(e)
            except Exception as e:
                message = self._internal_error(e, len(members))
                for i, _ in members:
                    out[i] = message
        return out

    def _internal_error(self, e: Exception, count: int) -> str:
        log.error("%s: %d request(s) failed", self.spec.name, count, exc_info=e)
        return f"internal error in model {self.spec.name} ({type(e).__name__}); the server log has the details"

    def _run(self, images: list[np.ndarray], prompts: tuple[str, ...], threshold: float | None) -> list[Any]:
        if self.spec.task == "segment":
            return self.pipe.predict_batch(images, prompts, threshold)
        return self.pipe.detect_batch(images, prompts, threshold)


def parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    return {k: v["string_value"] for k, v in (model_config.get("parameters") or {}).items()}


class TritonPythonModel:
    """What Triton's Python backend loads from ``<model>/1/model.py`` (which imports this class).
    Parameters come from config.pbtxt (see ``tools.serve.repository``)."""

    def initialize(self, args: Mapping[str, str]) -> None:
        from runtime import Pipeline

        logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {args['model_instance_name']}: %(message)s")
        params = parameters(json.loads(args["model_config"]))
        if args.get("model_instance_kind") == "GPU":  # one instance per GPU of the instance group
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args["model_instance_device_id"])
        engines = Path(params["engines"])
        if not engines.is_absolute():  # relative to the model repository's root
            engines = Path(args["model_repository"]).parent / engines
        threads = int(params.get("threads") or 0) or None
        pipe = Pipeline.load(engines, backend=params["backend"], precision=params["precision"], intra_op_threads=threads)
        max_pixels = int(params.get("max_pixels") or 0) or None
        self.handler = RequestHandler(pipe, TASKS[params["task"]], max_pixels)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        names = [t.name for t in self.handler.spec.inputs]
        batch = []
        for request in requests:
            tensors = {n: pb_utils.get_input_tensor_by_name(request, n) for n in names}
            batch.append({n: t.as_numpy() for n, t in tensors.items() if t is not None})
        responses = []
        for result in self.handler.handle(batch):
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in result.items()]))
        return responses

    def finalize(self) -> None:
        self.handler.pipe.close()


__all__ = ["TritonPythonModel", "RequestHandler", "parse_request", "encode_result", "DEFAULT_MAX_PIXELS"]
