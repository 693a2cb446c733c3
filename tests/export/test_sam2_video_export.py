"""SAM2 video export: the wrappers equal ``Sam2VideoModel``'s own computation during video inference,
and the ONNX graphs (in an artifact exported with ``--video``) equal the wrappers.

The reference is instrumented, not re-implemented: a 20-frame video with two box prompts on frame 0
runs through ``Sam2VideoProcessor`` + ``propagate_in_video_iterator`` while the model's
``_prepare_memory_conditioned_features``, ``_single_frame_forward`` and ``_encode_new_memory`` record
their inputs and outputs, and the memory bank each call used (gathered with the model's own
``_gather_memory_frame_outputs`` / ``_get_object_pointers``). Each wrapper is then fed what the
reference was fed. The tiny checkpoint (``tools.tiny_checkpoints``) has order-1 weights.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from export.sam2_video import (NO_OBJ_SCORE, Sam2MemoryAttention, Sam2MemoryEncoder, Sam2ObjectPointer,
                               Sam2PromptDecoder, Sam2TrackDecoder, load_sam_video, sam2_video_sizes)
from runtime.errors import UserError
from runtime.graphs import DYNAMIC_DIMS, GRAPHS, SAM2_VIDEO_GRAPHS
from runtime.manifest import PARITY_NAME, load_manifest
from tools.bench.synthetic import MovingShapes

NUM_FRAMES = 20
# wrappers recompute the reference's float32 arithmetic in another order here and there (batched
# objects, features recovered from image_embed): differences are rounding noise
ATOL = 1e-5


@pytest.fixture(scope="module")
def video_model(tiny_checkpoints):
    return load_sam_video(str(tiny_checkpoints.sam))


def _clone(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(x) for x in v)
    return v


def run_reference(loaded, frames: list[np.ndarray], boxes: np.ndarray) -> dict[str, list[dict]]:
    """Track ``boxes`` (xyxy on frame 0) through ``frames`` with Sam2VideoModel; return what its
    per-frame steps saw and produced."""
    model, processor = loaded.model, loaded.processor
    rec: dict[str, list[dict]] = {"prepare": [], "decode": [], "encode": []}
    prepare0, decode0, encode0 = (model._prepare_memory_conditioned_features, model._single_frame_forward,
                                  model._encode_new_memory)

    def prepare(**kw):
        out = prepare0(**kw)
        entry = {"frame": kw["frame_idx"], "initial": kw["is_initial_conditioning_frame"],
                 "features": _clone(kw["current_vision_features"]), "output": _clone(out)}
        if not entry["initial"]:
            session, obj = kw["inference_session"], kw["obj_idx"]
            mem = model._gather_memory_frame_outputs(session, obj, kw["frame_idx"], kw["track_in_reverse_time"])
            entry["memories"] = [(off, _clone(o["maskmem_features"]), _clone(o["maskmem_pos_enc"]))
                                 for off, o in mem if o is not None]
            offsets, pointers, max_pointers = model._get_object_pointers(
                session, obj, kw["frame_idx"], kw["num_total_frames"], "cpu", kw["track_in_reverse_time"],
                kw["streaming"])
            entry["pointers"] = (list(offsets), _clone(pointers), max_pointers)
        rec["prepare"].append(entry)
        return out

    def decode(**kw):
        out = decode0(**kw)
        rec["decode"].append({"inputs": _clone(kw), "pred_masks": _clone(out.pred_masks),
                              "iou_scores": _clone(out.iou_scores), "object_pointer": _clone(out.object_pointer),
                              "object_score_logits": _clone(out.object_score_logits)})
        return out

    def encode(**kw):
        out = encode0(**kw)
        rec["encode"].append({"inputs": _clone(kw), "features": _clone(out[0]), "pos": _clone(out[1]),
                              "decodes": len(rec["decode"])})
        return out

    model._prepare_memory_conditioned_features, model._single_frame_forward, model._encode_new_memory = (
        prepare, decode, encode)
    try:
        h, w = frames[0].shape[:2]
        session = processor.init_video_session(video=frames, inference_device="cpu")
        processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=list(range(1, len(boxes) + 1)),
                                                  input_boxes=[boxes.tolist()], original_size=(h, w))
        for _ in model.propagate_in_video_iterator(session, start_frame_idx=0):
            pass
    finally:
        del model._prepare_memory_conditioned_features, model._single_frame_forward, model._encode_new_memory
    return rec


@pytest.fixture(scope="module")
def reference(video_model):
    video = MovingShapes(NUM_FRAMES, 96, 128, num_shapes=2, seed=1)
    return run_reference(video_model, list(video), video.boxes(0))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).float(), b.reshape(-1).float()
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _image_embed(model, features_hw_b_c: torch.Tensor) -> torch.Tensor:
    """sam2_image's output for these features: (HW, 1, C) + no-memory embedding -> [1, C, h, w]."""
    h, w = model.backbone_feature_sizes[-1]
    x = features_hw_b_c[:, :1] + model.no_memory_embedding
    return x.permute(1, 2, 0).reshape(1, -1, h, w)


