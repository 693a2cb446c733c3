"""``python -m export.build``: the artifact it writes, and its errors for bad input."""

from __future__ import annotations

import functools
import json

import pytest

from runtime.graphs import GRAPHS, DYNAMIC_DIMS
from runtime.manifest import PARITY_NAME, SCHEMA_VERSION, load_manifest, sha256_file

# tiny_artifact is exported without --video: it holds every graph but the video ones
# (tests/export/test_sam2_video_export.py covers an artifact exported with --video).
IMAGE_GRAPHS = {name: spec for name, spec in GRAPHS.items() if not spec.video}


def test_manifest_describes_every_graph(tiny_artifact):
    m = load_manifest(tiny_artifact)
    assert m.data["schema_version"] == SCHEMA_VERSION
    assert set(m.graphs) == set(IMAGE_GRAPHS)
    for name, spec in IMAGE_GRAPHS.items():
        rec = m.graphs[name]
        assert [i["name"] for i in rec["inputs"]] == spec.input_names
        assert [o["name"] for o in rec["outputs"]] == spec.output_names
        for f in rec["files"]["fp32"]["files"]:
            assert sha256_file(tiny_artifact / f["path"]) == f["sha256"]
        for t in spec.inputs + spec.outputs:
            for d in t.shape:
                assert d in DYNAMIC_DIMS or d in m.sizes, f"{name}.{t.name}: size {d} not recorded"


def test_preprocessing_and_sizes_come_from_the_checkpoint(tiny_artifact):
    m = load_manifest(tiny_artifact)
    assert m.sizes["owl_image_size"] == 64 and m.sizes["sam_image_size"] == 64
    assert m.preprocessing("owl")["image_size"] == 64
    assert m.preprocessing("sam")["image_size"] == 64
    assert m.data["sources"]["owl"]["config_sha256"] and m.data["sources"]["sam"]["config_sha256"]
    assert (tiny_artifact / "tokenizer" / "tokenizer.json").is_file()


def test_tokenizer_longer_than_the_text_tower_is_refused_naming_both(tiny_checkpoints):
    """Owlv2Processor pads every prompt to model_max_length: past max_position_embeddings the reference
    itself fails, so the export refuses, in one line naming both values."""
    from export.models import load_owl
    from export.owl import owl_sizes
    from runtime.errors import UserError

    owl = load_owl(str(tiny_checkpoints.owl))
    assert owl_sizes(owl)["owl_text_length"] == 16
    owl.processor.tokenizer.model_max_length = 20
    with pytest.raises(UserError, match="pads prompts to 20 tokens .* has 16 positions") as e:
        owl_sizes(owl)
    assert "\n" not in str(e.value)


def test_every_registered_graph_has_export_parity_at_two_sizes(tiny_artifact):
    """Fails when a graph is registered in runtime.graphs without an export that proves parity."""
    rows = json.loads((tiny_artifact / PARITY_NAME).read_text())["fp32"]["rows"]
    for name, spec in IMAGE_GRAPHS.items():
        mine = [r for r in rows if r["graph"] == name]
        assert mine, f"graph {name} has no export parity rows"
        assert {r["output"] for r in mine} == set(spec.with_candidates().output_names)  # candidates: parity only
        assert all(r["passed"] for r in mine)
        for dim in spec.dynamic_dims:
            assert len({r["dims"][dim] for r in mine}) >= 2, f"{name}: {dim} checked at one size only"


def test_no_temporary_directories_left(tiny_artifact):
    assert [p.name for p in tiny_artifact.parent.iterdir()] == [tiny_artifact.name]


@pytest.fixture(scope="module")
def run_build(run_module):
    """``run_build(*args)``: ``python -m export.build args`` (conftest's ``run_module``), any exit status."""
    return functools.partial(run_module, "export.build", check=None)


def test_missing_model_path(run_build, one_error_line, tmp_path, tiny_checkpoints):
    out = tmp_path / "out"
    r = run_build("--owl-model", str(tmp_path / "nope"), "--sam-model", str(tiny_checkpoints.sam),
                  "--out", str(out), "--fp32", "--engines", "skip")
    one_error_line(r, "does not exist", str(tmp_path / "nope"))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_directory_that_is_not_a_checkpoint(run_build, one_error_line, tmp_path, tiny_checkpoints):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_build("--owl-model", str(empty), "--sam-model", str(tiny_checkpoints.sam), "--out", str(tmp_path / "o"),
                  "--engines", "skip")
    one_error_line(r, "no config.json", "OWLv2")


def test_checkpoint_of_the_wrong_family(run_build, one_error_line, tmp_path, tiny_checkpoints):
    r = run_build("--owl-model", str(tiny_checkpoints.sam), "--sam-model", str(tiny_checkpoints.sam),
                  "--out", str(tmp_path / "o"), "--engines", "skip")
    one_error_line(r, "not OWLv2", "sam2")


def test_existing_directory_that_is_not_an_artifact(run_build, one_error_line, tmp_path, tiny_checkpoints):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = run_build("--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
                  "--out", str(out), "--engines", "skip")
    one_error_line(r, "is not an engines directory", "--force")
    assert (out / "notes.txt").read_text() == "keep me"


def test_unwritable_output(run_build, one_error_line, tmp_path, tiny_checkpoints):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    r = run_build("--owl-model", str(tiny_checkpoints.owl), "--sam-model", str(tiny_checkpoints.sam),
                  "--out", str(blocker / "engines"), "--engines", "skip")
    one_error_line(r, "cannot write to")


@pytest.mark.parametrize("args, fragment", [
    (["--engines", "sometimes"], "invalid choice: 'sometimes'"),
    (["--max-boxes", "0"], "must be at least 1"),
    (["--int8"], "--int8 needs --calib-dir"),
    (["--engines", "require"], "--engines require: cannot build TensorRT engines here"),
])
def test_bad_flag_values(run_build, one_error_line, args, fragment):
    from export.engine import tensorrt_status

    if "require" in args and tensorrt_status()[0]:
        pytest.skip("TensorRT and a GPU are available here: --engines require is valid")
    one_error_line(run_build(*args), fragment)
