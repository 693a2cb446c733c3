"""tools.serve's --max-batch: the default per backend and artifact, the reason logged, the warning for an
explicit value above the safe one (unit), and both in the log of a written repository (no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.graphs import BATCH
from runtime.manifest import Manifest
from tools.serve.batching import MEASURE, choose_max_batch

# manifests' batch profiles: none at all, no batch entry, and maxima 1, 2, 4, 8 (with the maximum expected)
MANIFESTS = [({}, 1), ({"profiles": {}}, 1),
             *(({"profiles": {"batch": {"min": 1, "opt": 1, "max": m}}}, m) for m in (1, 2, 4, 8))]


@pytest.mark.parametrize("data,profile", MANIFESTS, ids=["no-profiles", "no-batch", "1", "2", "4", "8"])
def test_defaults_follow_the_backend_and_the_artifacts_profile(data, profile):
    assert Manifest(Path("a"), data).profile_max(BATCH, 1) == profile
    trt = choose_max_batch("tensorrt", profile)
    assert trt.value == profile and not trt.warning
    assert trt.reason.startswith("default for tensorrt: the engines' batch profile maximum")
    for backend in ("onnxruntime", "auto"):
        cpu = choose_max_batch(backend, profile)
        assert cpu.value == 1 and not cpu.warning
        assert cpu.reason.startswith(f"default for {backend}:")
        assert "on the CPU, where a batch adds each image's activations to memory" in cpu.reason
        assert MEASURE in cpu.reason and ((f"--backend tensorrt takes the engines' maximum ({profile})" in cpu.reason)
                                          == (backend == "auto"))


@pytest.mark.parametrize("profile", [1, 2, 4, 8])
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime", "auto"])
def test_an_explicit_value_is_kept_and_warned_about_above_the_safe_one(backend, profile):
    safe = choose_max_batch(backend, profile).value
    for n in range(1, 2 * profile + 2):
        got = choose_max_batch(backend, profile, n)
        assert got.value == n
        assert got.reason.startswith("--max-batch")
        assert ("in chunks of" in got.reason) == (n > profile)
        held = min(n, profile)  # the pipeline runs a batch in chunks of the profile's maximum
        # TensorRT: any value (the engines hold the profile's maximum); ONNX Runtime: one image at a time
        if backend == "tensorrt" or held <= safe:
            assert not got.warning, (backend, profile, n)
            continue
        w = got.warning
        assert "\n" not in w and w.startswith(f"--max-batch {n} with ")
        assert (f"up to {held} images through the image encoders at once on the CPU, {held}x the activation "
                "memory of one") in w
        assert "leave --max-batch out (default 1)" in w and MEASURE in w


@pytest.mark.parametrize("extra,want,warned", [((), 1, False), (("--max-batch", "1"), 1, False),
                                              (("--max-batch", "3"), 3, True)], ids=["default", "one", "three"])
def test_written_repository_logs_the_choice(tiny_artifact, run_module, tmp_path, extra, want, warned):
    out = tmp_path / "repo"
    r = run_module("tools.serve", "--engines", tiny_artifact, "--write-model-repository", out, "--backend",
                   "onnxruntime", *extra)
    configs = [p.read_text() for p in out.glob("*/config.pbtxt")]
    assert len(configs) == 2 and all(f"\nmax_batch_size: {want}\n" in c for c in configs)
    lines = r.stderr.splitlines()
    chosen = [line for line in lines if line.startswith("INFO tools.serve: max batch")]
    reason = "default for onnxruntime: " if not extra else "--max-batch"
    assert len(chosen) == 1 and chosen[0].startswith(f"INFO tools.serve: max batch {want}: {reason}")
    warnings = [line for line in lines if line.startswith("WARNING tools.serve:")]
    assert len(warnings) == warned
    if warned:
        assert re.match(rf"WARNING tools\.serve: --max-batch {want} with onnxruntime: .*{re.escape(MEASURE)}",
                        warnings[0])
