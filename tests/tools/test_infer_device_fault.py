"""tools.infer stops at a device fault (runtime.errors.DeviceFault) instead of skipping every
remaining image with the same message: one line naming the CUDA error, exit status 3."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.errors import DeviceFault, run_cli
from runtime.pipeline import Pipeline, Result


class FaultingPipeline:
    """Stands in for a loaded pipeline whose GPU fails on the second image."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, image, prompts, **kw) -> Result:
        self.calls += 1
        if self.calls >= 2:
            raise DeviceFault("sam2_decoder: cudaMemcpyAsync (DeviceToHost) failed: cudaErrorIllegalAddress (an illegal "
                              "memory access was encountered); the GPU stopped this run")
        h, w = image.shape[:2]
        return Result(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                      np.zeros((0, h, w), bool), tuple(prompts))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def test_a_device_fault_stops_a_folder_run(tmp_path, make_image, monkeypatch, capsys):
    import tools.infer as infer

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(make_image(32, 48, seed=i)).save(folder / f"{i}.png")
    fake = FaultingPipeline()
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: fake))
    with pytest.raises(SystemExit) as e:
        run_cli(infer.main, ["--engines", str(tmp_path), "--input", str(folder), "--prompt", "cat",
                             "--output", str(tmp_path / "out"), "--workers", "1"])
    assert e.value.code == 3
    assert fake.calls == 2  # stopped at the fault, nothing skipped after it
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: sam2_decoder: cudaMemcpyAsync") and "cudaErrorIllegalAddress" in err[-1]
    assert not any("skipped" in line for line in err)
    assert not (tmp_path / "out" / "detections.json").exists()
