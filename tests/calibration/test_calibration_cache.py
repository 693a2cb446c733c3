"""The cache of calibration ranges: exact-key hits, misses on any change, unreadable entries recalibrated."""

from __future__ import annotations

import json
import logging

from calibration.cache import ScaleCache, cache_path, key_sha256

KEY = {"graph": "owl_image", "graph_sha256": "ab" * 32, "images_sha256": "cd" * 32, "method": "entropy"}
SCALES = {"pixel_values": 0.0183, "val_12": 1.5e-3}


def test_round_trip_and_exact_key(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    path = ScaleCache(old).store("owl_image", KEY, SCALES, method="entropy", fallback=None, seconds=1.0, runs=6)
    assert path == cache_path(old, "owl_image") and path.is_file()
    cache = ScaleCache(new, [old])
    entry = cache.lookup("owl_image", KEY)
    assert entry["scales"] == SCALES and entry["key_sha256"] == key_sha256(KEY)
    assert cache.lookup("owl_image", {**KEY, "images_sha256": "ef" * 32}) is None
    assert cache.lookup("sam2_image", KEY) is None
    cache.copy_entry("owl_image", entry)
    assert json.loads(cache_path(new, "owl_image").read_text()) == entry


def test_unreadable_or_malformed_entries_are_recalibrated(tmp_path, caplog):
    cache = ScaleCache(tmp_path, [tmp_path])
    path = cache.store("owl_image", KEY, SCALES, method="max", fallback=None, seconds=0.1, runs=2)
    path.write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        assert cache.lookup("owl_image", KEY) is None
    assert "unreadable" in caplog.text
    cache.store("owl_image", KEY, {"t": float("nan")}, method="max", fallback=None, seconds=0.1, runs=2)
    assert cache.lookup("owl_image", KEY) is None
    cache.store("owl_image", KEY, {"t": -1.0}, method="max", fallback=None, seconds=0.1, runs=2)
    assert cache.lookup("owl_image", KEY) is None
