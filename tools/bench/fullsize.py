"""Export time, peak memory and CPU latency (PyTorch eager vs ONNX Runtime) of the exported graphs.

    python -m tools.bench.fullsize [--arch owlv2-b16|hiera-small|hiera-tiny | --model DIR]
                                     [--graphs owl_image sam2_decoder ...] [--prompts 4] [--boxes 1 16]
                                     [--runs 3] [--threads 2] [--parity] [--out DIR] [--json FILE]

Without ``--model`` the model has random weights and the real architecture of
``google/owlv2-base-patch16-ensemble`` (``owlv2-b16``: ``Owlv2Config()`` with the vision tower at
960 px, patch 16) or ``facebook/sam2.1-hiera-small`` (or ``-tiny``): timings and memory do not
depend on the weights, and no hub access is needed (the OWLv2 tokenizer is the tiny checkpoints'
BPE, whose ids all exist in the real vocabulary). ``--model DIR`` measures a local checkpoint instead.

Each graph is measured in its own child process, so that its peak resident memory (``ru_maxrss``)
is its own: model construction + export, then + the latency runs. Latency is the median of
``--runs`` timed runs after one warm-up, at batch 1, with ``--threads`` intra-op threads for both
PyTorch and ONNX Runtime. The result is a markdown table on stdout (and JSON with ``--json``).
Measurements only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.bench.environment import with_environment

# Meta's sam2.1_hiera_{t,s}.yaml (trunk embed_dim 96, num_heads 1 doubling per stage, window_spec
# [8, 4, 14, 7], window_pos_embed_bkg_spatial_size [7, 7], FPN d_model 256 over
# [768, 384, 192, 96], top-down levels [2, 3]), as transformers' Sam2HieraDetConfig spells it. The
# prompt encoder and mask decoder are transformers' defaults, which are those of every SAM2.1 size.
SAM_ARCHES: dict[str, dict[str, Any]] = {
    "hiera-small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
    "hiera-tiny": dict(blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9]),
}
_HIERA_COMMON = dict(
    hidden_size=96,
    embed_dim_per_stage=[96, 192, 384, 768],
    num_attention_heads_per_stage=[1, 2, 4, 8],
    window_size_per_stage=[8, 4, 14, 7],
    window_positional_embedding_background_size=[7, 7],
    image_size=[1024, 1024],
    patch_kernel_size=[7, 7],
    patch_stride=[4, 4],
    patch_padding=[3, 3],
    query_stride=[2, 2],
    num_query_pool_stages=3,
)
OWL_ARCH = "owlv2-b16"
ARCHES = (OWL_ARCH, *SAM_ARCHES)


def sam2_config(arch: str):
    """A ``Sam2Config`` with the architecture of ``facebook/sam2.1-<arch>``."""
    from transformers import Sam2Config

    backbone = dict(model_type="sam2_hiera_det_model", **_HIERA_COMMON, **SAM_ARCHES[arch])
    vision = dict(
        model_type="sam2_vision_model",
        backbone_config=backbone,
        backbone_channel_list=[768, 384, 192, 96],
        backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
        fpn_hidden_size=256,
        fpn_top_down_levels=[2, 3],
        num_feature_levels=3,
    )
    return Sam2Config(vision_config=vision, prompt_encoder_config={}, mask_decoder_config={})


def load(family: str, arch: str | None, model_dir: str | None, seed: int, init: str = "order1"):
    """A LoadedModel: the local checkpoint, or a random-weight model of ``arch``.

    ``init="order1"`` re-initialises the random weights as the tiny checkpoints do (PyTorch's
    default initialisers, outputs of order 1); ``"hf"`` keeps transformers' std-0.02 init, under
    which a deep random ViT's activations grow to ~1e4 and the outputs are cancellations of huge
    intermediates (a poor stand-in for trained weights).
    """
    import torch

    from export.models import LoadedModel, load_owl, load_sam

    if model_dir:
        return (load_owl if family == "owl" else load_sam)(model_dir)
    torch.manual_seed(seed)
    if family == "owl":
        from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

        from tools.tiny_checkpoints import build_tokenizer

        model = _initialised(Owlv2ForObjectDetection(Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})), init, seed)
        processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 960, "width": 960}),
                                   tokenizer=build_tokenizer())
        return LoadedModel("owl", f"random {arch}", model, processor, "random", None)
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    model = _initialised(Sam2Model(sam2_config(arch)), init, seed)
    processor = Sam2Processor(image_processor=Sam2ImageProcessor(), target_size=1024)
    return LoadedModel("sam", f"random {arch}", model, processor, "random", None)


def _initialised(model, init: str, seed: int):
    from tools.tiny_checkpoints import reinitialise

    if init == "order1":
        reinitialise(model, seed)
    return model.eval()


def family_of(graph: str) -> str:
    from runtime.graphs import GRAPHS

    return GRAPHS[graph].family


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def median_ms(fns: dict[str, Any], runs: int) -> dict[str, float]:
    """Median wall time of each function in ms. The functions take turns, run by run, so that a
    machine whose load changes during the measurement slows them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_graph(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: build, export and time one graph."""
    import numpy as np
    import torch

    from export.graph_export import export_example_dims, export_to_onnx
    from export.parity import check_export_parity, failures
    from export.owl import owl_graph_exports, owl_sizes
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import NUM_BOXES, NUM_PROMPTS

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    family = family_of(args.worker)
    loaded = load(family, args.arch, args.model, args.seed, args.init)
    sizes, exports = (owl_sizes, owl_graph_exports) if family == "owl" else (sam2_sizes, sam2_graph_exports)
    graph = {g.spec.name: g for g in exports(loaded, sizes(loaded))}[args.worker]
    spec = graph.spec
    build_s = time.perf_counter() - t0
    rss_build = _rss_mb()

    # the decoder's example features come from the image encoder: compute them before the clock
    graph.make_inputs(export_example_dims(spec), np.random.default_rng(0))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.onnx"
    t0 = time.perf_counter()
    files = export_to_onnx(graph, path)
    export_s = time.perf_counter() - t0
    rss_export = _rss_mb()

    result: dict[str, Any] = {
        "graph": spec.name,
        "model": loaded.source,
        "params_m": sum(p.numel() for p in graph.module.parameters()) / 1e6,
        "build_s": build_s,
        "export_s": export_s,
        "onnx_mb": sum(f.stat().st_size for f in files) / 2**20,
        "rss_build_mb": rss_build,
        "rss_export_mb": rss_export,
        "latency": [],
    }
    session = OrtGraph(path, spec, intra_op_threads=args.threads)
    counts = {NUM_BOXES: args.boxes, NUM_PROMPTS: args.prompts}
    varied = [d for d in spec.dynamic_dims if d in counts]
    for n in (counts[varied[0]] if varied else [None]):
        dims = {d: 1 for d in spec.dynamic_dims} | ({varied[0]: n} if varied else {})
        feeds = graph.make_inputs(dims, np.random.default_rng(1))
        ms = median_ms({"eager": lambda: graph.torch_outputs(feeds), "ort": lambda: session.run(feeds)}, args.runs)
        result["latency"].append({"dims": dims, "eager_ms": ms["eager"], "ort_ms": ms["ort"]})
    result["load_average"] = os.getloadavg()[0]
    result["rss_total_mb"] = _rss_mb()
    if args.parity:
        rows = check_export_parity(graph, path)
        result["parity"] = {
            "passed": not failures(rows),
            "max_abs": {name: max(r.max_abs for r in rows if r.output == name) for name in spec.output_names},
        }
    return result


def format_markdown(results: list[dict[str, Any]], threads: int, runs: int) -> str:
    lines = [
        "| model | graph | params (M) | export (s) | ONNX (MB) | peak RSS export (GB) | peak RSS +latency (GB) "
        "| dims | eager (ms) | ORT (ms) | eager/ORT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, lat in enumerate(r["latency"]):
            head = (
                f"| {r['model']} | {r['graph']} | {r['params_m']:.2f} | {r['export_s']:.1f} | {r['onnx_mb']:.1f} "
                f"| {r['rss_export_mb'] / 1024:.2f} | {r['rss_total_mb'] / 1024:.2f} "
                if i == 0
                else "| | | | | | | "
            )
            dims = ", ".join(f"{k}={v}" for k, v in lat["dims"].items())
            lines.append(
                f"{head}| {dims} | {lat['eager_ms']:.1f} | {lat['ort_ms']:.1f} | {lat['eager_ms'] / lat['ort_ms']:.2f} |"
            )
    lines.append("")
    loads = ", ".join(f"{r['load_average']:.1f}" for r in results)
    lines.append(
        f"Latency: median of {runs} runs after one warm-up, eager and ORT alternating, {threads} intra-op "
        f"threads, CPU ({os.cpu_count()} cores; 1-min load average at the end of each graph: {loads})."
    )
    for r in results:
        if "parity" in r:
            p = r["parity"]
            worst = ", ".join(f"{k} {v:.2g}" for k, v in p["max_abs"].items())
            lines.append(f"Parity {r['graph']}: {'PASSED' if p['passed'] else 'FAILED'} (max-abs {worst})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from runtime.graphs import GRAPHS

    p = OneLineArgumentParser(prog="python -m tools.bench.fullsize", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=ARCHES, help="random-weight architecture (default: owlv2-b16 for OWL "
                     "graphs, hiera-small for SAM2 graphs)")
    src.add_argument("--model", help="a local checkpoint directory (of the graphs' family) instead of random weights")
    image_graphs = sorted(n for n, g in GRAPHS.items() if not g.video)  # tools.bench.tracking times video
    p.add_argument("--graphs", nargs="+", choices=image_graphs, default=image_graphs)
    p.add_argument("--prompts", nargs="+", type=whole_number(), default=[4], help="prompt counts to time")
    p.add_argument("--boxes", nargs="+", type=whole_number(), default=[1, 16], help="decoder box counts to time")
    p.add_argument("--runs", type=whole_number(), default=3, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=whole_number(), default=2, help="intra-op threads for torch and ONNX Runtime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("order1", "hf"), default="order1",
                   help="random weights: re-initialised to order-1 outputs (default) or transformers' init")
    p.add_argument("--parity", action="store_true", help="also run the export parity check per graph")
    p.add_argument("--out", help="where the ONNX files go (default: a temporary directory, removed)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--worker", choices=image_graphs, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def arch_for(graph: str, arch: str | None) -> str:
    family = family_of(graph)
    if arch is None:
        return OWL_ARCH if family == "owl" else "hiera-small"
    if (arch == OWL_ARCH) != (family == "owl"):
        raise UserError(f"--arch {arch} has no graph {graph}; pick graphs of its family with --graphs")
    return arch


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure_graph(args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="sam2-measure-") as tmp:
        out = args.out or tmp
        results = []
        for name in args.graphs:
            cmd = [sys.executable, "-m", "tools.bench.fullsize", "--worker", name, "--out", out,
                   "--runs", str(args.runs), "--threads", str(args.threads), "--seed", str(args.seed),
                   "--boxes", *map(str, args.boxes), "--prompts", *map(str, args.prompts), "--init", args.init]
            cmd += ["--model", args.model] if args.model else ["--arch", arch_for(name, args.arch)]
            cmd += ["--parity"] if args.parity else []
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                print(f"{name}: the measuring process failed with status {proc.returncode}", file=sys.stderr)
                return proc.returncode
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(with_environment(results), indent=2))
    print(format_markdown(results, args.threads, args.runs))
    return 0


if __name__ == "__main__":
    run_cli(main)
