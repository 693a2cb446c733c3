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
# video tracking (SAM2 memory): objects tracked in one call, memory frames and object pointers per
# object. The maxima of the last two are SAM2's num_maskmem (7) and max_object_pointers_in_encoder
# (16), the same in every released checkpoint; the exporter refuses a checkpoint that needs more.
NUM_OBJECTS = "num_objects"
NUM_MEMORIES = "num_memories"
NUM_POINTERS = "num_pointers"
# pixels in, masks out: the decoded image's height and width, the taps of a resampling table per
# output row/column (they grow with the downscale factor), and the masks upsampled per call
IMAGE_HEIGHT = "image_height"
IMAGE_WIDTH = "image_width"
ROW_TAPS = "row_taps"
COLUMN_TAPS = "column_taps"
NUM_MASKS = "num_masks"


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
    NUM_OBJECTS: DimRange(min=1, opt=4, max=16, parity_sizes=(1, 3)),
    NUM_MEMORIES: DimRange(min=1, opt=7, max=7, parity_sizes=(1, 3, 7)),
    NUM_POINTERS: DimRange(min=1, opt=16, max=16, parity_sizes=(1, 5, 16)),
    # 4096: a 4K UHD frame or a 12 MP photo; larger images are downscaled to fit (runtime.resample).
    # export.build --max-image-side changes it; the taps' maxima follow from it (export.pixels).
    IMAGE_HEIGHT: DimRange(min=1, opt=720, max=4096, parity_sizes=(1, 7, 480)),
    IMAGE_WIDTH: DimRange(min=1, opt=1280, max=4096, parity_sizes=(1, 3, 640)),
    ROW_TAPS: DimRange(min=1, opt=4, max=16, parity_sizes=(1, 3, 9)),
    COLUMN_TAPS: DimRange(min=1, opt=4, max=16, parity_sizes=(1, 2, 12)),
    # masks upsampled to the image per call: 8 at 4096x4096 are 0.5 GB of float32 per intermediate
    NUM_MASKS: DimRange(min=1, opt=8, max=8, parity_sizes=(1, 3)),
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
    video: bool = False  # exported only with ``export.build --video`` (SAM2's memory, for tracking)
    # Parity only: the tensors the graph's discrete choices (:data:`CHOICES`) pick from. The export
    # writes them under these names but not as outputs, so engines and the runtime never see them;
    # the parity checks make them outputs of a copy of the graph and compare them before the choices.
    candidates: tuple[TensorSpec, ...] = ()
    choices: tuple[str, ...] = ()
    # Pixels in, masks out: FP32 at every precision (their arithmetic mirrors the processors; the
    # reduced-precision graphs are the networks only), not calibrated, one file for all precisions.
    fixed_precision: str | None = None

    def runs_at(self, precision: str) -> str:
        """The precision of this graph's file in an artifact run at ``precision``."""
        return self.fixed_precision or precision

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

    def with_candidates(self) -> "GraphSpec":
        """This spec with its candidates as outputs: the bindings of a parity copy of the graph."""
        return replace(self, outputs=self.outputs + self.candidates, candidates=())

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
    """Copy of ``dims`` with the given maxima (e.g. ``num_boxes=32``, or a checkpoint's
    ``num_memories=3``); ``opt`` and the parity sizes are clipped to fit."""
    out = dict(dims)
    for name, mx in maxima.items():
        if mx is None:
            continue
        r = out[name]
        out[name] = replace(r, max=mx, opt=min(r.opt, mx), min=min(r.min, mx),
                            parity_sizes=tuple(sorted({min(s, mx) for s in r.parity_sizes})))
    return out


