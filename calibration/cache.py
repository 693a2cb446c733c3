"""The cache of calibration ranges: ``<artifact>/calibration/<graph>.json``, one file per graph.

An entry holds the activation scales of a graph's INT8 quantizers (``{tensor: scale}``, symmetric
INT8: ``scale = amax / 127``; ONNX Runtime's asymmetric u8 flavour, cached as ``<graph>.onnxruntime``,
also ``zero_points``) and the key they were computed for: the sha256 of the graph's FP32
ONNX files, of the FP32 graphs its calibration inputs come from, of the calibration images (their
relative paths and bytes), the input settings and the calibration method (see
:func:`calibration.inputs.calibration_key`). A re-export with the same key — same checkpoint, same
images, same settings — reuses the scales instead of calibrating again; any difference recalibrates.

Entries are read from the previous artifact at the output path (an export replaces the directory
as a whole, so the cache travels from the old artifact to the new one) and written to the one
being built. An unreadable entry is reported and recalibrated, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"
CACHE_VERSION = 1


def key_sha256(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_path(root: Path, graph: str) -> Path:
    return Path(root) / CALIBRATION_DIR / f"{graph}.json"


class ScaleCache:
    """Read cached scales from ``read_roots`` (in order), write new ones under ``write_root``."""

    def __init__(self, write_root: Path, read_roots: Sequence[Path] = ()) -> None:
        self.write_root = Path(write_root)
        self.read_roots = [Path(r) for r in read_roots]

    def lookup(self, graph: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached entry of ``graph`` for exactly ``key``, or None."""
        want = key_sha256(key)
        for root in self.read_roots:
            path = cache_path(root, graph)
            if not path.is_file():
                continue
            try:
                entry = json.loads(path.read_text())
                scales = entry["scales"]
                zero_points = entry.get("zero_points")
                ok = (entry.get("version") == CACHE_VERSION and isinstance(scales, dict) and scales
                      and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in scales.values())
                      and (zero_points is None or (isinstance(zero_points, dict) and set(zero_points) == set(scales)
                                                   and all(isinstance(v, int) for v in zero_points.values()))))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("calibration cache %s is unreadable (%s); calibrating %s again", path, e, graph)
                continue
            if not ok:
                log.warning("calibration cache %s is malformed; calibrating %s again", path, graph)
                continue
            if entry.get("key_sha256") == want:
                return entry
            log.info("calibration cache %s is for other inputs; calibrating %s again", path, graph)
        return None

    def store(self, graph: str, key: Mapping[str, Any], scales: Mapping[str, float], *, method: str,
              fallback: str | None, seconds: float, runs: int, zero_points: Mapping[str, int] | None = None) -> Path:
        path = cache_path(self.write_root, graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "version": CACHE_VERSION,
            "graph": graph,
            "key_sha256": key_sha256(key),
            "key": dict(key),
            "method": method,
            "fallback": fallback,
            "runs": runs,
            "seconds": round(seconds, 2),
            "scales": {k: float(v) for k, v in sorted(scales.items())},
        }
        if zero_points is not None:
            entry["zero_points"] = {k: int(v) for k, v in sorted(zero_points.items())}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(entry, indent=1) + "\n")
        tmp.replace(path)
        return path

    def copy_entry(self, graph: str, entry: Mapping[str, Any]) -> Path:
        """Write a reused entry into the new artifact unchanged."""
        path = cache_path(self.write_root, graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(entry), indent=1) + "\n")
        return path
