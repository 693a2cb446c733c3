"""The artifact's ``manifest.json``: what an engines directory holds, and its verification.

Written by ``export.build``, read by the runtime before it loads anything. Pure JSON + hashlib so
the runtime stays light.
"""

from __future__ import annotations

import hashlib
import json
import shlex
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


def export_command(root: str | Path, data: dict[str, Any] | None = None, *, precision: str | None = None,
                   video: bool | None = None) -> str:
    """The ``python -m export.build`` command that (re)writes the engines folder ``root`` with every
    flag it needs: the manifest's source models (placeholders when unknown: the hub defaults would
    need the network), the precisions it has plus ``precision`` (INT8 with its ``--calib-dir``), and
    ``--video`` when it has SAM2's video graphs or ``video``."""
    from runtime.graphs import SAM2_VIDEO_GRAPHS

    data = data or {}
    sources = data.get("sources") or {}
    owl = (sources.get("owl") or {}).get("model") or "ID|DIR"
    sam = (sources.get("sam") or {}).get("model") or "ID|DIR"
    graphs = data.get("graphs") or {}
    have = {p for g in graphs.values() if isinstance(g, dict) for p in g.get("files", {})} | {precision}
    if video is None:
        video = any(g.name in graphs for g in SAM2_VIDEO_GRAPHS)
    words = ["python -m export.build", "--owl-model", _quote(owl), "--sam-model", _quote(sam), "--out",
             _quote(str(root)), "--fp32"]
    words += ["--fp16"] * ("fp16" in have) + ["--int8 --calib-dir IMAGES"] * ("int8" in have) + ["--video"] * bool(video)
    return " ".join(words)


def _quote(text: str) -> str:
    return text if text == "ID|DIR" else shlex.quote(text)


_REQUIRED = object()  # Manifest.profile_max without a default

#: How the graph files written for ONNX Runtime alone end (TensorRT never reads them).
ONNXRUNTIME_SUFFIX = ".ort.onnx"


def graph_file_name(graph: str, precision: str, flavour: str = "portable") -> str:
    """``owl_image.onnx`` for FP32 (the reference export), ``owl_image.fp16.onnx`` otherwise; the
    ONNX Runtime flavour ends in ``.ort.onnx`` (``owl_image.ort.onnx``, ``owl_image.int8.ort.onnx``)."""
    stem = graph if precision == "fp32" else f"{graph}.{precision}"
    return stem + ONNXRUNTIME_SUFFIX if flavour == ONNXRUNTIME else f"{stem}.onnx"


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]
    # files already hashed by this manifest: (path, sha256) -> their _stamp then. Loading the same
    # engine twice (Pipeline.load, then the backend's opener or the tracker) hashes it once; a file
    # whose size, mtime or ctime changed since is hashed again. A new manifest hashes everything.
    _verified: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sizes(self) -> dict[str, int]:
        return self.data["sizes"]

    @property
    def graphs(self) -> dict[str, Any]:
        return self.data["graphs"]

    def profile_max(self, dim: str, default: Any = _REQUIRED) -> Any:
        """The profile maximum of dynamic dim ``dim`` (an int); ``default`` where the manifest has none
        (without one, a missing profile is the artifact's error)."""
        profile = (self.data.get("profiles") or {}).get(dim) or {}
        if "max" not in profile:
            if default is _REQUIRED:
                raise ArtifactError(f"{self.root}: the manifest has no profile for {dim!r}; re-export the artifact")
            return default
        return int(profile["max"])

    @property
    def precision_graphs(self) -> list[str]:
        """The graphs written at each precision: all but the pixel graphs (FP32 at every precision)."""
        from runtime.graphs import GRAPHS

        return [n for n in self.graphs if not getattr(GRAPHS.get(n), "fixed_precision", None)]

    def preprocessing(self, family: str) -> dict[str, Any]:
        return self.data["preprocessing"][family]

    def precisions_of(self, graph: str) -> list[str]:
        return sorted(self.graphs[graph]["files"])

    def graph_path(self, graph: str, precision: str, verify: bool = True) -> Path:
        """Path of a graph's ONNX file at ``precision``, its files' sha256 checked first."""
        if graph not in self.graphs:
            raise ArtifactError(
                f"{self.root} has no graph {graph!r} (it has {', '.join(sorted(self.graphs)) or 'none'}); "
                f"re-export with {export_command(self.root, self.data)}"
            )
        files = self.graphs[graph]["files"]
        if precision not in files:
            raise ArtifactError(
                f"{self.root} has no {precision} {graph!r} graph (it has {', '.join(sorted(files))}); "
                f"re-export with {export_command(self.root, self.data, precision=precision)}"
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
                f"re-export with {export_command(self.root, self.data, precision='int8')}"
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
        stamp = _stamp(path)
        if self._verified.get((rel, expected)) == stamp:
            return
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path} does not match the manifest (sha256 {actual[:12]}… vs {expected[:12]}…): "
                "the file was changed or corrupted; re-export or rebuild it"
            )
        self._verified[(rel, expected)] = stamp


def _stamp(path: Path) -> tuple[int, int, int]:
    """What tells a rewritten file from the one hashed: size, mtime and ctime. Any write or rename
    sets ctime to the clock, and no user call sets it back (``os.utime`` restores mtime, not ctime),
    so only a same-size rewrite within the filesystem's timestamp granularity of the hashed write
    (or a change of the system clock) goes unseen until the manifest is loaded again."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def load_manifest(root: str | Path) -> Manifest:
    """Read and check the manifest of an engines directory (schema and structure, not hashes)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"engines directory {root} does not exist; build one with {export_command(root)}")
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}: not an engines directory; build one with {export_command(root)}")
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
