"""The one declaration of every exported graph: pure data.

The exporter, the parity checker, the engine builder and the runtime all read these specs, so a
binding name is written here and nowhere else (code refers to ``OWL_TEXT.inputs[0].name`` or to the
module-level name constants below).

Shapes are tuples of dimension names. A name in :data:`DYNAMIC_DIMS` is dynamic (its min/opt/max
become TensorRT optimisation-profile ranges and ONNX symbolic dims); every other name is a static
size read from the checkpoint at export time and recorded in the artifact's ``manifest.json`` under
``sizes`` (for example ``owl_image_size`` is 960 for OWLv2-B/16 and 64 for the tiny test model).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

# --- dimension names -------------------------------------------------------------------------
BATCH = "batch"
NUM_PROMPTS = "num_prompts"
NUM_BOXES = "num_boxes"


@dataclass(frozen=True)
class DimRange:
    """Range of a dynamic dimension: TensorRT profile min/opt/max, plus the sizes parity runs at."""

    min: int
    opt: int
    max: int
    parity_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"dimension range must satisfy 1 <= min <= opt <= max, got {self}")


DYNAMIC_DIMS: Mapping[str, DimRange] = {
    BATCH: DimRange(min=1, opt=1, max=4, parity_sizes=(1, 2)),
    NUM_PROMPTS: DimRange(min=1, opt=4, max=64, parity_sizes=(1, 5)),
    NUM_BOXES: DimRange(min=1, opt=8, max=64, parity_sizes=(1, 2, 7)),
}


@dataclass(frozen=True)
class Tolerance:
    """FP32 export parity per output: ``|ort - torch| <= atol + rtol * |torch|`` everywhere and
    cosine similarity of the flattened tensors ``>= min_cosine``."""

    atol: float
    rtol: float
    min_cosine: float = 0.9999


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64", ...
    shape: tuple[str, ...]
    tolerance: Tolerance | None = None  # outputs only

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if d in DYNAMIC_DIMS}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    family: str  # "owl" or "sam": which checkpoint the graph comes from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_dims(self) -> list[str]:
        seen: list[str] = []
        for t in self.inputs:
            seen += [d for d in t.shape if d in DYNAMIC_DIMS and d not in seen]
        return seen


def _by_name(tensors: tuple[TensorSpec, ...], name: str, graph: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"graph {graph!r} has no tensor {name!r}")


def resolve_shape(tensor: TensorSpec, sizes: Mapping[str, int], dims: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete shape of ``tensor`` given the artifact's static ``sizes`` and chosen dynamic ``dims``."""
    out = []
    for d in tensor.shape:
        if d in DYNAMIC_DIMS:
            out.append(int(dims[d]))
        elif d in sizes:
            out.append(int(sizes[d]))
        else:
            raise KeyError(f"dimension {d!r} of {tensor.name!r} is neither dynamic nor in the artifact sizes")
    return tuple(out)


def with_max(dims: Mapping[str, DimRange], **maxima: int | None) -> dict[str, DimRange]:
    """Copy of ``dims`` with the given maxima (e.g. ``num_boxes=32``); ``opt`` is clipped to fit."""
    out = dict(dims)
    for name, mx in maxima.items():
        if mx is None:
            continue
        r = out[name]
        out[name] = replace(r, max=mx, opt=min(r.opt, mx), min=min(r.min, mx))
    return out


# --- tolerances ------------------------------------------------------------------------------
# FP32 ONNX Runtime vs FP32 PyTorch: differences are reassociation noise. Logits of size ~10 get a
# larger absolute budget than unit-norm embeddings.
_EMBED = Tolerance(atol=1e-4, rtol=1e-3)
_LOGIT = Tolerance(atol=1e-3, rtol=1e-3)
_FEATURE = Tolerance(atol=5e-4, rtol=1e-3)

# --- OWLv2 -----------------------------------------------------------------------------------
OWL_TEXT = GraphSpec(
    name="owl_text",
    family="owl",
    doc="Tokenised prompts -> L2-normalised query embeddings (the model's text_embeds).",
    inputs=(
        TensorSpec("input_ids", "int64", (NUM_PROMPTS, "owl_text_length")),
        TensorSpec("attention_mask", "int64", (NUM_PROMPTS, "owl_text_length")),
    ),
    outputs=(TensorSpec("query_embeds", "float32", (NUM_PROMPTS, "owl_embed_dim"), _EMBED),),
)

