"""Per-stage latency and images/s of the runtime on every available backend and precision, and of
the PyTorch reference pipeline run two ways.

    python -m tools.benchmark --engines DIR [--images DIR] [--prompts 4] [--boxes 8] [--runs 3]
                              [--backends onnxruntime tensorrt] [--precisions fp32 fp16 int8]
                              [--torch auto|on|off] [--prompt-sweep 1 8] [--threads N] [--out DIR]

Writes ``benchmark.json``, ``benchmark.md`` (the table, also printed) and ``benchmark.png`` into
``--out``. A backend or precision asked for that cannot run is an error; by default what is skipped is
printed with the reason. The method: docs/ARCHITECTURE.md ("Measuring methods"). Measurements only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from runtime.errors import ArtifactError, OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.manifest import PRECISIONS, load_manifest
from runtime.profiling import DECODER, MASK_POST, OWL_HEAD_POST, PIPELINE_STAGES, PREPROCESS
from tools.bench.common import (command_line, describe_machine, fmt, load_images, machine_info, median,
                                torch_machine_info, write_json, write_text)
from tools.outputs import write_atomic

BACKENDS = ("onnxruntime", "tensorrt")
TEXT = "owl_text"
#: Stages counted as pre- and post-processing for the "<= 10 % of the total" target (conservative:
#: the OWL head graph is inside its post-processing stage).
PRE_POST = (PREPROCESS, OWL_HEAD_POST, MASK_POST)
WORDS = ("cat", "dog", "person", "car", "bicycle", "tree", "bottle", "chair", "bird", "boat", "cup", "horse",
         "laptop", "umbrella", "clock", "traffic light")


def prompt_list(n: int) -> list[str]:
    return [WORDS[i] if i < len(WORDS) else f"object {i}" for i in range(n)]


# ----------------------------------------------------------------------------------------------
# What to run


def plan_runs(engines: Path, backends: Sequence[str] | None, precisions: Sequence[str] | None
              ) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(backend, precision)], [skip reasons])``. Requested combinations must all run; the
    default (``None``: all) skips what this machine or artifact lacks, with the reason."""
    from runtime.pipeline import choose_backend

    manifest = load_manifest(engines)
    runs, skipped = [], []
    for backend in backends or BACKENDS:
        for precision in precisions or PRECISIONS:
            try:
                choose_backend(manifest, backend, precision)
            except (UserError, ArtifactError) as e:
                if backends and precisions:
                    raise UserError(f"cannot benchmark {backend} {precision}: {e}") from None
                if type(e) is UserError:  # this machine lacks the backend: one line for all precisions
                    skipped.append(f"{backend}: {e}")
                    break
                skipped.append(f"{backend} {precision}: {e}")
                continue
            runs.append((backend, precision))
    if not runs:
        raise UserError(f"nothing to benchmark in {engines}: " + "; ".join(skipped))
    return runs, skipped


# ----------------------------------------------------------------------------------------------
# The runtime


