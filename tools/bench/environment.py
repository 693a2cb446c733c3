"""What a measurement ran on, recorded in every result file: the CPU (its model and the SIMD features
that decide which kernels run: a VM reports every AMD EPYC as "AMD EPYC", while a Zen 4 and a Zen 5
differ twofold in FP32 throughput), the core count and load, and the versions of the packages
that write and run the graphs (``constraints.txt`` pins them)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

#: Packages whose versions change the graphs or their speed.
PACKAGES = ("owlsam-trt", "torch", "torchvision", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime",
            "nvidia-modelopt", "numpy")
#: CPU features that decide ONNX Runtime's (MLAS) and PyTorch's (oneDNN/MKL) kernels.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, vendor, family/model/stepping and the :data:`CPU_FEATURES` of the first processor."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {"model": platform.processor() or None}
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name"),
        "vendor": fields.get("vendor_id"),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model"),
        "stepping": fields.get("stepping"),
        "features": [f for f in CPU_FEATURES if f in flags],
    }


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def environment() -> dict[str, Any]:
    """Python, platform, CPU, cores, 1-minute load average (at the call) and package versions."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "cpu": cpu_info(), "packages": package_versions()}
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def describe(env: dict[str, Any]) -> str:
    """One line for a report: CPU, features, cores, load and the versions that matter."""
    cpu = env.get("cpu") or {}
    ident = "/".join(str(cpu.get(k)) for k in ("family", "model_number", "stepping") if cpu.get(k) is not None)
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if k != "owlsam-trt")
    load = env.get("load_average_1min")
    return (f"{cpu.get('model')} (family/model/stepping {ident or '?'}; {' '.join(cpu.get('features') or []) or 'no AVX2'}), "
            f"{env.get('cpu_count')} CPUs" + (f", 1-min load average {load:.2f}" if load is not None else "")
            + f"; Python {env.get('python')}, {versions}")


def with_environment(results: Any) -> dict[str, Any]:
    """A result file's content: the command line, the :func:`environment` and the ``results``."""
    import shlex
    import sys

    spec = getattr(sys.modules["__main__"], "__spec__", None)
    command = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return {"command": shlex.join(command + sys.argv[1:]), "environment": environment(), "results": results}
