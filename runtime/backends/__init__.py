"""Inference backends. Each runs one graph of :mod:`runtime.graphs` by its spec's binding names."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from runtime.graphs import GraphSpec
from runtime.manifest import Manifest


class GraphRunner(Protocol):
    """What every backend gives per graph: run by binding name, outputs in the spec's order."""

    spec: GraphSpec

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def onnxruntime_opener(
    manifest: Manifest,
    precision: str = "fp32",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int | None = None,
    verify: bool = True,
) -> Callable[[GraphSpec], "OrtGraph"]:  # noqa: F821 - imported lazily
    """A function that opens a graph of ``manifest`` in ONNX Runtime, its files verified first
    (``verify=False`` when the caller has just verified them, as ``Pipeline.load`` does)."""
    from runtime.backends.onnxruntime import OrtGraph

    def open_graph(spec: GraphSpec) -> OrtGraph:
        path = manifest.graph_path(spec.name, precision, verify=verify)
        return OrtGraph(path, spec, providers=providers, intra_op_threads=intra_op_threads,
                        disable_qdq_fusion=precision == "int8")

    return open_graph


def run_or_queue(graph: GraphRunner, feeds: Mapping[str, Any], stream: Any = None, host_outputs: Sequence[str] = (),
                 wait: bool = False) -> Mapping[str, Any]:
    """``graph.run(feeds)``; or, given a CUDA ``stream`` (TensorRT graphs), the call queued on it and
    its outputs as ``Pending.as_mapping()`` gives them: ``host_outputs`` come to the host when read,
    the others stay on the device for the next graph. ``wait`` blocks until the call is done."""
    if stream is None:
        return graph.run(feeds)
    queued = graph.enqueue(feeds, stream, host_outputs=host_outputs)
    if wait:
        queued.event.synchronize()
    return queued.as_mapping()
