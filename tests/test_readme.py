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
