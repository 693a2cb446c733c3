"""The engines directory ``owlsam-detect`` uses without ``--engines``: exported on first use, kept in
a cache folder and reused.

An entry is keyed by the contents of the two checkpoints (sha256 of their configs, tokenizer and
weights files), the precision, whether SAM2's video modules are in, and the versions of this toolkit,
torch and transformers. It lives in ``$OWLSAM_CACHE`` (default: the user cache folder,
``~/.cache/owlsam-trt`` on Linux). ``python -m export.build`` writes it as a hidden sibling renamed
into place, under a lock file, so a half-written entry is never used and two first runs export once;
an entry that fails verification (``Pipeline.load``'s manifest and sha256 checks) is rebuilt.
Hub ids resolve to the Hugging Face cache's snapshot, downloaded on first use; without the hub a
hub id that is not cached fails in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from runtime.errors import UserError
from runtime.manifest import SCHEMA_VERSION, is_artifact, sha256_file

ENTRIES = "artifacts"
HASHES_NAME = "file-hashes.json"
_HASHED = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin")  # what an export reads of a checkpoint
_hash_lock = threading.Lock()


def cache_root() -> Path:
    """``$OWLSAM_CACHE``, else the platform's user cache folder + ``owlsam-trt``."""
    if os.environ.get("OWLSAM_CACHE"):
        return Path(os.environ["OWLSAM_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "owlsam-trt"


def resolve_checkpoint(source: str, family: str, say: Callable[[str], None]) -> Path:
    """The local folder of ``--owl-model``/``--sam-model``: the folder itself, or a hub id's snapshot
    (downloaded when not cached; a one-line error in seconds when the hub cannot be reached)."""
    from export.models import _check_local, download_snapshot, is_hub_id, require_hub

    if not is_hub_id(source):
        _check_local(source, family)  # one-line errors for a missing or wrong folder
        return Path(source).resolve()
    folder = require_hub(source, family)
    if folder is None:
        say(f"downloading {source} from the Hugging Face hub")
        folder = download_snapshot(source, family)
    return folder


def _file_hashes(root: Path, files: list[Path]) -> dict[str, str]:
    """sha256 of ``files``, remembered in the cache by (resolved path, size, mtime): a full-size
    checkpoint (about 1 GB) is read once, not on every run."""
    memo_path = root / HASHES_NAME
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = {}, False
    for f in files:
        real = f.resolve()
        st = real.stat()
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key], changed = sha256_file(real), True
        out[f.name] = memo[key]
    if changed:
        from tools.outputs import write_atomic

        with _hash_lock:
            try:
                write_atomic(memo_path, lambda fh: fh.write(json.dumps(memo).encode()))
            except OSError:
                pass  # only a speed-up
    return out


def checkpoint_digest(folder: Path, root: Path) -> str:
    files = sorted({p for pattern in _HASHED for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise UserError(f"{folder} holds no checkpoint files ({', '.join(_HASHED)}); pass a Hugging Face checkpoint folder")
    return hashlib.sha256(json.dumps(_file_hashes(root, files), sort_keys=True).encode()).hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def entry_key(owl: Path, sam: Path, precision: str, video: bool, root: Path) -> str:
    """The entry's name: a hash of everything that changes the exported graphs."""
    record = {"owl": checkpoint_digest(owl, root), "sam": checkpoint_digest(sam, root), "precision": precision,
              "video": video, "schema": SCHEMA_VERSION,
              "versions": {p: _version(p) for p in ("owlsam-trt", "torch", "transformers", "onnx", "nvidia-modelopt")}}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]
    return f"{digest}-{precision}{'-video' if video else ''}"


@contextmanager
def _locked(path: Path, say: Callable[[str], None]) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) between processes; says so while it waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: filelock (installed with the export extra)
            from filelock import FileLock

            with FileLock(str(path) + ".filelock"):
                yield
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is writing {path.with_suffix('').name}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _export(owl: Path, sam: Path, precision: str, video: bool, out: Path) -> None:
    """``python -m export.build`` in this process (progress on stderr); ``out`` appears whole or not at all."""
    from export.build import main as build

    args = ["--owl-model", str(owl), "--sam-model", str(sam), "--out", str(out), "--force", "--fp32"]
    args += ["--fp16"] if precision == "fp16" else []
    args += ["--video"] if video else []
    build(args + ["--engines", "auto"])


def _clear_partials(entries: Path, key: str) -> None:
    """Remove what a killed export left of ``key`` (its staging folders): only under the lock."""
    for p in entries.glob(f".{key}.*"):
        shutil.rmtree(p, ignore_errors=True)


def cached_artifact(owl_model: str, sam_model: str, precision: str = "fp32", video: bool = False, *,
                    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
                    export: Callable[[Path, Path, str, bool, Path], None] | None = None
                    ) -> tuple[Path, Callable[[str], Path]]:
    """``(engines directory, rebuild)`` for the two checkpoints: the cached entry, exported first
    if there is none (by ``export(owl, sam, precision, video, out)``, default ``python -m
    export.build``). ``rebuild(reason)`` exports it again (for an entry that fails verification)."""
    from runtime.manifest import PRECISIONS

    export = export or _export
    if precision not in ("fp32", "fp16"):
        choices = f"one of {', '.join(PRECISIONS)}"
        if precision == "int8":
            raise UserError("--precision int8 needs calibration images, so it is not exported on the fly: export once with "
                            f"python -m export.build --owl-model {owl_model} --sam-model {sam_model} --out DIR --int8 "
                            "--calib-dir IMAGES, then pass --engines DIR")
        raise UserError(f"--precision {precision} is not {choices}")
    root = cache_root()
    owl = resolve_checkpoint(owl_model, "owl", say)
    sam = resolve_checkpoint(sam_model, "sam", say)
    entries = root / ENTRIES
    try:
        entries.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the model cache {entries} ({e.strerror or e}); set OWLSAM_CACHE to a writable "
                        "folder or pass --engines DIR") from None
    keys = [entry_key(owl, sam, precision, True, root)]
    if not video:  # an image run can use the entry a video run exported
        keys.insert(0, entry_key(owl, sam, precision, False, root))
    for key in keys:
        if is_artifact(entries / key):
            say(f"using the cached export {entries / key}")
            return entries / key, _rebuilder(entries, keys[0], owl, sam, precision, video, say, export)
    key = keys[0]
    with _locked(entries / f"{key}.lock", say):
        if not is_artifact(entries / key):  # else another process wrote it while this one waited
            _clear_partials(entries, key)
            say(f"exporting {owl_model} + {sam_model} ({precision}) into the cache {entries / key}; "
                "this happens once for these checkpoints")
            export(owl, sam, precision, video, entries / key)
        else:
            say(f"using the cached export {entries / key}")
    return entries / key, _rebuilder(entries, key, owl, sam, precision, video, say, export)


def _rebuilder(entries: Path, key: str, owl: Path, sam: Path, precision: str, video: bool,
               say: Callable[[str], None], export) -> Callable[[str], Path]:
    def rebuild(reason: str) -> Path:
        path = entries / key
        with _locked(entries / f"{key}.lock", say):
            say(f"the cached export {path} is unusable ({reason}); exporting it again")
            _clear_partials(entries, key)
            export(owl, sam, precision, video, path)
        return path

    return rebuild
