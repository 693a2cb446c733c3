"""Graphs perturbed by a stated amount, for the negative tests of the parity gates.

``perturb_outputs`` rewrites chosen outputs (or inner tensors, such as a decoder's candidates) of an ONNX graph as ``y * (scale + wobble * sin(1000 y)) + offset``:
``scale`` is a relative error that leaves the cosine at 1, ``offset`` an absolute one, and ``wobble`` a
multiplicative noise nearly uncorrelated with ``y`` that brings the cosine of a large output down to about
``1 / sqrt(1 + wobble**2 / 2)`` (0.9975 for 0.1, 0.94 for 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper


def perturb_outputs(src: Path, dst: Path, outputs: Iterable[str], *, scale: float = 1.0, offset: float = 0.0,
                    wobble: float = 0.0, negate: bool = False) -> Path:
    """``negate=True``: boolean outputs (decisions) replaced by their negation instead."""
    model = onnx.load(str(src))
    graph = model.graph
    for name in outputs:
        assert name in {o for node in graph.node for o in node.output}, name  # an output or a candidate
        raw = f"{name}__unperturbed"
        for node in graph.node:  # the producer and any consumer now use the raw tensor
            node.output[:] = [raw if o == name else o for o in node.output]
            node.input[:] = [raw if i == name else i for i in node.input]

        def const(tag: str, value: float) -> str:
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), f"{name}__{tag}"))
            return f"{name}__{tag}"

        t = lambda tag: f"{name}__{tag}"  # noqa: E731
        if negate:
            graph.node.append(helper.make_node("Not", [raw], [name]))
            continue
        graph.node.extend([
            helper.make_node("Mul", [raw, const("freq", 1000.0)], [t("phase")]),
            helper.make_node("Sin", [t("phase")], [t("sin")]),
            helper.make_node("Mul", [t("sin"), const("wobble", wobble)], [t("noise")]),
            helper.make_node("Add", [t("noise"), const("scale", scale)], [t("factor")]),
            helper.make_node("Mul", [raw, t("factor")], [t("scaled")]),
            helper.make_node("Add", [t("scaled"), const("offset", offset)], [name]),
        ])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst))
    return Path(dst)
