"""Tracking speed and memory on ONNX Runtime (CPU): frames/s per object count, time per stage, RSS.

    python -m tools.bench.tracking speed [--arch hiera-small|hiera-tiny|tiny | --engines DIR] [--objects 1 4 16] [--frames 3]
                                           [--objects-per-call N] [--threads 2] [--size 480x640] [--json F]
    python -m tools.bench.tracking rss --engines DIR [--frames 10000] [--size 240x320] [--objects 3]
                                         [--redetect-every N --prompt P ...]

``speed`` builds a random-weight ``Sam2VideoModel`` with the real architecture (``tools.bench.common``'s
configs; the memory modules are transformers' defaults, those of every SAM2.1 size), exports
``sam2_image`` and the five video graphs, and tracks N box-prompted objects through a generated video.
Timing starts once every object's memory bank is full (7 memories, 16 pointers: the steady state of
a long video; the bank is filled by copying the prompted frame's memory, which costs the same as real
memories), so the numbers are per frame of a long video. Random weights: the work per frame does not
depend on them. ``rss`` runs the tracker of an exported artifact (``export.build --video``) over a long
generated stream and reports resident memory along the way. Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.bench.common import SAM_ARCHES, image_size_arg, random_sam, rss_mb, with_machine, write_json


def build_fullsize_graphs(arch: str, out: Path, threads: int, say) -> tuple[dict, Any, dict, dict]:
    """Export the tracker's graphs (sam2_pixels, sam2_image, the video graphs, sam2_masks) of a
    random-weight model; return ORT runners, the preprocessing, the sizes and the tracker's limits."""
    from export.graph_export import export_to_onnx
    from export.pixels import pixel_graph_exports, pixel_sizes
    from export.preprocessing import sam2_preprocessing_from_processor
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from export.sam2_video import sam2_video_graph_exports, sam2_video_sizes
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import DYNAMIC_DIMS, SAM2_IMAGE
    from runtime.tracker import tracker_limits

    loaded = random_sam(arch, seed=0, init="hf", video=True)
    sizes = {**sam2_sizes(loaded), **pixel_sizes()}
    sizes.update(sam2_video_sizes(loaded, sizes))
    pre = sam2_preprocessing_from_processor(loaded.processor, mask_size=sizes["sam_mask_size"])
    exports = [g for g in sam2_graph_exports(loaded, sizes) if g.spec is SAM2_IMAGE]
    exports += sam2_video_graph_exports(loaded, sizes) + pixel_graph_exports(None, pre, sizes, DYNAMIC_DIMS)
    graphs = {}
    for g in exports:
        t0 = time.perf_counter()
        files = export_to_onnx(g, out / f"{g.spec.name}.onnx")
        say(f"exported {g.spec.name} in {time.perf_counter() - t0:.0f} s "
            f"({sum(f.stat().st_size for f in files) / 2**20:.0f} MB)")
        graphs[g.spec.name] = OrtGraph(files[0], g.spec, intra_op_threads=threads)
    return graphs, pre, sizes, tracker_limits({d: {"max": r.max} for d, r in DYNAMIC_DIMS.items()})


def artifact_graphs(engines: Path, threads: int) -> tuple[dict, Any, dict, dict]:
    """The tracker's graphs of an artifact exported with ``--video``, FP32 on ONNX Runtime; the
    preprocessing, the sizes and the tracker's limits."""
    from runtime.backends import onnxruntime_opener
    from runtime.manifest import load_manifest
    from runtime.preprocessing import Sam2Preprocessing
    from runtime.tracker import TRACKING_GRAPHS, tracker_limits

    manifest = load_manifest(engines)
    opener = onnxruntime_opener(manifest, intra_op_threads=threads)
    graphs = {spec.name: opener(spec) for spec in TRACKING_GRAPHS}
    return (graphs, Sam2Preprocessing.from_dict(manifest.preprocessing("sam")), manifest.sizes,
            tracker_limits(manifest.data["profiles"]))


