"""SAM2's video modules as exportable graphs: what ``Sam2VideoModel`` computes per tracked frame.

``sam2_prompt_decoder``    ``Sam2Decoder`` (single mask) + the NO_OBJ_SCORE gate + the mask token
``sam2_track_decoder``     the mask decoder with no prompt: best of the multimask outputs
``sam2_object_pointer``    ``object_pointer_proj`` + the no-object pointer where the object is absent
``sam2_memory_encoder``    ``_encode_new_memory`` from the low-res mask: upsample, binarise or sigmoid…
``sam2_memory_attention``  ``_prepare_memory_conditioned_features`` from a bank of dynamic length

The bank's bookkeeping is the runtime's (``runtime.tracker``). How the reference's glue is rewritten
to export with dynamic object, memory and pointer counts: docs/ARCHITECTURE.md ("Exporting SAM2").
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.graph_export import GraphExport
from export.models import LoadedModel
from export.sam2 import (_CANDIDATE_IOU, _CANDIDATE_MASKS, NO_OBJ_SCORE, Sam2Decoder, Sam2Image, decode, gate_absent,
                         one_hot_argmax, pick, random_boxes)
from runtime.errors import UserError
from runtime.graphs import (BATCH, BEST_IOU, NUM_BOXES, NUM_MEMORIES, NUM_OBJECTS, NUM_POINTERS, OBJECT_PRESENT,
                            SAM2_IMAGE, SAM2_MEMORY_ATTENTION, SAM2_MEMORY_ENCODER, SAM2_OBJECT_POINTER,
                            SAM2_PROMPT_DECODER, SAM2_TRACK_DECODER, DYNAMIC_DIMS, DimRange, with_max)

log = logging.getLogger(__name__)

_PD_MASKS, _PD_IOU, _PD_SCORES, _PD_TOKEN = SAM2_PROMPT_DECODER.output_names
_TD_MASKS, _TD_IOU, _TD_SCORES, _TD_TOKEN = SAM2_TRACK_DECODER.output_names
_TD_CANDIDATE_MASKS, _TD_CANDIDATE_IOU, _TD_CANDIDATE_TOKENS = (t.name for t in SAM2_TRACK_DECODER.candidates)


class Sam2PromptDecoder(Sam2Decoder):
    """``sam2_decoder`` as ``Sam2VideoModel`` runs it on an object's prompted frame.

    A box reaches the video model as two points labelled 2 and 3 plus a padding point, which embed
    to exactly what ``_embed_boxes`` gives; multimask is off for two points, so the output is the
    single mask with the stability fallback. Differences from ``Sam2Decoder``: masks are -1024 where
    the object score is <= 0 (a third choice), and the output token of the single mask (token 0,
    even where the fallback picked a multimask output, as the reference does) is returned for the
    object pointer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, multimask=False)

    def decide(self, values):
        return {**super().decide(values), OBJECT_PRESENT: values[_PD_SCORES] > 0}

    def select(self, values, picks):
        chosen = super().select(values, picks)
        return {**chosen, _PD_MASKS: gate_absent(chosen[_PD_MASKS], picks[OBJECT_PRESENT])}

    def margins(self, values):
        return {**super().margins(values), OBJECT_PRESENT: values[_PD_SCORES].abs()[..., 0]}

    def forward(self, image_embed, high_res_feat0, high_res_feat1, boxes):
        masks, iou, obj, tokens = self._decode_boxes(image_embed, high_res_feat0, high_res_feat1, boxes)
        values = {_CANDIDATE_MASKS: masks, _CANDIDATE_IOU: iou, _PD_SCORES: obj}
        chosen = self.select(values, self.decide(values))
        return chosen[_PD_MASKS], chosen[_PD_IOU], obj, tokens[:, :, 0, :], masks, iou


