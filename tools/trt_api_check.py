"""Check every TensorRT and cuda-bindings call of the project against the real Python bindings of
each supported version, without TensorRT, CUDA or a GPU (CI runs it: tests/tools/test_trt_api_check.py).

    python -m tools.trt_api_check [--root DIR] [--cache DIR]

Per version: ``pip download`` the binding wheel from PyPI; build do-nothing stand-ins (gcc) for the
native libraries the TensorRT binding links, so that the real module imports; write stubs from it
(pybind11-stubgen for TensorRT; for ``cuda.bindings.runtime``, whose Cython docstrings
pybind11-stubgen cannot read, :func:`cuda_stub` below); then mypy checks the modules that call
them (``CHECKED``), where the TensorRT and CUDA objects are typed. Wheels and stubs are cached
per version; nothing of NVIDIA's is kept in the repository.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The versions the project supports, checked in pairs (TensorRT binding wheel, cuda-bindings): the
# oldest and newest of TensorRT 10 (CUDA 12) and 11 (CUDA 13), with the oldest and newest
# cuda-bindings of each CUDA major that the `trt` extra admits (cuda-python >= 12.9).
PAIRS = (
    (("tensorrt-cu12-bindings", "10.0.1"), "12.9.0"),
    (("tensorrt-cu12-bindings", "10.16.1.11"), "12.9.10"),
    (("tensorrt-cu13-bindings", "11.0.0.114"), "13.0.0"),
    (("tensorrt-cu13-bindings", "11.4.0.106"), "13.5.0"),
)
CUDA_PATHFINDER = "1.9.1"  # cuda.bindings 13 imports it
CHECKED = ("runtime/backends/tensorrt.py", "runtime/backends/cudart.py", "export/engine.py")
# Libraries the TensorRT binding links, and the symbols each stand-in defines (returning NULL).
STANDIN_SYMBOLS = {
    "libnvinfer.so": r"^(createInfer|getInferLibVersion)",
    "libnvonnxparser.so": r"^(createNvOnnx|getNvOnnx)",
    "libnvinfer_plugin.so": r"^(getBuilderPluginRegistry|getPluginRegistry|initLibNvInferPlugins)",
}
MYPY_FLAGS = ("--check-untyped-defs", "--follow-imports=silent", "--ignore-missing-imports", "--no-error-summary",
              "--show-error-codes", "--no-color-output", "--hide-error-context")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "owlsam-trt" / "trt-api-check"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return r


_LOCKS: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def wheel(package: str, version: str, cache: Path) -> Path:
    """The unpacked wheel of ``package==version`` for this interpreter (downloaded once)."""
    with _LOCKS[f"{package}=={version}"]:  # cuda-pathfinder serves several jobs at once
        return _wheel(package, version, cache)


def _wheel(package: str, version: str, cache: Path) -> Path:
    site = cache / "site" / f"{package}-{version}"
    if (site / ".complete").exists():
        return site
    dl = cache / "wheels"
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py,
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
         "manylinux2014_x86_64", "--platform", "manylinux_2_24_x86_64", "-d", str(dl), f"{package}=={version}"])
    name = package.replace("-", "_")
    found = [w for w in dl.glob(f"{name}-{version}-*.whl") if f"cp{py}" in w.name or "py3-none" in w.name or "none" in w.name]
    if not found:
        raise RuntimeError(f"pip downloaded no wheel of {package}=={version} for Python {py} into {dl}")
    with zipfile.ZipFile(found[0]) as z:
        z.extractall(site)
    (site / ".complete").touch()
    return site


def standins(site: Path, out: Path) -> Path:
    """Do-nothing ``libnv*.so.N`` for every TensorRT library the binding module links."""
    so = site / "tensorrt_bindings" / "tensorrt.so"
    out.mkdir(parents=True, exist_ok=True)
    needed = re.findall(r"NEEDED.*\[(libnv[^\]]+)\]", run(["readelf", "-d", str(so)]).stdout)
    undefined = [ln.split()[-1] for ln in run(["nm", "-D", "--undefined-only", str(so)]).stdout.splitlines()
                 if ln.split()[:1] == ["U"] and "@" not in ln]
    for lib in needed:
        pattern = STANDIN_SYMBOLS.get(lib.split(".so")[0] + ".so")
        if pattern is None:
            raise RuntimeError(f"{so} links {lib}, which the check has no stand-in for; add it to STANDIN_SYMBOLS")
        source = out / f"{lib}.c"
        source.write_text("#include <stddef.h>\n" + "".join(
            f"void* {s}(void){{return NULL;}}\n" for s in undefined if re.match(pattern, s)))
        run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{lib}", "-o", str(out / lib), str(source)])
    return out


def _fix_stub(text: str) -> str:
    """Make pybind11-stubgen's output parse: parameters named ``in``; a parameter without default
    after one with a default (the binding accepts them by keyword)."""
    text = re.sub(r"([(,] ?)in:", r"\1in_:", text)
    lines = []
    for line in text.splitlines():
        if line.startswith("bool: "):  # DataType.BOOL, named `bool`: it would shadow the builtin in every annotation
            continue
        if line.lstrip().startswith("def ") and " = " in line:
            head, _, rest = line.partition("(")
            params, close, tail = rest.rpartition(")")
            parts, seen_default = [], False
            for p in _split_params(params):
                if "=" in p:
                    seen_default = True
                elif seen_default and p.strip() and not p.strip().startswith("*"):
                    p = p + " = ..."
                parts.append(p)
            line = f"{head}({','.join(parts)}{close}{tail}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _split_params(params: str) -> list[str]:
    """Split a parameter list at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur] if cur or out else []


