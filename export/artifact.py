"""Writing an engines directory: a temporary sibling renamed into place, never a half-written one."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from runtime.errors import UserError
from runtime.manifest import MANIFEST_NAME, is_artifact, sha256_file


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to replace something that is not ours unless ``force``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_artifact(out) and not force:
        raise UserError(
            f"output directory {out} exists and is not an engines directory (no {MANIFEST_NAME}); "
            "choose another --out or pass --force to replace it"
        )


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success it replaces ``out``.

    On any exception the temporary directory is removed and ``out`` is left as it was.
    """
    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write to {out.parent} ({e.strerror}); choose a writable --out") from None
    try:
        yield tmp
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_record(root: Path, path: Path) -> dict[str, Any]:
    return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