def bench_runtime(engines: Path, backend: str, precision: str, images: list[tuple[str, np.ndarray]],
                  prompts: list[str], boxes: int, runs: int, warmup: int, threads: int | None,
                  sweep_counts: Sequence[int] = ()) -> tuple[dict[str, Any], dict[str, float] | None]:
    """The measurements of one backend and precision; and, given ``sweep_counts``, its
    :func:`prompt_sweep` on the same open pipeline afterwards (else None)."""
    from runtime.pipeline import Pipeline, required_graphs

    with Pipeline.load(engines, backend, precision, intra_op_threads=threads) as pipe:
        texts = pipe.texts(prompts)
        text_ms = []
        for _ in range(max(runs, 1)):  # the text graph alone, cache cleared: the cost of a new prompt set
            pipe.owl.clear_query_cache()
            pipe.timer.reset()
            pipe.owl.query_embeds(texts)
            text_ms.append(pipe.timer.seconds[TEXT] * 1e3)
        predict = dict(threshold=0.0, max_detections=boxes)
        for _, image in images * warmup:
            pipe.predict(image, prompts, **predict)
        stage_samples: dict[str, list[float]] = {s: [] for s in PIPELINE_STAGES if s != TEXT}
        wall, chosen_boxes = [], {}
        # On CUDA streams the encoders are only queued: the per-image time comes from runs as they
        # overlap, the stages from as many runs again with each queued call waited for in its span.
        for synchronized in ((False, True) if pipe.on_streams else (None,)):
            pipe.timer.synchronize = bool(synchronized)
            for _ in range(runs):
                for name, image in images:
                    pipe.timer.reset()
                    t0 = time.perf_counter()
                    result = pipe.predict(image, prompts, **predict)
                    if not synchronized:
                        wall.append((time.perf_counter() - t0) * 1e3)
                        chosen_boxes[name] = result.boxes
                    if synchronized is not False:
                        for s in stage_samples:
                            stage_samples[s].append(pipe.timer.seconds.get(s, 0.0) * 1e3)
        pipe.timer.synchronize = False
        per_image = median(wall)
        result = {
            "name": f"{backend} {precision}", "kind": "runtime", "backend": backend, "precision": precision,
            "reason": pipe.choice.reason, "stages_synchronized": pipe.on_streams,
            "stages_ms": {s: median(v) for s, v in stage_samples.items()},
            "text_ms": median(text_ms), "text_per_image": False, "per_image_ms": per_image,
            "images_per_s": 1e3 / per_image, "samples_ms": wall, "boxes": {k: v.tolist() for k, v in chosen_boxes.items()},
        }
        if backend == "onnxruntime":  # which file of each graph ran (runtime.manifest's rule)
            result["graph_files"] = {spec.name: pipe.manifest.onnxruntime_graph_path(spec.name, spec.runs_at(precision), verify=False).name
                                     for spec in required_graphs()}
        sweep = None
        if sweep_counts:
            print(f"[prompt sweep] {backend} {precision} at {list(sweep_counts)} prompts...", file=sys.stderr, flush=True)
            sweep = prompt_sweep(pipe, images, sweep_counts, boxes, runs)
        return result, sweep


def prompt_sweep(pipe: Any, images: list[tuple[str, np.ndarray]], counts: Sequence[int], boxes: int,
                 runs: int) -> dict[str, float]:
    """Per-image wall time (median) at each prompt count on the open pipeline ``pipe``, text
    embeddings cached (one warm-up each)."""
    out = {}
    for n in counts:
        prompts = prompt_list(n)
        pipe.predict(images[0][1], prompts, threshold=0.0, max_detections=boxes)
        wall = []
        for _ in range(runs):
            for _, image in images:
                t0 = time.perf_counter()
                pipe.predict(image, prompts, threshold=0.0, max_detections=boxes)
                wall.append((time.perf_counter() - t0) * 1e3)
        out[str(n)] = median(wall)
    return out


# ----------------------------------------------------------------------------------------------
# The PyTorch reference (tools.bench.torch_pipeline's stages on the artifact's source checkpoints)


def grid_boxes(h: int, w: int, n: int) -> list[list[float]]:
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    cw, ch = w / cols, h / rows
    return [[c * cw + 0.15 * cw, r * ch + 0.15 * ch, c * cw + 0.75 * cw, r * ch + 0.75 * ch]
            for r, c in (divmod(i, cols) for i in range(n))]


