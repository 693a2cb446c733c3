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
