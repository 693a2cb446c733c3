"""Shared fixtures: tiny random checkpoints and the artifacts built from them, per session; the family
of checkpoint shapes, exported in the background while the rest of the suite runs; TensorRT engines
built from those where TensorRT and a GPU exist; the checks several test modules make (command-line runs
and their one-line errors, calibration feeds against their graph's spec); and the run's peak memory
against the CI budget, in the summary."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pytest

from tools.bench.synthetic import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
#: CI's ceiling on the peak resident memory of the test run (README, Tests).
PEAK_RSS_BUDGET_GB = 8.0


def pytest_terminal_summary(terminalreporter) -> None:
    """Peak RSS of this process and of its largest subprocess: a test that blows the budget shows here
    (one test's float64 conv1d once put the run at 11.4 GB unnoticed)."""
    own, child = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    over = max(own, child) > PEAK_RSS_BUDGET_GB
    terminalreporter.write_line(f"peak RSS: {own:.1f} GB in pytest, {child:.1f} GB in its largest subprocess "
                                f"(CI budget {PEAK_RSS_BUDGET_GB:g} GB{', EXCEEDED' if over else ''})", red=over)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    from tools.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoints, tmp_path_factory) -> Path:
    """An engines directory exported with ``python -m export.build`` (in-process) on the tiny models."""
    from export.build import main

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--engines", "skip"])
    return out


@pytest.fixture(scope="session")
def tiny_video_artifact(tiny_checkpoints, tmp_path_factory) -> Path:
    """Like ``tiny_artifact``, exported with ``--video``: every graph, SAM2's memory modules included."""
    from export.build import main

    out = tmp_path_factory.mktemp("video_artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--video", "--engines", "skip"])
    return out


#: Sizes of the generated calibration images (JPEG and PNG alternating): any size, any aspect.
CALIBRATION_IMAGE_SIZES = ((480, 640), (640, 480), (300, 300), (720, 1280), (200, 500), (500, 200))


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """Six generated calibration images (no downloaded data)."""
    from PIL import Image

    out = tmp_path_factory.mktemp("calibration") / "images"
    out.mkdir()
    for i, (h, w) in enumerate(CALIBRATION_IMAGE_SIZES):
        Image.fromarray(synthetic_image(h, w, seed=100 + i)).save(out / f"calib_{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    return out


@pytest.fixture(scope="session")
def tiny_precision_artifact(tiny_video_precision_artifact) -> Path:
    """An engines directory exported with ``--fp16 --int8 --calib-dir`` on the tiny models: the ``--video``
    one, whose image graphs and their calibration are those of an export without ``--video`` (same cache
    keys, see test_video_precision), so that the suite pays for one FP16/INT8 export, not two."""
    return tiny_video_precision_artifact


@pytest.fixture(scope="session")
def tiny_video_precision_artifact(tiny_checkpoints, calibration_dir, tmp_path_factory) -> Path:
    """An engines directory exported with ``--fp16 --int8 --video --calib-dir``: every graph at every
    precision, SAM2's memory modules calibrated on clips the FP32 tracker runs over the images."""
    from export.build import main

    out = tmp_path_factory.mktemp("video_precision_artifact") / "tiny"
    main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
          "--out", str(out), "--fp32", "--fp16", "--int8", "--video", "--calib-dir", str(calibration_dir),
          "--calib-count", "6", "--engines", "skip"])
    return out


@dataclass(frozen=True)
class FamilyMember:
    """One checkpoint shape of ``tools.tiny_checkpoints.FAMILY``, exported with every graph at every precision."""

    name: str
    checkpoints: "TinyCheckpoints"  # noqa: F821 - tools.tiny_checkpoints, imported lazily
    artifact: Path  # export.build --fp32 --fp16 --int8 --video


#: The family's calibration: the minimum number of images, max ranges (no entropy histograms), to keep
#: each member's one combined export short; the default member's artifact is tiny_video_precision_artifact's.
FAMILY_CALIBRATION = ("--calib-count", "4", "--calib-method", "max")
FAMILY_EXPORT_TIMEOUT = 1800  # seconds per member (about 2 min on a quiet 2-core machine)