def fill_banks(tracker, t: int) -> None:
    """Give every object a full memory bank for frame t (copies of its prompted-frame memory)."""
    for tr in tracker.tracks:
        for off in range(1, len(tr.memory_frame) + 1):
            i = (t - off) % len(tr.memory_frame)
            tr.memory[i], tr.memory_frame[i] = tr.cond_memory, t - off
        for off in range(1, len(tr.pointer_frame) + 1):
            j = (t - off) % len(tr.pointer_frame)
            tr.pointer[j], tr.pointer_frame[j] = tr.cond_pointer, t - off
        tr.start = min(tr.start, t - len(tr.pointer_frame) - 1)


def speed(args: argparse.Namespace) -> int:
    from runtime.graphs import SAM2_MEMORY_ATTENTION
    from runtime.tracker import Sam2Tracker
    from tools.bench.synthetic import MovingShapes

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    h, w = args.size
    results = []
    with tempfile.TemporaryDirectory(prefix="track-measure-") as tmp:
        if args.engines:
            graphs, pre, sizes, limits = artifact_graphs(args.engines, args.threads)
        else:
            graphs, pre, sizes, limits = build_fullsize_graphs(args.arch, Path(tmp), args.threads, say)
        for n in args.objects:
            tracker = Sam2Tracker(graphs, pre, sizes, max_objects_per_call=16, max_boxes_per_call=64, **limits,
                                  objects_per_call=args.objects_per_call)
            video = MovingShapes(None, h, w, num_shapes=n, seed=0, speed=4.0)
            tracker.step(video.frame(0), video.boxes(0))  # prompted frame
            for t in range(1, 1 + args.frames + 1):
                fill_banks(tracker, t)
                if t == 2:  # frame 1 warms up the tracking graphs
                    tracker.timer.reset()
                    t0 = time.perf_counter()
                tracker.step(video.frame(t))
                say(f"{n} objects: frame {t} done ({rss_mb() / 1024:.1f} GB resident)")
            wall = time.perf_counter() - t0
            stages = tracker.timer.per_frame_ms()
            results.append({"objects": n, "frames": args.frames, "fps": args.frames / wall,
                            "ms_per_frame": 1000 * wall / args.frames, "stages_ms": stages,
                            "objects_per_call": tracker.objects_per_call,
                            "attention_calls_per_frame": -(-n // tracker.objects_per_call),
                            "load_average": os.getloadavg()[0], "rss_gb": rss_mb() / 1024})
            say(json.dumps(results[-1]))
    print(format_speed(results, args, SAM2_MEMORY_ATTENTION.name))
    if args.json:
        write_json(args.json, with_machine("tools.bench.tracking", results))
    return 0


def format_speed(results: list[dict], args: argparse.Namespace, attention: str) -> str:
    stages = ["preprocess", "sam2_image", attention, "sam2_track_decoder", "sam2_object_pointer",
              "sam2_memory_encoder", "memory bank", "postprocess"]
    head = "| objects | frames/s | ms/frame | " + " | ".join(stages) + " |"
    lines = [head, "|" + "---|" * (3 + len(stages))]
    for r in results:
        cells = " | ".join(f"{r['stages_ms'].get(s, 0.0):.0f}" for s in stages)
        lines.append(f"| {r['objects']} | {r['fps']:.3f} | {r['ms_per_frame']:.0f} | {cells} |")
    h, w = args.size
    lines.append("")
    model = f"{args.engines}" if args.engines else f"Random-weight {args.arch} + SAM2.1 memory modules"
    lines.append(f"{model}, ONNX Runtime CPU FP32, {args.threads} intra-op "
                 f"threads, {os.cpu_count()} cores; {h}x{w} frames; steady state (7 memories, 16 pointers per "
                 f"object); mean of {args.frames} frames; objects per memory-attention call: "
                 f"{results[0]['objects_per_call'] if results else '-'}; 1-min load average at the end: "
                 + ", ".join(f"{r['load_average']:.1f}" for r in results) + ".")
    return "\n".join(lines)


def rss(args: argparse.Namespace) -> int:
    from runtime.backends import onnxruntime_opener
    from runtime.manifest import load_manifest
    from runtime.owl import OwlDetector
    from runtime.tracker import Sam2Tracker, track
    from tools.bench.synthetic import MovingShapes

    if args.engines is None:
        raise UserError("rss needs --engines DIR (an artifact exported with python -m export.build --owl-model ID|DIR "
                        "--sam-model ID|DIR --out DIR --video)")
    m = load_manifest(args.engines)
    opener = onnxruntime_opener(m, intra_op_threads=args.threads)
    tracker = Sam2Tracker.from_manifest(m, opener, max_objects=args.max_objects, forget_after=args.forget_after)
    h, w = args.size
    video = MovingShapes(args.frames, h, w, num_shapes=args.objects, seed=0)
    detector = OwlDetector.from_manifest(m, opener) if args.prompt else None
    marks = sorted({1, 100, 1000, args.frames} | set(range(0, args.frames + 1, args.every)) - {0})
    t0 = time.perf_counter()
    rows = []
    for r in track(iter(video), tracker, detector, [f"a photo of {p}" for p in args.prompt],
                   boxes=None if args.prompt else video.boxes(0), redetect_every=args.redetect_every):
        if r.index + 1 in marks:
            rows.append({"frame": r.index + 1, "rss_mb": round(rss_mb(), 1), "objects": len(r),
                         "ms_per_frame": round(1000 * (time.perf_counter() - t0) / (r.index + 1), 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| frame | resident (MB) | objects | mean ms/frame so far |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['frame']} | {row['rss_mb']:.1f} | {row['objects']} | {row['ms_per_frame']:.1f} |")
    if args.json:
        write_json(args.json, with_machine("tools.bench.tracking", rows))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m tools.bench.tracking", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed", help="frames/s and per-stage time of full-size random-weight tracking")
    src = s.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=SAM_ARCHES, default="hiera-small", help="random-weight architecture (tiny: "
                     "the tiny test architecture)")
    src.add_argument("--engines", type=Path, help="time the FP32 graphs of this artifact (export.build --video) instead")
    s.add_argument("--objects", nargs="+", type=whole_number(), default=[1, 4, 16])
    s.add_argument("--frames", type=whole_number(), default=3, help="timed frames per object count (after one warm-up)")
    s.add_argument("--objects-per-call", type=whole_number(), default=1,
                   help="objects per memory-attention call (ORT materialises a 4096 x 28736 attention map per "
                        "object and layer: 470 MB each)")
    s.add_argument("--size", type=image_size_arg, default=(480, 640), help="frame HEIGHTxWIDTH")
    s.add_argument("--threads", type=whole_number(), default=2)
    s.add_argument("--json")
    r = sub.add_parser("rss", help="resident memory over a long generated stream")
    r.add_argument("--engines", type=Path)
    r.add_argument("--frames", type=whole_number(), default=10_000)
    r.add_argument("--every", type=whole_number(), default=1000, help="report every N frames")
    r.add_argument("--size", type=image_size_arg, default=(240, 320))
    r.add_argument("--objects", type=whole_number(0), default=3, help="box-prompted shapes (without --prompt)")
    r.add_argument("--prompt", nargs="*", default=[], help="detect these with OWLv2 instead of box prompts")
    r.add_argument("--redetect-every", type=whole_number(0), default=30, help="0: the first frame only")
    r.add_argument("--max-objects", type=whole_number(), default=16)
    r.add_argument("--forget-after", type=whole_number(), default=None)
    r.add_argument("--threads", type=whole_number(), default=1)
    r.add_argument("--json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return speed(args) if args.command == "speed" else rss(args)


if __name__ == "__main__":
    run_cli(main)