def tensorrt_stubs(package: str, version: str, cache: Path) -> Path:
    """Stubs of ``tensorrt`` (the binding module imported over stand-ins)."""
    stubs = cache / "stubs" / f"{package}-{version}"
    if (stubs / ".complete").exists():
        return stubs
    site = wheel(package, version, cache)
    libs = standins(site, cache / "standins" / f"{package}-{version}")
    raw = cache / "raw" / f"{package}-{version}"
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PYTHONPATH": str(site)}
    run([sys.executable, "-m", "pybind11_stubgen", "tensorrt_bindings", "-o", str(raw)], env=env)
    for pyi in (raw / "tensorrt_bindings").rglob("*.pyi"):
        target = stubs / pyi.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_fix_stub(pyi.read_text()))
    shutil.rmtree(site)  # the stubs are what is kept (the wheel stays in the download folder)
    # The `tensorrt` package of the tensorrt-cuXX wheels re-exports the bindings.
    (stubs / "tensorrt").mkdir(exist_ok=True)
    (stubs / "tensorrt" / "__init__.pyi").write_text(
        "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__ as __version__\n")
    (stubs / ".complete").touch()
    return stubs


def cuda_stub(module) -> str:
    """Stub text of a cuda-bindings module: enums with their members, classes with their public
    attributes, int constants, functions with the parameters of their docstring signature."""
    lines = ["import enum", "from typing import Any", ""]
    for name in sorted(n for n in dir(module) if not n.startswith("_")):
        obj = getattr(module, name)
        if inspect.isclass(obj) and issubclass(obj, enum.Enum):
            lines += [f"class {name}(enum.IntEnum):", *(f"    {m} = {int(v.value)}" for m, v in obj.__members__.items()),
                      "    ..."]
        elif inspect.isclass(obj):
            lines += [f"class {name}:", "    def __init__(self, *args: Any, **kwargs: Any) -> None: ...",
                      "    def __int__(self) -> int: ..."]
            for attr in sorted(a for a in dir(obj) if not a.startswith("_")):
                kind = inspect.getattr_static(obj, attr)
                lines.append(f"    def {attr}(self, *args: Any, **kwargs: Any) -> Any: ..." if callable(kind)
                             else f"    {attr}: Any")
        elif isinstance(obj, int):
            lines.append(f"{name}: int")
        elif callable(obj):
            lines.append(f"def {name}({_cuda_params(name, obj.__doc__ or '')}) -> tuple[Any, ...]: ...")
        else:
            lines.append(f"{name}: Any")
    return "\n".join(lines) + "\n"