class FamilyExports:
    """The family members' checkpoints and artifacts (all but "default", which is the session's own
    tiny checkpoints), made by ``python -m tools.tiny_checkpoints --shape`` and one combined
    ``python -m export.build`` each, one member at a time, in child processes run from a background
    thread that starts when collection ends: they overlap the rest of the suite (mostly one core busy),
    their memory is returned when each child exits, and the family's tests run last."""

    def __init__(self, names: list[str]) -> None:
        import tempfile
        import threading

        from tools.tiny_checkpoints import FAMILY_SEEDS

        self.names = [n for n in names if n != "default"]
        self.seeds = dict(FAMILY_SEEDS)
        self.root = Path(tempfile.mkdtemp(prefix="owlsam-family-"))
        self.done = {n: threading.Event() for n in self.names}
        self.failed: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="family-exports", daemon=True)

    def start(self) -> None:
        if self.thread.ident is None:
            self.thread.start()

    def _calibration_images(self) -> Path:
        from PIL import Image

        out = self.root / "calibration"
        out.mkdir()
        for i, (h, w) in enumerate(CALIBRATION_IMAGE_SIZES[:4]):
            Image.fromarray(synthetic_image(h, w, seed=100 + i)).save(out / f"calib_{i}.png")
        return out

    def _child(self, *args: str | Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = self.proc.communicate(timeout=FAMILY_EXPORT_TIMEOUT)
        if self.proc.returncode != 0:
            raise RuntimeError(f"python -m {' '.join(map(str, args))} exited with {self.proc.returncode}:\n{err[-3000:]}")

    def _run(self) -> None:
        try:
            calib = self._calibration_images()
        except Exception as e:  # noqa: BLE001 - reported by every member's wait()
            self.failed = {n: repr(e) for n in self.names}
            calib = None
        for name in self.names:
            if calib is not None and not self.stopped:
                try:
                    self._child("tools.tiny_checkpoints", self.root / name / "checkpoints", "--shape", name,
                                "--seed", self.seeds.get(name, 0))
                    self._child("export.build", "--owl-model", self.root / name / "checkpoints" / "owlv2",
                                "--sam-model", self.root / name / "checkpoints" / "sam2", "--out",
                                self.root / name / "artifact", "--fp32", "--fp16", "--int8", "--video", "--calib-dir",
                                calib, *FAMILY_CALIBRATION, "--engines", "skip")
                except Exception as e:  # noqa: BLE001 - reported by the member's wait()
                    self.failed[name] = str(e)
            self.done[name].set()

    def wait(self, name: str) -> FamilyMember:
        from tools.tiny_checkpoints import TinyCheckpoints

        self.start()  # if collection did not (the member was requested another way)
        if not self.done[name].wait(FAMILY_EXPORT_TIMEOUT * 2):
            pytest.fail(f"family member {name}: no export after {FAMILY_EXPORT_TIMEOUT * 2} s")
        if name in self.failed:
            pytest.fail(f"family member {name}: {self.failed[name]}")
        ckpt = self.root / name / "checkpoints"
        return FamilyMember(name, TinyCheckpoints(owl=ckpt / "owlv2", sam=ckpt / "sam2"), self.root / name / "artifact")

    def drop(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


_FAMILY_EXPORTS: FamilyExports | None = None


def _family_names() -> list[str]:
    from tools.tiny_checkpoints import FAMILY

    return list(FAMILY)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Start the family's exports now if its tests were collected, and run those tests last (grouped
    by member, as pytest ordered them): by then the background exports are mostly done."""
    global _FAMILY_EXPORTS
    family = [item for item in items if "family_member" in getattr(item, "fixturenames", ())]
    if not family or config.option.collectonly:
        return
    items[:] = [item for item in items if "family_member" not in getattr(item, "fixturenames", ())] + family
    selected = dict.fromkeys(item.callspec.params["family_member"] for item in family)  # in test order
    _FAMILY_EXPORTS = FamilyExports(list(selected))
    _FAMILY_EXPORTS.start()


def pytest_sessionfinish(session, exitstatus):
    if _FAMILY_EXPORTS is not None:
        _FAMILY_EXPORTS.stop()


@pytest.fixture(scope="session", params=_family_names())
def family_member(request) -> FamilyMember:
    """Each member of the family of tiny checkpoint shapes in turn, exported with ``--fp32 --fp16 --int8
    --video`` (:class:`FamilyExports`); pytest runs all tests of one member before the next, and the
    member's files go when its tests are done. "default" is the session's tiny checkpoints and
    ``tiny_video_precision_artifact``."""
    global _FAMILY_EXPORTS
    name = request.param
    if name == "default":
        yield FamilyMember(name, request.getfixturevalue("tiny_checkpoints"),
                           request.getfixturevalue("tiny_video_precision_artifact"))
        return
    if _FAMILY_EXPORTS is None:
        _FAMILY_EXPORTS = FamilyExports(_family_names())
    if name not in _FAMILY_EXPORTS.done:
        pytest.fail(f"family member {name} was not collected for export")
    yield _FAMILY_EXPORTS.wait(name)
    _FAMILY_EXPORTS.drop(name)


@pytest.fixture(scope="session")
def make_image():
    return synthetic_image


# --- TensorRT engines -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tensorrt_gpu() -> str:
    """Skips, with ``runtime.backends.tensorrt.backend_status()``'s reason, unless tensorrt,
    cuda-python and a CUDA device are all here; else what runs ("TensorRT x on <device>").
    Request it before any slow fixture, so that a skip costs nothing."""
    from runtime.backends.tensorrt import backend_status

    ok, why = backend_status()
    if not ok:
        pytest.skip(f"needs TensorRT and a CUDA device: {why}")
    return why


@pytest.fixture(scope="session")
def build_fp32_engines(tensorrt_gpu, tmp_path_factory) -> Callable[..., Path]:
    """``build(src, graphs=None)``: a copy of the artifact ``src`` with FP32 engines for this GPU of
    ``graphs`` (default: every graph of the manifest), built at optimisation level 0 (fast builds),
    recorded in the copy's manifest."""
    from export.artifact import write_json
    from export.engine import EngineOptions, build_engines
    from runtime.manifest import MANIFEST_NAME, load_manifest

    def build(src: Path, graphs: Iterable[str] | None = None) -> Path:
        root = tmp_path_factory.mktemp("engines") / Path(src).name
        shutil.copytree(src, root)
        data = load_manifest(root).data
        if graphs is not None:
            data_graphs = {name: data["graphs"][name] for name in graphs}
        else:
            data_graphs = data["graphs"]
        data["engines"] = build_engines(root, {**data, "graphs": data_graphs}, ["fp32"],
                                        EngineOptions(optimization_level=0))
        write_json(root / MANIFEST_NAME, data)
        return root

    return build


# --- command lines ---------------------------------------------------------------------------------

def _run_module(module: str, *args: str | Path, check: int | None = 0, timeout: float = 300
                ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    if check is not None:
        assert r.returncode == check, r.stderr
    return r


@pytest.fixture(scope="session")
def run_module() -> Callable[..., subprocess.CompletedProcess]:
    """``run_module(module, *args, check=0, timeout=300)``: ``python -m module args`` from the repository
    root (PYTHONPATH set to it), output captured. Never a traceback; with ``check`` (an exit status)
    the status is asserted, ``check=None`` leaves it to the caller."""
    return _run_module


def _one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def one_error_line() -> Callable[..., str]:
    """``one_error_line(r, *needles)``: ``r`` exited with status 2, no traceback, exactly one line of
    its stderr starts with ``error:`` and holds every needle; returns that line."""
    return _one_error_line


# --- calibration feeds -----------------------------------------------------------------------------

def _assert_feeds_follow_spec(name: str, feeds: Iterable[Mapping[str, np.ndarray]], sizes: Mapping[str, int]) -> None:
    from runtime.graphs import GRAPHS

    spec = GRAPHS[name]
    for feed in feeds:
        assert list(feed) == spec.input_names, name
        for t in spec.inputs:
            a = feed[t.name]
            assert a.dtype == np.dtype(t.dtype) and a.ndim == len(t.shape), (name, t.name)
            for size, dim in zip(a.shape, t.shape, strict=True):
                assert size == sizes[dim] if dim in sizes else size >= 1, (name, t.name, dim)
            assert np.isfinite(a).all(), (name, t.name)


@pytest.fixture(scope="session")
def assert_feeds_follow_spec() -> Callable[..., None]:
    """``assert_feeds_follow_spec(graph_name, feeds, sizes)``: every feed holds the graph's inputs,
    in order, with its dtypes and ranks, the artifact's static ``sizes`` (dynamic dims at least 1),
    and only finite values."""
    return _assert_feeds_follow_spec
