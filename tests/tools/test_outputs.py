"""tools.outputs: names, colours, blending as SOWLv2 computes it, and the writer's queue (writing
beside the caller, bounded) and staged output folder."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import tools.outputs as outputs
from runtime.errors import UserError
from runtime.pipeline import Result
from tools.outputs import PALETTE, OutputWriter, PromptColors, StagedOutput, blend, folder_names, frame_number


def test_names():
    assert [frame_number(s) for s in ("0042", "7", "photo", "12a", "²")] == ["000042", "000007", "000001", "000001",
                                                                            "000001"]
    files = [Path(n) for n in ("My Photo.JPG", "a.jpg", "A.png", "0001.png")]
    assert folder_names(files) == ["my photo", "a_jpg", "a_png", "0001"]


def test_colours_in_first_seen_order():
    colors = PromptColors()
    assert [colors(p) for p in ("dog", "cat", "dog")] == [PALETTE[0], PALETTE[1], PALETTE[0]]
    assert PALETTE[:3] == ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def test_blend_equals_sowlv2_formula_on_windows():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.random((30, 20)) > 0.4
    expected = image.copy()
    window = expected[5:35, 10:30]
    window[mask] = (0.5 * window[mask] + 0.5 * np.array((255, 7, 128), np.uint8)).astype(np.uint8)
    got = image.copy()
    blend(got[5:35, 10:30], mask, (255, 7, 128))
    np.testing.assert_array_equal(got, expected)


def _result(n=2, h=8, w=9):
    masks = np.zeros((n, h, w), bool)
    masks[:, 2:5, 3:6] = True
    return Result(np.zeros((n, 4), np.float32), np.ones(n, np.float32), np.zeros(n, np.int64), masks, ("cat",))


def test_writer_returns_at_once_and_stays_bounded(tmp_path, monkeypatch):
    """``add`` queues the writing (the caller predicts the next image meanwhile) and waits only while
    ``max_pending`` images are still being written."""
    release = threading.Event()
    real = outputs.image_jobs

    def slow_jobs(*args, **kwargs):
        jobs = real(*args, **kwargs)
        return [lambda j=j: (release.wait(30), j())[1] for j in jobs]

    monkeypatch.setattr(outputs, "image_jobs", slow_jobs)
    image = np.zeros((8, 9, 3), np.uint8)
    out = OutputWriter(tmp_path / "out", max_pending=1, workers=2)
    out.add(image, _result(), name="a.png", folder="a")  # returns although nothing is written yet
    assert not list((tmp_path).rglob("*.png"))
    second = threading.Thread(target=out.add, args=(image, _result()), kwargs={"name": "b.png", "folder": "b"})
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second image waits for the first one's files"
    release.set()
    second.join(30)
    assert not second.is_alive()
    root = out.close()
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "detections.json"]
    assert len(list(root.rglob("*.png"))) == 2 * (2 * 2 + 2)


def test_a_failed_run_leaves_the_output_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with OutputWriter(out, overwrite=True) as w:
            w.add(np.zeros((8, 9, 3), np.uint8), _result(), name="a.png")
            raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(UserError, match="not empty .*old.txt.*--overwrite"):
        StagedOutput(out)
