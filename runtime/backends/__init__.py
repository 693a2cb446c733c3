"""Inference backends. Each runs one graph of :mod:`runtime.graphs` by its spec's binding names."""

from __future__ import annotations

import logging

from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from runtime.backends.feeds import check_feeds
from runtime.graphs import GraphSpec
from runtime.manifest import FLAVOURS, ONNXRUNTIME, Manifest


__all__ = ["GraphRunner", "check_feeds", "close_graphs", "recording_opener", "onnxruntime_opener", "run_or_queue"]


class GraphRunner(Protocol):
    """What every backend gives per graph: run by binding name, outputs in the spec's order."""

    spec: GraphSpec

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def call_all(steps: Iterable[Callable[[], object]], raise_first: bool = True) -> list[BaseException]:
    """Call every step even when some fail (teardown frees all it can); raise the first failure
    after the last step (or, with ``raise_first=False``, return the failures)."""
    errors: list[BaseException] = []
    for step in steps:
        try:
            step()
        except BaseException as e:
            errors.append(e)
    if errors and raise_first:
        raise errors[0]
    return errors


def close_after(close: Callable[[], object], exc: BaseException | None) -> None:
    """``close()`` in ``__exit__``: when an exception is already on its way out, a failure to close
    (often the same device fault) is logged instead of replacing it."""
    if exc is None:
        close()
        return
    for error in call_all([close], raise_first=False):
        logging.getLogger(__name__).warning("closing after %s also failed: %s", type(exc).__name__,
                                            " ".join(str(error).split()))


def close_graphs(graphs: Iterable[Any]) -> None:
    """Close each graph that has ``close`` (TensorRT graphs; ONNX Runtime graphs have none), once
    each even if listed twice; all are closed before the first error is raised again."""
    closers: dict[int, Callable[[], object]] = {}
    for graph in graphs:
        close = getattr(graph, "close", None)
        if close is not None:
            closers.setdefault(id(graph), close)
    call_all(closers.values())


def recording_opener(open_graph: Callable[[GraphSpec], Any], opened: list) -> Callable[[GraphSpec], Any]:
    """``open_graph`` that also appends every graph it opens to ``opened``, for whoever owns
    them to close them (:func:`close_graphs`), also when opening fails part-way."""

    def open_and_record(spec: GraphSpec) -> Any:
        graph = open_graph(spec)
        opened.append(graph)
        return graph

    return open_and_record


def onnxruntime_opener(
    manifest: Manifest,
    precision: str = "fp32",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int | None = None,
    flavour: str = ONNXRUNTIME,
) -> Callable[[GraphSpec], "OrtGraph"]:  # noqa: F821 - imported lazily
    """A function that opens a graph of ``manifest`` in ONNX Runtime, its files verified first
    (a file the manifest has already verified, unchanged since, is not hashed again).

    ``flavour="onnxruntime"`` (the default) opens what :meth:`Manifest.onnxruntime_graph_path`
    names: the graphs written for ONNX Runtime where the export wrote them. ``"portable"`` opens the
    portable graphs TensorRT builds from; their INT8 graphs run with Q/DQ fusion off, fake-quantised
    in float, to check TensorRT's numerics on a CPU."""
    from runtime.backends.onnxruntime import OrtGraph

    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r} is not one of {FLAVOURS}")
    portable = flavour != ONNXRUNTIME

    def open_graph(spec: GraphSpec) -> OrtGraph:
        at = spec.runs_at(precision)
        path = (manifest.graph_path if portable else manifest.onnxruntime_graph_path)(spec.name, at)
        return OrtGraph(path, spec, providers=providers, intra_op_threads=intra_op_threads,
                        disable_qdq_fusion=portable and at == "int8")

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