def _cuda_params(name: str, doc: str) -> str:
    """``cudaMemcpyAsync(dst, src, size_t count, kind: cudaMemcpyKind, stream)`` -> typed parameters."""
    m = re.match(rf"\s*{re.escape(name)}\((.*)\)", doc.splitlines()[0] if doc.strip() else "")
    if m is None:
        return "*args: Any, **kwargs: Any"
    params = []
    for p in _split_params(m.group(1)):
        p = p.strip()
        if not p:
            continue
        default = " = ..." if "=" in p else ""
        ident = re.findall(r"\*{0,2}[A-Za-z_]\w*", p.split(":")[0].split("=")[0])[-1]
        params.append(f"{ident}: Any{default}" if not ident.startswith("*") else f"{ident}: Any")
    return ", ".join(params)


def cuda_stubs(version: str, cache: Path) -> Path:
    """Stubs of ``cuda.bindings.runtime`` of cuda-bindings ``version``."""
    stubs = cache / "stubs" / f"cuda-bindings-{version}"
    if (stubs / ".complete").exists():
        return stubs
    site = wheel("cuda-bindings", version, cache)
    path = os.pathsep.join([str(site), str(wheel("cuda-pathfinder", CUDA_PATHFINDER, cache))])
    code = ("import sys; from cuda.bindings import runtime; from tools.trt_api_check import cuda_stub; "
            "sys.stdout.write(cuda_stub(runtime))")
    root = Path(__file__).resolve().parents[1]
    text = run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{root}"}).stdout
    for pkg in ("cuda", "cuda/bindings"):
        (stubs / pkg).mkdir(parents=True, exist_ok=True)
        (stubs / pkg / "__init__.pyi").write_text("")
    (stubs / "cuda" / "bindings" / "runtime.pyi").write_text(text)
    shutil.rmtree(site)  # 70 MB unpacked; the stubs are what is kept
    (stubs / ".complete").touch()
    return stubs


def check_pair(root: Path, trt: tuple[str, str], cuda: str, cache: Path) -> tuple[str, list[str]]:
    """mypy over ``CHECKED`` of ``root`` with the stubs of one pair: (label, error lines)."""
    paths = os.pathsep.join(str(p) for p in (tensorrt_stubs(*trt, cache), cuda_stubs(cuda, cache)))
    label = f"TensorRT {trt[1]} + cuda-bindings {cuda}"
    mypy_cache = cache / "mypy" / f"{trt[1]}-{cuda}"
    r = subprocess.run([sys.executable, "-m", "mypy", *MYPY_FLAGS, "--cache-dir", str(mypy_cache),
                        "--python-executable", sys.executable, *CHECKED],
                       cwd=root, capture_output=True, text=True, env={**os.environ, "MYPYPATH": paths})
    errors = [ln for ln in r.stdout.splitlines() if ": error:" in ln and ln.startswith(CHECKED)]  # not the stubs
    if r.returncode not in (0, 1):  # 1: errors found (in the stubs' own text too, which are not ours)
        raise RuntimeError(f"mypy failed on {label}: {(r.stderr or r.stdout)[-2000:]}")
    return label, errors


def check(root: Path, cache: Path, pairs=PAIRS) -> dict[str, list[str]]:
    """Error lines per version pair (empty lists: every call exists with that arity)."""
    with ThreadPoolExecutor(4) as pool:  # downloads and stubs first (cached), then mypy pair by pair
        list(pool.map(lambda job: job[0](*job[1:]), [*((tensorrt_stubs, *trt, cache) for trt, _ in pairs),
                                                      *((cuda_stubs, cuda, cache) for _, cuda in pairs)]))
    first, rest = pairs[0], pairs[1:]
    results = [check_pair(root, *first, cache)]
    for trt, cuda in rest:  # numpy and the project analysed once: the other pairs start from the first's cache
        if not (cache / "mypy" / f"{trt[1]}-{cuda}").exists():
            shutil.copytree(cache / "mypy" / f"{first[0][1]}-{first[1]}", cache / "mypy" / f"{trt[1]}-{cuda}")
    with ThreadPoolExecutor(2) as pool:
        results += pool.map(lambda pair: check_pair(root, *pair, cache), rest)
    return dict(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository to check (default: this one)")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="wheels, stubs, mypy caches")
    args = parser.parse_args(argv)
    failed = 0
    for label, errors in check(args.root, args.cache).items():
        print(f"{label}: {'OK' if not errors else f'{len(errors)} errors'}")
        for line in errors:
            print(f"  {line}")
        failed += bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
