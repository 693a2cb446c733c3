"""The artifact's ``manifest.json``: what an engines directory holds, and its verification.

Written by ``export.build``, read by the runtime before it loads anything. Pure JSON + hashlib so
the runtime stays light.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARITY_NAME = "parity.json"
TOKENIZER_DIR = "tokenizer"
PRECISIONS = ("fp32", "fp16", "int8")
#: A graph's entry ``onnxruntime`` holds, per precision, the graphs written for ONNX Runtime on CPU
#: (contrib-op fusions, ORT's own INT8); ``files`` holds the portable graphs (standard ONNX: the FP32
#: reference and the FP16/INT8 graphs TensorRT builds from). See :meth:`Manifest.onnxruntime_graph_path`.
ONNXRUNTIME = "onnxruntime"
#: Which graphs an ONNX Runtime session opens: ``onnxruntime`` (the rule above) or ``portable`` (always
#: ``files``: checking the TensorRT graphs' numerics on CPU).
FLAVOURS = (ONNXRUNTIME, "portable")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_file_name(graph: str, precision: str, flavour: str = "portable") -> str:
    """``owl_image.onnx`` for FP32 (the reference export), ``owl_image.fp16.onnx`` otherwise; the
    ONNX Runtime flavour ends in ``.ort.onnx`` (``owl_image.ort.onnx``, ``owl_image.int8.ort.onnx``)."""
    stem = graph if precision == "fp32" else f"{graph}.{precision}"
    return f"{stem}.ort.onnx" if flavour == ONNXRUNTIME else f"{stem}.onnx"


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]
    # files already hashed by this manifest: (path, sha256) -> (size, mtime_ns) they had. Loading the
    # same engine twice (Pipeline.load, then the backend's opener or the tracker) hashes it once; a
    # file changed since (size or mtime) is hashed again.
    _verified: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sizes(self) -> dict[str, int]:
        return self.data["sizes"]

    @property
    def graphs(self) -> dict[str, Any]:
        return self.data["graphs"]

    def preprocessing(self, family: str) -> dict[str, Any]:
        return self.data["preprocessing"][family]

    def precisions_of(self, graph: str) -> list[str]:
        return sorted(self.graphs[graph]["files"])

    def graph_path(self, graph: str, precision: str, verify: bool = True) -> Path:
        """Path of a graph's ONNX file at ``precision``, its files' sha256 checked first."""
        if graph not in self.graphs:
            raise ArtifactError(
                f"{self.root} has no graph {graph!r} (it has {', '.join(sorted(self.graphs)) or 'none'}); "
                "re-export with python -m export.build"
            )
        files = self.graphs[graph]["files"]
        if precision not in files:
            raise ArtifactError(
                f"{self.root} has no {precision} {graph!r} graph (it has {', '.join(sorted(files))}); "
                f"re-export with python -m export.build --{precision}"
            )
        return self._entry_path(files[precision], verify)

    def onnxruntime_entry(self, graph: str, precision: str) -> dict[str, Any] | None:
        """The graph's ONNX Runtime flavour at ``precision``, if the export wrote one."""
        return ((self.graphs.get(graph) or {}).get(ONNXRUNTIME) or {}).get(precision)

    def onnxruntime_graph_path(self, graph: str, precision: str, verify: bool = True) -> Path:
        """What ONNX Runtime runs: the graph's ``onnxruntime[precision]`` entry where the export wrote
        one, else the portable graph (:meth:`graph_path`) — except INT8, which ONNX Runtime runs only
        in its own flavour (the portable INT8 graph is TensorRT's: in ORT it is for numerics checks,
        opened with ``flavour="portable"``)."""
        entry = self.onnxruntime_entry(graph, precision)
        if entry is not None:
            return self._entry_path(entry, verify)
        if precision == "int8" and graph in self.graphs:
            raise ArtifactError(
                f"{self.root} has no ONNX Runtime int8 {graph!r} graph (its INT8 graphs are TensorRT's); "
                "re-export with python -m export.build --int8 --calib-dir DIR"
            )
        return self.graph_path(graph, precision, verify)

    def _entry_path(self, entry: dict[str, Any], verify: bool) -> Path:
        if verify:
            for f in entry["files"]:
                self.verify_file(f["path"], f["sha256"])
        return self.root / entry["files"][0]["path"]

    def verify_file(self, rel: str, expected: str) -> None:
        path = self.root / rel
        if not path.is_file():
            raise ArtifactError(f"{path} listed in the manifest is missing; re-export the artifact")
        st = path.stat()
        if self._verified.get((rel, expected)) == (st.st_size, st.st_mtime_ns):
            return
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path} does not match the manifest (sha256 {actual[:12]}… vs {expected[:12]}…): "
                "the file was changed or corrupted; re-export or rebuild it"
            )
        self._verified[(rel, expected)] = (st.st_size, st.st_mtime_ns)


def load_manifest(root: str | Path) -> Manifest:
    """Read and check the manifest of an engines directory (schema and structure, not hashes)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"engines directory {root} does not exist; build one with python -m export.build --out {root}")
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}: not an engines directory; build one with python -m export.build")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); re-export the artifact") from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema version {version}, this runtime reads version {SCHEMA_VERSION}; "
            "re-export the artifact with this version of the toolkit"
        )
    for key in ("sizes", "graphs", "preprocessing"):
        if key not in data:
            raise ArtifactError(f"{path} lacks {key!r}; re-export the artifact")
    return Manifest(root=root, data=data)


def is_artifact(root: Path) -> bool:
    return (root / MANIFEST_NAME).is_file()
