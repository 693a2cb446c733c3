"""What every exported graph provides, and the generic step that writes it to ONNX.

A family module (``export.owl``, ``export.sam2``) turns a loaded reference model into
:class:`GraphExport` values: the spec, a torch module whose ``forward`` takes the spec's inputs in
order and returns its outputs in order, and a generator of realistic example inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import torch

from export import first_line
from runtime.graphs import DYNAMIC_DIMS, DimRange, GraphSpec

log = logging.getLogger(__name__)

OPSET = 18
# Above this many bytes of weights the graph is written with external data (protobuf caps a
# single file at 2 GB; a separate file also keeps the graph itself quick to inspect).
EXTERNAL_DATA_BYTES = 100 * 1024 * 1024

InputMaker = Callable[[Mapping[str, int], np.random.Generator], dict[str, np.ndarray]]


@dataclass
class GraphExport:
    spec: GraphSpec
    module: torch.nn.Module
    make_inputs: InputMaker  # concrete dynamic dims -> {input name: array}

    def torch_outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        return {n: o.detach().cpu().numpy() for n, o in zip(self.spec.output_names, outs, strict=True)}


def export_example_dims(spec: GraphSpec, ranges: Mapping[str, DimRange] = DYNAMIC_DIMS) -> dict[str, int]:
    """Sizes the export traces at: never 1, since torch.export specialises dims of size 0 and 1."""
    return {d: max(2, min(ranges[d].opt, ranges[d].max)) for d in spec.dynamic_dims}


def onnx_files(path: Path) -> list[Path]:
    """``path`` and its external data file, if it has one."""
    data = path.with_name(path.name + ".data")
    return [path] + ([data] if data.exists() else [])


def export_to_onnx(graph: GraphExport, path: Path, seed: int = 0) -> list[Path]:
    """Write ``graph`` to ``path`` with the dynamo exporter; return the files written."""
    spec = graph.spec
    module = graph.module.eval()  # the wrapper itself: the exporter restores its training flag
    dims = export_example_dims(spec)
    feeds = graph.make_inputs(dims, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names)
    torch_dims = {d: torch.export.Dim(d, min=1) for d in spec.dynamic_dims}
    dynamic_shapes = tuple(
        {axis: torch_dims[d] for axis, d in t.dynamic_axes.items()} or None for t in spec.inputs
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    t0 = time.perf_counter()
    try:
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    except Exception as e:  # the exporter's own errors are long; keep the first line, re-raise as ours
        raise RuntimeError(f"exporting {spec.name} failed: {first_line(e)}") from e
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(path), full_check=True)
    check_signature(spec, path)
    log.info("exported %s in %.1f s", spec.name, time.perf_counter() - t0)
    return onnx_files(path)


_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32}


def check_signature(spec: GraphSpec, path: Path) -> None:
    """The written graph's bindings are the spec's: names, order, dtypes and dynamic axes."""
    model = onnx.load(str(path), load_external_data=False)
    problems = []
    for kind, declared, actual in (("input", spec.inputs, model.graph.input), ("output", spec.outputs, model.graph.output)):
        names = [v.name for v in actual]
        if names != [t.name for t in declared]:
            problems.append(f"{kind}s {names} != spec {[t.name for t in declared]}")
            continue
        for t, v in zip(declared, actual):
            if v.type.tensor_type.elem_type != _ONNX_TYPES[t.dtype]:
                problems.append(f"{kind} {t.name} has ONNX type {v.type.tensor_type.elem_type}, spec {t.dtype}")
            shape = v.type.tensor_type.shape.dim
            if len(shape) != len(t.shape):
                problems.append(f"{kind} {t.name} has rank {len(shape)}, spec {len(t.shape)}")
                continue
            for axis in t.dynamic_axes:
                if shape[axis].HasField("dim_value"):
                    problems.append(f"{kind} {t.name} axis {axis} is static ({shape[axis].dim_value}), spec says dynamic")
    if problems:
        raise RuntimeError(f"{path.name} does not match the spec of {spec.name}: " + "; ".join(problems))
