"""The host's share of a prediction: wall time per image outside graph calls.

    python -m tools.bench.host --engines DIR [--sizes 720x1280 2160x3840] [--prompts 4] [--masks 8]
                               [--runs 20] [--threads N] [--out benchmark/host]

A generated image of each size goes through ``Pipeline.predict`` (threshold 0, ``max_detections=--masks``,
``--prompts`` prompts) ``--runs`` times after two warm-up calls; the stage timer's ``host`` (decoding
excluded, see runtime.profiling) and every stage are reported as medians per image. With the tiny
artifact the graphs cost next to nothing, so ``host`` is what would remain of a GPU pipeline's time
on this host. Targets: <= 3 ms at 1280x720, <= 10 ms at 3840x2160. Writes ``host.json`` into ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.errors import OneLineArgumentParser, run_cli, whole_number
from tools.bench.common import image_size_arg, median, with_machine, write_json

TARGETS_MS = {(720, 1280): 3.0, (2160, 3840): 10.0}
PROMPTS = ("cat", "dog", "person", "car", "tree", "cup", "bird", "boat")


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="python -m tools.bench.host", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="an engines folder (python -m export.build)")
    ap.add_argument("--sizes", type=image_size_arg, nargs="+", default=list(TARGETS_MS),
                    help="image sizes HEIGHTxWIDTH (default 720x1280 2160x3840)")
    ap.add_argument("--prompts", type=whole_number(), default=4, help=f"prompts (default 4, at most {len(PROMPTS)})")
    ap.add_argument("--masks", type=whole_number(), default=8, help="detections (masks) per image (default 8)")
    ap.add_argument("--runs", type=whole_number(), default=20, help="timed calls per size (default 20)")
    ap.add_argument("--threads", type=whole_number(), default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--out", default="benchmark/host", help="folder for host.json (default benchmark/host)")
    args = ap.parse_args(argv)

    from runtime import Pipeline
    from tools.bench.outputs import big_image

    prompts = list(PROMPTS[: min(args.prompts, len(PROMPTS))])
    results = []
    with Pipeline.load(args.engines, backend="onnxruntime", intra_op_threads=args.threads) as pipe:
        pipe.timer.synchronize = True
        for h, w in args.sizes:
            image = big_image(h, w)
            for _ in range(2):
                pipe.predict(image, prompts, threshold=0.0, max_detections=args.masks)
            samples: dict[str, list[float]] = {}
            for _ in range(args.runs):
                pipe.timer.reset()
                found = len(pipe.predict(image, prompts, threshold=0.0, max_detections=args.masks))
                for stage, ms in pipe.timer.per_frame_ms().items():
                    samples.setdefault(stage, []).append(ms)
            stages = {s: median(v) for s, v in samples.items()}
            target = TARGETS_MS.get((h, w))
            row = {"size": f"{w}x{h}", "detections": found, "host_ms": stages["host"], "stages_ms": stages,
                   "target_ms": target, "passed": None if target is None else stages["host"] <= target}
            results.append(row)
            verdict = "" if target is None else f" (target <= {target:g} ms: {'PASS' if row['passed'] else 'FAIL'})"
            print(f"{w}x{h}: host {stages['host']:.2f} ms per image{verdict}; {found} masks; stages "
                  + ", ".join(f"{s} {ms:.1f}" for s, ms in stages.items() if s != "host") + " ms", file=sys.stderr)
    path = write_json(Path(args.out) / "host.json", with_machine("tools.bench.host", {
        "engines": str(args.engines), "prompts": len(prompts), "masks": args.masks, "runs": args.runs,
        "threads": args.threads, "results": results}, argv))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