# --- tolerances ------------------------------------------------------------------------------
# FP32 ONNX Runtime vs FP32 PyTorch: differences are reassociation noise. Logits of size ~10 get a
# larger absolute budget than unit-norm embeddings.
_EMBED = Tolerance(atol=1e-4, rtol=1e-3)
_LOGIT = Tolerance(atol=1e-3, rtol=1e-3)
_FEATURE = Tolerance(atol=5e-4, rtol=1e-3)
# pixels and masks: the same arithmetic in ONNX and torch on exactly representable inputs
_PIXELS = Tolerance(atol=1e-4, rtol=1e-5)
_EXACT = Tolerance(atol=0.0, rtol=0.0)


# --- discrete choices ------------------------------------------------------------------------
# SAM2's decoders choose between candidates inside the graph. Near a boundary any rounding flips a
# choice, and the chosen output then jumps to another candidate: the precision parity compares the
# candidates themselves, and counts flips apart, each with the FP32 reference's margin (how far it
# was from flipping), in the unit given here.
STABILITY = "stability"
BEST_IOU = "best_iou"
OBJECT_PRESENT = "object_present"
CHOICES: Mapping[str, str] = {
    STABILITY: "single-mask token kept when its stability score (IoU of the mask at +delta and -delta) "
               "reaches the threshold, else the best multimask output; margin: |score - threshold| x the "
               "union area, in low-res mask pixels",
    BEST_IOU: "the multimask output with the highest predicted IoU; margin: best minus second predicted IoU",
    OBJECT_PRESENT: "object score logit > 0, else the mask is blanked (-1024); margin: |logit|",
}


@dataclass(frozen=True)
class PrecisionAcceptance:
    """Numerical acceptance of a reduced-precision artifact against the FP32 PyTorch reference,
    judged by the task: cosine of every output of every graph (export parity; for graphs with
    discrete choices, of every candidate, and of the chosen outputs against the reference's
    candidates chosen as the graph chose), and through the pipeline detections matched one to one
    with box IoU >= ``min_box_iou`` (or, where boxes may move, the ``top_k_labels`` best detections'
    labels agreeing) and masks with IoU >= ``min_mask_iou``. A discrete choice may differ from the
    reference's only where the reference's margin is at most ``flip_margins[choice]``: a tie that
    the precision's rounding decides (``CHOICES`` gives the units)."""

    min_cosine: float
    min_mask_iou: float
    min_box_iou: float | None = None
    top_k_labels: int | None = None
    flip_margins: Mapping[str, float] = field(default_factory=dict)


# Flip margins: ties, stated well above what the precision's own error moves. Measured on the family
# of tiny checkpoints (tools.tiny_checkpoints.FAMILY, tests/runtime/test_family.py; the decoders are
# FP16 in INT8 artifacts too): FP16 candidates within 0.024 on mask logits, 2e-4 on predicted IoUs and
# 1.1e-3 on object scores; 7 stability flips, at 0.14-0.8 low-res pixels, none of the others. The same
# ties are what the task-level tests accept (tests/runtime/_sam2_candidates.py). A flip at a larger
# margin means candidates moved more than rounding does: a broken graph (tests/export/test_precision.py).
PRECISION_ACCEPTANCE: Mapping[str, PrecisionAcceptance] = {
    "fp16": PrecisionAcceptance(min_cosine=0.999, min_mask_iou=0.97, min_box_iou=0.95,
                                flip_margins={STABILITY: 3.0, BEST_IOU: 0.01, OBJECT_PRESENT: 0.05}),
    "int8": PrecisionAcceptance(min_cosine=0.99, min_mask_iou=0.90, top_k_labels=5,
                                flip_margins={STABILITY: 3.0, BEST_IOU: 0.01, OBJECT_PRESENT: 0.05}),
}

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

def _taps(kind: str, outputs: str, taps: str) -> tuple[TensorSpec, TensorSpec]:
    """A resampling table: output ``i`` along an axis is ``sum_t weight[i, t] * x[index[i, t]]``."""
    return (TensorSpec(f"{kind}_index", "int64", (outputs, taps)), TensorSpec(f"{kind}_weight", "float32", (outputs, taps)))