# --- wrappers == Sam2VideoModel --------------------------------------------------------------


def test_reference_run_covers_every_case(reference):
    prompted = [d for d in reference["decode"] if d["inputs"]["input_points"] is not None]
    tracked = [d for d in reference["decode"] if d["inputs"]["input_points"] is None]
    assert len(prompted) == 2 and len(tracked) == 2 * (NUM_FRAMES - 1)
    banks = [(len(p["memories"]), len(p["pointers"][1])) for p in reference["prepare"] if not p["initial"]]
    assert {m for m, _ in banks} == set(range(1, 8)), "memory banks of every length 1..7"
    assert max(p for _, p in banks) == 16 and min(p for _, p in banks) == 1, "pointer lists of 1..16"
    assert any(e["inputs"]["is_mask_from_pts"] for e in reference["encode"])
    assert not all(e["inputs"]["is_mask_from_pts"] for e in reference["encode"])
    scores = torch.cat([d["object_score_logits"].reshape(-1) for d in reference["decode"]])
    assert (scores > 0).all(), "objects should stay present (else masks are all -1024 and prove little)"
    masks = torch.cat([d["pred_masks"].reshape(-1) for d in reference["decode"]])
    assert 0.1 < float((masks > 0).float().mean()) < 0.9 and float(masks.std()) > 0.3


def test_prompt_decoder_and_pointer_equal_reference(video_model, reference):
    model = video_model.model
    decoder, pointer = Sam2PromptDecoder(model), Sam2ObjectPointer(model)
    checked = 0
    for d in reference["decode"]:
        kw = d["inputs"]
        if kw["input_points"] is None:
            continue
        assert kw["input_labels"].tolist() == [[[2, 3]]], "a box reaches the video model as points 2, 3"
        feat0, feat1, embed = kw["image_embeddings"]
        with torch.inference_mode():
            masks, iou, obj, token, *_candidates = decoder(embed, feat0, feat1, kw["input_points"].reshape(1, 1, 4))
            ptr = pointer(token[0], obj[0])
        assert _max_abs(masks, d["pred_masks"]) <= ATOL
        assert _max_abs(obj, d["object_score_logits"]) <= ATOL
        assert _max_abs(iou, d["iou_scores"]) <= ATOL
        assert _max_abs(ptr, d["object_pointer"]) <= ATOL
        checked += 1
    assert checked == 2


def test_track_decoder_and_pointer_equal_reference(video_model, reference):
    model = video_model.model
    decoder, pointer = Sam2TrackDecoder(model), Sam2ObjectPointer(model)
    worst = 0.0
    for d in reference["decode"]:
        kw = d["inputs"]
        if kw["input_points"] is not None:
            continue
        assert kw["multimask_output"] and kw["input_masks"] is None
        feat0, feat1, conditioned = kw["image_embeddings"]
        with torch.inference_mode():
            masks, iou, obj, token, *_candidates = decoder(conditioned, feat0, feat1)
            ptr = pointer(token, obj)
        best_iou = d["iou_scores"].reshape(-1).max()
        worst = max(worst, _max_abs(masks, d["pred_masks"]), _max_abs(obj, d["object_score_logits"]),
                    _max_abs(iou, best_iou), _max_abs(ptr, d["object_pointer"]))
    assert worst <= ATOL, worst


