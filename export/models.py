"""Load the PyTorch reference models (HF transformers) from a hub id or a local directory."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from export import first_line
from runtime.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_OWL_MODEL = "google/owlv2-base-patch16-ensemble"
DEFAULT_SAM_MODEL = "facebook/sam2.1-hiera-small"

# model_type values of config.json that each family accepts
_MODEL_TYPES = {"owl": ("owlv2",), "sam": ("sam2", "sam2_video")}
_KIND = {"owl": "OWLv2", "sam": "SAM2"}
_FLAG = {"owl": "--owl-model", "sam": "--sam-model"}
#: What a checkpoint folder is made of (configs, tokenizer, weights); a hub snapshot is fetched as these.
CHECKPOINT_PATTERNS = ("*.json", "*.txt", "*.model", "*.safetensors")
OFFLINE_HINT = ("pass local checkpoint folders with --owl-model DIR --sam-model DIR (python -m tools.tiny_checkpoints "
                "DIR writes tiny random ones)")


@dataclass
class LoadedModel:
    family: str  # "owl" | "sam"
    source: str  # what the user gave: hub id or directory
    model: Any  # the transformers model, in eval mode
    processor: Any  # the matching transformers processor
    config_sha256: str
    revision: str | None

    def source_record(self) -> dict[str, Any]:
        return {
            "model": self.source,
            "revision": self.revision,
            "config_sha256": self.config_sha256,
            "model_class": type(self.model).__name__,
        }


def _config_hash(config: Any) -> str:
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _check_local(source: str, family: str) -> None:
    """Clear errors for local paths; hub ids (``org/name`` that is not a directory) pass through."""
    path = Path(source)
    looks_local = path.is_absolute() or source.startswith(".") or path.exists() or source.count("/") != 1
    if not looks_local:
        return
    kind = _KIND[family]
    if not path.exists():
        raise UserError(f"{kind} model path {source} does not exist; give a local checkpoint directory or a hub id")
    if not path.is_dir():
        raise UserError(f"{kind} model path {source} is not a directory; give a checkpoint directory")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UserError(f"{source} has no config.json: not a Hugging Face {kind} checkpoint")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg} is not valid JSON ({e}); give a Hugging Face {kind} checkpoint") from None
    if model_type not in _MODEL_TYPES[family]:
        raise UserError(
            f"{source} is a {model_type!r} checkpoint, not {kind} (expected model_type "
            f"{' or '.join(_MODEL_TYPES[family])}); pass it to the right flag"
        )


def is_hub_id(source: str) -> bool:
    """``org/name`` that is not a local path: a Hugging Face hub id (the rule ``_check_local`` follows)."""
    path = Path(source)
    return not (path.is_absolute() or source.startswith(".") or path.exists() or source.count("/") != 1)


def cached_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder of ``repo_id`` when it holds a checkpoint
    (config.json and weights), without any network access; else None."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or no huggingface_hub
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return folder if (folder / "config.json").is_file() and has_weights else None


def hub_unreachable(repo_id: str, timeout: float = 5.0) -> str | None:
    """Why ``repo_id`` cannot be fetched from the hub now (offline mode, no network, no such repo),
    found in one request of at most ``timeout`` seconds; None when it can."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        return "huggingface_hub is not installed (pip install 'owlsam-trt[export]')"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout)
    except Exception as e:  # httpx/requests connection errors, RepositoryNotFoundError, GatedRepoError...
        return f"{type(e).__name__}: {first_line(e)}"
    return None


def require_hub(source: str, family: str) -> Path | None:
    """For a hub id: its cached snapshot folder, or None when it must (and can) be downloaded; a
    one-line UserError within seconds when it is not cached and the hub cannot be reached (instead
    of transformers' retries, half a minute). Local paths pass (None)."""
    if not is_hub_id(source):
        return None
    folder = cached_snapshot(source)
    if folder is not None:
        return folder
    why = hub_unreachable(source)
    if why is not None:
        raise UserError(f"{_FLAG[family]} {source}: not in the local Hugging Face cache and the hub cannot be reached "
                        f"({why}); {OFFLINE_HINT}")
    return None


def download_snapshot(repo_id: str, family: str) -> Path:
    """Fetch a checkpoint's files (top level: configs, tokenizer, safetensors weights, else .bin)
    into the Hugging Face cache, with its progress bars; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(CHECKPOINT_PATTERNS), ignore_patterns=["*/*"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.bin"], ignore_patterns=["*/*"]))
    except Exception as e:
        raise UserError(f"{_FLAG[family]} {repo_id}: download failed ({first_line(e)}); {OFFLINE_HINT}") from None
    return folder


def _load(family: str, source: str, model_cls: Any, processor_cls: Any, *, kind: str | None = None,
          hint: str = "check the id or path, or run python -m tools.tiny_checkpoints DIR for offline checkpoints",
          all_weights: Callable[[list[str]], str] | None = None) -> LoadedModel:
    """``model_cls`` and ``processor_cls`` from ``source``, or a one-line UserError (``kind`` and ``hint``
    in it). With ``all_weights``, a checkpoint lacking some of the model's weights (``from_pretrained``
    would initialise them at random with only a warning) is refused with ``all_weights(missing keys)``."""
    _check_local(source, family)
    kind = kind or _KIND[family]
    cached = require_hub(source, family)  # fails fast offline; a cached hub checkpoint loads without the network
    where = str(cached) if cached is not None else source
    try:
        if all_weights is None:
            model = model_cls.from_pretrained(where)
        else:
            model, info = model_cls.from_pretrained(where, output_loading_info=True)
            missing = sorted(info.get("missing_keys", []))
            if missing:
                raise UserError(all_weights(missing))
        processor = processor_cls.from_pretrained(where)
    except OSError as e:
        raise UserError(f"cannot load {kind} model {source!r} ({first_line(e)}); {hint}") from None
    model.eval()
    revision = getattr(model.config, "_commit_hash", None) or (cached.name if cached is not None else None)
    return LoadedModel(family, source, model, processor, _config_hash(model.config), revision)


def load_owl(source: str) -> LoadedModel:
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    return _load("owl", source, Owlv2ForObjectDetection, Owlv2Processor)


def load_sam(source: str) -> LoadedModel:
    from transformers import Sam2Model, Sam2Processor

    return _load("sam", source, Sam2Model, Sam2Processor)
