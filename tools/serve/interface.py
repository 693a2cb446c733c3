"""The wire interface of the served models, declared once: the model repository's config.pbtxt, the
Python-backend model, the client and the README's table all follow these specs.

Shapes are per request, without the batch dimension Triton prepends because the models batch: a
request carries batch size 1 (``image`` is sent with shape ``[1, 1]``, ``prompts`` with ``[1, P]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WireTensor:
    name: str
    datatype: str  # KServe v2 name: BYTES, FP32, INT64
    dims: tuple[int, ...]  # per request, -1 where the size varies
    optional: bool = False
    ragged: bool = False  # requests of different sizes are batched together (allow_ragged_batch)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY[self.datatype])

    @property
    def config_type(self) -> str:
        """The data type as config.pbtxt spells it."""
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


_NUMPY = {"BYTES": object, "FP32": np.float32, "INT64": np.int64}

IMAGE = WireTensor("image", "BYTES", (1,))
PROMPTS = WireTensor("prompts", "BYTES", (-1,), ragged=True)
THRESHOLD = WireTensor("threshold", "FP32", (1,), optional=True)
BOXES = WireTensor("boxes", "FP32", (-1, 4))
SCORES = WireTensor("scores", "FP32", (-1,))
LABELS = WireTensor("labels", "INT64", (-1,))
MASKS_RLE = WireTensor("masks_rle", "BYTES", (-1,))
IMAGE_SIZE = WireTensor("image_size", "INT64", (2,))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "segment": OWLv2 + SAM2; "detect": OWLv2 only
    inputs: tuple[WireTensor, ...]
    outputs: tuple[WireTensor, ...]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


OWLSAM = ModelSpec("owlsam", "segment", (IMAGE, PROMPTS, THRESHOLD), (BOXES, SCORES, LABELS, MASKS_RLE, IMAGE_SIZE))
OWL_DETECT = ModelSpec("owl_detect", "detect", (IMAGE, PROMPTS, THRESHOLD), (BOXES, SCORES, LABELS, IMAGE_SIZE))
MODELS = (OWLSAM, OWL_DETECT)
TASKS = {m.task: m for m in MODELS}
