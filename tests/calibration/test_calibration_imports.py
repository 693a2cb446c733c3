"""The calibration package needs neither torch nor ModelOpt (only the export step that uses it does)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import calibration, calibration.images, calibration.inputs, calibration.cache, calibration.make_set
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "modelopt", "torchvision"))
assert not heavy, heavy
"""


def test_calibration_imports_no_torch_or_modelopt():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