class Sam2TrackDecoder(nn.Module):
    """conditioned_embed [N, C, h, w] + the frame's high-res maps -> mask logits, IoU, object score
    and mask token of each tracked object (``_single_frame_forward`` without prompt), then the
    candidates (``SAM2_TRACK_DECODER.candidates``).

    With no prompt the video model embeds one point (0, 0) labelled -1 plus a padding point: both
    become ``not_a_point_embed``, and the dense prompt is ``no_mask_embed``. Tracking uses the
    multimask outputs (``multimask_output_for_tracking``) and keeps the one with the highest
    predicted IoU, its logits gated to -1024 where the object score is <= 0: two choices, in the
    ``decide``/``select`` steps of :class:`export.graph_export.DiscreteChoices`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        prompt = model.prompt_encoder
        self.not_a_point_embed = prompt.not_a_point_embed
        self.no_mask_embed = prompt.no_mask_embed
        self.mask_decoder = model.mask_decoder
        self.num_mask_tokens = int(model.mask_decoder.num_mask_tokens)
        cfg = model.config
        if not (cfg.multimask_output_in_sam and cfg.multimask_output_for_tracking and cfg.multimask_min_pt_num <= 0):
            raise UserError("SAM2 checkpoints that track with single-mask output are not supported; "
                            "use a checkpoint with multimask_output_for_tracking")
        with torch.no_grad():
            image_pe = model.get_image_wide_positional_embeddings()
        self.register_buffer("image_pe", image_pe.detach().clone(), persistent=False)
        self.eval()

    def decide(self, values):
        return {BEST_IOU: one_hot_argmax(values[_TD_CANDIDATE_IOU]),  # as torch.argmax
                OBJECT_PRESENT: values[_TD_SCORES] > 0}

    def select(self, values, picks):
        best = picks[BEST_IOU]
        masks = pick(values[_TD_CANDIDATE_MASKS], best, 1)  # [N, 1, H, W]
        return {_TD_MASKS: gate_absent(masks, picks[OBJECT_PRESENT]),
                _TD_IOU: pick(values[_TD_CANDIDATE_IOU], best, 1),
                _TD_TOKEN: pick(values[_TD_CANDIDATE_TOKENS], best, 1)[:, 0]}

    def margins(self, values):
        top2 = values[_TD_CANDIDATE_IOU].topk(2, dim=-1).values
        return {BEST_IOU: top2[..., 0] - top2[..., 1], OBJECT_PRESENT: values[_TD_SCORES].abs()[..., 0]}

    def applies(self, choice, picks):
        return torch.ones(picks[choice].shape[:-1], dtype=torch.bool)

    def forward(self, conditioned_embed, high_res_feat0, high_res_feat1):
        n = conditioned_embed.shape[0]
        sparse = self.not_a_point_embed.weight.reshape(1, 1, 1, -1).expand(n, 1, 2, -1)
        image = conditioned_embed + self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        feat0 = high_res_feat0.expand(n, -1, -1, -1)
        feat1 = high_res_feat1.expand(n, -1, -1, -1)
        masks, iou, obj, tokens = decode(self.mask_decoder, sparse, image, self.image_pe, feat0, feat1,
                                         self.num_mask_tokens)
        # the multimask outputs of the one prompt of each object: [N, 3, ...]
        values = {_TD_CANDIDATE_MASKS: masks[:, 0, 1:], _TD_CANDIDATE_IOU: iou[:, 0, 1:],
                  _TD_CANDIDATE_TOKENS: tokens[:, 0, 1:], _TD_SCORES: obj[:, 0]}
        chosen = self.select(values, self.decide(values))
        return (chosen[_TD_MASKS], chosen[_TD_IOU], obj[:, 0], chosen[_TD_TOKEN],
                *(values[t.name] for t in SAM2_TRACK_DECODER.candidates))


class Sam2ObjectPointer(nn.Module):
    """mask_token [N, C], object_score_logits [N, 1] -> object_pointer [N, C] (``_single_frame_forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.object_pointer_proj = model.object_pointer_proj
        self.no_object_pointer = model.no_object_pointer  # [1, C]
        self.eval()

    def forward(self, mask_token, object_score_logits):
        pointer = self.object_pointer_proj(mask_token)
        appearing = (object_score_logits > 0).to(pointer.dtype)
        pointer = appearing * pointer
        return pointer + (1 - appearing) * self.no_object_pointer


# ----------------------------------------------------------------------------------------------
# Memory


def _raw_features(image_embed: torch.Tensor, no_memory_embedding: torch.Tensor) -> torch.Tensor:
    """sam2_image's image_embed without the no-memory embedding: the vision features proper."""
    return image_embed - no_memory_embedding.reshape(1, -1, 1, 1)


class Sam2MemoryEncoder(nn.Module):
    """image_embed [1, C, h, w], mask_logits [N, 1, m, m], object_score_logits [N, 1], mask_is_prompt
    [N, 1] -> memory_features, memory_pos_enc [N, h*w, D] (``_encode_new_memory``).

    The mask logits are the decoders' (already -1024 where the object is absent); they are upsampled
    to the image size as ``_single_frame_forward`` does for ``high_res_masks``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cfg = model.config
        self.memory_encoder = model.memory_encoder
        self.no_memory_embedding = model.no_memory_embedding
        self.occlusion = model.occlusion_spatial_embedding_parameter  # [1, D] or None
        self.image_size = int(model.image_size)
        self.scale = float(cfg.sigmoid_scale_for_mem_enc)
        self.bias = float(cfg.sigmoid_bias_for_mem_enc)
        h, w = (int(s) for s in model.backbone_feature_sizes[-1])
        dim = int(cfg.memory_encoder_output_channels)
        param = next(model.parameters())
        with torch.no_grad():
            pos = self.memory_encoder.position_encoding((1, dim, h, w), param.device, param.dtype)  # [1, D, h, w]
        self.register_buffer("memory_pos", pos.flatten(2).transpose(1, 2).contiguous(), persistent=False)
        self.eval()

    def forward(self, image_embed, mask_logits, object_score_logits, mask_is_prompt):
        n = mask_logits.shape[0]
        enc = self.memory_encoder
        pix = _raw_features(image_embed, self.no_memory_embedding).expand(n, -1, -1, -1)
        high = F.interpolate(mask_logits, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        # prompted masks are binarised, tracked ones squashed (``is_mask_from_pts``)
        mask = torch.where(mask_is_prompt[:, :, None, None] > 0.5, (high > 0).to(high.dtype), torch.sigmoid(high))
        mask = mask * self.scale + self.bias
        features = enc.feature_projection(pix) + enc.mask_downsampler(mask)
        features = enc.projection(enc.memory_fuser(features))
        if self.occlusion is not None:
            appearing = (object_score_logits > 0).to(features.dtype)[:, :, None, None]  # [N, 1, 1, 1]
            features = features + (1 - appearing) * self.occlusion[..., None, None]
        return features.flatten(2).transpose(1, 2), self.memory_pos.expand(n, -1, -1)


def _rotate_pairwise(x: torch.Tensor) -> torch.Tensor:
    """``rotate_pairwise`` of modeling_sam2_video: (x0, x1) -> (-x1, x0) per pair of the last axis."""
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(start_dim=-2)


class Sam2MemoryAttention(nn.Module):
    """The frame's embedding conditioned on each object's memory bank
    (``_prepare_memory_conditioned_features`` for a non-initial frame, then ``Sam2VideoMemoryAttention``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.sam2_video.modeling_sam2_video import eager_attention_forward

        cfg = model.config
        self.attention = model.memory_attention
        self.no_memory_embedding = model.no_memory_embedding
        self.temporal_table = model.memory_temporal_positional_encoding  # [num_maskmem, 1, 1, D]
        self.pointer_pos_proj = model.temporal_positional_encoding_projection_layer
        self.temporal_pointers = bool(cfg.enable_temporal_pos_encoding_for_object_pointers)
        self.max_pointers = int(cfg.max_object_pointers_in_encoder)
        self.hidden = int(model.hidden_dim)
        self.mem_dim = int(model.mem_dim)
        self.splits = self.hidden // self.mem_dim if self.mem_dim < self.hidden else 1
        self.attend = ALL_ATTENTION_FUNCTIONS.get_interface(cfg._attn_implementation, eager_attention_forward)
        h, w = (int(s) for s in model.backbone_feature_sizes[-1])
        self.h, self.w = h, w
        param = next(model.parameters())
        with torch.no_grad():
            neck = model.vision_encoder.neck
            pos = neck.position_encoding((1, self.hidden, h, w), param.device, param.dtype)  # fpn_position_encoding[-1]
            cos, sin = self.attention.rotary_emb(pos, self.attention.position_ids)  # [1, h*w, head_dim]
        self.register_buffer("vision_pos", pos.flatten(2).transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("rope_cos", cos.contiguous(), persistent=False)
        self.register_buffer("rope_sin", sin.contiguous(), persistent=False)
        self.eval()

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.rope_cos + _rotate_pairwise(x) * self.rope_sin

    def _attention(self, attn: nn.Module, query, key, value, memory_frames: torch.SymInt | int | None):
        """``Sam2VideoRoPEAttention.forward``; ``memory_frames`` = None for self-attention (keys are
        the queries' positions), else the number of memory frames whose tokens lead the keys (each
        gets the frame's RoPE, broadcast instead of repeated); the remaining keys (object pointers)
        get none."""
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        heads, hd = attn.num_attention_heads, attn.head_dim
        q = attn.q_proj(query).reshape(n, lq, heads, hd).transpose(1, 2)
        k = attn.k_proj(key).reshape(n, lk, heads, hd).transpose(1, 2)
        v = attn.v_proj(value).reshape(n, lk, heads, hd).transpose(1, 2)
        q = self._rope(q)
        if memory_frames is None:
            k = self._rope(k)
        else:
            tokens = self.h * self.w
            k_mem = k[:, :, : memory_frames * tokens].reshape(n, heads, memory_frames, tokens, hd)
            k_mem = (k_mem * self.rope_cos + _rotate_pairwise(k_mem) * self.rope_sin).reshape(n, heads, -1, hd)
            k = torch.cat([k_mem, k[:, :, memory_frames * tokens :]], dim=2)
        out, _ = self.attend(attn, q, k, v, attention_mask=None, dropout=0.0, scaling=attn.scaling, is_causal=False)
        return attn.o_proj(out.reshape(n, lq, heads * hd))

    def forward(self, image_embed, memory_features, memory_pos_enc, memory_slots, object_pointers, pointer_offsets):
        n, m, t, d = memory_features.shape
        p = object_pointers.shape[1]
        # the frame: features + 0.1 * their sine encoding, one copy per object
        x = _raw_features(image_embed, self.no_memory_embedding).flatten(2).transpose(1, 2)
        x = (x + 0.1 * self.vision_pos).expand(n, -1, -1)
        # memory frames: spatial encoding + the temporal encoding of each frame's slot
        temporal = memory_slots @ self.temporal_table.reshape(-1, d)  # [N, M, D]
        memory_pos = (memory_pos_enc.unsqueeze(1) + temporal.unsqueeze(2)).reshape(n, m * t, d)
        memory = memory_features.reshape(n, m * t, d)
        # object pointers: each split into `splits` tokens of the memory width, with a projected
        # sine encoding of its normalised temporal offset
        if self.temporal_pointers:
            from transformers.models.sam2_video.modeling_sam2_video import get_1d_sine_pe

            sine = get_1d_sine_pe(pointer_offsets / float(self.max_pointers - 1), dim=self.hidden)
            pointer_pos = self.pointer_pos_proj(sine)  # [N, P, D]
        else:
            pointer_pos = torch.zeros_like(object_pointers[..., :d])
        pointers = object_pointers.reshape(n, p * self.splits, d)
        pointer_pos = pointer_pos.unsqueeze(2).expand(n, p, self.splits, d).reshape(n, p * self.splits, d)
        keys = torch.cat([memory, pointers], dim=1)
        key_pos = torch.cat([memory_pos, pointer_pos], dim=1)

        for layer in self.attention.layers:  # Sam2VideoMemoryAttentionLayer, eval (dropout off)
            q = layer.layer_norm1(x)
            x = x + self._attention(layer.self_attn, q, q, q, None)
            q = layer.layer_norm2(x)
            x = x + self._attention(layer.cross_attn_image, q, keys + key_pos, keys, m)
            q = layer.layer_norm3(x)
            x = x + layer.linear2(layer.activation(layer.linear1(q)))
        x = self.attention.layer_norm(x)
        return x.transpose(1, 2).reshape(n, self.hidden, self.h, self.w)


# ----------------------------------------------------------------------------------------------
# Sizes and example inputs


def load_sam_video(source: str) -> LoadedModel:
    """``Sam2VideoModel`` + ``Sam2VideoProcessor`` from the checkpoint the image graphs come from.

    Refused when the checkpoint lacks the memory weights (a ``sam2`` image-only checkpoint), which
    ``from_pretrained`` would otherwise initialise at random with only a warning.
    """
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    from export.models import _load

    def refusal(missing: list[str]) -> str:
        return (f"{source} has no weights for SAM2's video modules ({len(missing)} missing, e.g. {missing[0]}); "
                "--video needs a sam2_video checkpoint such as facebook/sam2.1-hiera-small")

    return _load("sam", source, Sam2VideoModel, Sam2VideoProcessor, kind="SAM2 video", hint="check the id or path",
                 all_weights=refusal)


def sam2_video_sizes(loaded: LoadedModel, sizes: Mapping[str, int]) -> dict[str, int]:
    """Static sizes of the video graphs (on top of ``sam2_sizes``), checked against the config."""
    model, cfg, src = loaded.model, loaded.model.config, loaded.source
    embed = int(sizes["sam_embed_size"])
    hidden = int(model.hidden_dim)
    mem_dim = int(model.mem_dim)
    problems = []
    if int(model.image_size) != int(sizes["sam_image_size"]):
        problems.append(f"its video image_size {model.image_size} differs from the image model's {sizes['sam_image_size']}")
    if tuple(model.prompt_encoder.mask_input_size) != (sizes["sam_mask_size"],) * 2 or 4 * sizes["sam_mask_size"] != model.image_size:
        problems.append("its mask-memory size is not 4x the low-res mask size (the resize the graphs leave out)")
    if list(cfg.memory_attention_rope_feat_sizes) != [embed, embed]:
        problems.append(f"memory attention RoPE sizes {cfg.memory_attention_rope_feat_sizes} differ from the {embed}x{embed} embedding")
    if int(cfg.memory_attention_hidden_size) != hidden or int(cfg.memory_encoder_hidden_size) != hidden:
        problems.append("memory attention/encoder widths differ from the image embedding's")
    if mem_dim > hidden or hidden % mem_dim:
        problems.append(f"object pointers of width {hidden} do not split into memory tokens of width {mem_dim}")
    if int(cfg.max_object_pointers_in_encoder) < 2:
        problems.append("max_object_pointers_in_encoder is below 2")
    for what, value, dim in (("num_maskmem", cfg.num_maskmem, NUM_MEMORIES),
                             ("max_object_pointers_in_encoder", cfg.max_object_pointers_in_encoder, NUM_POINTERS)):
        if int(value) > DYNAMIC_DIMS[dim].max:
            problems.append(f"{what} {value} exceeds the {dim} maximum {DYNAMIC_DIMS[dim].max} of runtime/graphs.py")
    if cfg.max_cond_frame_num not in (-1, None):
        problems.append(f"max_cond_frame_num {cfg.max_cond_frame_num} (only -1, all prompted frames, is supported)")
    if problems:
        raise UserError(f"{src}: cannot export SAM2's video modules: " + "; ".join(problems))
    return {
        "sam_memory_dim": mem_dim,
        "sam_memory_tokens": embed * embed,
        "sam_num_maskmem": int(cfg.num_maskmem),
        "sam_max_object_pointers": int(cfg.max_object_pointers_in_encoder),
    }


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (as the reference stores memories), kept as float32."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).to(torch.float32).numpy()


def sam2_video_graph_exports(loaded: LoadedModel, sizes: Mapping[str, int]) -> list[GraphExport]:
    """The five video graphs of ``loaded`` (a ``Sam2VideoModel``) with realistic example inputs:
    encoder features of random pixels, decoder masks of random boxes, memories encoded from them."""
    model = loaded.model
    s = int(sizes["sam_image_size"])
    slots = int(sizes["sam_num_maskmem"])
    hidden = int(sizes["sam_embed_dim"])
    image = Sam2Image(model).eval()
    prompt = Sam2PromptDecoder(model).eval()
    track = Sam2TrackDecoder(model).eval()
    pointer = Sam2ObjectPointer(model).eval()
    encoder = Sam2MemoryEncoder(model).eval()
    attention = Sam2MemoryAttention(model).eval()
    cache: dict[Any, Any] = {}

    def run(module: nn.Module, *arrays: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]

    def frame(batch: int = 1) -> dict[str, np.ndarray]:
        """Encoder outputs of random pixels (cached per batch size, seeded by it)."""
        if ("frame", batch) not in cache:
            pixels = np.random.default_rng(20_000 + batch).standard_normal((batch, 3, s, s)).astype(np.float32)
            cache[("frame", batch)] = dict(zip(SAM2_IMAGE.output_names, run(image, pixels), strict=True))
        return cache[("frame", batch)]

    def decoded(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks, object scores and mask tokens of n random boxes on frame(1); half the scores
        flipped negative (masks then -1024) so that both sides of every object gate occur."""
        f = frame(1)
        masks, _, obj, tokens = run(prompt, f["image_embed"], f["high_res_feat0"], f["high_res_feat1"],
                                    random_boxes(rng, 1, n, s))[: len(SAM2_PROMPT_DECODER.outputs)]
        masks, obj, tokens = masks[0], obj[0], tokens[0]
        flip = np.arange(n) % 2 == 1
        obj[flip] = -np.abs(obj[flip]) - 0.1
        masks[flip] = NO_OBJ_SCORE
        return masks, obj, tokens

    def prompt_inputs(dims, rng):
        b, n = dims[BATCH], dims[NUM_BOXES]
        f = frame(b)
        feeds = {name: f[name] for name in SAM2_IMAGE.output_names}
        feeds[SAM2_PROMPT_DECODER.input_names[-1]] = random_boxes(rng, b, n, s)
        return feeds

    def encoder_inputs(dims, rng):
        n = dims[NUM_OBJECTS]
        masks, obj, _ = decoded(n, rng)
        return {"image_embed": frame(1)["image_embed"], "mask_logits": masks, "object_score_logits": obj,
                "mask_is_prompt": (rng.random((n, 1)) < 0.5).astype(np.float32)}

    def attention_inputs(dims, rng):
        n, m, p = dims[NUM_OBJECTS], dims[NUM_MEMORIES], dims[NUM_POINTERS]
        f = frame(1)
        feats, pos = [], None
        for _ in range(m):  # one encoded memory per (frame, object): m x n masks of random boxes
            masks, obj, _ = decoded(n, rng)
            enc = run(encoder, f["image_embed"], masks, obj, (rng.random((n, 1)) < 0.5).astype(np.float32))
            feats.append(_to_bfloat16(enc[0]))
            pos = enc[1][:1]
        # slot of the prompted frame first (the last slot), then distinct recent-frame slots
        onehot = np.zeros((n, m, slots), np.float32)
        for i in range(n):
            order = [slots - 1] + list(rng.permutation(slots - 1)[: m - 1])
            onehot[i, np.arange(m), order] = 1.0
        pointers = rng.standard_normal((n, p, hidden)).astype(np.float32)
        offsets = np.concatenate([rng.integers(p, 3 * p + 2, (n, 1)), np.tile(np.arange(1, p), (n, 1))], axis=1)
        return {"image_embed": f["image_embed"], "memory_features": np.stack(feats, axis=1), "memory_pos_enc": pos,
                "memory_slots": onehot, "object_pointers": pointers, "pointer_offsets": offsets.astype(np.float32)}

    def track_inputs(dims, rng):
        n = dims[NUM_OBJECTS]
        f = frame(1)
        noise = 0.5 * rng.standard_normal((n, *f["image_embed"].shape[1:])).astype(np.float32)
        return {"conditioned_embed": f["image_embed"] + noise, "high_res_feat0": f["high_res_feat0"],
                "high_res_feat1": f["high_res_feat1"]}

    def pointer_inputs(dims, rng):
        n = dims[NUM_OBJECTS]
        _, obj, tokens = decoded(n, rng)
        return {"mask_token": tokens, "object_score_logits": obj}

    ranges = video_ranges(sizes)
    return [
        GraphExport(SAM2_PROMPT_DECODER, prompt, prompt_inputs, ranges),
        GraphExport(SAM2_MEMORY_ATTENTION, attention, attention_inputs, ranges),
        GraphExport(SAM2_TRACK_DECODER, track, track_inputs, ranges),
        GraphExport(SAM2_OBJECT_POINTER, pointer, pointer_inputs, ranges),
        GraphExport(SAM2_MEMORY_ENCODER, encoder, encoder_inputs, ranges),
    ]


def video_ranges(sizes: Mapping[str, int], ranges: Mapping[str, DimRange] = DYNAMIC_DIMS) -> dict[str, DimRange]:
    """``ranges`` with the memory bank's dims up to what the checkpoint holds: num_maskmem memory frames
    and max_object_pointers_in_encoder pointers (7 and 16 for the released models, fewer for others)."""
    return with_max(ranges, **{NUM_MEMORIES: int(sizes["sam_num_maskmem"]),
                               NUM_POINTERS: int(sizes["sam_max_object_pointers"])})
