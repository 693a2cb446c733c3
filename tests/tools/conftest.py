"""Fixtures of the tools' tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_artifact):
    """``Pipeline.load(tiny_artifact, backend="onnxruntime")``, open for the session: the reference the
    serving tests compare the server's answers with."""
    from runtime import Pipeline

    with Pipeline.load(tiny_artifact, backend="onnxruntime") as p:
        yield p


@pytest.fixture(scope="session")
def serve_extra() -> None:
    """Skips without the serve extra (nvidia-pytriton, tritonclient), except in CI (``CI`` set), which
    installs it: there the serving tests must run, and fail instead."""
    try:
        import pytriton  # noqa: F401
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the serving tests, but the serve extra is missing ({e})")
        pytest.skip(f"needs the serve extra ({e}): pip install -e '.[serve]'")
