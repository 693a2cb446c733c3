"""Export parity: the ONNX graph in ONNX Runtime against the PyTorch module, per output.

Checked in the order Polygraphy's comparator uses: names first, then shapes, then values against
the spec's per-output tolerance. Every dims set is run and every failure collected before raising.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from export.graph_export import GraphExport, candidates_exposed, export_example_dims
from runtime.backends.onnxruntime import OrtGraph
from runtime.errors import UserError
from runtime.graphs import DYNAMIC_DIMS, DimRange, GraphSpec, Tolerance


class ParityError(UserError):
    """An exported graph disagrees with PyTorch beyond its tolerance."""


@dataclass
class OutputParity:
    graph: str
    dims: dict[str, int]
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    tolerance: dict[str, float]
    passed: bool
    problem: str = ""
    flavour: str = "portable"  # or "onnxruntime": the graph ONNX Runtime runs (runtime.manifest.ONNXRUNTIME)


def parity_dim_sets(spec: GraphSpec, ranges: Mapping[str, DimRange] = DYNAMIC_DIMS) -> list[dict[str, int]]:
    """The export's example size plus every dynamic dim at each of its parity sizes (of ``ranges``)."""
    dims = spec.dynamic_dims
    longest = max((len(ranges[d].parity_sizes) for d in dims), default=0)
    sets = [export_example_dims(spec, ranges)]
    for i in range(longest):
        sizes = {d: ranges[d].parity_sizes[min(i, len(ranges[d].parity_sizes) - 1)] for d in dims}
        if sizes not in sets:
            sets.append(sizes)
    return sets


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a64 @ b64 / (na * nb))


def compare_output(graph: str, dims: Mapping[str, int], name: str, ref: np.ndarray, got: np.ndarray | None,
                   tol: Tolerance) -> OutputParity:
    tol_d = asdict(tol)
    if got is None:
        return OutputParity(graph, dict(dims), name, list(ref.shape), np.inf, np.inf, 0.0, tol_d, False, "missing output")
    if got.shape != ref.shape:
        return OutputParity(graph, dict(dims), name, list(got.shape), np.inf, np.inf, 0.0, tol_d, False,
                            f"shape {list(got.shape)} != reference {list(ref.shape)}")
    if not np.all(np.isfinite(got)) and np.all(np.isfinite(ref)):
        return OutputParity(graph, dict(dims), name, list(got.shape), np.inf, np.inf, 0.0, tol_d, False, "non-finite values")
    r, g = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(g - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), 1e-12)).max()) if diff.size else 0.0
    within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(r)))
    cos = cosine(r, g)
    passed = within and cos >= tol.min_cosine
    problem = "" if passed else ("values outside atol + rtol*|ref|" if not within else f"cosine {cos:.6f} < {tol.min_cosine}")
    return OutputParity(graph, dict(dims), name, list(got.shape), max_abs, max_rel, cos, tol_d, passed, problem)


def compare_outputs(spec: GraphSpec, dims: Mapping[str, int], ref: Mapping[str, np.ndarray],
                    got: Mapping[str, np.ndarray]) -> list[OutputParity]:
    """Every output of ``spec`` and, where ``got`` has them (a parity copy), its candidates."""
    view = spec.with_candidates() if any(t.name in got for t in spec.candidates) else spec
    extra = sorted(set(got) - set(view.output_names))
    if extra:
        raise RuntimeError(f"{spec.name} produced outputs the spec does not declare: {extra}")
    return [compare_output(spec.name, dims, t.name, ref[t.name], got.get(t.name), t.tolerance) for t in view.outputs]


@dataclass
class ChoiceFlip:
    """A discrete choice (``runtime.graphs.CHOICES``) that a graph made otherwise than the reference
    for one item (box or object), with the reference's margin and the largest margin accepted."""

    graph: str
    precision: str
    inputs: str
    dims: dict[str, int]
    choice: str
    item: list[int]
    margin: float
    max_margin: float
    accepted: bool
    flavour: str = "portable"  # or "onnxruntime": the graph ONNX Runtime runs (runtime.manifest.ONNXRUNTIME)


