"""A Triton model repository for an artifact: ``<model>/config.pbtxt`` and ``<model>/1/model.py`` for
each model of ``tools.serve.interface``, the Python backend running ``tools.serve.model`` on the runtime.

The same repository serves ``python -m tools.serve`` (written to a temporary folder) and the official
``tritonserver`` container (``--write-model-repository OUT``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import UserError
from tools.serve.interface import MODELS, ModelSpec, WireTensor

MODEL_PY = '''\
# Written by python -m tools.serve (owlsam-trt). Triton's Python backend loads TritonPythonModel from
# here; the model itself is tools/serve/model.py of the installed owlsam-trt package.
from tools.serve.model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    engines: Path  # written as given: absolute, or relative to the repository's root
    max_batch: int  # requests per batch (Triton's max_batch_size); tools.serve.batching chooses the default
    backend: str = "auto"
    precision: str = "fp32"
    max_queue_delay_us: int = 1000  # how long a request waits for others to join its batch
    instances: int = 1  # model instances (processes, each with its own Pipeline) per model
    max_pixels: int = 0  # per request image; 0: no limit
    threads: int = 0  # ONNX Runtime intra-op threads per instance; 0: ONNX Runtime's default


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(t: WireTensor) -> str:
    extra = (" optional: true" if t.optional else "") + (" allow_ragged_batch: true" if t.ragged else "")
    dims = ", ".join(str(d) for d in t.dims)
    return f"  {{ name: {_quote(t.name)} data_type: {t.config_type} dims: [ {dims} ]{extra} }}"


def model_config(spec: ModelSpec, options: RepositoryOptions) -> str:
    """config.pbtxt of one model (protobuf text format)."""
    params = {"task": spec.task, "engines": str(options.engines), "backend": options.backend,
              "precision": options.precision, "max_pixels": str(options.max_pixels), "threads": str(options.threads)}
    lines = [
        f"# Written by python -m tools.serve (owlsam-trt); the wire interface is in its README.",
        f"name: {_quote(spec.name)}",
        'backend: "python"',
        f"max_batch_size: {options.max_batch}",
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}",
        "input [\n" + ",\n".join(_tensor(t) for t in spec.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in spec.outputs) + "\n]",
        f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]",
    ]
    lines += [f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_repository(out: Path, options: RepositoryOptions, models: tuple[ModelSpec, ...] = MODELS) -> Path:
    """Write the repository into ``out`` (which must not exist, or be an empty folder), complete or not at all."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose a new folder for the model repository")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as e:
        raise UserError(f"cannot create {out} ({e.strerror or e}); choose a writable folder") from None
    try:
        for spec in models:
            (tmp / spec.name / "1").mkdir(parents=True)
            (tmp / spec.name / "config.pbtxt").write_text(model_config(spec, options), encoding="utf-8")
            (tmp / spec.name / "1" / "model.py").write_text(MODEL_PY, encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from a container running as another user
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
