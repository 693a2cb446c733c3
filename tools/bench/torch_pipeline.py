#!/usr/bin/env python
"""PyTorch reference baseline: OWLv2-B/16 (text-prompted detection) + SAM2.1-hiera-small (box-prompted
segmentation), full-size architectures with RANDOM weights (no hub access needed), timed stage by stage.

Self-contained on purpose: needs only torch, torchvision, transformers, numpy and pillow, and imports
nothing from the rest of this repository, so it can be copied onto any GPU box and run as

    python tools/bench/torch_pipeline.py --runs 10 --warmup 3 --json torch_baseline.json
    python -m tools.bench.torch_pipeline --device cpu --runs 1 --warmup 0 --modes eager-fp32 --boxes 2

Random weights give the same latency as the real checkpoints (same shapes, same kernels); only the number
of detections is meaningless, which is why the SAM2 boxes here are synthetic and fixed (``--boxes``).

Stages (each synchronised on GPU, median over ``--runs`` after ``--warmup``):
    preprocess_owl    Owlv2ImageProcessor on a 1280x720 uint8 image (+ host->device copy)
    preprocess_sam2   Sam2Processor (image processor + box normalisation) on the same image (+ copy)
    owl_text          text tower + projection + L2 norm for --prompts prompts (16 tokens each)
    owl_image         Owlv2ForObjectDetection.image_embedder (ViT-B/16 at 960x960, 3600 patches)
    owl_heads         class_predictor + objectness_predictor + box_predictor
    owl_post          image processor's post_process_object_detection
    sam2_image        Sam2Model.get_image_embeddings (= get_image_features + no-memory embedding + reshape)
    sam2_decoder      prompt encoder + mask decoder, all --boxes boxes in ONE call (multimask_output=False)
    mask_post         post_process_masks of those masks to 1280x720
    sam2_decoder_1box, mask_post_1box   the same for a single box (what SOWLv2 runs per box)

Pipeline totals per image:
    fair     preprocess_owl + preprocess_sam2 + owl_image + owl_heads + owl_post + sam2_image
             + sam2_decoder(B boxes) + mask_post     (text embeddings cached per prompt set, as in DESIGN.md)
    fair+text  fair + owl_text
    sowlv2   preprocess_owl + owl_text + owl_image + owl_heads + owl_post
             + B x (preprocess_sam2 + sam2_image + sam2_decoder_1box + mask_post_1box)
             (SOWLv2 runs the full OWL forward, text included, per image, then set_image + predict per box)
Each total is given as the sum of stage medians and, unless --skip-e2e, as the median of a measured
end-to-end pass (synchronised only at the end).

Modes (--modes, comma separated): eager-fp32, autocast-fp16 (on CPU: autocast-bf16), autocast-bf16,
compile (torch.compile, default mode, of the OWL vision tower and the SAM2 vision encoder, fp32),
compile-autocast-fp16 / compile-autocast-bf16. Compile time (first call) is reported apart from
steady-state latency; a compile failure is recorded as a string instead of aborting the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
import warnings

import numpy as np
import torch
from PIL import Image

import transformers

IMAGE_W, IMAGE_H = 1280, 720
OWL_IMAGE_SIZE = 960
OWL_PATCH = 16
SAM_IMAGE_SIZE = 1024
TEXT_LEN = 16
BOS, EOS, PAD = 49406, 49407, 0

STAGES = [
    "preprocess_owl",
    "preprocess_sam2",
    "owl_text",
    "owl_image",
    "owl_heads",
    "owl_post",
    "sam2_image",
    "sam2_decoder",
    "mask_post",
    "sam2_decoder_1box",
    "mask_post_1box",
]


# --------------------------------------------------------------------------------------------------
# Environment / version helpers


def _tf_major() -> int:
    try:
        return int(transformers.__version__.split(".")[0])
    except Exception:
        return 0


def _tf_class(name: str):
    """Resolve an image-processor class across transformers versions.

    transformers >= 5: ``XImageProcessor`` is the torchvision-backed processor and ``XImageProcessorFast`` a
    deprecated alias of it. transformers 4.x: ``XImageProcessor`` is the slow numpy/PIL one and the torchvision
    one is ``XImageProcessorFast`` (SAM2 in 4.56+ ships only the Fast one). Prefer the torchvision processor.
    """
    if _tf_major() >= 5:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    fast = getattr(transformers, name + "Fast", None)
    if fast is not None:
        return fast
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ImportError(f"transformers {transformers.__version__} has neither {name} nor {name}Fast")
    return cls


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": None,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "gpu": None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        info["torchvision"] = f"not importable: {e}"
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except Exception:  # noqa: BLE001
        pass
    from tools.bench.environment import cpu_info, package_versions

    info["cpu"], info["packages"] = cpu_info(), package_versions()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001
            pass
    return info


def command_line() -> str:
    argv = getattr(sys, "orig_argv", None)  # Python >= 3.10: the exact interpreter command line
    if not argv:
        argv = [sys.executable] + sys.argv
    return " ".join(shlex.quote(a) for a in argv)


# --------------------------------------------------------------------------------------------------
# Models (random weights, full size)


def build_owl():
    """OWLv2 B/16 as google/owlv2-base-patch16-ensemble.

    Owlv2Config() defaults already are the B/16 text tower (hidden 512, 12 layers, 8 heads, 16 positions,
    vocab 49408) and the ViT-B vision tower (hidden 768, 12 layers, 12 heads) with projection_dim 512; only
    the vision image_size (default 768) and patch_size (default 32) differ from the ensemble checkpoint,
    which uses 960 / 16 (60x60 = 3600 patches).
    """
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    config = Owlv2Config(vision_config={"image_size": OWL_IMAGE_SIZE, "patch_size": OWL_PATCH})
    model = Owlv2ForObjectDetection(config).eval()
    proc = _tf_class("Owlv2ImageProcessor")(size={"height": OWL_IMAGE_SIZE, "width": OWL_IMAGE_SIZE})
    return model, proc


def sam2_small_config():
    """Sam2Config matching facebook/sam2.1-hiera-small.

    Field names: transformers' models/sam2/configuration_sam2.py (Sam2HieraDetConfig, Sam2VisionConfig,
    Sam2PromptEncoderConfig, Sam2MaskDecoderConfig; checked against 5.24, same names in 4.56+).
    Values: Meta's sam2/configs/sam2.1/sam2.1_hiera_s.yaml (trunk embed_dim 96, num_heads 1,
    stages [1, 2, 11, 2], global_att_blocks [7, 10, 13], window_pos_embed_bkg_spatial_size [7, 7];
    neck d_model 256, backbone_channel_list [768, 384, 192, 96]; image_size 1024), which is also the
    "sam2.1_hiera_small" entry of transformers' SAM2 conversion script. The Sam2HieraDetConfig defaults are
    hiera-*tiny* (blocks [1, 2, 7, 2], global attention [5, 7, 9]); the rest (dims [96, 192, 384, 768],
    heads [1, 2, 4, 8], windows [8, 4, 14, 7], patch 7/4/3, query stride 2, FPN 256, feature sizes
    256/128/64, prompt encoder 256 / 1024 / 16, mask decoder 256 / mlp 2048 / 2 layers / 8 heads) is shared
    by tiny and small, but is spelled out here so that a change of defaults cannot silently change the model.
    """
    from transformers import Sam2Config

    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": 96,
        "num_attention_heads": 1,
        "num_channels": 3,
        "image_size": [SAM_IMAGE_SIZE, SAM_IMAGE_SIZE],
        "patch_kernel_size": [7, 7],
        "patch_stride": [4, 4],
        "patch_padding": [3, 3],
        "query_stride": [2, 2],
        "window_positional_embedding_background_size": [7, 7],
        "num_query_pool_stages": 3,
        "blocks_per_stage": [1, 2, 11, 2],
        "embed_dim_per_stage": [96, 192, 384, 768],
        "num_attention_heads_per_stage": [1, 2, 4, 8],
        "window_size_per_stage": [8, 4, 14, 7],
        "global_attention_blocks": [7, 10, 13],
        "mlp_ratio": 4.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": [768, 384, 192, 96],
        "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
        "fpn_hidden_size": 256,
        "fpn_kernel_size": 1,
        "fpn_stride": 1,
        "fpn_padding": 0,
        "fpn_top_down_levels": [2, 3],
        "num_feature_levels": 3,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    }
    prompt = {"hidden_size": 256, "image_size": SAM_IMAGE_SIZE, "patch_size": 16, "mask_input_channels": 16}
    decoder = {
        "hidden_size": 256,
        "mlp_dim": 2048,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "attention_downsample_rate": 2,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_sam2():
    from transformers import Sam2Model

    config = sam2_small_config()
    bb = config.vision_config.backbone_config
    assert list(bb.blocks_per_stage) == [1, 2, 11, 2], bb.blocks_per_stage
    assert list(bb.global_attention_blocks) == [7, 10, 13], bb.global_attention_blocks
    model = Sam2Model(config).eval()
    image_proc = _tf_class("Sam2ImageProcessor")()
    processor = None
    try:
        from transformers import Sam2Processor

        processor = Sam2Processor(image_processor=image_proc)
    except Exception as e:  # noqa: BLE001 - fall back to manual box normalisation
        warnings.warn(f"Sam2Processor unavailable ({type(e).__name__}: {e}); normalising boxes by hand")
    return model, image_proc, processor


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------------------------------
# Inputs


def make_inputs(num_prompts: int, num_boxes: int):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8))  # RGB uint8
    # Synthetic CLIP token ids (no tokenizer offline): BOS, 2..6 word ids, EOS, zero padding to 16.
    # EOS (49407) is the largest id, as OWLv2's argmax pooling requires.
    ids = np.zeros((num_prompts, TEXT_LEN), dtype=np.int64)
    for p in range(num_prompts):
        n_words = 2 + p % 5
        words = [320 + (p * 37 + 11 * k) % 40000 for k in range(n_words)]
        row = [BOS] + words + [EOS]
        ids[p, : len(row)] = row
    input_ids = torch.from_numpy(ids)
    attention_mask = (input_ids != PAD).long()
    # Fixed synthetic boxes (x1, y1, x2, y2) in pixels of the 1280x720 image, spread over a grid.
    boxes = []
    cols = max(1, int(np.ceil(np.sqrt(num_boxes))))
    rows = int(np.ceil(num_boxes / cols))
    cw, ch = IMAGE_W / cols, IMAGE_H / max(rows, 1)
    for b in range(num_boxes):
        r, c = divmod(b, cols)
        x1, y1 = c * cw + 0.15 * cw, r * ch + 0.15 * ch
        boxes.append([float(x1), float(y1), float(x1 + 0.6 * cw), float(y1 + 0.6 * ch)])
    return image, input_ids, attention_mask, boxes


# --------------------------------------------------------------------------------------------------
# The pipeline, one function per stage


class Pipeline:
    """The stages of one image of ``image_hw`` (tools.benchmark builds one per image size)."""

    def __init__(self, owl, owl_proc, sam, sam_proc, sam_processor, device, gpu_preprocess: bool,
                 image_hw: tuple[int, int] = (IMAGE_H, IMAGE_W)):
        self.owl, self.owl_proc = owl, owl_proc
        self.sam, self.sam_proc, self.sam_processor = sam, sam_proc, sam_processor
        self.device = device
        self.proc_kwargs = {"device": str(device)} if gpu_preprocess else {}
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.original_sizes = [list(self.image_hw)]
        # OWLv2 boxes are relative to the image padded to a square (bottom/right): scale by the long side.
        # A (batch, 2) tensor on the model's device: transformers 5.x takes the max of (h, w) itself, 4.x does
        # not, so (long side, long side) is right for both.
        side = max(self.image_hw)
        self.owl_target_sizes = torch.tensor([[side, side]], device=device)

    # -- preprocessing
    def preprocess_owl(self, image):
        enc = self.owl_proc(images=image, return_tensors="pt", **self.proc_kwargs)
        return enc["pixel_values"].to(self.device, non_blocking=True)

    def preprocess_sam2(self, image, boxes):
        if self.sam_processor is not None:
            enc = self.sam_processor(images=image, input_boxes=[boxes], return_tensors="pt", **self.proc_kwargs)
            px, bx = enc["pixel_values"], enc["input_boxes"]
        else:
            enc = self.sam_proc(images=image, return_tensors="pt", **self.proc_kwargs)
            px = enc["pixel_values"]
            h, w = self.image_hw
            scale = torch.tensor([SAM_IMAGE_SIZE / w, SAM_IMAGE_SIZE / h] * 2, dtype=torch.float32)
            bx = torch.tensor([boxes], dtype=torch.float32) * scale
        return px.to(self.device, non_blocking=True), bx.to(self.device, dtype=torch.float32)

    # -- OWLv2
    def owl_text(self, input_ids, attention_mask):
        m = self.owl.owlv2
        out = m.text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = out[1]  # pooler_output (EOS token), tuple indexing works on every ModelOutput version
        q = m.text_projection(pooled)
        q = q / torch.linalg.norm(q, ord=2, dim=-1, keepdim=True)
        return q.reshape(1, q.shape[0], q.shape[-1])  # one image, N queries

    def owl_image(self, pixel_values):
        return self.owl.image_embedder(pixel_values=pixel_values)[0]  # [1, 60, 60, 768]

    def owl_heads(self, feature_map, query_embeds, query_mask):
        b, h, w, d = feature_map.shape
        feats = feature_map.reshape(b, h * w, d)
        logits, _ = self.owl.class_predictor(feats, query_embeds, query_mask)
        objectness = self.owl.objectness_predictor(feats)
        boxes = self.owl.box_predictor(feats, feature_map)
        return logits, boxes, objectness

    def owl_post(self, logits, pred_boxes):
        class _Out:  # duck-typed Owlv2ObjectDetectionOutput: post-processing reads .logits / .pred_boxes
            pass

        o = _Out()
        o.logits, o.pred_boxes = logits, pred_boxes
        return self.owl_proc.post_process_object_detection(o, threshold=0.1, target_sizes=self.owl_target_sizes)

    # -- SAM2
    def sam2_image(self, pixel_values):
        sam = self.sam
        if hasattr(sam, "get_image_embeddings"):
            return sam.get_image_embeddings(pixel_values)
        # Fallback: same as get_image_embeddings, over get_image_features (tuple in 4.x, ModelOutput in 5.x).
        out = sam.get_image_features(pixel_values)
        feats = out.fpn_hidden_states if hasattr(out, "fpn_hidden_states") else out[0]
        feats = list(feats)
        feats[-1] = feats[-1] + sam.no_memory_embedding
        bs = pixel_values.shape[0]
        return [
            f.permute(1, 2, 0).view(bs, -1, *s) for f, s in zip(feats, sam.config.vision_config.backbone_feature_sizes)
        ]

    def sam2_decoder(self, image_embeddings, boxes):
        out = self.sam(image_embeddings=image_embeddings, input_boxes=boxes, multimask_output=False)
        return out.pred_masks, out.iou_scores

    def mask_post(self, pred_masks):
        try:
            return self.sam_proc.post_process_masks(pred_masks, self.original_sizes)
        except TypeError:  # SAM v1-style signature that also wants the resized input size
            return self.sam_proc.post_process_masks(
                pred_masks, self.original_sizes, reshaped_input_sizes=[[SAM_IMAGE_SIZE, SAM_IMAGE_SIZE]]
            )


# --------------------------------------------------------------------------------------------------
# Timing


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, *a, **kw):
        self.sync()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        self.sync()
        return out, (time.perf_counter() - t0) * 1e3


def parse_mode(name: str, device: torch.device):
    """-> (display name, compile?, autocast dtype or None, note)"""
    n = name.strip()
    comp = n.startswith("compile")
    rest = n[len("compile") :].lstrip("-") if comp else n
    note = None
    if rest in ("", "eager-fp32", "fp32"):
        amp = None
        if not comp and rest != "eager-fp32":
            raise ValueError(f"unknown mode {name!r}")
    elif rest == "autocast-fp16":
        amp = torch.float16
        if device.type == "cpu":
            amp, note = torch.bfloat16, "autocast-fp16 requested on CPU: ran bfloat16 autocast instead"
            n = n.replace("autocast-fp16", "autocast-bf16")
    elif rest == "autocast-bf16":
        amp = torch.bfloat16
    else:
        raise ValueError(
            f"unknown mode {name!r} (eager-fp32, autocast-fp16, autocast-bf16, compile, compile-autocast-fp16, "
            "compile-autocast-bf16)"
        )
    return n, comp, amp, note


def _err(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 3000 else s[:3000] + " ...[truncated]"


def run_mode(pipe: Pipeline, mode: str, device, args, inputs) -> dict:
    name, comp, amp, note = parse_mode(mode, device)
    image, input_ids, attention_mask, boxes = inputs
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    query_mask = (input_ids[:, 0] > 0).reshape(1, -1)
    T = Timer(device)
    res = {"mode": name, "compile": comp, "autocast_dtype": str(amp) if amp else None, "note": note}

    def amp_ctx():
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp)

    owl_vm = pipe.owl.owlv2.vision_model
    sam_ve = pipe.sam.vision_encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if comp:
            try:  # fresh caches so that each compile mode reports its own compile time
                (torch.compiler.reset if hasattr(torch, "compiler") and hasattr(torch.compiler, "reset")
                 else torch._dynamo.reset)()
            except Exception:  # noqa: BLE001
                pass
            res["compiled_modules"] = ["owl.owlv2.vision_model", "sam2.vision_encoder"]
            pipe.owl.owlv2.vision_model = torch.compile(owl_vm)
            pipe.sam.vision_encoder = torch.compile(sam_ve)
            compile_s = {}
            try:
                with amp_ctx():
                    px_o = pipe.preprocess_owl(image)
                    px_s, _ = pipe.preprocess_sam2(image, boxes)
                    _, ms = T(pipe.owl_image, px_o)
                    compile_s["owl_image"] = ms / 1e3
                    _, ms = T(pipe.sam2_image, px_s)
                    compile_s["sam2_image"] = ms / 1e3
            except Exception as e:  # noqa: BLE001
                res["compile_s"] = compile_s
                res["error"] = "compile failed: " + _err(e)
                res["traceback"] = traceback.format_exc()[-4000:]
                print(f"[{name}] {res['error']}", flush=True)
                return res
            res["compile_s"] = compile_s
            print(f"[{name}] compile (first call): " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()),
                  flush=True)

        samples = {s: [] for s in STAGES}
        e2e = {"fair": [], "sowlv2": []}

        def stage_pass(record: bool):
            t = {}
            px_o, t["preprocess_owl"] = T(pipe.preprocess_owl, image)
            (px_s, bx), t["preprocess_sam2"] = T(pipe.preprocess_sam2, image, boxes)
            with amp_ctx():
                q, t["owl_text"] = T(pipe.owl_text, input_ids, attention_mask)
                fm, t["owl_image"] = T(pipe.owl_image, px_o)
                (lg, pb, _), t["owl_heads"] = T(pipe.owl_heads, fm, q, query_mask)
                dets, t["owl_post"] = T(pipe.owl_post, lg, pb)
                emb, t["sam2_image"] = T(pipe.sam2_image, px_s)
                (pm, _), t["sam2_decoder"] = T(pipe.sam2_decoder, emb, bx)
                masks, t["mask_post"] = T(pipe.mask_post, pm)
                (pm1, _), t["sam2_decoder_1box"] = T(pipe.sam2_decoder, emb, bx[:, :1])
                _, t["mask_post_1box"] = T(pipe.mask_post, pm1)
            if record:
                for k, v in t.items():
                    samples[k].append(v)
            res["shapes"] = {
                "owl_pixel_values": list(px_o.shape),
                "owl_feature_map": list(fm.shape),
                "owl_logits": list(lg.shape),
                "owl_detections_at_0.1": int(dets[0]["scores"].numel()),
                "sam2_pixel_values": list(px_s.shape),
                "sam2_image_embeddings": [list(e.shape) for e in emb],
                "sam2_input_boxes": list(bx.shape),
                "sam2_pred_masks": list(pm.shape),
                "masks": list(masks[0].shape),
            }

        def fair_pass():  # text embeddings cached (computed once per prompt set)
            px_o = pipe.preprocess_owl(image)
            px_s, bx = pipe.preprocess_sam2(image, boxes)
            with amp_ctx():
                fm = pipe.owl_image(px_o)
                lg, pb, _ = pipe.owl_heads(fm, q_cached, query_mask)
                pipe.owl_post(lg, pb)
                emb = pipe.sam2_image(px_s)
                pm, _ = pipe.sam2_decoder(emb, bx)
                return pipe.mask_post(pm)

        def sowlv2_pass():
            px_o = pipe.preprocess_owl(image)
            out = []
            with amp_ctx():
                q = pipe.owl_text(input_ids, attention_mask)
                fm = pipe.owl_image(px_o)
                lg, pb, _ = pipe.owl_heads(fm, q, query_mask)
                pipe.owl_post(lg, pb)
            for b in boxes:  # SAM2ImagePredictor.set_image + predict, per box
                px_s, bx = pipe.preprocess_sam2(image, [b])
                with amp_ctx():
                    emb = pipe.sam2_image(px_s)
                    pm, _ = pipe.sam2_decoder(emb, bx)
                    out.append(pipe.mask_post(pm))
            return out

        with amp_ctx():
            q_cached = pipe.owl_text(input_ids, attention_mask)

        t0 = time.perf_counter()
        for i in range(args.warmup + args.runs):
            record = i >= args.warmup
            stage_pass(record)
            if not args.skip_e2e:
                _, ms = T(fair_pass)
                if record:
                    e2e["fair"].append(ms)
                _, ms = T(sowlv2_pass)
                if record:
                    e2e["sowlv2"].append(ms)
            if args.verbose:
                print(f"[{name}] iteration {i + 1}/{args.warmup + args.runs} done "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
        res["loop_s"] = time.perf_counter() - t0

        med = {k: statistics.median(v) for k, v in samples.items() if v}
        B = len(boxes)
        fair = sum(med[k] for k in ("preprocess_owl", "preprocess_sam2", "owl_image", "owl_heads", "owl_post",
                                     "sam2_image", "sam2_decoder", "mask_post"))
        sowlv2 = sum(med[k] for k in ("preprocess_owl", "owl_text", "owl_image", "owl_heads", "owl_post")) + B * sum(
            med[k] for k in ("preprocess_sam2", "sam2_image", "sam2_decoder_1box", "mask_post_1box")
        )
        totals = {
            "fair_sum": fair,
            "fair+text_sum": fair + med["owl_text"],
            "sowlv2_sum": sowlv2,
        }
        if e2e["fair"]:
            totals["fair_e2e"] = statistics.median(e2e["fair"])
            totals["sowlv2_e2e"] = statistics.median(e2e["sowlv2"])
        res["stages_ms"] = med
        res["stages_samples_ms"] = samples
        res["e2e_samples_ms"] = e2e if e2e["fair"] else None
        res["totals_ms"] = totals
        res["images_per_s"] = {k: 1e3 / v for k, v in totals.items()}
        if device.type == "cuda":
            res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # noqa: BLE001 - record and go on to the next mode
        res["error"] = _err(e)
        res["traceback"] = traceback.format_exc()[-4000:]
        print(f"[{name}] FAILED: {res['error']}", flush=True)
    finally:
        pipe.owl.owlv2.vision_model = owl_vm
        pipe.sam.vision_encoder = sam_ve
    return res


# --------------------------------------------------------------------------------------------------
# Report


def fmt(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    modes = report["results"]
    names = [r["mode"] for r in modes]
    lines = []
    lines.append(f"command: `{report['command']}`")
    gpu = m.get("gpu") or "none"
    lines.append(
        f"machine: device {m['device']}, GPU {gpu}, {m['cpu_count']} CPUs, Python {m['python']}, torch {m['torch']} "
        f"(CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}), torchvision {m.get('torchvision')}, "
        f"transformers {m['transformers']}, fp32 matmul precision {m['float32_matmul_precision']}"
    )
    c = report["config"]
    lines.append(
        f"setup: image {IMAGE_W}x{IMAGE_H}, prompts {c['prompts']}, boxes {c['boxes']}, runs {c['runs']}, "
        f"warmup {c['warmup']}; OWLv2 B/16@960 ({c['owl_params_m']:.1f} M params, attn {c['owl_attn']}, "
        f"processor {c['owl_processor']}), SAM2.1 hiera-small ({c['sam2_params_m']:.1f} M params, "
        f"attn {c['sam2_attn']}, processor {c['sam2_processor']}); random weights"
    )
    lines.append("")
    lines.append("| stage (ms, median) | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for s in STAGES:
        label = s
        if s == "sam2_decoder":
            label = f"sam2_decoder ({c['boxes']} boxes, 1 call)"
        elif s == "mask_post":
            label = f"mask_post ({c['boxes']} masks)"
        lines.append(f"| {label} | " + " | ".join(fmt(r.get("stages_ms", {}).get(s)) for r in modes) + " |")
    tot_rows = [
        ("fair_sum", "**fair** total, sum of stages"),
        ("fair_e2e", "**fair** total, measured e2e"),
        ("fair+text_sum", "fair + owl_text total, sum of stages"),
        ("sowlv2_sum", "**sowlv2** total, sum of stages"),
        ("sowlv2_e2e", "**sowlv2** total, measured e2e"),
    ]
    for key, label in tot_rows:
        if any(key in r.get("totals_ms", {}) for r in modes):
            lines.append(f"| {label} | " + " | ".join(fmt(r.get("totals_ms", {}).get(key)) for r in modes) + " |")
    for key, label in tot_rows:
        if any(key in r.get("images_per_s", {}) for r in modes):
            lines.append(
                f"| {label.replace('total', 'images/s')} | "
                + " | ".join(fmt(r.get("images_per_s", {}).get(key), 2) for r in modes)
                + " |"
            )
    if any("compile_s" in r for r in modes):
        lines.append(
            "| compile time, s (owl_image / sam2_image) | "
            + " | ".join(
                "/".join(fmt(r["compile_s"].get(k)) for k in ("owl_image", "sam2_image")) if "compile_s" in r else "—"
                for r in modes
            )
            + " |"
        )
    if any("peak_gpu_memory_gib" in r for r in modes):
        mem = " | ".join(fmt(r.get("peak_gpu_memory_gib"), 2) for r in modes)
        lines.append(f"| peak GPU memory, GiB | {mem} |")
    lines.append("")
    for r in modes:
        if r.get("note"):
            lines.append(f"- {r['mode']}: {r['note']}")
        if r.get("error"):
            lines.append(f"- {r['mode']}: ERROR {r['error'].splitlines()[0][:500]}")
    lines.append(
        "- fair = one SAM2 encoder pass per image, all boxes in one decoder call, text embeddings cached; "
        "sowlv2 = OWL with text per image, then SAM2 preprocess + encoder + decoder + mask post per box."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--modes", default="eager-fp32,autocast-fp16,compile",
                    help="comma list of eager-fp32, autocast-fp16, autocast-bf16, compile, compile-autocast-fp16, "
                         "compile-autocast-bf16")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    ap.add_argument("--skip-e2e", action="store_true",
                    help="skip the measured end-to-end passes (totals then come from stage sums only)")
    ap.add_argument("--gpu-preprocess", action="store_true",
                    help="pass device=<device> to the (torchvision) image processors so resizing runs on the GPU")
    ap.add_argument("--matmul-precision", default=None, choices=["highest", "high", "medium"],
                    help="torch.set_float32_matmul_precision (default: leave PyTorch's default, 'highest' = no TF32)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.prompts < 1 or args.boxes < 1:
        ap.error("--runs >= 1, --warmup >= 0, --prompts >= 1, --boxes >= 1")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in (s.strip() for s in args.modes.split(",")) if m]
    for m in modes:
        parse_mode(m, device)  # fail fast on typos

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    machine = machine_info(device)
    print(f"transformers {transformers.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"device {device}{' (' + machine['gpu'] + ')' if machine['gpu'] else ''}, {os.cpu_count()} CPUs", flush=True)
    print(f"command: {command_line()}", flush=True)

    t0 = time.perf_counter()
    owl, owl_proc = build_owl()
    sam, sam_proc, sam_processor = build_sam2()
    build_s = time.perf_counter() - t0
    owl.to(device)
    sam.to(device)
    # Expected (transformers 5.24): OWLv2 155.0 M, SAM2 38.5 M (image path only, no video memory modules).
    print(f"models built in {build_s:.1f} s (OWLv2 {n_params(owl) / 1e6:.1f} M, SAM2 {n_params(sam) / 1e6:.1f} M "
          "params; expected 155.0 M / 38.5 M)", flush=True)

    pipe = Pipeline(owl, owl_proc, sam, sam_proc, sam_processor, device, args.gpu_preprocess)
    inputs = make_inputs(args.prompts, args.boxes)

    results = []
    with torch.inference_mode():
        for m in modes:
            t1 = time.perf_counter()
            r = run_mode(pipe, m, device, args, inputs)
            r["wall_s"] = time.perf_counter() - t1
            print(f"[{r['mode']}] done in {r['wall_s']:.1f} s", flush=True)
            results.append(r)

    sam_pp = sam_processor if sam_processor is not None else sam_proc
    report = {
        "command": command_line(),
        "machine": machine,
        "config": {
            "device": str(device),
            "runs": args.runs,
            "warmup": args.warmup,
            "prompts": args.prompts,
            "boxes": args.boxes,
            "image_wh": [IMAGE_W, IMAGE_H],
            "skip_e2e": args.skip_e2e,
            "gpu_preprocess": args.gpu_preprocess,
            "weights": "random (architectures: google/owlv2-base-patch16-ensemble, facebook/sam2.1-hiera-small)",
            "owl_params_m": n_params(owl) / 1e6,
            "sam2_params_m": n_params(sam) / 1e6,
            "owl_attn": getattr(owl.config, "_attn_implementation", None),
            "sam2_attn": getattr(sam.config, "_attn_implementation", None),
            "owl_processor": f"{type(owl_proc).__module__}.{type(owl_proc).__name__}",
            "sam2_processor": f"{type(sam_pp).__module__}.{type(sam_pp).__name__}",
            "model_build_s": build_s,
        },
        "stages": STAGES,
        "results": results,
    }
    report["markdown"] = markdown(report)
    print()
    print(report["markdown"])
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"\nwrote {args.json}")
    # Exit 0 when at least one mode produced numbers: a failed compile is a result, not a crash.
    return 0 if any("stages_ms" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
