"""runtime.manifest's checks of an engines directory before anything is loaded: each one refuses.
(Hashes of the files, and the cache of verified ones: tests/runtime/test_pipeline.py.)"""

from __future__ import annotations

import json

import pytest

from runtime.errors import ArtifactError
from runtime.manifest import MANIFEST_NAME, SCHEMA_VERSION, load_manifest

VALID = {"schema_version": SCHEMA_VERSION, "sizes": {}, "graphs": {}, "preprocessing": {}}


def write(root, text: str):
    root.mkdir(exist_ok=True)
    (root / MANIFEST_NAME).write_text(text)
    return root


def test_a_valid_manifest_loads(tmp_path):
    assert load_manifest(write(tmp_path / "a", json.dumps(VALID))).data == VALID


def test_profile_maxima_are_read_from_the_manifest_or_refused_in_one_line(tmp_path):
    data = {**VALID, "profiles": {"batch": {"min": 1, "opt": 1, "max": 3}, "num_boxes": {"min": 1, "max": 0}}}
    m = load_manifest(write(tmp_path / "a", json.dumps(data)))
    assert m.profile_max("batch") == 3 and m.profile_max("batch", 1) == 3
    assert m.profile_max("num_boxes", 7) == 0, "a maximum of 0 is a value, not a missing profile"
    assert m.profile_max("num_prompts", None) is None and m.profile_max("num_prompts", 1) == 1
    with pytest.raises(ArtifactError, match=r"the manifest has no profile for 'num_prompts'; re-export the artifact$"):
        m.profile_max("num_prompts")


@pytest.mark.parametrize("change,match", [
    (dict(schema_version=SCHEMA_VERSION + 1),
     f"schema version {SCHEMA_VERSION + 1}, this runtime reads version {SCHEMA_VERSION}"),
    (dict(schema_version=None), "schema version None"),
    (dict(sizes=None), "lacks 'sizes'"),
    (dict(graphs=None), "lacks 'graphs'"),
    (dict(preprocessing=None), "lacks 'preprocessing'"),
])
def test_schema_and_structure_are_checked(tmp_path, change, match):
    data = {k: v for k, v in {**VALID, **change}.items() if v is not None}
    with pytest.raises(ArtifactError, match=match) as e:
        load_manifest(write(tmp_path / "a", json.dumps(data)))
    assert "re-export" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("empty", f"has no {MANIFEST_NAME}"),
    ("not json", "is unreadable"),
])
def test_what_is_not_an_artifact_is_refused(tmp_path, case, match):
    root = tmp_path / "a"
    if case == "empty":
        root.mkdir()
    elif case == "not json":
        write(root, '{"schema_version": 1,')
    with pytest.raises(ArtifactError, match=match):
        load_manifest(root)
