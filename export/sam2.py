"""SAM2 sub-networks as exportable modules: image encoder, and prompt encoder + mask decoder for boxes.

``Sam2Image`` runs once per image; ``Sam2Decoder`` turns all the boxes of an image into masks in one
call. Together they compute exactly what ``Sam2Model(pixel_values=..., input_boxes=...,
multimask_output=...)`` computes; the reference's glue is rewritten (never its layers) to export with
dynamic batch and box counts, and the single-mask selection runs as two steps, ``decide`` and
``select``, on candidates that parity replays (docs/ARCHITECTURE.md, "Exporting SAM2").
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from calibration.inputs import random_boxes_xyxy
from export.graph_export import GraphExport
from export.models import LoadedModel
from runtime.errors import UserError
from runtime.graphs import (BATCH, BEST_IOU, NUM_BOXES, SAM2_DECODER, SAM2_DECODER_MULTIMASK, SAM2_IMAGE,
                            STABILITY)

# Sam2Model's image path uses three FPN levels: two high-resolution maps for the decoder's upscaling
# and the lowest-resolution map as the image embedding.
_NUM_FEATURE_LEVELS = 3
# The mask decoder upsamples the image embedding twice by 2 (two stride-2 transposed convolutions).
_MASK_UPSCALE = 4


class Sam2Image(nn.Module):
    """pixel_values -> image_embed (+ no-memory embedding), high_res_feat0, high_res_feat1 (NCHW).

    The high-resolution maps are already projected by the mask decoder's ``conv_s0``/``conv_s1``, as
    ``Sam2Model.get_image_features`` does, so the decoder graph never re-projects them per box.

    Hiera's positional embedding (``Sam2HieraDetModel._get_pos_embed``: the background embedding
    resized bicubically to the patch grid, plus the tiled window embedding) depends only on the grid,
    which the static image size fixes: it is computed here once, by that same method, and the graph
    adds it as a constant. Exported as is, the bicubic resize stays in the graph wherever the exporter
    does not fold it (the released 7x7 -> 256x256 embedding), and TensorRT's parser has no cubic Resize.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_encoder = model.vision_encoder
        self.conv_s0 = model.mask_decoder.conv_s0
        self.conv_s1 = model.mask_decoder.conv_s1
        self.no_memory_embedding = model.no_memory_embedding  # [1, 1, C]
        backbone = self.vision_encoder.backbone
        side = _side(backbone.config.image_size, "the image encoder's image_size", type(model).__name__)
        with torch.no_grad():
            param = next(backbone.parameters())
            grid = backbone.patch_embed(torch.zeros(1, 3, side, side, dtype=param.dtype, device=param.device)).shape[1:3]
            pos_embed = backbone._get_pos_embed(tuple(grid))  # [1, h, w, C], added to the NHWC patch embeddings
        self.register_buffer("pos_embed", pos_embed.detach().clone(), persistent=False)
        self.eval()

    def _fpn_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``Sam2VisionModel.forward``'s ``fpn_hidden_states`` (high -> low resolution, NCHW), with the
        positional embedding as a constant: ``Sam2HieraDetModel.forward`` then the neck."""
        encoder = self.vision_encoder
        backbone = encoder.backbone
        hidden = backbone.patch_embed(pixel_values) + self.pos_embed
        stages = []
        for i, block in enumerate(backbone.blocks):
            hidden = block(hidden)
            if i in backbone.stage_ends:
                stages.append(hidden)
        fpn_hidden_states, _ = encoder.neck(tuple(stages))
        return fpn_hidden_states[-encoder.num_feature_levels :][::-1]

    def forward(self, pixel_values: torch.Tensor):
        feature_maps = self._fpn_features(pixel_values)
        feat0 = self.conv_s0(feature_maps[0])
        feat1 = self.conv_s1(feature_maps[1])
        # Sam2Model adds [1, 1, C] to the (HW, B, C) layout; in NCHW that is a [1, C, 1, 1] add.
        image_embed = feature_maps[-1] + self.no_memory_embedding.reshape(1, -1, 1, 1)
        return image_embed, feat0, feat1


def _per_box(x: torch.Tensor, num_boxes: torch.SymInt | int) -> torch.Tensor:
    """[B, ...] -> [B * num_boxes, ...], each image repeated for its boxes (``repeat_interleave``)."""
    return x.unsqueeze(1).expand(-1, num_boxes, *x.shape[1:]).reshape(-1, *x.shape[1:])


def _first_argmax(scores: torch.Tensor) -> list[torch.Tensor]:
    """One boolean ``[..., 1]`` per index of the last (static) axis: true where that index is the
    first maximum, which is ``torch.argmax(scores, -1) == k`` written with comparisons only, so the
    graph has no ArgMax and no int64 indices (both awkward in strongly typed TensorRT builds)."""
    m = scores.shape[-1]
    picks = []
    for k in range(m):
        sk = scores[..., k : k + 1]
        pick = None
        for j in range(m):
            if j != k:  # beat every earlier index strictly, tie or beat every later one
                c = sk > scores[..., j : j + 1] if j < k else sk >= scores[..., j : j + 1]
                pick = c if pick is None else pick & c
        picks.append(pick if pick is not None else torch.ones_like(sk, dtype=torch.bool))
    return picks


def decode(md: nn.Module, sparse: torch.Tensor, image: torch.Tensor, image_pe: torch.Tensor,
           feat0: torch.Tensor, feat1: torch.Tensor, num_mask_tokens: int):
    """``Sam2MaskDecoder.forward`` from prompt embeddings to every mask output, before any choice.

    ``sparse`` [B, N, T, C] prompt tokens, ``image`` [B*N, C, h, w] (dense prompt added), the
    feature maps already per box. Returns masks [B, N, M, H, W], iou [B, N, M], object score logits
    [B, N, 1] and the mask tokens [B, N, M, C] of all ``M = num_mask_tokens`` outputs.
    """
    b, n = sparse.shape[0], sparse.shape[1]
    c, h, w = image.shape[1], image.shape[2], image.shape[3]
    output_tokens = torch.cat([md.obj_score_token.weight, md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.reshape(1, 1, *output_tokens.shape).expand(b, n, -1, -1), sparse], dim=2)
    tokens_out, image_out = md.transformer(tokens, image, image_pe.expand(image.shape[0], -1, -1, -1), None)

    iou_token_out = tokens_out[:, :, 1, :]
    mask_tokens_out = tokens_out[:, :, 2 : 2 + num_mask_tokens, :]
    image_out = image_out.transpose(2, 3).reshape(-1, c, h, w)
    upscaled = md.upscale_conv1(image_out) + feat1
    upscaled = md.activation(md.upscale_layer_norm(upscaled))
    upscaled = md.activation(md.upscale_conv2(upscaled) + feat0)
    hyper_in = torch.stack([mlp(mask_tokens_out[:, :, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=2)
    _, uc, uh, uw = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, n, uc, uh * uw)).reshape(b, n, -1, uh, uw)
    iou = md.iou_prediction_head(iou_token_out)
    object_score_logits = md.pred_obj_score_head(tokens_out[:, :, 0, :])
    return masks, iou, object_score_logits, mask_tokens_out


def one_hot_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``[..., m]`` booleans, true at the first maximum of ``scores``' last axis (see ``_first_argmax``)."""
    return torch.cat(_first_argmax(scores), dim=-1)


