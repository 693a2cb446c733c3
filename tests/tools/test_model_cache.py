"""owlsam-detect without --engines: the checkpoints exported once into the cache, reused, a corrupted
or half-written entry rebuilt, two concurrent first runs exporting once, hub ids failing fast offline.

One real export (the concurrent first runs); the rebuild tests replace the export with a copy of
that entry (``copy_export``) to test the cache's bookkeeping without a second export."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OWLSAM_CACHE": str(cache), **extra}


@pytest.fixture(scope="module")
def photo(tmp_path_factory, make_image) -> Path:
    path = tmp_path_factory.mktemp("in") / "photo.png"
    Image.fromarray(make_image(96, 128, seed=5)).save(path)
    return path


@pytest.fixture(scope="module")
def first_runs(tiny_checkpoints, photo, tmp_path_factory):
    """Two ``python -m tools.infer`` first runs started together on an empty cache."""
    base = tmp_path_factory.mktemp("cache_runs")
    cache = base / "cache"
    args = ["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam), "--input", str(photo),
            "--prompt", "cat", "--threshold", "0"]
    procs = [subprocess.Popen([sys.executable, "-m", "tools.infer", *args, "--output", str(base / f"out{i}")],
                              cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    return base, cache, args, results


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "artifacts").iterdir())


def test_two_first_runs_export_once(first_runs):
    base, cache, _, results = first_runs
    for code, err in results:
        assert code == 0 and "Traceback" not in err, err
    exporting = [err for _, err in results if "exporting" in err]
    assert len(exporting) == 1, [err for _, err in results]
    other = next(err for _, err in results if "exporting" not in err)
    assert "using the cached export" in other
    assert "[1/" in exporting[0] and "parity PASSED" in exporting[0]  # export.build's progress
    dirs = [p for p in _entries(cache) if p.is_dir()]
    assert len(dirs) == 1 and (dirs[0] / "manifest.json").is_file() and dirs[0].name.endswith("-fp32")
    assert not [p for p in _entries(cache) if p.name.startswith(".")], "no staging folder left behind"
    files = [sorted(p.relative_to(base / f"out{i}") for p in (base / f"out{i}").rglob("*")) for i in range(2)]
    assert files[0] == files[1] and files[0]
    for rel in files[0]:
        a, b = base / "out0" / rel, base / "out1" / rel
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), rel


def test_second_run_reuses_the_entry(first_runs, run_module):
    base, cache, args, _ = first_runs
    (entry,) = [p for p in _entries(cache) if p.is_dir()]
    before = (entry / "manifest.json").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "tools.infer", *args, "--output", str(base / "again")], cwd=ROOT,
                       env=_env(cache), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "using the cached export" in r.stderr and "exporting" not in r.stderr
    assert (entry / "manifest.json").stat().st_mtime_ns == before
    assert "backend onnxruntime" in r.stderr  # Pipeline.load's choice, shown by default


@pytest.fixture
def copy_export(first_runs, monkeypatch):
    """Replace the export by a copy of the first runs' entry, written as export.build writes (a
    staging folder renamed into place); returns the calls."""
    import tools.model_cache as mc

    (pristine,) = [p for p in _entries(first_runs[1]) if p.is_dir()]
    calls = []

    def export(owl, sam, precision, video, out):
        calls.append(out)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.copytree(pristine, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)

    monkeypatch.setattr(mc, "_export", export)
    return pristine, calls


def _run_in_process(cache: Path, args: list[str], out: Path, monkeypatch, capsys) -> str:
    from tools.infer import main

    monkeypatch.setenv("OWLSAM_CACHE", str(cache))
    assert main([*args, "--output", str(out)]) == 0
    return capsys.readouterr().err


def test_corrupted_entry_is_rebuilt(first_runs, copy_export, tmp_path, monkeypatch, capsys):
    _, cache, args, _ = first_runs
    pristine, calls = copy_export
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    entry = mine / "artifacts" / pristine.name
    name = load_manifest(entry).onnxruntime_graph_path("owl_image", "fp32", verify=False).name  # what runs
    with open(entry / name, "ab") as f:
        f.write(b"\0")
    err = _run_in_process(mine, args, tmp_path / "out", monkeypatch, capsys)
    assert calls == [entry]
    assert "unusable" in err and name in err and "exporting it again" in err
    assert (entry / name).read_bytes() == (pristine / name).read_bytes()
    assert (tmp_path / "out" / "detections.json").is_file()


def test_half_written_entry_is_never_used(first_runs, copy_export, tmp_path, monkeypatch, capsys):
    """What a killed export leaves (a staging folder, an entry without its manifest) is not an entry."""
    _, cache, args, _ = first_runs
    pristine, calls = copy_export
    mine = tmp_path / "cache"
    (mine / "artifacts").mkdir(parents=True)
    entry = mine / "artifacts" / pristine.name
    entry.mkdir()
    shutil.copy(pristine / "owl_image.onnx", entry)  # no manifest.json: written last, renamed whole
    stale = mine / "artifacts" / f".{pristine.name}.partial-999999"
    shutil.copytree(pristine, stale)
    err = _run_in_process(mine, args, tmp_path / "out", monkeypatch, capsys)
    assert calls == [entry] and "exporting" in err
    assert not stale.exists() and (entry / "manifest.json").is_file()


def test_entry_key_follows_contents_not_paths(tiny_checkpoints, tmp_path):
    from tools.model_cache import entry_key

    owl, sam = Path(tiny_checkpoints.owl), Path(tiny_checkpoints.sam)
    key = entry_key(owl, sam, "fp32", False, tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(owl, moved)
    assert entry_key(moved, sam, "fp32", False, tmp_path) == key  # same contents: same entry
    assert entry_key(owl, sam, "fp16", False, tmp_path) != key
    assert entry_key(owl, sam, "fp32", True, tmp_path) != key
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert entry_key(moved, sam, "fp32", False, tmp_path) != key  # other weights: another entry
    config = moved / "config.json"
    config.write_text(config.read_text().replace("{", '{"note": 1, ', 1))
    assert entry_key(moved, sam, "fp32", False, tmp_path) != key


@pytest.mark.parametrize("offline", [True, False])
def test_hub_id_without_the_hub_fails_in_seconds(tiny_checkpoints, photo, tmp_path, one_error_line, offline):
    env = _env(tmp_path / "cache", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tools.infer", "--owl-model", "google/owlv2-base-patch16-ensemble",
                        "--sam-model", str(tiny_checkpoints.sam), "--input", str(photo), "--prompt", "cat",
                        "--output", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    elapsed = time.perf_counter() - t0
    line = one_error_line(r, "--owl-model google/owlv2-base-patch16-ensemble", "not in the local Hugging Face cache",
                          "--owl-model DIR --sam-model DIR")
    if offline:
        assert "HF_HUB_OFFLINE" in line
    assert elapsed < 30, f"{elapsed:.1f} s: transformers' retries take longer than this"
    assert not (tmp_path / "out").exists()


def test_int8_is_not_exported_on_the_fly(tiny_checkpoints, photo, tmp_path, monkeypatch):
    from tools.infer import main

    monkeypatch.setenv("OWLSAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="--int8 --calib-dir IMAGES, then pass --engines DIR") as e:
        main(["--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam), "--input",
              str(photo), "--prompt", "cat", "--output", str(tmp_path / "o"), "--precision", "int8"])
    assert f"--owl-model {tiny_checkpoints.owl} --sam-model {tiny_checkpoints.sam}" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*int8*"))
