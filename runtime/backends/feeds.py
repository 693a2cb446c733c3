"""The check every backend makes before it runs a graph: the feeds are exactly the spec's inputs."""

from __future__ import annotations

from typing import Any, Mapping

from runtime.graphs import GraphSpec


def check_feeds(spec: GraphSpec, feeds: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the missing and unexpected inputs when ``feeds`` are not
    exactly the inputs of ``spec`` (every backend's ``run``/``enqueue`` checks this first)."""
    names = spec.input_names
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        raise ValueError(f"{spec.name}: missing inputs {missing}, unexpected inputs {extra}")