OWL_IMAGE = GraphSpec(
    name="owl_image",
    family="owl",
    doc=(
        "Padded square image -> everything needed to score any set of queries: L2-normalised "
        "per-patch class embeddings, logit shift and (ELU+1) scale, boxes as normalised cxcywh of "
        "the padded square with the box bias baked in, and objectness logits."
    ),
    inputs=(TensorSpec("pixel_values", "float32", (BATCH, "channels", "owl_image_size", "owl_image_size")),),
    outputs=(
        TensorSpec("image_class_embeds", "float32", (BATCH, "owl_num_patches", "owl_embed_dim"), _EMBED),
        TensorSpec("logit_shift", "float32", (BATCH, "owl_num_patches", "one"), _LOGIT),
        TensorSpec("logit_scale", "float32", (BATCH, "owl_num_patches", "one"), _LOGIT),
        TensorSpec("pred_boxes", "float32", (BATCH, "owl_num_patches", "box_coords"), _EMBED),
        TensorSpec("objectness_logits", "float32", (BATCH, "owl_num_patches"), _LOGIT),
    ),
)

OWL_HEAD = GraphSpec(
    name="owl_head",
    family="owl",
    doc=(
        "Class head: cosine similarity of patch and query embeddings, shifted and scaled per patch. "
        "Separate from owl_image so the image tower runs once per image whatever the prompts."
    ),
    inputs=(
        TensorSpec("image_class_embeds", "float32", (BATCH, "owl_num_patches", "owl_embed_dim")),
        TensorSpec("logit_shift", "float32", (BATCH, "owl_num_patches", "one")),
        TensorSpec("logit_scale", "float32", (BATCH, "owl_num_patches", "one")),
        TensorSpec("query_embeds", "float32", (NUM_PROMPTS, "owl_embed_dim")),
    ),
    outputs=(TensorSpec("logits", "float32", (BATCH, "owl_num_patches", NUM_PROMPTS), _LOGIT),),
)

OWL_GRAPHS = (OWL_TEXT, OWL_IMAGE, OWL_HEAD)

# --- SAM2 ------------------------------------------------------------------------------------
SAM2_IMAGE = GraphSpec(
    name="sam2_image",
    family="sam",
    doc=(
        "Resized image -> image embedding (no-memory embedding added, as the image path of the "
        "reference does) and the two high-resolution feature maps the decoder uses."
    ),
    inputs=(TensorSpec("pixel_values", "float32", (BATCH, "channels", "sam_image_size", "sam_image_size")),),
    outputs=(
        TensorSpec("image_embed", "float32", (BATCH, "sam_embed_dim", "sam_embed_size", "sam_embed_size"), _FEATURE),
        TensorSpec("high_res_feat0", "float32", (BATCH, "sam_feat0_dim", "sam_feat0_size", "sam_feat0_size"), _FEATURE),
        TensorSpec("high_res_feat1", "float32", (BATCH, "sam_feat1_dim", "sam_feat1_size", "sam_feat1_size"), _FEATURE),
    ),
)

_SAM2_DECODER_INPUTS = (
    TensorSpec("image_embed", "float32", (BATCH, "sam_embed_dim", "sam_embed_size", "sam_embed_size")),
    TensorSpec("high_res_feat0", "float32", (BATCH, "sam_feat0_dim", "sam_feat0_size", "sam_feat0_size")),
    TensorSpec("high_res_feat1", "float32", (BATCH, "sam_feat1_dim", "sam_feat1_size", "sam_feat1_size")),
    # xyxy in model-input pixels (the sam_image_size square), as Sam2Processor hands them to the model
    TensorSpec("boxes", "float32", (BATCH, NUM_BOXES, "box_coords")),
)


def _sam2_decoder_outputs(num_masks: str) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("mask_logits", "float32", (BATCH, NUM_BOXES, num_masks, "sam_mask_size", "sam_mask_size"), _LOGIT),
        TensorSpec("iou_scores", "float32", (BATCH, NUM_BOXES, num_masks), _FEATURE),
        TensorSpec("object_score_logits", "float32", (BATCH, NUM_BOXES, "one"), _LOGIT),
    )


SAM2_DECODER = GraphSpec(
    name="sam2_decoder",
    family="sam",
    doc=(
        "Prompt encoder + mask decoder for box prompts, single-mask output with the reference's "
        "stability-score fallback to the best multimask output. The runtime's default."
    ),
    inputs=_SAM2_DECODER_INPUTS,
    outputs=_sam2_decoder_outputs("one"),
)

SAM2_DECODER_MULTIMASK = GraphSpec(
    name="sam2_decoder_multimask",
    family="sam",
    doc="Prompt encoder + mask decoder, multimask output: three masks per box and their IoU scores.",
    inputs=_SAM2_DECODER_INPUTS,
    outputs=_sam2_decoder_outputs("sam_num_multimask"),
)

SAM2_GRAPHS = (SAM2_IMAGE, SAM2_DECODER, SAM2_DECODER_MULTIMASK)

# --- registry --------------------------------------------------------------------------------
GRAPHS: dict[str, GraphSpec] = {g.name: g for g in OWL_GRAPHS + SAM2_GRAPHS}


def graphs_of(family: str) -> list[GraphSpec]:
    return [g for g in GRAPHS.values() if g.family == family]
