"""PyTorch tracking baseline: frames/s of transformers' own ``Sam2VideoModel`` streaming video inference
for 1, 4 and 16 box-prompted objects, to set beside ``tools.bench.tracking`` (our tracker).

    python -m tools.bench.torch_tracking [--device cuda|cpu] [--arch hiera-small|hiera-tiny|tiny | --model DIR]
                                         [--objects 1 4 16] [--frames 20] [--warmup 15] [--size 480x640]
                                         [--modes eager-fp32,autocast-fp16] [--threads N] [--json FILE]

Random weights of the real architecture (``tools.bench.common``) or a local checkpoint; per timed
frame, each stage synchronised: preprocess, image_encoder, tracking, postprocess (the method:
docs/ARCHITECTURE.md, "Measuring methods"). A row that fails is recorded with its error and the run
goes on; the exit status is then 1. Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.bench.common import (SAM_ARCHES, TINY, Timer, command_line, fmt, image_size_arg, parameters_m, parse_mode,
                                random_sam, sam2_processor, torch_machine_info, write_json)

MODES = ("eager-fp32", "autocast-fp16", "autocast-bf16")
STAGES = ("preprocess", "image_encoder", "tracking", "postprocess")
DEFAULT_WARMUP = 15  # max_object_pointers_in_encoder - 1: full memory bank and full pointer list


# --------------------------------------------------------------------------------------------------
# Model


def build_model(arch: str | None, model_dir: str | None, seed: int = 0) -> tuple[Any, Any, str]:
    """(Sam2VideoModel in eval mode, Sam2VideoProcessor, a description of the source)."""
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    if model_dir:
        try:
            model = Sam2VideoModel.from_pretrained(model_dir)
            processor = Sam2VideoProcessor.from_pretrained(model_dir)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--model {model_dir} does not load as a Sam2VideoModel with a Sam2VideoProcessor "
                            f"({first}); pass a SAM2 video checkpoint directory") from None
        return model.eval(), processor, str(model_dir)

    model = random_sam(arch, seed, init="order1", video=True).model
    processor = sam2_processor(model.config, video=True)
    return model, processor, "random tiny" if arch == TINY else f"random facebook/sam2.1-{arch}"


class EncoderCalls:
    """Counts forward calls of a module (a forward hook), to prove the tracking call reused the cache."""

    def __init__(self, module: Any) -> None:
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


# --------------------------------------------------------------------------------------------------
# Timing


def track_row(model: Any, processor: Any, device: Any, amp: Any, frames: list, boxes: Any, warmup: int,
              timed: int) -> dict[str, Any]:
    """Stream ``frames`` (frame 0 prompted with ``boxes``) and time frames warmup+1 .. warmup+timed."""
    import contextlib

    import torch

    cuda = device.type == "cuda"
    sync = Timer(device).sync

    def autocast():
        return torch.autocast(device_type=device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    h, w = frames[0].shape[:2]
    n = len(boxes)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    session = processor.init_video_session(inference_device=device)
    encoder_calls = EncoderCalls(model.vision_encoder)
    samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "frame")}
    allocated_after_warmup = None
    mask_shape = None
    try:
        for t, frame in enumerate(frames):
            record = t > warmup
            stage: dict[str, float] = {}
            sync()
            t_frame = time.perf_counter()

            t0 = time.perf_counter()
            inputs = processor(images=frame, device=device, return_tensors="pt")
            pixel_values = inputs["pixel_values"][0].to(device)
            sync()
            stage["preprocess"] = time.perf_counter() - t0

            if t == 0:  # the prompt: outside every stage, and frame 0 is never timed
                processor.add_inputs_to_inference_session(session, frame_idx=0, obj_ids=list(range(1, n + 1)),
                                                          input_boxes=[boxes.tolist()], original_size=(h, w))

            t0 = time.perf_counter()
            with autocast():
                features = model.get_image_features(pixel_values.unsqueeze(0), return_dict=True)
            session.cache.cache_vision_features(t, {"vision_feats": features.fpn_hidden_states,
                                                    "vision_pos_embeds": features.fpn_position_encoding})
            sync()
            stage["image_encoder"] = time.perf_counter() - t0

            calls_before = encoder_calls.count
            t0 = time.perf_counter()
            with autocast():
                out = model(inference_session=session, frame=pixel_values, frame_idx=t)
            sync()
            stage["tracking"] = time.perf_counter() - t0
            if encoder_calls.count != calls_before:
                raise RuntimeError(f"frame {t}: the model call ran the vision encoder again instead of using the "
                                   "cached features (transformers' session cache changed?): the breakdown would "
                                   "count the encoder twice")

            t0 = time.perf_counter()
            masks = processor.post_process_masks([out.pred_masks], original_sizes=[[h, w]], binarize=True)[0]
            masks = masks.cpu()
            sync()
            stage["postprocess"] = time.perf_counter() - t0
            stage["frame"] = time.perf_counter() - t_frame

            if tuple(masks.shape[:1]) != (n,):
                raise RuntimeError(f"frame {t}: masks of shape {tuple(masks.shape)} for {n} objects")
            mask_shape = list(masks.shape)
            if record:
                for k, v in stage.items():
                    samples[k].append(1000.0 * v)
            if t == warmup and cuda:
                allocated_after_warmup = torch.cuda.memory_allocated(device)
    finally:
        encoder_calls.close()

    ms = statistics.median(samples["frame"])
    row: dict[str, Any] = {
        "objects": n,
        "frames": timed,
        "ms_per_frame": ms,
        "frames_per_s": 1000.0 / ms,
        "stages_ms": {s: statistics.median(samples[s]) for s in STAGES},
        "samples_ms": samples,
        "mask_shape": mask_shape,
        "peak_gpu_memory_gib": None,
        "gpu_memory_growth_mib_per_frame": None,
        "load_average": os.getloadavg()[0],
    }
    if cuda:
        row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        growth = torch.cuda.memory_allocated(device) - allocated_after_warmup
        row["gpu_memory_growth_mib_per_frame"] = growth / 2**20 / timed
    del session
    return row


# --------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict[str, Any]) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        f"command: `{report['command']}`",
        f"machine: device {m['device']}, GPU {m.get('gpu') or 'none'}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"torch {m['torch']} (CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}), transformers {m['transformers']}, "
        f"fp32 matmul precision {m['float32_matmul_precision']}, torch threads {c['torch_threads']}",
        f"setup: {c['model']} ({c['params_m']:.1f} M params, attn {c['attn_implementation']}), Sam2VideoModel "
        f"streaming inference, {c['size_hw'][0]}x{c['size_hw'][1]} frames, boxes on frame 0, {c['warmup']} untimed "
        f"frames after it (num_maskmem {c['num_maskmem']}, max_object_pointers_in_encoder "
        f"{c['max_object_pointers_in_encoder']}), median of {c['frames']} timed frames",
        "",
        "| mode | objects | ms/frame | frames/s | preprocess | image encoder | tracking | postprocess "
        "| peak GPU memory (GiB) | GPU memory growth (MiB/frame) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['mode']} | {r['objects']} | {'ERROR' if 'error' in r else 'skipped'} | | | | | | | |")
            continue
        st = r["stages_ms"]
        lines.append(f"| {r['mode']} | {r['objects']} | {fmt(r['ms_per_frame'])} | {fmt(r['frames_per_s'], 2)} | "
                     + " | ".join(fmt(st[s]) for s in STAGES)
                     + f" | {fmt(r['peak_gpu_memory_gib'], 2)} | {fmt(r['gpu_memory_growth_mib_per_frame'])} |")
    lines.append("")
    for note in dict.fromkeys(r["note"] for r in report["results"] if r.get("note")):
        lines.append(f"- {note}")
    for r in report["results"]:
        if "error" in r:
            lines.append(f"- {r['mode']}, {r['objects']} objects: ERROR {r['error'].splitlines()[0][:500]}")
        elif "skipped" in r:
            lines.append(f"- {r['mode']}, {r['objects']} objects: skipped, {r['skipped']}")
    lines.append("- stages in ms (median per frame, each synchronised): preprocess = Sam2VideoProcessor on the "
                 "device; image encoder = get_image_features; tracking = the model call (memory attention, prompt "
                 "encoder, mask decoder per object in turn, then one batched memory encoder); postprocess = "
                 "post_process_masks to the frame size + copy to the host. 1-min load average at the end of each "
                 "row: " + ", ".join(f"{r['load_average']:.1f}" for r in report["results"] if "load_average" in r)
                 + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {', '.join(bad) or repr(text)}; choose from {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def parse_args(argv: list[str] | None, prog: str = "python -m tools.bench.torch_tracking") -> argparse.Namespace:
    p = OneLineArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available, else cpu")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=tuple(SAM_ARCHES), help="random-weight architecture (default hiera-small)")
    src.add_argument("--model", help="a local Sam2VideoModel checkpoint directory instead of random weights")
    p.add_argument("--objects", nargs="+", type=whole_number(), default=[1, 4, 16], help="object counts to time")
    p.add_argument("--frames", type=whole_number(), default=20, help="timed frames per object count (median)")
    p.add_argument("--warmup", type=whole_number(0), default=DEFAULT_WARMUP,
                   help=f"untimed tracked frames after the prompted one (at least num_maskmem - 1; default "
                        f"{DEFAULT_WARMUP} also fills the object pointers)")
    p.add_argument("--size", type=image_size_arg, default=(480, 640), help="frame HEIGHTxWIDTH")
    p.add_argument("--modes", type=_modes, default=["eager-fp32", "autocast-fp16"],
                   help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--threads", type=whole_number(), help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument("--seed", type=int, default=0, help="random weights' seed")
    p.add_argument("--json", help="also write the report here as JSON")
    args = p.parse_args(argv)
    if args.model is None:
        args.arch = args.arch or "hiera-small"
    elif not (Path(args.model) / "config.json").is_file():
        raise UserError(f"--model {args.model} has no config.json; pass a SAM2 video checkpoint directory "
                        "(e.g. DIR/sam2 of python -m tools.tiny_checkpoints DIR)")
    return args


def measure(args: argparse.Namespace, say: Callable[[str], None], deadline: float | None = None,
            argv: list[str] | None = None) -> dict[str, Any]:
    """The report of ``parse_args``' ``args``: a row per mode and object count. With ``deadline``
    (a ``time.perf_counter()`` value) a row that would likely end after it is skipped, with the reason."""
    import torch  # imported here, not at the top, to keep --help and flag errors fast

    from tools.bench.synthetic import MovingShapes

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, processor, source = build_model(args.arch, args.model, args.seed)
    model.to(device)
    build_s = time.perf_counter() - t0
    cfg = model.config
    if args.warmup < cfg.num_maskmem - 1:
        raise UserError(f"--warmup {args.warmup} leaves the memory bank of {cfg.num_maskmem} frames part empty; "
                        f"use --warmup {cfg.num_maskmem - 1} or more")
    params_m = parameters_m(model)
    say(f"{source}: {params_m:.1f} M parameters, built in {build_s:.1f} s, on {device}")

    h, w = args.size
    total = 1 + args.warmup + args.frames
    results = []
    wall: dict[int, float] = {}  # seconds of the last row of each object count, to foresee the next
    last: tuple[int, float] | None = None
    with torch.inference_mode():
        for mode in args.modes:
            name, _, amp, note = parse_mode(mode, device)  # MODES has no compile mode
            for n in args.objects:
                head = {"mode": name, "autocast_dtype": str(amp) if amp is not None else None, "note": note}
                # rows grow with the objects: foresee one from the same count, else scale the last row
                need = wall.get(n, last[1] * max(1.0, n / last[0]) if last else 0.0)
                if deadline is not None and time.perf_counter() + need > deadline:
                    left = deadline - time.perf_counter()
                    row = head | {"objects": n, "skipped": f"time budget: {max(left, 0):.0f} s left, the row "
                                                           f"would take about {need:.0f} s"}
                    say(f"[{name}] {n} objects: SKIPPED ({row['skipped']})")
                    results.append(row)
                    continue
                t_row = time.perf_counter()
                video = MovingShapes(None, h, w, num_shapes=n, seed=0, speed=4.0)
                frames = [video.frame(t) for t in range(total)]
                try:
                    row = head | track_row(model, processor, device, amp, frames, video.boxes(0), args.warmup,
                                           args.frames)
                    say(f"[{name}] {n} objects: {row['ms_per_frame']:.1f} ms/frame, {row['frames_per_s']:.2f} frames/s")
                except Exception as e:  # noqa: BLE001 - a row that fails is a result: record it, go on
                    row = head | {"objects": n, "error": f"{type(e).__name__}: {e}"[:3000],
                                  "traceback": traceback.format_exc()[-4000:]}
                    say(f"[{name}] {n} objects: FAILED {row['error'].splitlines()[0]}")
                row["wall_s"] = wall[n] = time.perf_counter() - t_row
                last = (n, wall[n])
                results.append(row)

    report = {
        "command": command_line("tools.bench.torch_tracking", argv),
        "machine": torch_machine_info(device),
        "config": {
            "device": str(device),
            "model": source,
            "model_dir": args.model,
            "arch": args.arch,
            "weights": "checkpoint" if args.model else f"random (seed {args.seed}, order-1 re-initialisation)",
            "params_m": params_m,
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "num_maskmem": cfg.num_maskmem,
            "max_object_pointers_in_encoder": cfg.max_object_pointers_in_encoder,
            "image_size": cfg.image_size,
            "objects": args.objects,
            "frames": args.frames,
            "warmup": args.warmup,
            "size_hw": [h, w],
            "modes": args.modes,
            "torch_threads": torch.get_num_threads(),
            "video": "tools.bench.synthetic.MovingShapes(None, H, W, num_shapes=objects, seed=0, speed=4.0), boxes(0)",
            "breakdown": "per stage, synchronised: preprocess, image_encoder (get_image_features, cached in the "
                         "session), tracking (model call), postprocess (post_process_masks + copy to host)",
            "model_build_s": build_s,
        },
        "stages": list(STAGES),
        "results": results,
    }
    report["markdown"] = markdown(report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report = measure(args, say, argv=argv)
    print(report["markdown"])
    if args.json:
        say(f"wrote {write_json(args.json, report)}")
    return 1 if any("error" in r for r in report["results"]) else 0


if __name__ == "__main__":
    run_cli(main)
