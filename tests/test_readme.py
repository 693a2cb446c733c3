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
    graphs, pins every requirement of the project and of the extras the install names at a version that
    requirement admits (pyproject's own exact pins equal), and leaves the project itself out."""
    import tomllib

    from packaging.requirements import Requirement

    install = readme_command("install")
    assert "-c constraints.txt" in install
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
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirement in (r for deps in extras.values() for r in deps):
        name, sep, version = requirement.partition("==")
        if sep:
            assert pins.get(_canonical(name)) == version, f"pyproject pins {requirement}, constraints.txt {pins.get(_canonical(name))}"
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', install)
    assert installed, f"the install names no extras: {install}"
    for requirement in [*project["dependencies"], *(r for e in installed.group(1).split(",") for r in extras[e])]:
        req = Requirement(requirement)
        pin = pins.get(_canonical(req.name))
        assert pin is not None, f"constraints.txt does not pin {req.name} ({requirement})"
        assert req.specifier.contains(pin, prereleases=True), f"pyproject asks {requirement}, constraints.txt pins {pin}"


def test_the_docs_refer_to_nothing_outside_the_repository():
    """The README links the architecture page; no file of the project points at documents it does not hold."""
    assert "(docs/ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
    outside = ("DESIGN.md", "NOTES.md", "STYLE.md", "shared/")
    texts = [p for d in ("export", "runtime", "calibration", "tools", "tests", "docs") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md")] + [ROOT / "README.md", ROOT / "pyproject.toml"]
    me = Path(__file__).resolve()
    found = [f"{p.relative_to(ROOT)}: {word}" for p in texts if p.resolve() != me for word in outside
             if word in p.read_text()]
    assert found == []
