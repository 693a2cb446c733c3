"""The runtime layer stays light: importing every runtime module loads neither torch nor transformers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, pkgutil, sys
import runtime
names = [m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime.")]
skipped = []
for name in names:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:  # only an optional GPU backend may be missing here
        if (e.name or "").split(".")[0] not in ("tensorrt", "cuda"):
            raise
        skipped.append((name, e.name))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "torchvision", "scipy"))
print(len(names), skipped, heavy)
assert not heavy, heavy
assert len(names) >= 5, names
"""


def test_runtime_imports_no_torch_or_transformers():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