def test_gates_and_no_object_pointer():
    """Objects with a score <= 0: masks -1024 and the learnt no-object pointer (the reference's gate)."""
    from export.sam2 import gate_absent

    masks = torch.randn(3, 1, 4, 4)
    scores = torch.tensor([[0.5], [-0.5], [0.0]])
    gated = gate_absent(masks, scores > 0)
    assert torch.equal(gated[0], masks[0]) and (gated[1:] == NO_OBJ_SCORE).all()


def test_no_object_pointer_where_absent(video_model):
    model = video_model.model
    token = torch.randn(2, model.hidden_dim)
    with torch.inference_mode():
        ptr = Sam2ObjectPointer(model)(token, torch.tensor([[1.0], [-1.0]]))
        assert torch.equal(ptr[1], model.no_object_pointer[0])
        assert torch.allclose(ptr[0], model.object_pointer_proj(token[:1])[0], atol=1e-6, rtol=0)


def test_memory_encoder_equals_reference(video_model, reference):
    model = video_model.model
    encoder = Sam2MemoryEncoder(model)
    for e in reference["encode"]:
        kw = e["inputs"]
        n = kw["pred_masks_high_res"].shape[0]
        low = torch.cat([d["pred_masks"].reshape(1, 1, *d["pred_masks"].shape[-2:])
                         for d in reference["decode"][e["decodes"] - n : e["decodes"]]])
        flag = torch.full((n, 1), float(kw["is_mask_from_pts"]))
        with torch.inference_mode():
            feats, pos = encoder(_image_embed(model, kw["current_vision_feats"]), low,
                                 kw["object_score_logits"].reshape(n, 1), flag)
        ref_feats = e["features"].permute(1, 0, 2).float()  # (HW, N, D) bfloat16 -> [N, HW, D]
        # the reference stores bfloat16: ours is within half a bfloat16 step of it (its rounding
        # error), and rounds to the same value except where the two straddle a rounding boundary
        assert bool(((feats - ref_feats).abs() <= ref_feats.abs() * 2.0**-8 + ATOL).all())
        assert float((feats.to(torch.bfloat16).float() != ref_feats).float().mean()) < 0.01
        assert torch.equal(pos, e["pos"].permute(1, 0, 2))


def test_memory_attention_equals_reference(video_model, reference):
    model = video_model.model
    attention = Sam2MemoryAttention(model)
    slots = model.num_maskmem
    checked = 0
    for p in reference["prepare"]:
        if p["initial"]:
            continue
        offsets, pointers, max_pointers = p["pointers"]
        assert max_pointers == model.config.max_object_pointers_in_encoder
        mem = torch.stack([f[:, 0].float() for _, f, _ in p["memories"]])[None]  # [1, M, HW, D]
        onehot = torch.zeros(1, len(p["memories"]), slots)
        for i, (off, _, _) in enumerate(p["memories"]):
            onehot[0, i, (off - 1) % slots] = 1.0  # offset 0 (the prompted frame) -> the last slot
        spatial = p["memories"][0][2][:, 0][None]  # the same sine encoding for every memory
        for _, _, pos in p["memories"]:
            assert torch.equal(pos[:, 0][None], spatial)
        ptrs = torch.stack([x.reshape(-1) for x in pointers])[None]
        with torch.inference_mode():
            out = attention(_image_embed(model, p["features"]), mem, spatial, onehot, ptrs,
                            torch.tensor([offsets], dtype=torch.float32))
        assert _max_abs(out, p["output"]) <= ATOL, (p["frame"], _max_abs(out, p["output"]))
        checked += 1
    assert checked == 2 * (NUM_FRAMES - 1)


