"""The TensorRT/cuda-bindings API check (tools.trt_api_check): the project's calls type-check against
the real bindings of every supported version, and a misspelt attribute, a method TensorRT removed
and a wrong argument count each fail it. Downloads the binding wheels from PyPI once (cached)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.trt_api_check import CHECKED, PAIRS, check, default_cache

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mypy", reason="mypy is in the dev extra")
pytest.importorskip("pybind11_stubgen", reason="pybind11-stubgen is in the dev extra")

# (file, exact text, replacement, what mypy must say about the replaced line)
MUTATIONS = [
    ("runtime/backends/tensorrt.py", "range(engine.num_io_tensors)", "range(engine.num_io_tensor)",
     '"ICudaEngine" has no attribute "num_io_tensor"'),
    ("runtime/backends/tensorrt.py", "if not self.context.execute_async_v3(self.stream.ptr):",
     "if not self.context.execute_async_v2([], self.stream.ptr):",
     '"IExecutionContext" has no attribute "execute_async_v2"'),
    ("runtime/backends/tensorrt.py", "if not self.context.set_input_shape(name, shape):",
     "if not self.context.set_input_shape(name):", 'No overload variant of "set_input_shape"'),
    ("runtime/backends/cudart.py", "cudart.cudaEventDisableTiming | cudart.cudaEventBlockingSync",
     "cudart.cudaEventDisableTiming | cudart.cudaEventBlockingSynch", 'has no attribute "cudaEventBlockingSynch"'),
    ("runtime/backends/cudart.py", "cudart.cudaMemcpyAsync(dst, src, nbytes, _KINDS[kind], stream)",
     "cudart.cudaMemcpyAsync(dst, src, nbytes, _KINDS[kind])", 'Missing positional argument "stream"'),
    ("export/engine.py", "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)",
     "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)", 'Missing positional argument "pool_size"'),
]


@pytest.fixture(scope="module")
def cache() -> Path:
    return default_cache()


@pytest.mark.slow
def test_every_call_exists_in_every_supported_version(cache):
    results = check(ROOT, cache)
    assert list(results) == [f"TensorRT {trt[1]} + cuda-bindings {cuda}" for trt, cuda in PAIRS]
    assert results == {label: [] for label in results}, results


@pytest.mark.slow
def test_injected_api_mistakes_fail_the_check(cache, tmp_path):
    root = tmp_path / "repo"
    for package in ("runtime", "export"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    where = []
    for file, old, new, _ in MUTATIONS:  # one-line replacements: line numbers stay as they were
        path = root / file
        text = path.read_text()
        assert text.count(old) == 1, f"{file}: {old!r} should occur once (the test follows the code)"
        where.append(f"{file}:{text[: text.index(old)].count(chr(10)) + 1}:")
        path.write_text(text.replace(old, new))
    assert {m[0] for m in MUTATIONS} <= set(CHECKED)
    for label, errors in check(root, cache).items():
        for (_, _, _, message), at in zip(MUTATIONS, where, strict=True):
            assert any(e.startswith(at) and message in e for e in errors), (label, at, message, errors)
        assert len(errors) == len(MUTATIONS), (label, errors)