def replay_choices(graph: GraphExport, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], list[tuple[str, list[int], float]]]:
    """The graph's choices replayed on the reference: the reference's outputs chosen from its own
    candidates as the graph chose from its candidates (``got``), and the choices that differ, as
    ``(choice, item, reference margin)``; only where the choice shapes the outputs on either side."""
    import torch

    rule = graph.choices
    names = [t.name for t in graph.spec.with_candidates().outputs]
    as_torch = lambda d: {n: torch.from_numpy(np.asarray(d[n], dtype=np.float32)) for n in names if n in d}  # noqa: E731
    ref_t, got_t = as_torch(ref), as_torch(got)
    with torch.inference_mode():
        ref_picks, got_picks = rule.decide(ref_t), rule.decide(got_t)
        margins = rule.margins(ref_t)
        flips = []
        for choice in graph.spec.choices:
            if choice not in ref_picks:  # the checkpoint does not make it (e.g. no stability fallback)
                continue
            differs = (ref_picks[choice] != got_picks[choice]).any(dim=-1)
            shaping = rule.applies(choice, ref_picks) | rule.applies(choice, got_picks)
            for item in torch.nonzero(differs & shaping).tolist():
                flips.append((choice, item, float(margins[choice][tuple(item)])))
        chosen = {n: v.numpy() for n, v in rule.select(ref_t, got_picks).items()}
    return chosen, flips


def parity_runs(graph: GraphExport, seed: int = 0) -> Iterator[tuple[dict[str, int], dict[str, np.ndarray]]]:
    """The parity inputs of ``graph``: each of :func:`parity_dim_sets` with its feeds, drawn with seed
    ``seed + 1 + i`` (the export itself traces with ``seed``); made one at a time, when reached."""
    for i, dims in enumerate(parity_dim_sets(graph.spec, graph.ranges)):
        yield dims, graph.make_inputs(dims, np.random.default_rng(seed + 1 + i))


def check_export_parity(graph: GraphExport, onnx_path: Path, seed: int = 0,
                        flavours: Mapping[str, Path] | None = None) -> list[OutputParity]:
    """Every output, and every candidate of the graph's discrete choices, against PyTorch: of
    ``onnx_path`` (the portable graph) and of each of ``flavours`` (``{flavour: path}``: the same
    graph written for another runtime), run once per dims."""
    paths = {"portable": Path(onnx_path), **(flavours or {})}
    rows: list[OutputParity] = []
    with contextlib.ExitStack() as stack:
        sessions = {}
        for flavour, p in paths.items():
            exposed, view = stack.enter_context(candidates_exposed(p, graph.spec))
            sessions[flavour] = OrtGraph(exposed, view)
        for dims, feeds in parity_runs(graph, seed):
            ref = graph.torch_outputs(feeds)
            for flavour, session in sessions.items():
                flavour_rows = compare_outputs(graph.spec, dims, ref, session.run(feeds))
                for r in flavour_rows:
                    r.flavour = flavour
                rows += flavour_rows
    return rows


def format_table(rows: Iterable[OutputParity]) -> str:
    header = f"{'graph':<22} {'dims':<26} {'output':<22} {'max-abs':>10} {'max-rel':>10} {'cosine':>10} {'tolerance':<26} result"
    lines = [header, "-" * len(header)]
    for r in rows:
        dims = ",".join(f"{k}={v}" for k, v in r.dims.items()) or "-"
        tol = f"atol={r.tolerance['atol']:g} rtol={r.tolerance['rtol']:g}"
        verdict = "PASSED" if r.passed else f"FAILED ({r.problem})"
        graph = r.graph if r.flavour == "portable" else f"{r.graph} ({r.flavour})"
        lines.append(f"{graph:<22} {dims:<26} {r.output:<22} {r.max_abs:>10.3g} {r.max_rel:>10.3g} {r.cosine:>10.6f} {tol:<26} {verdict}")
    return "\n".join(lines)


def failures(rows: Iterable[OutputParity]) -> list[OutputParity]:
    return [r for r in rows if not r.passed]
