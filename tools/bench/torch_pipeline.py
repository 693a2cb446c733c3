"""PyTorch reference baseline: OWLv2-B/16 (text-prompted detection) + SAM2.1-hiera-small (box-prompted
segmentation), full-size architectures with RANDOM weights (no hub access needed), timed stage by stage.

    python -m tools.bench.torch_pipeline --runs 10 --warmup 3 --json torch_baseline.json
    python -m tools.bench.torch_pipeline --device cpu --runs 1 --warmup 0 --modes eager-fp32 --boxes 2
    python -m tools.bench.torch_pipeline --owl-model DIR --sam-model DIR ...   (local checkpoints instead)

Random weights give the same latency as the real checkpoints (same shapes, same kernels). Stages,
the *fair* and *sowlv2* totals and the modes (eager, autocast, torch.compile): docs/ARCHITECTURE.md
("Measuring methods").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import traceback
import warnings

import numpy as np
import torch
from PIL import Image

import transformers

from tools.bench.common import (OWL_B16, Timer, command_line, fmt, owl_config, parameters_m, parse_mode, sam2_config,
                                torch_machine_info, write_json)

IMAGE_W, IMAGE_H = 1280, 720
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


# --------------------------------------------------------------------------------------------------
# Models (random weights, full size)


def build_owl(model_dir: str | None = None):
    """OWLv2 B/16 as google/owlv2-base-patch16-ensemble (random weights, transformers' init), or the local
    checkpoint ``model_dir``: (model, image processor, tokenizer or None: synthetic CLIP ids)."""
    from transformers import Owlv2ForObjectDetection

    if model_dir:
        from transformers import Owlv2Processor

        processor = Owlv2Processor.from_pretrained(model_dir)
        return Owlv2ForObjectDetection.from_pretrained(model_dir).eval(), processor.image_processor, processor.tokenizer
    config = owl_config(OWL_B16)
    model = Owlv2ForObjectDetection(config).eval()
    side = config.vision_config.image_size
    proc = _tf_class("Owlv2ImageProcessor")(size={"height": side, "width": side})
    return model, proc, None


def build_sam2(model_dir: str | None = None):
    """SAM2.1-hiera-small (random weights, transformers' init), or the local checkpoint ``model_dir``:
    (model, image processor, processor or None: boxes normalised by hand)."""
    from transformers import Sam2Model

    if model_dir:
        from transformers import Sam2Processor

        processor = Sam2Processor.from_pretrained(model_dir)
        return Sam2Model.from_pretrained(model_dir).eval(), processor.image_processor, processor
    config = sam2_config("hiera-small")
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




# --------------------------------------------------------------------------------------------------
# Inputs


def make_inputs(num_prompts: int, num_boxes: int, tokenizer=None, text_length: int = TEXT_LEN):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(IMAGE_H, IMAGE_W, 3), dtype=np.uint8))  # RGB uint8
    if tokenizer is not None:  # a local checkpoint's own vocabulary
        tokens = tokenizer([f"a photo of object {p}" for p in range(num_prompts)], padding="max_length",
                           max_length=text_length, truncation=True, return_tensors="pt")
        input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
    else:
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
        f"warmup {c['warmup']}; {c.get('owl_model') or 'OWLv2 B/16@960'} ({c['owl_params_m']:.1f} M params, "
        f"attn {c['owl_attn']}, processor {c['owl_processor']}), {c.get('sam_model') or 'SAM2.1 hiera-small'} "
        f"({c['sam2_params_m']:.1f} M params, attn {c['sam2_attn']}, processor {c['sam2_processor']}); "
        + ("random weights" if c["weights"].startswith("random") else "checkpoints")
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
    ap.add_argument("--owl-model", default=None, help="a local OWLv2 checkpoint instead of random B/16 weights")
    ap.add_argument("--sam-model", default=None, help="a local SAM2 checkpoint instead of random hiera-small weights")
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
    machine = torch_machine_info(device)
    print(f"transformers {transformers.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"device {device}{' (' + machine['gpu'] + ')' if machine['gpu'] else ''}, {os.cpu_count()} CPUs", flush=True)
    command = command_line("tools.bench.torch_pipeline", argv)
    print(f"command: {command}", flush=True)

    t0 = time.perf_counter()
    owl, owl_proc, tokenizer = build_owl(args.owl_model)
    sam, sam_proc, sam_processor = build_sam2(args.sam_model)
    build_s = time.perf_counter() - t0
    owl.to(device)
    sam.to(device)
    # Expected (transformers 5.24): OWLv2 155.0 M, SAM2 38.5 M (image path only, no video memory modules).
    print(f"models built in {build_s:.1f} s (OWLv2 {parameters_m(owl):.1f} M, SAM2 {parameters_m(sam):.1f} M "
          "params; random weights: expected 155.0 M / 38.5 M)", flush=True)

    pipe = Pipeline(owl, owl_proc, sam, sam_proc, sam_processor, device, args.gpu_preprocess)
    inputs = make_inputs(args.prompts, args.boxes, tokenizer, owl.config.text_config.max_position_embeddings)

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
        "command": command,
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
            "weights": ("random (architectures: google/owlv2-base-patch16-ensemble, facebook/sam2.1-hiera-small)"
                        if not (args.owl_model or args.sam_model) else "checkpoints"),
            "owl_model": args.owl_model or "OWLv2 B/16@960",
            "sam_model": args.sam_model or "SAM2.1 hiera-small",
            "owl_params_m": parameters_m(owl),
            "sam2_params_m": parameters_m(sam),
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
        print(f"\nwrote {write_json(args.json, report)}")
    # Exit 0 when at least one mode produced numbers: a failed compile is a result, not a crash.
    return 0 if any("stages_ms" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