def bench_torch(owl_path: str, sam_path: str, images: list[tuple[str, np.ndarray]], prompts: list[str],
                text_length: int, boxes_by_image: dict[str, list], boxes: int, runs: int, warmup: int,
                device_name: str | None, threads: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch
    from PIL import Image
    from transformers import Owlv2ForObjectDetection, Owlv2Processor, Sam2Model, Sam2Processor

    from tools.bench import torch_pipeline as tb

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    try:
        owl = Owlv2ForObjectDetection.from_pretrained(owl_path).eval().to(device)
        owl_processor = Owlv2Processor.from_pretrained(owl_path)
        sam = Sam2Model.from_pretrained(sam_path).eval().to(device)
        sam_processor = Sam2Processor.from_pretrained(sam_path)
    except OSError as e:
        raise UserError(f"cannot load the PyTorch reference ({' '.join(str(e).split())[:200]}); pass --owl-model "
                        "and --sam-model, or --torch off") from None
    tokens = owl_processor(text=[prompts], return_tensors="pt", padding="max_length", max_length=text_length,
                           truncation=True)
    stage_samples: dict[str, list[float]] = {s: [] for s in tb.STAGES}
    e2e: dict[str, list[float]] = {"fair": [], "sowlv2": []}
    with torch.inference_mode():
        for i, (name, image) in enumerate(images):
            h, w = image.shape[:2]
            pipe = tb.Pipeline(owl, owl_processor.image_processor, sam, sam_processor.image_processor, sam_processor,
                               device, gpu_preprocess=False, image_hw=(h, w))
            image_boxes = boxes_by_image.get(name) or grid_boxes(h, w, boxes)
            inputs = (Image.fromarray(image), tokens["input_ids"], tokens["attention_mask"], image_boxes)
            args = SimpleNamespace(runs=runs, warmup=warmup if i == 0 else 0, skip_e2e=False, verbose=False)
            res = tb.run_mode(pipe, "eager-fp32", device, args, inputs)
            if "error" in res:
                raise UserError(f"the PyTorch reference failed on {name}: {res['error'].splitlines()[0]}")
            for s, v in res["stages_samples_ms"].items():
                stage_samples[s] += v
            for k in e2e:
                e2e[k] += res["e2e_samples_ms"][k]
    med = {s: median(v) for s, v in stage_samples.items()}
    n = float(len(boxes_by_image.get(images[0][0]) or ()) or boxes)  # boxes per image: SOWLv2's encoder passes
    fair_stages = {PREPROCESS: med["preprocess_owl"] + med["preprocess_sam2"], "owl_image": med["owl_image"],
                   OWL_HEAD_POST: med["owl_heads"] + med["owl_post"], "sam2_image": med["sam2_image"],
                   DECODER: med["sam2_decoder"], MASK_POST: med["mask_post"]}
    sowlv2_stages = {PREPROCESS: med["preprocess_owl"] + n * med["preprocess_sam2"], TEXT: med["owl_text"],
                     "owl_image": med["owl_image"], OWL_HEAD_POST: med["owl_heads"] + med["owl_post"],
                     "sam2_image": n * med["sam2_image"], DECODER: n * med["sam2_decoder_1box"],
                     MASK_POST: n * med["mask_post_1box"]}
    results = []
    for way, stages, text_per_image in (("fair", fair_stages, False), ("sowlv2", sowlv2_stages, True)):
        per_image = median(e2e[way])
        results.append({"name": f"pytorch {way}", "kind": f"pytorch-{way}", "backend": f"pytorch {device.type}",
                        "precision": "fp32", "stages_ms": stages, "text_ms": med["owl_text"],
                        "text_per_image": text_per_image, "per_image_ms": per_image, "images_per_s": 1e3 / per_image,
                        "samples_ms": e2e[way]})
    machine = {**torch_machine_info(device), "torch_threads": torch.get_num_threads()}
    return results, machine


# ----------------------------------------------------------------------------------------------
# Report


def _target(value: float, op: str, bound: float, unit: str, **extra: Any) -> dict[str, Any]:
    """One target: ``value op bound`` in ``unit`` ("x" for a ratio, "%" for a fraction), and whether it is met."""
    passed = value >= bound if op == ">=" else value <= bound
    shown = f"{100 * bound:g} %" if unit == "%" else f"{bound:g}x"
    return {"value": value, "target": f"{op} {shown}", "unit": unit, "passed": bool(passed), **extra}


def targets(results: list[dict[str, Any]], sweep: dict[str, float] | None) -> dict[str, Any]:
    """The issue's performance targets, computed from the measurements (reported, not asserted)."""
    by_name = {r["name"]: r for r in results}
    ort, fair = by_name.get("onnxruntime fp32"), by_name.get("pytorch fair")
    out: dict[str, Any] = {}
    if ort and fair:
        out["onnxruntime_fp32_vs_pytorch_fair"] = _target(ort["images_per_s"] / fair["images_per_s"], ">=", 1.5, "x")
    ort_int8 = by_name.get("onnxruntime int8")
    if ort and ort_int8:
        out["onnxruntime_int8_vs_fp32"] = _target(ort_int8["images_per_s"] / ort["images_per_s"], ">=", 1.5, "x")
    if ort:
        share = sum(ort["stages_ms"].get(s, 0.0) for s in PRE_POST) / ort["per_image_ms"]
        out["pre_post_share_onnxruntime_fp32"] = _target(share, "<=", 0.10, "%", stages=list(PRE_POST))
    if sweep and len(sweep) >= 2:
        counts = sorted(sweep, key=int)
        lo, hi = sweep[counts[0]], sweep[counts[-1]]  # the fewest and the most prompts
        out["prompt_sweep_difference"] = _target(abs(hi - lo) / lo, "<=", 0.10, "%", ms_per_image=sweep)
    return out


def target_line(key: str, t: dict[str, Any]) -> str:
    """``PASS target name: 1.62x (target >= 1.5x)``, the units shown."""
    value = f"{100 * t['value']:.1f} %" if t["unit"] == "%" else f"{t['value']:.2f}x"
    line = f"{'PASS' if t['passed'] else 'FAIL'} {key}: {value} (target {t['target']})"
    if "ms_per_image" in t:
        line += f"; ms per image by prompt count: {', '.join(f'{k}: {v:.1f}' for k, v in t['ms_per_image'].items())}"
    return line


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    names = [r["name"] for r in results]
    c, m = report["config"], report["machine"]
    lines = [f"command: `{report['command']}`",
             f"machine: {describe_machine(m)}"
             + (f"; PyTorch {m['torch']['torch']} on {m['torch']['device']}" if m.get("torch") else "")
             + " (load average at the start)",
             f"setup: {c['images']} image(s) ({', '.join(c['image_sizes'])}), {c['prompts']} prompts, {c['boxes']} boxes "
             f"per image, {c['runs']} run(s) after {c['warmup']} warm-up, median per image", "",
             "| stage (ms) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in PIPELINE_STAGES:
        label = "owl_text (per prompt set)" if s == TEXT else s
        cells = []
        for r in results:
            v = r["stages_ms"].get(s) if s != TEXT else r["text_ms"]
            cells.append(fmt(v) + (" (per image)" if s == TEXT and r["text_per_image"] else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| **per image, measured** | " + " | ".join(f"**{fmt(r['per_image_ms'])}**" for r in results) + " |")
    lines.append("| **images/s** | " + " | ".join(f"**{fmt(r['images_per_s'], 2)}**" for r in results) + " |")
    fair = next((r for r in results if r["kind"] == "pytorch-fair"), None)
    if fair:
        lines.append("| speed-up vs pytorch fair | " + " | ".join(
            f"{r['images_per_s'] / fair['images_per_s']:.2f}×" for r in results) + " |")
    lines.append("")
    for key, t in report["targets"].items():
        lines.append(f"- {target_line(key, t)}")
    for s in report["skipped"]:
        lines.append(f"- skipped {s}")
    return "\n".join(lines) + "\n"


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Horizontal stacked bars: per-image milliseconds of each stage, one bar per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the chart needs matplotlib; pip install matplotlib (or pass --no-chart)") from None
    results = report["results"]
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.6 * len(results)), dpi=110)
    left = np.zeros(len(results))
    colours = plt.get_cmap("tab10").colors
    for i, s in enumerate(PIPELINE_STAGES):
        ms = np.array([r["stages_ms"].get(s, 0.0) if (s != TEXT or r["text_per_image"]) else 0.0 for r in results])
        ax.barh(range(len(results)), ms, left=left, color=colours[i % len(colours)], label=s)
        left += ms
    for y, r in enumerate(results):
        ax.text(left[y], y, f"  {r['per_image_ms']:.0f} ms, {r['images_per_s']:.2f} img/s", va="center", fontsize=8)
    ax.set_yticks(range(len(results)), [r["name"] for r in results])
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 1.3 if left.max() > 0 else 1)
    ax.set_xlabel("milliseconds per image (stages; text only where it runs per image)")
    c = report["config"]
    m = report["machine"]
    ax.set_title(f"{c['prompts']} prompts, {c['boxes']} boxes per image — {(m.get('cpu') or {}).get('model')}, "
                 f"{m['cpu_count']} CPUs"
                 + (f", PyTorch on {m['torch']['device']}" if m.get("torch") else ""), fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, ncols=len(PIPELINE_STAGES), loc="lower center",
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def _torch_available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return False, f"torch/transformers are not importable ({e}); pip install -e '.[export]'"
    return True, ""


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="python -m tools.benchmark", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", required=True, help="the engines directory (python -m export.build --out)")
    ap.add_argument("--images", default=None, help="a folder of images (default: one generated 1280x720 image)")
    ap.add_argument("--max-images", type=whole_number(), default=8, help="use at most this many images of --images")
    ap.add_argument("--prompts", type=whole_number(), default=4, help="number of text prompts")
    ap.add_argument("--boxes", type=whole_number(), default=8, help="boxes decoded per image (top-scoring detections)")
    ap.add_argument("--runs", type=whole_number(), default=3, help="timed passes over the images")
    ap.add_argument("--warmup", type=whole_number(0), default=1, help="untimed passes first")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=None, help="default: every available one")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None, help="default: every one the artifact has")
    ap.add_argument("--torch", choices=("auto", "on", "off"), default="auto", help="the PyTorch reference pipeline")
    ap.add_argument("--torch-device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--owl-model", default=None, help="PyTorch reference OWLv2 (default: the manifest's source)")
    ap.add_argument("--sam-model", default=None, help="PyTorch reference SAM2 (default: the manifest's source)")
    ap.add_argument("--prompt-sweep", type=whole_number(), nargs="*", default=[1, 8],
                    help="prompt counts timed on the first backend (nothing: skip)")
    ap.add_argument("--threads", type=whole_number(), default=None, help="intra-op threads of ONNX Runtime and PyTorch")
    ap.add_argument("--out", default="benchmark", help="folder for benchmark.json, benchmark.md, benchmark.png "
                    "(default benchmark/, git-ignored)")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    args = ap.parse_args(argv)
    engines = Path(args.engines)
    use_torch, why_not = _torch_available()
    if args.torch == "on" and not use_torch:
        raise UserError(f"--torch on: {why_not}")
    use_torch = use_torch and args.torch != "off"
    if not use_torch and args.torch == "auto":
        print(f"PyTorch reference skipped: {why_not}", file=sys.stderr)

    runs, skipped = plan_runs(engines, args.backends, args.precisions)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    images = load_images(args.images, args.max_images)
    prompts = prompt_list(args.prompts)
    machine = machine_info()  # before the first run: its load average is the one at the start
    results: list[dict[str, Any]] = []
    sweep = None
    for i, (backend, precision) in enumerate(runs):
        print(f"[{backend} {precision}] {len(images)} image(s) x {args.runs} run(s)...", file=sys.stderr, flush=True)
        r, swept = bench_runtime(engines, backend, precision, images, prompts, args.boxes, args.runs, args.warmup,
                                 args.threads, sweep_counts=args.prompt_sweep if i == 0 else ())
        print(f"[{backend} {precision}] {r['per_image_ms']:.1f} ms per image, {r['images_per_s']:.2f} images/s",
              file=sys.stderr, flush=True)
        results.append(r)
        if swept is not None:
            sweep = swept
    if use_torch:
        from export.reference import reference_sources

        owl_path, sam_path = reference_sources(load_manifest(engines), args.owl_model, args.sam_model, " (or --torch off)")
        print(f"[pytorch] {owl_path} + {sam_path}...", file=sys.stderr, flush=True)
        text_length = int(load_manifest(engines).sizes["owl_text_length"])
        torch_results, machine["torch"] = bench_torch(
            owl_path, sam_path, images, prompts, text_length, results[0]["boxes"], args.boxes,
            args.runs, args.warmup, args.torch_device, args.threads)
        results += torch_results
    report = {
        "command": command_line("tools.benchmark", argv),
        "machine": machine,
        "config": {"engines": str(engines), "images": len(images), "image_sizes": [f"{im.shape[1]}x{im.shape[0]}" for _, im in images],
                   "prompts": args.prompts, "boxes": args.boxes, "runs": args.runs, "warmup": args.warmup,
                   "threads": args.threads, "prompt_sweep": args.prompt_sweep},
        "stages": list(PIPELINE_STAGES), "results": results, "skipped": skipped, "targets": targets(results, sweep),
    }
    out = Path(args.out)
    table = markdown(report)
    write_json(out / "benchmark.json", report)
    write_text(out / "benchmark.md", table)
    if not args.no_chart:
        draw_chart(report, out / "benchmark.png")
    print(table)
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}" + ("" if args.no_chart else f", {out / 'benchmark.png'}"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
