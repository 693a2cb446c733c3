"""Every command in docs/BENCHMARKS.md runs, in its smallest form: examples are tests.

The commands are read from the page (every ```python -m ...``` in backticks) and shrunk: the tiny
checkpoints, the tiny architecture (``--arch tiny``) or a tiny artifact instead of the full-size ones,
one run, one object, one graph, small frames, CPU; outputs go to a temporary folder. Exports are
only parsed: the session's tiny artifacts are those exports. A command of a module this file does not
know how to shrink fails the test: a new documented command needs its smallest form here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "BENCHMARKS.md"

pytestmark = pytest.mark.slow


def documented_commands() -> list[list[str]]:
    """Each distinct ``python -m MODULE ARGS`` of the page, as ``[MODULE, *ARGS]``."""
    found = re.findall(r"`python -m ([^`]+)`", PAGE.read_text())
    return [shlex.split(c) for c in dict.fromkeys(found)]


# Counts and sizes: the smallest value each flag takes (flags given several values get this one).
SMALLEST = {"--runs": "1", "--warmup": "0", "--frames": "1", "--objects": "1", "--images": "1", "--prompts": "1",
            "--boxes": "2", "--count": "2", "--calib-count": "4", "--threads": "1", "--size": "48x64",
            "--device": "cpu", "--modes": "eager-fp32", "--layers": "1"}
KNOWN = ("tools.bench.torch_pipeline", "tools.bench.torch_tracking", "tools.bench.fullsize", "tools.bench.tracking",
         "tools.bench.precision", "tools.benchmark", "tools.bench.outputs", "tools.bench.serving", "tools.bench.blocks",
         "tools.bench.host", "tools.bench.pixels", "tools.bench.batching", "tools.bench.gpu_evidence", "export.build")


def split(args: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(positionals before the first flag, [(flag, values)])``."""
    head: list[str] = []
    flags: list[tuple[str, list[str]]] = []
    for a in args:
        if a.startswith("--"):
            flags.append((a, []))
        elif flags:
            flags[-1][1].append(a)
        else:
            head.append(a)
    return head, flags


@pytest.fixture(scope="module")
def stand_ins(tiny_checkpoints, tiny_precision_artifact, calibration_dir) -> dict[str, str]:
    """The page's full-size inputs -> the tiny ones."""
    return {"full-ckpt/owlv2": str(tiny_checkpoints.owl), "full-ckpt/sam2": str(tiny_checkpoints.sam),
            "engines/full": str(tiny_precision_artifact), "engines/full-int8all": str(tiny_precision_artifact),
            "calib": str(calibration_dir)}


def smallest_form(command: list[str], stand_ins: dict[str, str], video_artifact: Path, tmp: Path) -> list[str]:
    """``command`` shrunk, its outputs under ``tmp`` (result.json, out/)."""
    module, (head, flags) = command[0], split(command[1:])
    key = f"{module} {head[0]}" if module in ("tools.bench.precision", "tools.bench.tracking") else module
    if key in ("tools.bench.precision checkpoints", "tools.bench.precision images"):
        head = [head[0], str(tmp / "out")]
    # per command: flags replacing the documented ones, or added where the page relies on a default
    # (random full-size architectures become the tiny one; the torch tracker's bank must be full, so
    # its warm-up stays at num_maskmem - 1; tools.benchmark writes into ./benchmark by default)
    small_video = {"--objects": ["1"], "--frames": ["1"], "--size": ["48x64"]}
    forced = {
        "tools.bench.torch_pipeline": {"--owl-model": [stand_ins["full-ckpt/owlv2"]],
                                       "--sam-model": [stand_ins["full-ckpt/sam2"]], "--boxes": ["2"]},
        "tools.bench.torch_tracking": {"--arch": ["tiny"], "--warmup": ["6"], "--modes": ["eager-fp32"], **small_video},
        "tools.bench.gpu_evidence": {"--device": ["cpu"], "--arch": ["tiny"], "--warmup": ["6"],
                                     "--modes": ["eager-fp32"], **small_video},  # the tracking half: no GPU here
        "tools.bench.fullsize": {"--arch": ["tiny"]},
        "tools.bench.blocks": {"--arch": ["tiny"]},
        "tools.bench.tracking speed": {"--engines": [str(video_artifact)], **small_video},
        "tools.bench.precision checkpoints": {"--owl-arch": ["tiny"], "--sam-arch": ["tiny"]},
        "tools.benchmark": {"--out": [str(tmp / "out")]},
        "tools.bench.outputs": {"--engines": [str(video_artifact)], "--size": ["48x64"], "--out": [str(tmp / "out")]},
        "tools.bench.host": {"--engines": [str(video_artifact)], "--sizes": ["48x64"], "--out": [str(tmp / "out")]},
        "tools.bench.pixels": {"--engines": [str(video_artifact)], "--sizes": ["48x64"], "--out": [str(tmp / "out")]},
        "tools.bench.serving": {"--engines": [str(video_artifact)], "--concurrency": ["1"], "--requests": ["1"],
                                "--size": ["48x64"], "--out": [str(tmp / "out")]},
    }.get(key, {})
    out = [module, *head]
    for flag, values in flags:
        if flag in forced:
            values = forced[flag]
        elif flag == "--json":
            values = [str(tmp / "result.json")]
        elif flag == "--out":
            values = [str(tmp / "out")]
        elif flag in SMALLEST:
            values = [SMALLEST[flag]]
        elif flag == "--graphs":
            values = values[:1]
        else:
            values = [stand_ins.get(v, v) for v in values]
        out += [flag, *values]
    given = {flag for flag, _ in flags}
    for flag, values in forced.items():
        if flag not in given:
            out += [flag, *values]
    return out


COMMANDS = documented_commands()


def test_the_page_has_commands_of_every_measuring_script():
    modules = {c[0] for c in COMMANDS}
    assert {"tools.bench.torch_pipeline", "tools.bench.torch_tracking", "tools.bench.fullsize", "tools.bench.tracking",
            "tools.bench.precision", "tools.benchmark"} <= modules, modules
    assert all(c[0] in KNOWN for c in COMMANDS), [c[0] for c in COMMANDS if c[0] not in KNOWN]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2])[:60] for c in COMMANDS])
def test_documented_command_runs(command, stand_ins, tiny_video_artifact, run_module, tmp_path):
    if command[0] == "export.build" or command[:2] == ["tools.bench.precision", "precisions"]:
        # Exports, and the precision graphs `precisions` adds to a copy of one (export.precision's
        # write_precisions), are what the session's tiny artifacts are made of (tests/conftest.py):
        # here the documented flags must parse, with the stand-in paths.
        from export.build import parse_args as build_args
        from tools.bench.precision import parse_args as precision_args

        argv = [stand_ins.get(a, a) for a in command[1:]]
        args = build_args(argv) if command[0] == "export.build" else precision_args(argv)
        assert args.fp32 and args.engines == "skip" if command[0] == "export.build" else args.int8_all
        return
    argv = smallest_form(command, stand_ins, tiny_video_artifact, tmp_path)
    run_module(*argv, timeout=600)  # exit status 0, no traceback
    if "--json" in command:
        assert json.loads((tmp_path / "result.json").read_text()), argv
    if "--out" in argv or command[1:2] in (["checkpoints"], ["images"]):
        assert any((tmp_path / "out").iterdir()), argv
