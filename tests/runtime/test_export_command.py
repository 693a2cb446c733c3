"""Hints that name ``python -m export.build`` give every flag it needs: the sources (offline, the hub
defaults would fail), --int8's --calib-dir, --video when the artifact tracks."""

from __future__ import annotations

import pytest

from runtime.errors import ArtifactError
from runtime.manifest import export_command, load_manifest


def test_export_command_names_every_flag(tiny_artifact, tiny_video_artifact):
    data = load_manifest(tiny_artifact).data
    owl, sam = data["sources"]["owl"]["model"], data["sources"]["sam"]["model"]
    assert export_command(tiny_artifact, data) == (f"python -m export.build --owl-model {owl} --sam-model {sam} "
                                                   f"--out {tiny_artifact} --fp32")
    assert export_command(tiny_artifact, data, precision="int8").endswith("--fp32 --int8 --calib-dir IMAGES")
    assert export_command(tiny_video_artifact, load_manifest(tiny_video_artifact).data).endswith("--fp32 --video")
    assert export_command("my engines") == ("python -m export.build --owl-model ID|DIR --sam-model ID|DIR "
                                            "--out 'my engines' --fp32")


def test_artifact_errors_carry_the_command(tiny_artifact, tmp_path):
    from runtime.pipeline import Pipeline

    with pytest.raises(ArtifactError, match="--calib-dir IMAGES") as e:
        Pipeline.load(tiny_artifact, backend="onnxruntime", precision="int8")
    assert "--owl-model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ArtifactError, match=f"--out {tmp_path / 'none'} --fp32"):
        load_manifest(tmp_path / "none")
