"""ViT-B blocks at the OWLv2 image tower's size through the graphs ``export.build`` writes, timed on CPU.

    python -m tools.bench.blocks [--layers 2] [--runs 5] [--threads 1] [--no-modelopt] [--arch owlv2-b16] [--json FILE]

An ``Owlv2VisionModel`` with ``--layers`` ViT-B/16 blocks at 960 px (3601 tokens, width 768, MLP 3072;
order-1 random weights; ``--arch tiny``: the test model's vision tower, to check the command) is exported like every graph, then written as the portable FP32 graph, ONNX
Runtime's FP32 and INT8 flavours (``export.ort_flavour``) and, unless ``--no-modelopt``, the portable
INT8 graph TensorRT builds from (``export.precision.quantize_int8``; run with ONNX Runtime's Q/DQ
fusion). Each runs in ONNX Runtime, with PyTorch eager FP32 and BF16 autocast beside them, all in one
process, variants alternating, and is timed by the CPU time of the process with ``--threads`` intra-op
threads and thread spinning off: that measures work done, not waiting, so a machine shared with other
work slows every variant alike. Also reports how close ONNX Runtime's integer kernels come to the INT8
graph run fake-quantised, and whether its CPU execution provider has a BF16 MatMul. Measurements only:
nothing is asserted.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.errors import OneLineArgumentParser, run_cli, whole_number
from tools.bench.common import OWL_ARCHES, OWL_B16, alternating_ms, owl_config, with_machine, write_json

def onnxruntime_bf16_matmul() -> str:
    """Whether ONNX Runtime's CPU execution provider runs a bfloat16 MatMul ("yes", or its error)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [4, 4]) for n in ("a", "b", "c")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "bf16", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - the answer is the error
        return " ".join(str(e).split())[:200]
    return "yes"


