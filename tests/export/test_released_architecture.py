"""A released SAM2 architecture through the FP32 export and TensorRT's parser check: SAM2.1-hiera-tiny
at 1024 px (random weights, ``tools.bench.common.random_sam``), its ``sam2_image`` and ``sam2_decoder``.

The tiny checkpoints cannot show what only the real sizes do: the exporter folds a small positional
embedding into a constant, but left Hiera's 7x7 -> 256x256 bicubic interpolation in the released
architecture's ``sam2_image`` as a cubic Resize, which TensorRT's parser has not (``export.sam2.Sam2Image``
now adds the embedding as a constant). The export and an ONNX Runtime run at batch 1 happen in a
spawned child process, so that their memory (about 3.5 GB at its peak) is returned when it ends.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def export_and_check(out: str) -> dict:
    """In the child: export both graphs of random hiera-tiny, their TensorRT findings, their cubic
    Resize nodes, and their parity with PyTorch at batch 1 (every output and candidate)."""
    import numpy as np
    import onnx
    import torch

    from export.graph_export import candidates_exposed, export_to_onnx
    from export.parity import compare_outputs
    from export.sam2 import sam2_graph_exports, sam2_sizes
    from export.trt_check import check_graph, errors
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import BATCH, NUM_BOXES, SAM2_DECODER, SAM2_IMAGE
    from tools.bench.common import random_sam

    torch.set_num_threads(2)
    sam = random_sam("hiera-tiny", seed=0)
    sizes = sam2_sizes(sam)
    graphs = {g.spec.name: g for g in sam2_graph_exports(sam, sizes)}
    result = {"sizes": sizes}
    for spec in (SAM2_IMAGE, SAM2_DECODER):
        graph = graphs[spec.name]
        path = export_to_onnx(graph, Path(out) / f"{spec.name}.onnx")[0]
        model = onnx.load(str(path), load_external_data=False)
        cubic = [n.name for n in model.graph.node if n.op_type == "Resize"
                 and any(a.name == "mode" and a.s == b"cubic" for a in n.attribute)]
        dims = {d: {BATCH: 1, NUM_BOXES: 3}[d] for d in spec.dynamic_dims}
        feeds = graph.make_inputs(dims, np.random.default_rng(1))
        with candidates_exposed(path, spec) as (exposed, view):
            got = OrtGraph(exposed, view, intra_op_threads=2).run(feeds)
        rows = compare_outputs(spec, dims, graph.torch_outputs(feeds), got)
        result[spec.name] = {"errors": [str(f) for f in errors(check_graph(path))], "cubic_resize": cubic,
                             "parity": {r.output: (r.passed, r.max_abs, r.cosine) for r in rows}}
    return result


def test_released_sam2_architecture_exports_through_the_tensorrt_parser_check(tmp_path):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(export_and_check, (str(tmp_path),))
    assert result["sizes"]["sam_image_size"] == 1024 and result["sizes"]["sam_mask_size"] == 256
    for name in ("sam2_image", "sam2_decoder"):
        got = result[name]
        assert got["cubic_resize"] == [], f"{name}: a cubic Resize is left: {got['cubic_resize']}"
        assert got["errors"] == [], got["errors"]
        failed = {out: p for out, p in got["parity"].items() if not p[0]}
        assert not failed, failed
    assert set(result["sam2_decoder"]["parity"]) >= {"mask_logits", "candidate_mask_logits"}
