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


def _load(family: str, source: str, model_cls: Any, processor_cls: Any, *, kind: str | None = None,
          hint: str = "check the id or path, or run python -m tools.tiny_checkpoints DIR for offline checkpoints",
          all_weights: Callable[[list[str]], str] | None = None) -> LoadedModel:
    """``model_cls`` and ``processor_cls`` from ``source``, or a one-line UserError (``kind`` and ``hint``
    in it). With ``all_weights``, a checkpoint lacking some of the model's weights (``from_pretrained``
    would initialise them at random with only a warning) is refused with ``all_weights(missing keys)``."""
    _check_local(source, family)
    kind = kind or _KIND[family]
    try:
        if all_weights is None:
            model = model_cls.from_pretrained(source)
        else:
            model, info = model_cls.from_pretrained(source, output_loading_info=True)
            missing = sorted(info.get("missing_keys", []))
            if missing:
                raise UserError(all_weights(missing))
        processor = processor_cls.from_pretrained(source)
    except OSError as e:
        raise UserError(f"cannot load {kind} model {source!r} ({first_line(e)}); {hint}") from None
    model.eval()
    revision = getattr(model.config, "_commit_hash", None)
    return LoadedModel(family, source, model, processor, _config_hash(model.config), revision)


def load_owl(source: str) -> LoadedModel:
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    return _load("owl", source, Owlv2ForObjectDetection, Owlv2Processor)


def load_sam(source: str) -> LoadedModel:
    from transformers import Sam2Model, Sam2Processor

    return _load("sam", source, Sam2Model, Sam2Processor)
