"""The README's set-up commands are what CI runs: examples are tests."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- setup:{marker} -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, f"README has no setup:{marker} block"
    return match.group(1).strip()


def test_ci_runs_the_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for marker in ("install", "test"):
        assert readme_command(marker) in ci, f"README setup:{marker} command is not a line of .ci/run"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_install_pins_every_package_the_numbers_depend_on():
    """constraints.txt, which the README's install uses, pins exact versions of what writes and runs the
    graphs, agrees with pyproject.toml's own exact pins and leaves the project itself out."""
    import tomllib

    assert "-c constraints.txt" in readme_command("install")
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip() and " " not in version.strip(), f"constraints.txt: {line!r} is not an exact pin"
            pins[_canonical(name)] = version.strip()
    for pkg in ("torch", "torchvision", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime",
                "nvidia-modelopt", "numpy"):
        assert pkg in pins, f"constraints.txt does not pin {pkg}"
    assert "owlsam-trt" not in pins
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in (r for deps in extras.values() for r in deps):
        name, sep, version = requirement.partition("==")
        if sep:
            assert pins.get(_canonical(name)) == version, f"pyproject pins {requirement}, constraints.txt {pins.get(_canonical(name))}"
