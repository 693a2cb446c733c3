"""The pixel graphs against the numpy code they replaced, on one artifact, on this CPU.

    python -m tools.bench.pixels --engines DIR [--sizes 720x1280 2160x3840] [--masks 8] [--runs 10]
                                 [--threads N] [--out benchmark/pixels]

Per image size: ``owl_pixels`` + ``sam2_pixels`` (pre-processing) and ``sam2_masks`` (``--masks``
low-res masks to the input size) run by ONNX Runtime, against the numpy reproductions of the
processors (``runtime.preprocessing``: ``preprocess_owl``, ``preprocess_sam2``,
``postprocess_sam2_masks``), which the pipeline ran before the pixel graphs; tables and sessions
made before timing, calls alternating, medians. Checks that both give the same values first.
Writes ``pixels.json`` into ``--out``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from runtime.errors import OneLineArgumentParser, run_cli, whole_number
from tools.bench.common import alternating_ms, image_size_arg, median, with_machine, write_json


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="python -m tools.bench.pixels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="an engines folder (python -m export.build)")
    ap.add_argument("--sizes", type=image_size_arg, nargs="+", default=[(720, 1280), (2160, 3840)],
                    help="image sizes HEIGHTxWIDTH (default 720x1280 2160x3840)")
    ap.add_argument("--masks", type=whole_number(), default=8, help="masks upsampled per image (default 8)")
    ap.add_argument("--runs", type=whole_number(), default=10, help="timed calls of each (default 10)")
    ap.add_argument("--threads", type=whole_number(), default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--out", default="benchmark/pixels", help="folder for pixels.json (default benchmark/pixels)")
    args = ap.parse_args(argv)

    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import OWL_PIXELS, SAM2_MASKS, SAM2_PIXELS
    from runtime.manifest import load_manifest
    from runtime.preprocessing import (OwlPreprocessing, Sam2Preprocessing, postprocess_sam2_masks, preprocess_owl,
                                       preprocess_sam2)
    from runtime.resample import mask_tables, owl_tables, sam2_tables
    from tools.bench.outputs import big_image

    manifest = load_manifest(args.engines)
    owl = OwlPreprocessing.from_dict(manifest.preprocessing("owl"))
    sam = Sam2Preprocessing.from_dict(manifest.preprocessing("sam"))
    mask_size = int(manifest.data["sizes"]["sam_mask_size"])
    graphs = {spec.name: OrtGraph(manifest.onnxruntime_graph_path(spec.name, "fp32", verify=True), spec,
                                  intra_op_threads=args.threads) for spec in (OWL_PIXELS, SAM2_PIXELS, SAM2_MASKS)}
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, (args.masks, mask_size, mask_size)).astype(np.float32)
    results = []
    for h, w in args.sizes:
        image = big_image(h, w)
        feeds = {"owl": {OWL_PIXELS.input_names[0]: image[None], **owl_tables(h, w, owl)},
                 "sam": {SAM2_PIXELS.input_names[0]: image[None], **sam2_tables(h, w, sam)},
                 "masks": {SAM2_MASKS.input_names[0]: logits, **mask_tables(h, w, mask_size)}}
        calls = {
            "graphs_pre": lambda: (graphs["owl_pixels"].run(feeds["owl"]), graphs["sam2_pixels"].run(feeds["sam"])),
            "numpy_pre": lambda: (preprocess_owl([image], owl), preprocess_sam2([image], sam)),
            "graphs_masks": lambda: graphs["sam2_masks"].run(feeds["masks"]),
            "numpy_masks": lambda: postprocess_sam2_masks(logits[:, None], (h, w), sam)[:, 0],
        }
        (owl_g, sam_g), (owl_n, sam_n) = calls["graphs_pre"](), calls["numpy_pre"]()
        agree = {"owl_max_abs": float(np.abs(owl_g[OWL_PIXELS.output_names[0]] - owl_n).max()),
                 "sam2_max_abs": float(np.abs(sam_g[SAM2_PIXELS.output_names[0]] - sam_n).max()),
                 "mask_pixels_differing": int((calls["graphs_masks"]()[SAM2_MASKS.output_names[0]]
                                               != calls["numpy_masks"]()).sum())}
        ms = {k: median(v) for k, v in alternating_ms(calls, args.runs).items()}
        row = {"size": f"{w}x{h}", "masks": args.masks, "ms": ms, "agreement": agree,
               "graphs_total_ms": ms["graphs_pre"] + ms["graphs_masks"],
               "numpy_total_ms": ms["numpy_pre"] + ms["numpy_masks"]}
        results.append(row)
        print(f"{w}x{h}: pre-processing graphs {ms['graphs_pre']:.1f} ms vs numpy {ms['numpy_pre']:.1f}; "
              f"{args.masks} masks graph {ms['graphs_masks']:.1f} vs numpy {ms['numpy_masks']:.1f}; total "
              f"{row['graphs_total_ms']:.1f} vs {row['numpy_total_ms']:.1f} ms ({agree})", file=sys.stderr)
    path = write_json(Path(args.out) / "pixels.json", with_machine("tools.bench.pixels", {
        "engines": str(args.engines), "runs": args.runs, "threads": args.threads, "results": results}, argv))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