def test_sizes_cover_the_video_specs(video_model, tiny_checkpoints):
    from export.models import load_sam
    from export.sam2 import sam2_sizes

    sizes = sam2_sizes(load_sam(str(tiny_checkpoints.sam)))
    sizes.update(sam2_video_sizes(video_model, sizes))
    assert sizes["sam_memory_dim"] == 64 and sizes["sam_memory_tokens"] == 16 and sizes["sam_num_maskmem"] == 7
    named = {d for g in SAM2_VIDEO_GRAPHS for t in g.inputs + g.outputs for d in t.shape}
    assert named - set(DYNAMIC_DIMS) <= set(sizes)


def test_image_only_checkpoint_is_refused(tmp_path):
    """A ``sam2`` checkpoint has no memory weights: Sam2VideoModel would invent them with a warning."""
    from transformers import Sam2Model

    from tools.tiny_checkpoints import sam_image_config

    Sam2Model(sam_image_config()).save_pretrained(tmp_path / "sam2_image")
    with pytest.raises(UserError, match="no weights for SAM2's video modules"):
        load_sam_video(str(tmp_path / "sam2_image"))


# --- ONNX == wrappers (the artifact exported with --video) -------------------------------------

# Scatter* from in-place writes, Tile/OneHot feeding shapes, ArgMax/GatherElements (int64 indices),
# NonZero/If/Loop (data-dependent control): none may appear in the video graphs.
_UNWANTED_OPS = {"ScatterND", "ScatterElements", "Tile", "OneHot", "ArgMax", "GatherElements", "NonZero", "If", "Loop"}


def test_video_artifact_has_every_graph_with_parity_at_two_sizes(tiny_video_artifact):
    m = load_manifest(tiny_video_artifact)
    assert set(m.graphs) == set(GRAPHS)
    rows = json.loads((tiny_video_artifact / PARITY_NAME).read_text())["fp32"]["rows"]
    for spec in SAM2_VIDEO_GRAPHS:
        mine = [r for r in rows if r["graph"] == spec.name]
        assert {r["output"] for r in mine} == set(spec.with_candidates().output_names)
        assert all(r["passed"] for r in mine), [r for r in mine if not r["passed"]]
        for dim in spec.dynamic_dims:
            assert len({r["dims"][dim] for r in mine}) >= 2, f"{spec.name}: {dim} checked at one size only"
        path = m.graph_path(spec.name, "fp32")
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert not ops & _UNWANTED_OPS, f"{spec.name} contains {sorted(ops & _UNWANTED_OPS)}"
    att = [r for r in rows if r["graph"] == "sam2_memory_attention"]
    assert {r["dims"]["num_memories"] for r in att} >= {1, 7} and {r["dims"]["num_pointers"] for r in att} >= {1, 16}
    assert m.sizes["sam_num_maskmem"] == 7 and m.data["profiles"]["num_memories"]["max"] == 7


def test_memory_bank_ranges_are_the_checkpoints():
    """A checkpoint with 3 memory frames and 8 pointers (the released ones: 7 and 16) is exported, checked
    and profiled up to those: never a bank it cannot hold."""
    from export.parity import parity_dim_sets
    from export.sam2_video import video_ranges
    from runtime.graphs import NUM_MEMORIES, NUM_POINTERS, SAM2_MEMORY_ATTENTION

    ranges = video_ranges({"sam_num_maskmem": 3, "sam_max_object_pointers": 8})
    assert (ranges[NUM_MEMORIES].max, ranges[NUM_MEMORIES].parity_sizes) == (3, (1, 3))
    assert (ranges[NUM_POINTERS].max, ranges[NUM_POINTERS].parity_sizes) == (8, (1, 5, 8))
    sets = parity_dim_sets(SAM2_MEMORY_ATTENTION, ranges)
    assert {s[NUM_MEMORIES] for s in sets} == {1, 3} and max(s[NUM_POINTERS] for s in sets) == 8
    released = video_ranges({"sam_num_maskmem": 7, "sam_max_object_pointers": 16})
    assert released[NUM_MEMORIES] == DYNAMIC_DIMS[NUM_MEMORIES] and released[NUM_POINTERS] == DYNAMIC_DIMS[NUM_POINTERS]
