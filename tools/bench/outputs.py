"""How much writing SOWLv2's outputs adds to a prediction on a big image.

    python -m tools.bench.outputs --engines DIR [--size 6000x4000] [--detections 20] [--runs 3]
                                  [--workers N] [--out benchmark/outputs]

A generated image of ``--size`` (saved as a JPEG) goes through ``owlsam-detect``'s image path
(``tools.infer.run_images``: decode, predict, write every PNG and ``detections.json``) with threshold 0
and ``max_detections=--detections``; that whole run is compared with ``Pipeline.predict`` alone on the
decoded image (medians of ``--runs``). Target: the whole run at most 1.5x the prediction. An artifact
whose OWLv2 has fewer patches than ``--detections`` (the tiny one has 16) yields fewer detections; the
writer is then also timed alone on ``--detections`` masks (the predicted ones, repeated), and that
time added to the prediction's is reported too. Writes ``outputs.json`` into ``--out``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number

TARGET = 1.5


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size {text!r}: give WIDTHxHEIGHT, e.g. 6000x4000") from None
    if w < 16 or h < 16:
        raise UserError(f"--size {text}: at least 16x16")
    return h, w


def big_image(h: int, w: int) -> np.ndarray:
    from PIL import Image

    from tools.bench.synthetic import synthetic_image

    small = synthetic_image(max(16, h // 10), max(16, w // 10), seed=0)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="python -m tools.bench.outputs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="an engines folder (python -m export.build)")
    ap.add_argument("--size", default="6000x4000", help="image WIDTHxHEIGHT (default 6000x4000)")
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

    h, w = _size(args.size)
    prompts = ["cat", "dog"]
    kw = dict(threshold=0.0, max_detections=args.detections)
    work = Path(tempfile.mkdtemp(prefix="owlsam-bench-outputs-"))
    try:
        source = work / "big.jpg"
        Image.fromarray(big_image(h, w)).save(source, quality=90)
        image = load_image(source)
        with Pipeline.load(args.engines, backend=args.backend) as pipe:
            result = pipe.predict(image, prompts, **kw)  # warm-up
            predict, whole, writer = [], [], []
            for r in range(args.runs):
                t0 = time.perf_counter()
                result = pipe.predict(image, prompts, **kw)
                predict.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                out, _ = run_images(pipe, [source], False, prompts, work / f"run{r}", OutputOptions(),
                                    workers=args.workers, progress=False, **kw)
                whole.append(time.perf_counter() - t0)
                files = out.files
            found = len(result)
            if found < args.detections and found:
                idx = np.arange(args.detections) % found
                more = Result(result.boxes[idx], result.scores[idx], result.labels[idx], result.masks[idx], result.prompts)
                for r in range(args.runs):
                    t0 = time.perf_counter()
                    with OutputWriter(work / f"writer{r}", workers=args.workers) as out:
                        out.add(image, more, name=source.name)
                    writer.append(time.perf_counter() - t0)
        p, wh = statistics.median(predict), statistics.median(whole)
        report: dict[str, Any] = {
            "command": "python -m tools.bench.outputs " + " ".join(argv if argv is not None else sys.argv[1:]),
            "size": f"{w}x{h}", "detections": found, "files": files, "deflate": DEFLATE, "runs": args.runs,
            "predict_s": p, "whole_run_s": wh, "ratio": wh / p, "target": f"<= {TARGET}",
            "passed": wh / p <= TARGET, "predict_samples_s": predict, "whole_samples_s": whole,
        }
        lines = [f"{w}x{h}, {found} detections, {files} files, deflate {DEFLATE}, medians of {args.runs}:",
                 f"  predict            {p:7.2f} s",
                 f"  whole run          {wh:7.2f} s  (decode + predict + write)",
                 f"  whole / predict    {wh / p:7.2f} x  target <= {TARGET} x: {'PASS' if wh / p <= TARGET else 'FAIL'}"]
        if writer:
            wr = statistics.median(writer)
            report.update(writer_detections=args.detections, writer_only_s=wr, ratio_at_detections=(p + wr) / p,
                          passed_at_detections=(p + wr) / p <= TARGET)
            lines.append(f"  writer alone, {args.detections} detections (masks repeated): {wr:.2f} s; "
                         f"(predict + writer) / predict {(p + wr) / p:.2f} x  target <= {TARGET} x: "
                         f"{'PASS' if (p + wr) / p <= TARGET else 'FAIL'}")
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "outputs.json").write_text(json.dumps(report, indent=1) + "\n")
        print("\n".join(lines))
        print(f"wrote {out_dir / 'outputs.json'}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
