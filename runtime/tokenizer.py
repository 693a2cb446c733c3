"""Prompt tokenisation with the ``tokenizers`` library alone (no transformers at run time)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import ArtifactError, UserError

log = logging.getLogger(__name__)


class PromptTokenizer:
    """Turns prompts into ``input_ids``/``attention_mask`` exactly as ``Owlv2Processor`` does:
    padded with the checkpoint's pad token to ``length`` and truncated to it (BOS/EOS kept)."""

    def __init__(self, tokenizer_dir: Path, length: int) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; re-export the artifact")
        self._tok = Tokenizer.from_file(str(path))
        pad_token = self._pad_token(Path(tokenizer_dir))
        pad_id = self._tok.token_to_id(pad_token)
        if pad_id is None:
            raise ArtifactError(f"pad token {pad_token!r} is not in {path}; re-export the artifact")
        self.length = length
        self._tok.enable_truncation(max_length=length)
        self._tok.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)

    @staticmethod
    def _pad_token(tokenizer_dir: Path) -> str:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            cfg = tokenizer_dir / name
            if cfg.is_file():
                pad = json.loads(cfg.read_text()).get("pad_token")
                if isinstance(pad, dict):
                    pad = pad.get("content")
                if pad:
                    return pad
        raise ArtifactError(f"{tokenizer_dir} names no pad token; re-export the artifact")

    def __call__(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompts given; pass at least one text prompt")
        encodings = self._tok.encode_batch(list(prompts))
        for text, enc in zip(prompts, encodings):
            if enc.overflowing:
                log.warning("prompt %r is longer than %d tokens and was truncated", text, self.length)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
