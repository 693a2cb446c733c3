"""How much writing SOWLv2's outputs adds to a prediction on a big image.

    python -m tools.bench.outputs --engines DIR [--size 4000x6000] [--detections 20] [--runs 3]
                                  [--workers N] [--out benchmark/outputs]

A generated image of ``--size`` (HEIGHTxWIDTH, saved as a JPEG) goes through ``owlsam-detect``'s image path
(``tools.infer.run_images``: decode, predict, write every PNG and ``detections.json``) with threshold 0
and ``max_detections=--detections``; that whole run is compared with ``Pipeline.predict`` alone on the
decoded image (medians of ``--runs``). Target: the whole run at most 1.5x the prediction. An artifact
whose OWLv2 has fewer patches than ``--detections`` (the tiny one has 16) yields fewer detections; the
writer is then also timed alone on ``--detections`` masks (the predicted ones, repeated), and that
time added to the prediction's is reported too. Random-weight masks are blobs spread over the whole
image, the worst case for the writer (every row of every overlay re-encoded); the writer is also
timed on ``--detections`` object-like masks (filled ellipses on a grid). CPU seconds are reported
beside wall times, and the load average: on a shared machine the wall times move with it. Writes
``outputs.json`` into ``--out``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OneLineArgumentParser, run_cli, whole_number
from tools.bench.common import command_line, image_size_arg, machine_info, median, write_json

TARGET = 1.5


def big_image(h: int, w: int) -> np.ndarray:
    from PIL import Image

    from tools.bench.synthetic import synthetic_image

    small = synthetic_image(max(16, h // 10), max(16, w // 10), seed=0)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def object_masks(h: int, w: int, n: int) -> np.ndarray:
    """``n`` filled ellipses, one per cell of a grid over the image: masks shaped like objects."""
    cols = int(np.ceil(np.sqrt(n * w / h)))
    rows = int(np.ceil(n / cols))
    yy, xx = np.ogrid[:h, :w]
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        r, c = divmod(i, cols)
        cy, cx, ry, rx = (r + 0.5) * h / rows, (c + 0.5) * w / cols, 0.4 * h / rows, 0.4 * w / cols
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def _timed(f) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="python -m tools.bench.outputs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="an engines folder (python -m export.build)")
    ap.add_argument("--size", type=image_size_arg, default=(4000, 6000), help="image HEIGHTxWIDTH (default 4000x6000)")
    ap.add_argument("--detections", type=whole_number(), default=20, help="detections per image (default 20)")
    ap.add_argument("--runs", type=whole_number(), default=3, help="timed runs (default 3)")
    ap.add_argument("--workers", type=whole_number(), default=None, help="writer threads (default: CPU count)")
    ap.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    ap.add_argument("--out", default="benchmark/outputs", help="folder for outputs.json (default benchmark/outputs)")
    args = ap.parse_args(argv)

    from PIL import Image

    from runtime import Pipeline
    from runtime.images import load_image
    from runtime.pipeline import Result
    from tools.infer import run_images
    from tools.outputs import OutputOptions, OutputWriter
    from tools.png import DEFLATE

    h, w = args.size
    prompts = ["cat", "dog"]
    kw = dict(threshold=0.0, max_detections=args.detections)
    work = Path(tempfile.mkdtemp(prefix="owlsam-bench-outputs-"))
    try:
        source = work / "big.jpg"
        Image.fromarray(big_image(h, w)).save(source, quality=90)
        image = load_image(source)
        machine = machine_info()  # before the runs: its load average is the one at the start
        load = machine.get("load_average_1min", float("nan"))
        with Pipeline.load(args.engines, backend=args.backend) as pipe:
            result = pipe.predict(image, prompts, **kw)  # warm-up
            predict, whole, writer, objects = [], [], [], []
            files = 0
            for r in range(args.runs):
                holder: list = []
                predict.append(_timed(lambda: holder.append(pipe.predict(image, prompts, **kw))))
                result = holder[0]

                def run(r=r):
                    return run_images(pipe, [source], False, prompts, work / f"run{r}", OutputOptions(),
                                      workers=args.workers, progress=False, **kw)[0]

                outs: list = []
                whole.append(_timed(lambda: outs.append(run())))
                files = outs[0].files
            found = len(result)
            idx = np.arange(args.detections) % max(found, 1)
            shaped = object_masks(h, w, args.detections)
            sets = [("predicted", result.masks[idx] if found else None, writer), ("object-like", shaped, objects)]
            for _, masks, samples in sets:
                if masks is None:
                    continue
                res = Result(np.zeros((len(masks), 4), np.float32), np.ones(len(masks), np.float32),
                             np.zeros(len(masks), np.int64), masks, ("cat",))
                for r in range(args.runs):
                    def write(r=r):
                        with OutputWriter(work / f"writer{len(samples)}-{r}-{id(masks)}", workers=args.workers) as out:
                            out.add(image, res, name=source.name)

                    samples.append(_timed(write))
        med = lambda xs, k: median([x[k] for x in xs])  # noqa: E731
        p, wh = med(predict, 0), med(whole, 0)
        report: dict[str, Any] = {
            "command": command_line("tools.bench.outputs", argv), "machine": machine,
            "size": f"{h}x{w}", "detections": found, "files": files, "deflate": DEFLATE, "runs": args.runs,
            "predict_s": p, "whole_run_s": wh, "ratio": wh / p, "target": f"<= {TARGET}", "passed": wh / p <= TARGET,
            "predict_cpu_s": med(predict, 1), "whole_run_cpu_s": med(whole, 1),
            "predict_samples_s": [x[0] for x in predict], "whole_samples_s": [x[0] for x in whole],
        }
        lines = [f"{h}x{w} (HxW), {found} detections, {files} files, deflate {DEFLATE}, {os.cpu_count()} CPUs, load average "
                 f"{load:.1f} at start, medians of {args.runs} (wall s / CPU s):",
                 f"  predict            {p:7.2f} / {med(predict, 1):6.2f}",
                 f"  whole run          {wh:7.2f} / {med(whole, 1):6.2f}  (decode + predict + write)",
                 f"  whole / predict    {wh / p:7.2f} x  target <= {TARGET} x: {'PASS' if wh / p <= TARGET else 'FAIL'}"]
        for name, _, samples in sets:
            if samples:
                wr = med(samples, 0)
                report[f"writer_{name}_s"] = wr
                report[f"writer_{name}_cpu_s"] = med(samples, 1)
                report[f"ratio_{name}"] = (p + wr) / p
                lines.append(f"  writer alone, {args.detections} {name} masks: {wr:.2f} / {med(samples, 1):.2f}; "
                             f"(predict + writer) / predict {(p + wr) / p:.2f} x  target <= {TARGET} x: "
                             f"{'PASS' if (p + wr) / p <= TARGET else 'FAIL'}")
        path = write_json(Path(args.out) / "outputs.json", report)
        print("\n".join(lines))
        print(f"wrote {path}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
