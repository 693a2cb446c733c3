"""What every exported graph provides, and the generic step that writes it to ONNX.

A family module (``export.owl``, ``export.sam2``) turns a loaded reference model into
:class:`GraphExport` values: the spec, a torch module whose ``forward`` takes the spec's inputs in
order and returns its outputs in order, and a generator of realistic example inputs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

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


class DiscreteChoices(Protocol):
    """The discrete choices of a graph (``GraphSpec.choices``), in two steps its module's ``forward``
    itself takes, so that parity can replay them: ``decide`` from the candidates and ``select`` the
    outputs. ``values`` map the spec's candidate and output names to tensors (numpy for parity)."""

    def decide(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per choice, booleans ``[*items, k]``: what the graph picks for each item (box, object)."""

    def select(self, values: Mapping[str, torch.Tensor], picks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs that depend on the choices, from the candidates and ``picks``."""

    def margins(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per choice, ``[*items]``: how far each item is from the other decision (``runtime.graphs.CHOICES``)."""

    def applies(self, choice: str, picks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[*items]`` booleans: where ``choice`` shapes the outputs under ``picks``."""


@dataclass
class GraphExport:
    spec: GraphSpec
    module: torch.nn.Module  # forward: the spec's inputs -> its outputs, then its candidates
    make_inputs: InputMaker  # concrete dynamic dims -> {input name: array}
    # the dynamic dims' ranges this checkpoint allows (e.g. num_memories up to its num_maskmem)
    ranges: Mapping[str, DimRange] = field(default_factory=lambda: dict(DYNAMIC_DIMS))

    @property
    def choices(self) -> DiscreteChoices | None:
        return self.module if self.spec.choices else None  # type: ignore[return-value]

    def torch_outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The module's outputs, candidates included, by name."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        names = self.spec.with_candidates().output_names
        return {n: o.detach().cpu().numpy() for n, o in zip(names, outs, strict=True)}


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
    dims = export_example_dims(spec, graph.ranges)
    feeds = graph.make_inputs(dims, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names)
    written = spec.with_candidates()  # the candidates become plain tensors of the graph below
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
            input_names=written.input_names,
            output_names=written.output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    except Exception as e:  # the exporter's own errors are long; keep the first line, re-raise as ours
        raise RuntimeError(f"exporting {spec.name} failed: {first_line(e)}") from e
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    if spec.candidates:
        _drop_outputs(path, [t.name for t in spec.candidates])
    onnx.checker.check_model(str(path), full_check=True)
    check_signature(spec, path)
    log.info("exported %s in %.1f s", spec.name, time.perf_counter() - t0)
    return onnx_files(path)


def _drop_outputs(path: Path, names: list[str]) -> None:
    """Make ``names`` plain tensors of the graph at ``path``: no longer outputs, still named (the
    nodes computing them stay, as the graph's choices consume them)."""
    model = onnx.load(str(path), load_external_data=False)
    keep = [o for o in model.graph.output if o.name not in names]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save_model(model, str(path))


@contextlib.contextmanager
def candidates_exposed(path: Path, spec: GraphSpec) -> Iterator[tuple[Path, GraphSpec]]:
    """A copy of the graph at ``path`` (beside it: it shares the external data) whose outputs are
    ``spec.with_candidates()``'s, and that spec; removed on exit. Without candidates: ``path`` itself."""
    if not spec.candidates:
        yield Path(path), spec
        return
    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    produced = {o for node in model.graph.node for o in node.output}
    for t in spec.candidates:
        if t.name not in produced:
            raise RuntimeError(f"{Path(path).name} has no tensor {t.name!r}: the graph lost the candidates of its "
                               "discrete choices (a precision step renamed them?); its parity cannot be judged")
        model.graph.output.append(onnx.helper.make_tensor_value_info(t.name, types.get(t.name, onnx.TensorProto.FLOAT), None))
    copy = Path(path).with_name(f".candidates-{os.getpid()}-{Path(path).name}")
    onnx.save_model(model, str(copy))
    try:
        yield copy, spec.with_candidates()
    finally:
        copy.unlink(missing_ok=True)


_ONNX_TYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32,
               "uint8": onnx.TensorProto.UINT8, "bool": onnx.TensorProto.BOOL}


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
