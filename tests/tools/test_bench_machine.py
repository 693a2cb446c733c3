"""tools.bench.common's machine record: what every result file records about the CPU and the packages."""

from __future__ import annotations

import importlib.metadata

from tools.bench.common import PACKAGES, cpu_info, describe_machine, machine_info, with_machine

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512vbmi

processor\t: 1
model name\t: another CPU
flags\t\t: fpu
"""


def test_cpu_model_and_the_features_that_pick_kernels(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    cpu = cpu_info(str(path))
    assert cpu == {"model": "AMD EPYC", "vendor": "AuthenticAMD", "family": "25", "model_number": "17", "stepping": "1",
                   "features": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]}


def test_the_machine_record_has_the_installed_versions():
    env = machine_info()
    for pkg in ("onnx", "onnxscript", "onnx-ir", "onnxruntime", "torch", "transformers"):
        assert pkg in PACKAGES and env["packages"][pkg] == importlib.metadata.version(pkg)
    line = describe_machine(env)
    assert f"onnxruntime {env['packages']['onnxruntime']}" in line and f"{env['cpu_count']} CPUs" in line


def test_a_result_file_records_its_command_and_machine():
    record = with_machine("tools.bench.blocks", {"ms": 1.0}, ["--layers", "2"])
    assert record["command"].endswith("-m tools.bench.blocks --layers 2") and record["results"] == {"ms": 1.0}
    assert record["machine"]["cpu"]["model"] and record["machine"]["packages"]["onnxruntime"]