def pick(candidates: torch.Tensor, one_hot: torch.Tensor, axis: int) -> torch.Tensor:
    """The candidate ``one_hot`` marks along ``axis`` (kept, size 1), by a chain of ``where`` over the
    static candidate count: ``candidates`` [..., m, ...] with ``one_hot`` [..., m] on the leading axes."""
    m = candidates.shape[axis]
    extra = candidates.ndim - one_hot.ndim  # trailing axes the picks broadcast over

    def part(x: torch.Tensor, k: int) -> torch.Tensor:
        return x.narrow(axis, k, 1)

    best = part(candidates, 0)  # where no later one is picked
    for k in range(1, m):
        p = part(one_hot, k).reshape(*part(one_hot, k).shape, *([1] * extra))
        best = torch.where(p, part(candidates, k), best)
    return best


def gate_absent(masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """NO_OBJ_SCORE (-1024) where the object is absent (``_single_frame_forward``); ``present`` [..., 1]
    broadcast over the masks' two spatial axes."""
    return torch.where(present[..., None, None], masks, torch.full_like(masks, NO_OBJ_SCORE))


#: Sam2VideoModel's mask logit for "object absent" (``NO_OBJ_SCORE`` in modeling_sam2_video.py).
NO_OBJ_SCORE = -1024.0

_CANDIDATE_MASKS, _CANDIDATE_IOU = (t.name for t in SAM2_DECODER.candidates)
_MASKS, _IOU, _OBJECT_SCORES = SAM2_DECODER.output_names


class Sam2Decoder(nn.Module):
    """image_embed, high_res_feat0, high_res_feat1, boxes -> mask_logits, iou_scores, object_score_logits.

    ``boxes`` are ``[B, num_boxes, 4]`` xyxy in model-input pixels (``Sam2Processor``'s
    ``input_boxes``). With ``multimask=False`` the output is the single-mask token, replaced by the
    multimask output with the best predicted IoU where its stability score is below the
    configured threshold (``Sam2MaskDecoder._dynamic_multimask_via_stability``, which the reference
    applies in eval mode), then the candidates it chose from (``SAM2_DECODER.candidates``); with
    ``multimask=True`` it is the multimask outputs. The selection is two steps, ``decide`` and
    ``select`` (:class:`export.graph_export.DiscreteChoices`), which parity replays.
    """

    def __init__(self, model: nn.Module, multimask: bool) -> None:
        super().__init__()
        prompt = model.prompt_encoder
        self.shared_embedding = prompt.shared_embedding
        self.point_embed = prompt.point_embed
        self.not_a_point_embed = prompt.not_a_point_embed
        self.no_mask_embed = prompt.no_mask_embed
        self.input_image_size = int(prompt.input_image_size)
        self.mask_decoder = model.mask_decoder
        self.multimask = bool(multimask)
        self.num_mask_tokens = int(model.mask_decoder.num_mask_tokens)
        with torch.no_grad():
            image_pe = model.get_image_wide_positional_embeddings()  # [1, C, h, w], input independent
        self.register_buffer("image_pe", image_pe.detach().clone(), persistent=False)
        self.eval()  # the single-mask selection must not depend on a training flag the exporter restores

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``Sam2PromptEncoder._embed_boxes`` without in-place writes: [B, N, 4] -> [B, N, 3, C]."""
        b, n = boxes.shape[0], boxes.shape[1]
        corners = (boxes + 0.5).reshape(b, n, 2, 2) / self.input_image_size  # shift to pixel centres, to [0, 1]
        corner_embedding = self.shared_embedding(corners) + self.point_embed.weight[2:4]  # top-left, bottom-right
        # the padding point: the reference embeds (0, 0) and then overwrites it with not_a_point_embed
        pad = self.not_a_point_embed.weight.reshape(1, 1, 1, -1).expand(b, n, 1, -1)
        return torch.cat([corner_embedding, pad], dim=2)

    def _decode_boxes(self, image_embed, high_res_feat0, high_res_feat1, boxes):
        """Every mask output of every box: ``decode``'s masks, iou, object scores and mask tokens."""
        n = boxes.shape[1]
        sparse = self._embed_boxes(boxes)
        # the dense prompt of a box-only prompt is the no-mask embedding everywhere
        image = _per_box(image_embed + self.no_mask_embed.weight.reshape(1, -1, 1, 1), n)
        return decode(self.mask_decoder, sparse, image, self.image_pe, _per_box(high_res_feat0, n),
                      _per_box(high_res_feat1, n), self.num_mask_tokens)

    # --- the single-mask selection (``_dynamic_multimask_via_stability``), in two steps

    def _stability(self, single_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability score (IoU of the mask thresholded at +delta and at -delta) and union area, ``[..., 1]``,
        of masks ``[..., 1, H, W]``; areas counted in float32 (exact below 2**24 pixels), not int64."""
        flat = single_masks.flatten(-2)
        delta = self.mask_decoder.dynamic_multimask_stability_delta
        area_i = (flat > delta).to(flat.dtype).sum(dim=-1)
        area_u = (flat > -delta).to(flat.dtype).sum(dim=-1)
        return torch.where(area_u > 0, area_i / area_u.clamp(min=1.0), torch.ones_like(area_u)), area_u

    def decide(self, values):
        if not self.mask_decoder.dynamic_multimask_via_stability:
            return {}
        masks, iou = values[_CANDIDATE_MASKS], values[_CANDIDATE_IOU]
        stability, _ = self._stability(masks[:, :, 0:1])
        return {STABILITY: stability >= self.mask_decoder.dynamic_multimask_stability_thresh,  # [B, N, 1]
                BEST_IOU: one_hot_argmax(iou[:, :, 1:])}  # the first of equals, as torch.argmax

    def select(self, values, picks):
        masks, iou = values[_CANDIDATE_MASKS], values[_CANDIDATE_IOU]
        single_masks, single_iou = masks[:, :, 0:1], iou[:, :, 0:1]
        if STABILITY not in picks:
            return {_MASKS: single_masks, _IOU: single_iou}
        best_masks, best_iou = pick(masks[:, :, 1:], picks[BEST_IOU], 2), pick(iou[:, :, 1:], picks[BEST_IOU], 2)
        is_stable = picks[STABILITY]
        return {_MASKS: torch.where(is_stable[..., None, None], single_masks, best_masks),
                _IOU: torch.where(is_stable, single_iou, best_iou)}

    def margins(self, values):
        if not self.mask_decoder.dynamic_multimask_via_stability:
            return {}
        masks, iou = values[_CANDIDATE_MASKS], values[_CANDIDATE_IOU]
        stability, area_u = self._stability(masks[:, :, 0:1])
        thresh = self.mask_decoder.dynamic_multimask_stability_thresh
        top2 = iou[:, :, 1:].topk(2, dim=-1).values
        return {STABILITY: ((stability - thresh).abs() * area_u)[..., 0], BEST_IOU: top2[..., 0] - top2[..., 1]}

    def applies(self, choice, picks):
        if choice == BEST_IOU and STABILITY in picks:
            return ~picks[STABILITY][..., 0]  # the best multimask output is used only where the single one is unstable
        return torch.ones(next(iter(picks.values())).shape[:-1], dtype=torch.bool)

    def forward(self, image_embed, high_res_feat0, high_res_feat1, boxes):
        masks, iou, object_score_logits, _ = self._decode_boxes(image_embed, high_res_feat0, high_res_feat1, boxes)
        if self.multimask:
            return masks[:, :, 1:], iou[:, :, 1:], object_score_logits
        values = {_CANDIDATE_MASKS: masks, _CANDIDATE_IOU: iou}
        chosen = self.select(values, self.decide(values))
        return chosen[_MASKS], chosen[_IOU], object_score_logits, masks, iou


def _side(value, what: str, source: str) -> int:
    """A square side from an int or an [h, w] pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise UserError(f"{source}: {what} is {list(value)}; only square SAM2 inputs are supported")
        return int(value[0])
    return int(value)


def sam2_sizes(loaded: LoadedModel) -> dict[str, int]:
    """Static sizes of the SAM2 graphs, from the checkpoint's config and processor config."""
    cfg = loaded.model.config
    vision, prompt, decoder = cfg.vision_config, cfg.prompt_encoder_config, cfg.mask_decoder_config
    src = loaded.source

    size = loaded.processor.image_processor.size
    if "height" in size:
        proc_size = _side([size["height"], size["width"]], "the processor's resize size", src)
    else:
        proc_size = int(size["longest_edge"])
    model_sizes = {
        "the image encoder": _side(vision.backbone_config.image_size, "the image encoder's image_size", src),
        "the prompt encoder": _side(prompt.image_size, "the prompt encoder's image_size", src),
    }
    if getattr(cfg, "image_size", None) is not None:  # Sam2VideoConfig has a top-level image_size
        model_sizes["the model"] = _side(cfg.image_size, "the model's image_size", src)
    target_size = getattr(loaded.processor, "target_size", None)
    if target_size is not None:  # the side the processor maps box coordinates to
        model_sizes["the processor's box coordinates"] = int(target_size)
    for what, s in model_sizes.items():
        if s != proc_size:
            raise UserError(
                f"{src}: the processor resizes to {proc_size} px but {what} expects {s} px; "
                "fix preprocessor_config.json (or the model's config.json)"
            )

    if vision.num_feature_levels != _NUM_FEATURE_LEVELS:
        raise UserError(f"{src}: SAM2 with {vision.num_feature_levels} feature levels is not supported (expected 3)")
    feat0, feat1, embed = (_side(s, "a backbone feature size", src) for s in vision.backbone_feature_sizes)
    patch = _side(prompt.patch_size, "the prompt encoder's patch_size", src)
    if proc_size // patch != embed:
        raise UserError(
            f"{src}: the prompt encoder's grid ({proc_size} / {patch} px) does not match the "
            f"{embed}x{embed} image embedding of backbone_feature_sizes"
        )
    if (feat0, feat1) != (_MASK_UPSCALE * embed, _MASK_UPSCALE // 2 * embed):
        raise UserError(
            f"{src}: backbone_feature_sizes {vision.backbone_feature_sizes} are not the 4x, 2x, 1x "
            "pyramid the mask decoder upsamples through"
        )
    if vision.fpn_hidden_size != decoder.hidden_size:
        raise UserError(
            f"{src}: the image embedding has {vision.fpn_hidden_size} channels but the mask decoder "
            f"expects {decoder.hidden_size}"
        )
    return {
        "sam_image_size": proc_size,
        "sam_embed_dim": int(decoder.hidden_size),
        "sam_embed_size": embed,
        "sam_feat0_dim": int(decoder.hidden_size) // 8,  # conv_s0 output channels
        "sam_feat0_size": feat0,
        "sam_feat1_dim": int(decoder.hidden_size) // 4,  # conv_s1 output channels
        "sam_feat1_size": feat1,
        "sam_mask_size": _MASK_UPSCALE * embed,
        "sam_num_multimask": int(decoder.num_multimask_outputs),
        "sam_num_mask_tokens": int(decoder.num_multimask_outputs) + 1,  # the single-mask token first
        "channels": 3,
        "one": 1,
        "box_coords": 4,
    }


def random_boxes(rng: np.random.Generator, batch: int, num_boxes: int, image_size: int) -> np.ndarray:
    """Valid xyxy boxes inside the ``image_size`` square (x0 < x1, y0 < y1), sides log-uniform from
    3 % to 100 % of the image, so small, elongated and image-sized boxes all occur: ``(batch,
    num_boxes, 4)`` of :func:`calibration.inputs.random_boxes_xyxy` (the same draws)."""
    return random_boxes_xyxy(rng, (batch, num_boxes), image_size, image_size)


def sam2_graph_exports(loaded: LoadedModel, sizes: Mapping[str, int]) -> list[GraphExport]:
    model = loaded.model
    s = sizes["sam_image_size"]
    image = Sam2Image(model).eval()
    features: dict[int, dict[str, np.ndarray]] = {}

    def image_inputs(dims, rng):
        return {SAM2_IMAGE.input_names[0]: rng.standard_normal((dims[BATCH], 3, s, s)).astype(np.float32)}

    def image_features(batch: int) -> dict[str, np.ndarray]:
        """The encoder's outputs on random pixels, so the decoder sees realistic features; cached
        per batch size (and seeded by it, so they do not depend on the order of calls)."""
        if batch not in features:
            pixels = image_inputs({BATCH: batch}, np.random.default_rng(10_000 + batch))
            graph = GraphExport(SAM2_IMAGE, image, image_inputs)
            features[batch] = graph.torch_outputs(pixels)
        return features[batch]

    def decoder_inputs(dims, rng):
        b, n = dims[BATCH], dims[NUM_BOXES]
        encoded = image_features(b)
        feature_names, boxes_name = SAM2_DECODER.input_names[:-1], SAM2_DECODER.input_names[-1]
        # the decoder's feature inputs are the encoder's outputs, in order
        feeds = {name: encoded[out] for name, out in zip(feature_names, SAM2_IMAGE.output_names, strict=True)}
        feeds[boxes_name] = random_boxes(rng, b, n, s)
        return feeds

    return [
        GraphExport(SAM2_IMAGE, image, image_inputs),
        GraphExport(SAM2_DECODER, Sam2Decoder(model, multimask=False).eval(), decoder_inputs),
        GraphExport(SAM2_DECODER_MULTIMASK, Sam2Decoder(model, multimask=True).eval(), decoder_inputs),
    ]