# The decoded image as it is, same-size images batched: the processor's resize (its filter as the
# tables the runtime computes from the sizes, runtime.resample), rescale and normalisation in FP32.
_IMAGE = TensorSpec("image", "uint8", (BATCH, IMAGE_HEIGHT, IMAGE_WIDTH, "channels"))

OWL_PIXELS = GraphSpec(
    name="owl_pixels",
    family="owl",
    fixed_precision="fp32",
    doc=(
        "Decoded image (uint8 HxWx3) -> the image tower's pixel_values: Owlv2ImageProcessor's padding to "
        "a square (zeros, after rescaling: no taps reach it), Gaussian anti-aliasing blur and bilinear "
        "resize as one table per axis, rescale and normalisation."
    ),
    inputs=(_IMAGE, *_taps("row", "owl_image_size", ROW_TAPS), *_taps("column", "owl_image_size", COLUMN_TAPS)),
    outputs=(replace(OWL_IMAGE.inputs[0], tolerance=_PIXELS),),
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


# what the single-mask selection chooses from: every mask token's low-res logits and predicted IoU
# (token 0 the single mask, then the multimask outputs), before the stability fallback
_SAM2_CANDIDATES = (
    TensorSpec("candidate_mask_logits", "float32", (BATCH, NUM_BOXES, "sam_num_mask_tokens", "sam_mask_size",
                                                    "sam_mask_size"), _LOGIT),
    TensorSpec("candidate_iou_scores", "float32", (BATCH, NUM_BOXES, "sam_num_mask_tokens"), _FEATURE),
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
    candidates=_SAM2_CANDIDATES,
    choices=(STABILITY, BEST_IOU),
)

SAM2_DECODER_MULTIMASK = GraphSpec(
    name="sam2_decoder_multimask",
    family="sam",
    doc="Prompt encoder + mask decoder, multimask output: three masks per box and their IoU scores.",
    inputs=_SAM2_DECODER_INPUTS,
    outputs=_sam2_decoder_outputs("sam_num_multimask"),
)

def _fixed_point_taps(kind: str, taps: str) -> tuple[TensorSpec, ...]:
    """A fixed-point table: ``(scale / 2 + sum_t weight[i, t] * x[index[i, t]]) // scale`` in int32."""
    return (TensorSpec(f"{kind}_index", "int64", ("sam_image_size", taps)),
            TensorSpec(f"{kind}_weight", "int32", ("sam_image_size", taps)), TensorSpec(f"{kind}_scale", "int32", ("one",)))


SAM2_PIXELS = GraphSpec(
    name="sam2_pixels",
    family="sam",
    fixed_precision="fp32",
    doc=(
        "Decoded image (uint8 HxWx3) -> the encoder's pixel_values: Sam2ImageProcessor's antialiased "
        "bilinear resize as torch's uint8 kernel computes it (its fixed-point tables in int32, width "
        "then height, each pass rounded half up to uint8: exact), rescale and normalisation."
    ),
    inputs=(_IMAGE, *_fixed_point_taps("row", ROW_TAPS), *_fixed_point_taps("column", COLUMN_TAPS)),
    outputs=(replace(SAM2_IMAGE.inputs[0], tolerance=_PIXELS),),
)

SAM2_MASKS = GraphSpec(
    name="sam2_masks",
    family="sam",
    fixed_precision="fp32",
    doc=(
        "Low-res mask logits -> boolean masks at the input image's size: bilinear upsampling "
        "(Sam2Processor.post_process_masks) as one two-tap table per axis, then > mask threshold."
    ),
    inputs=(
        TensorSpec("mask_logits", "float32", (NUM_MASKS, "sam_mask_size", "sam_mask_size")),
        *_taps("row", IMAGE_HEIGHT, "bilinear_taps"),
        *_taps("column", IMAGE_WIDTH, "bilinear_taps"),
    ),
    outputs=(TensorSpec("masks", "bool", (NUM_MASKS, IMAGE_HEIGHT, IMAGE_WIDTH), _EXACT),),
)

SAM2_GRAPHS = (SAM2_IMAGE, SAM2_DECODER, SAM2_DECODER_MULTIMASK)

# --- SAM2 video: the memory modules of Sam2VideoModel (same checkpoint) ---------------------
# Per frame: sam2_image once; for objects tracked from earlier frames sam2_memory_attention ->
# sam2_track_decoder -> sam2_object_pointer; for objects started on this frame from boxes
# sam2_prompt_decoder -> sam2_object_pointer; then sam2_memory_encoder for all objects of the frame.
# Memory tokens are the embedding grid flattened row-major (sam_memory_tokens = sam_embed_size**2).
_FRAME_EMBED = TensorSpec("image_embed", "float32", ("one", "sam_embed_dim", "sam_embed_size", "sam_embed_size"))
_OBJECT_SCORES = TensorSpec("object_score_logits", "float32", (NUM_OBJECTS, "one"), _LOGIT)

SAM2_MEMORY_ENCODER = GraphSpec(
    name="sam2_memory_encoder",
    family="sam",
    video=True,
    doc=(
        "A frame's embedding (sam2_image's, the no-memory embedding is removed inside) and each "
        "object's chosen low-res mask logits -> the object's memory of this frame: the mask upsampled "
        "to the image size, binarised where it comes from a prompt on this frame (mask_is_prompt = 1) "
        "and a sigmoid otherwise, scaled and biased, fused with the features; the no-object "
        "embedding added where the object score is <= 0. memory_pos_enc is the spatial sine "
        "encoding (input independent). The reference stores memory_features rounded to bfloat16."
    ),
    inputs=(
        _FRAME_EMBED,
        TensorSpec("mask_logits", "float32", (NUM_OBJECTS, "one", "sam_mask_size", "sam_mask_size")),
        TensorSpec("object_score_logits", "float32", (NUM_OBJECTS, "one")),
        TensorSpec("mask_is_prompt", "float32", (NUM_OBJECTS, "one")),
    ),
    outputs=(
        TensorSpec("memory_features", "float32", (NUM_OBJECTS, "sam_memory_tokens", "sam_memory_dim"), _FEATURE),
        TensorSpec("memory_pos_enc", "float32", (NUM_OBJECTS, "sam_memory_tokens", "sam_memory_dim"), _EMBED),
    ),
)

SAM2_MEMORY_ATTENTION = GraphSpec(
    name="sam2_memory_attention",
    family="sam",
    video=True,
    doc=(
        "The frame's embedding conditioned on each object's memory bank: up to num_maskmem memory "
        "frames (memory_slots one-hot picks each frame's temporal encoding: the last slot for the "
        "object's prompted frame, slot t-1 for the frame t frames back) and up to "
        "max_object_pointers_in_encoder object pointers (pointer_offsets: frames between each "
        "pointer's frame and this one). Output replaces image_embed for the tracking decoder."
    ),
    inputs=(
        _FRAME_EMBED,
        TensorSpec("memory_features", "float32", (NUM_OBJECTS, NUM_MEMORIES, "sam_memory_tokens", "sam_memory_dim")),
        TensorSpec("memory_pos_enc", "float32", ("one", "sam_memory_tokens", "sam_memory_dim")),
        TensorSpec("memory_slots", "float32", (NUM_OBJECTS, NUM_MEMORIES, "sam_num_maskmem")),
        TensorSpec("object_pointers", "float32", (NUM_OBJECTS, NUM_POINTERS, "sam_embed_dim")),
        TensorSpec("pointer_offsets", "float32", (NUM_OBJECTS, NUM_POINTERS)),
    ),
    outputs=(
        TensorSpec("conditioned_embed", "float32", (NUM_OBJECTS, "sam_embed_dim", "sam_embed_size", "sam_embed_size"), _FEATURE),
    ),
)

SAM2_TRACK_DECODER = GraphSpec(
    name="sam2_track_decoder",
    family="sam",
    video=True,
    doc=(
        "Mask decoder in its tracking form (no new prompt, multimask output, best by predicted IoU, "
        "as Sam2VideoModel on tracked frames): mask logits are -1024 where the object score is <= 0; "
        "mask_token is the chosen mask's output token (input of sam2_object_pointer)."
    ),
    inputs=(
        TensorSpec("conditioned_embed", "float32", (NUM_OBJECTS, "sam_embed_dim", "sam_embed_size", "sam_embed_size")),
        TensorSpec("high_res_feat0", "float32", ("one", "sam_feat0_dim", "sam_feat0_size", "sam_feat0_size")),
        TensorSpec("high_res_feat1", "float32", ("one", "sam_feat1_dim", "sam_feat1_size", "sam_feat1_size")),
    ),
    outputs=(
        TensorSpec("mask_logits", "float32", (NUM_OBJECTS, "one", "sam_mask_size", "sam_mask_size"), _LOGIT),
        TensorSpec("iou_scores", "float32", (NUM_OBJECTS, "one"), _FEATURE),
        _OBJECT_SCORES,
        TensorSpec("mask_token", "float32", (NUM_OBJECTS, "sam_embed_dim"), _FEATURE),
    ),
    # the multimask outputs before the choice by predicted IoU and the object gate
    candidates=(
        TensorSpec("candidate_mask_logits", "float32", (NUM_OBJECTS, "sam_num_multimask", "sam_mask_size",
                                                        "sam_mask_size"), _LOGIT),
        TensorSpec("candidate_iou_scores", "float32", (NUM_OBJECTS, "sam_num_multimask"), _FEATURE),
        TensorSpec("candidate_mask_tokens", "float32", (NUM_OBJECTS, "sam_num_multimask", "sam_embed_dim"), _FEATURE),
    ),
    choices=(BEST_IOU, OBJECT_PRESENT),
)

SAM2_PROMPT_DECODER = GraphSpec(
    name="sam2_prompt_decoder",
    family="sam",
    video=True,
    doc=(
        "Box prompts on the frame that starts their objects (Sam2VideoModel's prompted frame: "
        "sam2_decoder's single mask with the stability fallback), mask logits -1024 where the object "
        "score is <= 0, plus the single-mask output token for sam2_object_pointer."
    ),
    inputs=_SAM2_DECODER_INPUTS,
    outputs=(
        *_sam2_decoder_outputs("one"),
        TensorSpec("mask_token", "float32", (BATCH, NUM_BOXES, "sam_embed_dim"), _FEATURE),
    ),
    candidates=_SAM2_CANDIDATES,
    choices=(STABILITY, BEST_IOU, OBJECT_PRESENT),
)

SAM2_OBJECT_POINTER = GraphSpec(
    name="sam2_object_pointer",
    family="sam",
    video=True,
    doc="Mask token -> object pointer (MLP), replaced by the learnt no-object pointer where the object score is <= 0.",
    inputs=(
        TensorSpec("mask_token", "float32", (NUM_OBJECTS, "sam_embed_dim")),
        TensorSpec("object_score_logits", "float32", (NUM_OBJECTS, "one")),
    ),
    outputs=(TensorSpec("object_pointer", "float32", (NUM_OBJECTS, "sam_embed_dim"), _FEATURE),),
)

SAM2_VIDEO_GRAPHS = (SAM2_PROMPT_DECODER, SAM2_MEMORY_ATTENTION, SAM2_TRACK_DECODER, SAM2_OBJECT_POINTER,
                     SAM2_MEMORY_ENCODER)

# --- registry --------------------------------------------------------------------------------
# Every graph; those with ``video=True`` are in an artifact only when it was exported with --video.
PIXEL_GRAPHS = (OWL_PIXELS, SAM2_PIXELS, SAM2_MASKS)
GRAPHS: dict[str, GraphSpec] = {g.name: g for g in OWL_GRAPHS + SAM2_GRAPHS + PIXEL_GRAPHS + SAM2_VIDEO_GRAPHS}