def measure(layers: int, runs: int, threads: int, modelopt: bool, work: Path, say, arch: str = OWL_B16) -> dict[str, Any]:
    import onnxruntime as ort
    import torch
    from transformers import Owlv2VisionConfig, Owlv2VisionModel

    from export.ort_flavour import fuse_for_onnxruntime, quantize_for_onnxruntime
    from export.parity import cosine
    from runtime.graphs import GraphSpec, TensorSpec, Tolerance
    from tools.tiny_checkpoints import reinitialise

    torch.set_num_threads(threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vision = {**owl_config(arch).vision_config.to_dict(), "num_hidden_layers": layers}
        vit = Owlv2VisionModel(Owlv2VisionConfig(**vision)).eval()
    reinitialise(vit, 0)

    class Blocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state

    module = Blocks().eval()
    spec = GraphSpec("vit_blocks", "owl", (TensorSpec("pixel_values", "float32", ("one", "channels", "size", "size")),),
                     (TensorSpec("hidden", "float32", ("one", "tokens", "width"), Tolerance(1e-3, 1e-3)),))
    rng = np.random.default_rng(0)
    size = vision["image_size"]
    feeds = [{"pixel_values": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(4)]
    x = feeds[0]["pixel_values"]
    say(f"exporting {layers} {arch} vision blocks...")
    portable = work / "vit_blocks.onnx"
    torch.onnx.export(module, (torch.from_numpy(x),), dynamo=True, opset_version=18, input_names=["pixel_values"],
                      output_names=["hidden"], verbose=False).save(str(portable), external_data=True)
    graphs = {"portable FP32": portable}
    fused = work / "vit_blocks.ort.onnx"
    fuse_for_onnxruntime(portable, fused, spec)
    graphs["ONNX Runtime FP32"] = fused
    say("quantising with ONNX Runtime...")
    int8 = work / "vit_blocks.int8.ort.onnx"
    quantize_for_onnxruntime(fused, int8, spec, feeds)
    graphs["ONNX Runtime INT8"] = int8
    if modelopt:
        from export.precision import quantize_int8

        say("quantising with ModelOpt (the portable INT8 graph)...")
        quantize_int8(portable, work / "vit_blocks.int8.onnx", spec, feeds, method="max")
        graphs["portable INT8 (Q/DQ fused)"] = work / "vit_blocks.int8.onnx"
    sessions = {}
    for name, path in graphs.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fns: dict[str, Callable[[], np.ndarray]] = {
        name: (lambda s=s: s.run(None, {"pixel_values": x})[0]) for name, s in sessions.items()}
    # the INT8 flavour as written (Q/DQ fusion off, fake-quantised in float): what the integer kernels
    # should reproduce unless they saturate (u8 x s8 products summed in int16 without VNNI)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    as_written = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    fused_out = fns["ONNX Runtime INT8"]()
    fused_vs_written = float(cosine(fused_out, as_written))
    pixels = torch.from_numpy(x)

    def torch_bf16() -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(pixels).float().numpy()

    fns["PyTorch FP32"] = lambda: module(pixels).numpy()
    fns["PyTorch BF16 autocast"] = torch_bf16
    with torch.inference_mode():
        ref = fns["PyTorch FP32"]()
        cosines = {name: cosine(f(), ref) for name, f in fns.items()}
        # process CPU time: work done, not waiting, so other work on the machine slows every variant alike
        times = alternating_ms(fns, runs, time.process_time, lambda i, t: say(
            f"run {i + 1}/{runs} (1-min load {os.getloadavg()[0]:.1f}): " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in t.items())))
    base = float(np.median(times["ONNX Runtime FP32"]))
    return {"layers": layers, "arch": arch, "tokens": (size // vision["patch_size"]) ** 2 + 1, "threads": threads, "runs": runs,
            "onnxruntime_bf16_matmul": onnxruntime_bf16_matmul(),
            "onnxruntime_int8_fused_vs_fake_quantised_cosine": fused_vs_written,
            "variants": {name: {"cpu_ms_median": float(np.median(t)), "cpu_ms": t,
                                "vs_onnxruntime_fp32": base / float(np.median(t)), "cosine_vs_pytorch_fp32": cosines[name]}
                         for name, t in times.items()}}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['layers']} {result['arch']} vision blocks, {result['tokens']} tokens; CPU ms with {result['threads']} intra-op "
             f"thread(s), median of {result['runs']}", "",
             "| graph | ms | vs ONNX Runtime FP32 | cosine vs PyTorch FP32 |", "|---|---:|---:|---:|"]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['cpu_ms_median']:.0f} | {v['vs_onnxruntime_fp32']:.2f}× | "
                     f"{v['cosine_vs_pytorch_fp32']:.6f} |")
    lines += ["", "ONNX Runtime INT8, integer kernels against the same graph fake-quantised (Q/DQ fusion off): cosine "
              f"{result['onnxruntime_int8_fused_vs_fake_quantised_cosine']:.6f}",
              f"ONNX Runtime BF16 MatMul on the CPU execution provider: {result['onnxruntime_bf16_matmul']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = OneLineArgumentParser(prog="python -m tools.bench.blocks", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=whole_number(), default=2, help="ViT-B blocks (the OWLv2 image tower has 12)")
    p.add_argument("--runs", type=whole_number(), default=5, help="timed runs of every variant")
    p.add_argument("--threads", type=whole_number(), default=1, help="intra-op threads (ONNX Runtime and PyTorch)")
    p.add_argument("--no-modelopt", action="store_true", help="leave out the portable INT8 graph (ModelOpt)")
    p.add_argument("--arch", choices=OWL_ARCHES, default=OWL_B16, help="whose vision blocks (tiny: checks the command)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="owlsam-blocks-") as tmp:
        result = measure(args.layers, args.runs, args.threads, not args.no_modelopt, Path(tmp), say, args.arch)
    print(markdown(result))
    if args.json:
        write_json(args.json, with_machine("tools.bench.blocks", result, argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
