"""OWLv2 sub-networks as exportable modules: text tower, image tower + heads, class head.

The class head is its own small graph (``owl_head``) rather than fused into ``owl_image``: the image
tower then runs once per image whatever the prompts, its engine has no prompt dimension, and a new
prompt set costs only the text graph and this head.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from export.graph_export import GraphExport
from export.models import LoadedModel
from runtime.errors import UserError
from runtime.graphs import BATCH, NUM_PROMPTS, OWL_HEAD, OWL_IMAGE, OWL_TEXT

_EPS = 1e-6  # Owlv2ClassPredictionHead's normalisation epsilon

SAMPLE_PROMPTS = ("a photo of a cat", "a photo of a dog", "a photo of a person", "a photo of a car",
                  "a photo of a red bus on the street", "a photo of a bird", "a photo of a chair")


def _normalize(x: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    return x / (torch.linalg.norm(x, dim=-1, keepdim=True) + eps)


class OwlText(nn.Module):
    """input_ids, attention_mask -> L2-normalised text embeddings (the model's ``text_embeds``)."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.text_model = det.owlv2.text_model
        self.text_projection = det.owlv2.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        embeds = self.text_projection(pooled)
        return embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True)


class OwlImage(nn.Module):
    """pixel_values -> normalised class embeddings, logit shift, ELU+1 scale, boxes, objectness."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.det = det

    def forward(self, pixel_values: torch.Tensor):
        det = self.det
        feature_map, _ = det.image_embedder(pixel_values=pixel_values)
        b, h, w, d = feature_map.shape
        feats = feature_map.reshape(b, h * w, d)
        head = det.class_head
        class_embeds = _normalize(head.dense0(feats))
        shift = head.logit_shift(feats)
        scale = head.elu(head.logit_scale(feats)) + 1
        boxes = det.box_predictor(feats, feature_map)  # sigmoid(box_head + box_bias): bias baked in
        objectness = det.objectness_predictor(feats)
        return class_embeds, shift, scale, boxes, objectness


class OwlHead(nn.Module):
    """Class logits of every patch for every query, as ``Owlv2ClassPredictionHead`` computes them."""

    def forward(self, image_class_embeds, logit_shift, logit_scale, query_embeds):
        logits = torch.matmul(image_class_embeds, _normalize(query_embeds).transpose(0, 1))
        return (logits + logit_shift) * logit_scale


def owl_sizes(loaded: LoadedModel) -> dict[str, int]:
    """Static sizes of the OWL graphs, from the checkpoint's config and processor config."""
    cfg = loaded.model.config
    vision, text = cfg.vision_config, cfg.text_config
    size = loaded.processor.image_processor.size
    proc_size = int(size["height"]) if "height" in size else int(size["shortest_edge"])
    if proc_size != vision.image_size:
        raise UserError(
            f"{loaded.source}: the processor resizes to {proc_size} px but the vision tower expects "
            f"{vision.image_size} px; fix preprocessor_config.json"
        )
    text_length = int(loaded.processor.tokenizer.model_max_length)
    if text_length > text.max_position_embeddings:  # Owlv2Processor pads every prompt to it: the tower would fail
        raise UserError(
            f"{loaded.source}: the tokenizer pads prompts to {text_length} tokens (model_max_length) but the text "
            f"tower has {text.max_position_embeddings} positions (max_position_embeddings); set model_max_length "
            f"to at most {text.max_position_embeddings} in tokenizer_config.json"
        )
    return {
        "owl_image_size": vision.image_size,
        "owl_num_patches": (vision.image_size // vision.patch_size) ** 2,
        "owl_embed_dim": text.hidden_size,
        "owl_text_length": text_length,
        "channels": 3,
        "one": 1,
        "box_coords": 4,
    }


def owl_graph_exports(loaded: LoadedModel, sizes: Mapping[str, int]) -> list[GraphExport]:
    det = loaded.model
    tokenizer = loaded.processor.tokenizer
    length = sizes["owl_text_length"]
    s, p, d = sizes["owl_image_size"], sizes["owl_num_patches"], sizes["owl_embed_dim"]

    def text_inputs(dims, rng):
        n = dims[NUM_PROMPTS]
        texts = [SAMPLE_PROMPTS[i % len(SAMPLE_PROMPTS)] for i in range(n)]
        enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="np")
        return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    def image_inputs(dims, rng):
        return {"pixel_values": rng.standard_normal((dims[BATCH], 3, s, s)).astype(np.float32)}

    def head_inputs(dims, rng):
        b, q = dims[BATCH], dims[NUM_PROMPTS]
        embeds = rng.standard_normal((b, p, d)).astype(np.float32)
        return {
            "image_class_embeds": embeds / np.linalg.norm(embeds, axis=-1, keepdims=True),
            "logit_shift": rng.normal(0.0, 2.0, (b, p, 1)).astype(np.float32),
            "logit_scale": rng.uniform(0.5, 10.0, (b, p, 1)).astype(np.float32),
            "query_embeds": rng.standard_normal((q, d)).astype(np.float32),
        }

    return [
        GraphExport(OWL_TEXT, OwlText(det).eval(), text_inputs),
        GraphExport(OWL_IMAGE, OwlImage(det).eval(), image_inputs),
        GraphExport(OWL_HEAD, OwlHead().eval(), head_inputs),
    ]
