"""Fixtures of the tools' tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_artifact):
    """``Pipeline.load(tiny_artifact, backend="onnxruntime")``, open for the session: the reference the
    serving tests compare the server's answers with."""
    from runtime import Pipeline

    with Pipeline.load(tiny_artifact, backend="onnxruntime") as p:
        yield p
