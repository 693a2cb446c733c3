"""Tiny random OWLv2 and SAM2 checkpoints in Hugging Face format, with a real CLIP BPE tokenizer.

    python -m tools.tiny_checkpoints OUT [--seed N] [--force] [--shape NAME]

writes ``OUT/owlv2`` (``Owlv2ForObjectDetection`` + ``Owlv2Processor``) and ``OUT/sam2`` (a ``Sam2VideoModel``
that ``Sam2Model`` also loads, ``Sam2Processor``/``Sam2VideoProcessor``), weights of order 1 drawn per
seed until the outputs pass fixed checks; ``--shape`` another member of :data:`FAMILY`, the checkpoint
shapes the tests export. What is written and why: docs/ARCHITECTURE.md ("Tiny checkpoints").
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runtime.errors import UserError

OWL_DIRNAME = "owlv2"
SAM_DIRNAME = "sam2"

#: Query length of the OWLv2 text tower (``max_position_embeddings``), as in the real checkpoints.
OWL_MAX_TEXT_LENGTH = 16
#: Input side of both tiny models (OWLv2 vision ``image_size`` and SAM2 ``image_size``).
IMAGE_SIZE = 64
#: SAM2 low-resolution mask side: 4x the smallest feature map (64 / 16 * 4), like 256 for 1024.
SAM_MASK_SIZE = 16
#: SAM2 width shared by the FPN, prompt encoder, mask decoder and memory attention/encoder. Video
#: tracking needs it to be a multiple of, and larger than, the memory width (64, hard-wired in
#: ``Sam2VideoMemoryAttentionLayer``): object pointers are split into hidden/64 memory tokens, and
#: with hidden <= 64 ``Sam2VideoModel`` fails on the second frame ("Tensors must have same number of
#: dimensions"). Hence 128, not the 32 that suffices for ``Sam2Model``.
SAM_HIDDEN = 128

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "!"

#: Words that become single tokens: the COCO and VOC class names and the words of OWLv2's prompt
#: templates. Anything else is split into sub-words or byte symbols.
TOKENIZER_WORDS = tuple(
    """
    a an the of photo picture image in on with and or this that there is are it its
    person people man woman child bicycle bike car motorcycle motorbike airplane aeroplane plane bus
    train truck boat traffic light fire hydrant stop sign parking meter bench bird cat dog horse
    sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis
    snowboard sports ball kite baseball bat glove skateboard surfboard tennis racket bottle wine
    glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot pot pizza
    donut cake chair couch sofa potted plant bed dining table toilet tv monitor laptop mouse remote
    keyboard cell phone microwave oven toaster sink refrigerator book clock vase scissors teddy
    hair drier toothbrush
    """.split()
)


@dataclass(frozen=True)
class TinyCheckpoints:
    """Where ``write_tiny_checkpoints`` put the two checkpoints."""

    owl: Path
    sam: Path


@dataclass(frozen=True)
class TinyShape:
    """What a family member varies, independently, as released checkpoints do; the defaults are
    the tiny checkpoints' own (:data:`FAMILY` ``"default"``). ``sam_processor_mask_size=None``
    leaves the SAM2 processor's ``mask_size`` at transformers' default (256), as a user converting
    a smaller model would; the OWLv2 tokenizer pads to ``owl_tokenizer_length``."""

    owl_image_size: int = IMAGE_SIZE
    owl_patch_size: int = 16
    owl_vision: tuple[int, int, int, int] = (32, 64, 2, 2)  # hidden, intermediate, layers, heads
    owl_text: tuple[int, int, int, int] = (32, 64, 2, 2)  # hidden (= projection_dim), intermediate, layers, heads
    owl_text_positions: int = OWL_MAX_TEXT_LENGTH  # max_position_embeddings
    owl_tokenizer_length: int = OWL_MAX_TEXT_LENGTH  # model_max_length (at most the positions)
    sam_image_size: int = IMAGE_SIZE  # a multiple of 32 (Hiera pools the patch grid three times)
    sam_dims: tuple[int, ...] = (8, 16, 32, 64)  # Hiera width per stage
    sam_blocks: tuple[int, ...] = (1, 1, 2, 1)
    sam_heads: tuple[int, ...] = (1, 1, 2, 2)
    sam_windows: tuple[int, ...] = (4, 4, 4, 4)
    # never the first block of stages 1-3 (ZeroDivisionError in modeling_sam2.py)
    sam_global_blocks: tuple[int, ...] = (3,)
    sam_pos_background: int = 4  # window_positional_embedding_background_size (7 in the released models)
    sam_hidden: int = SAM_HIDDEN  # FPN, prompt encoder, mask decoder, memory attention/encoder
    sam_memory_layers: int = 2
    sam_memory_heads: int = 1
    sam_num_maskmem: int = 7
    sam_max_pointers: int = 16
    sam_processor_mask_size: int | None = SAM_MASK_SIZE

    def __post_init__(self) -> None:
        if self.owl_image_size % self.owl_patch_size or self.sam_image_size % 32:
            raise ValueError(f"{self}: OWLv2 image size must be a multiple of its patch, SAM2's of 32")
        if self.owl_tokenizer_length > self.owl_text_positions:
            raise ValueError(f"{self}: the tokenizer pads past the text tower's positions")


#: Independently built tiny checkpoints: "default" is the tiny checkpoints' own shape; each other
#: member varies what released checkpoints vary (image and patch sizes that are not multiples of 32,
#: widths, heads, layers, text positions; SAM2 image size, Hiera widths, blocks, global attention,
#: positional-embedding background, hidden 128 or 256, memory attention, number of memories and
#: pointers), and leaves the SAM2 processor's mask_size at its default.
FAMILY: dict[str, TinyShape] = {
    "default": TinyShape(),
    "owl80-sam96-h256": TinyShape(
        owl_image_size=80, owl_vision=(48, 96, 3, 3), owl_text=(40, 80, 2, 2), owl_text_positions=12,
        owl_tokenizer_length=12, sam_image_size=96, sam_dims=(16, 32, 64, 128), sam_blocks=(1, 2, 3, 1),
        sam_heads=(1, 2, 4, 8), sam_windows=(4, 4, 6, 3), sam_global_blocks=(5,), sam_pos_background=6,
        sam_hidden=256, sam_memory_layers=1, sam_memory_heads=2, sam_num_maskmem=3, sam_processor_mask_size=None),
    "owl72p12-sam128": TinyShape(
        owl_image_size=72, owl_patch_size=12, owl_vision=(32, 48, 1, 4), owl_text=(48, 96, 3, 4),
        owl_text_positions=20, owl_tokenizer_length=16, sam_image_size=128, sam_blocks=(2, 1, 3, 2),
        sam_global_blocks=(4, 7), sam_pos_background=8, sam_memory_heads=2, sam_num_maskmem=5,
        sam_max_pointers=8, sam_processor_mask_size=None),
    # SAM2 as in the report that started the family: the default's widths, one memory-attention layer,
    # the processor's mask_size left at 256
    "owl96p32-sam64-mem1": TinyShape(
        owl_image_size=96, owl_patch_size=32, owl_vision=(24, 48, 2, 2), sam_memory_layers=1,
        sam_processor_mask_size=None),
    "owl48p8-sam160": TinyShape(
        owl_image_size=48, owl_patch_size=8, owl_vision=(32, 64, 2, 1), owl_text=(24, 48, 1, 1),
        owl_text_positions=8, owl_tokenizer_length=8, sam_image_size=160, sam_dims=(12, 24, 48, 96),
        sam_blocks=(1, 1, 1, 2), sam_heads=(1, 2, 3, 4), sam_windows=(8, 4, 10, 5), sam_global_blocks=(4,),
        sam_pos_background=5, sam_memory_layers=1, sam_processor_mask_size=None),
}
#: The weights' seed of a member in the tests, where not 0: owl96p32-sam64-mem1's seed-1 weights make
#: its FP16 sam2_decoder choose the other mask for one box (stability 0.68 low-res pixels from the
#: threshold): a tie that the precision acceptance must accept and count as a flip.
FAMILY_SEEDS: dict[str, int] = {"owl96p32-sam64-mem1": 1}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255, in CLIP's vocab order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_vocab_and_merges(
    words: tuple[str, ...] = TOKENIZER_WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style vocabulary and BPE merges that make every word of ``words`` a single token.

    Layout (like CLIP's own): ids 0..255 the byte symbols ("!" is 0), 256..511 the same with
    ``</w>``, then one id per merge result, then BOS and EOS as the two highest ids. The merges are
    learned by plain BPE training on ``words`` (each counted once; ties broken by the pair itself),
    so the result is deterministic.
    """
    symbols = _byte_symbols()
    vocab: dict[str, int] = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    # Words are ASCII lowercase here, so each character is its own byte symbol.
    segments = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in dict.fromkeys(words)}
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for seg in segments.values():
            for pair in zip(seg, seg[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        vocab.setdefault(merged, len(vocab))
        for w, seg in segments.items():
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segments[w] = out
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return vocab, merges


def build_tokenizer(words: tuple[str, ...] = TOKENIZER_WORDS, max_length: int = OWL_MAX_TEXT_LENGTH) -> Any:
    """A ``CLIPTokenizer`` (tokenizers-backed) over ``build_vocab_and_merges(words)``, padding to ``max_length``."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(words)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=max_length,
    )
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise RuntimeError(f"tokenizer bug: {word!r} splits into {pieces}")
    if tokenizer.convert_tokens_to_ids(PAD_TOKEN) != 0 or tokenizer.eos_token_id != len(vocab) - 1:
        raise RuntimeError("tokenizer bug: '!' must be id 0 and EOS the highest id")
    return tokenizer


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------


def owl_config(vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int,
               shape: TinyShape = TinyShape()) -> Any:
    """Tiny ``Owlv2Config`` (about 100k parameters with a ~1k-token vocabulary for the default shape)."""
    from transformers import Owlv2Config

    hidden, text_ff, text_layers, text_heads = shape.owl_text
    vision_hidden, vision_ff, vision_layers, vision_heads = shape.owl_vision
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=text_ff,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        max_position_embeddings=shape.owl_text_positions,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    vision_config = dict(
        hidden_size=vision_hidden,
        intermediate_size=vision_ff,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=shape.owl_image_size,
        patch_size=shape.owl_patch_size,
    )
    # projection_dim must equal the text hidden size (the class head projects query embeds with it).
    return Owlv2Config(text_config=text_config, vision_config=vision_config, projection_dim=hidden)


def _sam_parts(shape: TinyShape = TinyShape()) -> dict[str, dict[str, Any]]:
    """Vision, prompt-encoder and mask-decoder settings shared by the SAM2 image and video configs."""
    dims = list(shape.sam_dims)
    hidden = shape.sam_hidden
    size = shape.sam_image_size
    smallest = size // 16  # the last of the feature sizes (4 for 64 px)
    backbone_config = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=dims[0],
        image_size=[size, size],
        patch_kernel_size=[7, 7],
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        blocks_per_stage=list(shape.sam_blocks),
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=list(shape.sam_heads),
        window_size_per_stage=list(shape.sam_windows),
        # Default: block 3 is the second block of stage 2; a first block of stages 1-3 would divide by zero.
        global_attention_blocks=list(shape.sam_global_blocks),
        window_positional_embedding_background_size=[shape.sam_pos_background] * 2,
    )
    return dict(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=backbone_config,
            backbone_channel_list=dims[::-1],
            backbone_feature_sizes=[[4 * smallest] * 2, [2 * smallest] * 2, [smallest, smallest]],
            fpn_hidden_size=hidden,
        ),
        prompt_encoder_config=dict(
            hidden_size=hidden, image_size=size, patch_size=size // smallest, mask_input_channels=8
        ),
        mask_decoder_config=dict(
            hidden_size=hidden,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=32,
        ),
    )


def sam_config(shape: TinyShape = TinyShape()) -> Any:
    """Tiny ``Sam2VideoConfig`` that ``Sam2Model`` and ``Sam2VideoModel`` both load.

    About 1.2M parameters for the default shape: 0.63M for the image model (Hiera 40k, FPN 50k,
    prompt encoder and mask decoder 540k), 0.59M for the video-only memory modules. The mask
    down-sampler keeps the real checkpoints' stride-2 structure.
    """
    from transformers import Sam2VideoConfig

    hidden = shape.sam_hidden
    smallest = shape.sam_image_size // 16
    return Sam2VideoConfig(
        **_sam_parts(shape),
        image_size=shape.sam_image_size,
        num_maskmem=shape.sam_num_maskmem,
        max_object_pointers_in_encoder=shape.sam_max_pointers,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=shape.sam_memory_layers,
        memory_attention_num_attention_heads=shape.sam_memory_heads,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[smallest, smallest],
        memory_encoder_hidden_size=hidden,
        # 64 is hard-wired in Sam2VideoMemoryAttentionLayer (cross-attention kv_in_dim=64).
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )


def sam_image_config(shape: TinyShape = TinyShape()) -> Any:
    """The ``Sam2Config`` that ``Sam2Model.from_pretrained`` derives from ``sam_config(shape)``."""
    from transformers import Sam2Config

    return Sam2Config(**_sam_parts(shape))


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


#: PyTorch's default Linear/Conv init (kaiming_uniform, a=sqrt(5)) has variance 1/(3 fan_in), which
#: shrinks activations by ~0.58 per layer: SAM2 mask logits come out at ~0.05. Scaling those weights
#: by sqrt(3) gives variance 1/fan_in (LeCun), which keeps activations of order 1 through the layers.
WEIGHT_GAIN = 3**0.5

#: Class-head biases (a negative logit shift, a logit scale above 1) that put the patch scores of
#: random weights on both sides of the default threshold 0.1, as with trained OWLv2 (which scores
#: most patches far below it); without them nearly every score lies between 0.2 and 0.8.
OWL_LOGIT_SHIFT_BIAS = -2.0
OWL_LOGIT_SCALE_BIAS = 1.0

#: Trained SAM2 says "object present" (object score logit > 0) for boxes around objects, and
#: ``Sam2VideoModel`` blanks the masks of frames whose score is negative; this bias on the object
#: score head keeps tiny-model tracking from reporting every prompted object as absent.
SAM_OBJECT_SCORE_BIAS = 1.0


def reinitialise(model: Any, seed: int) -> None:
    """Give every parameter (and SAM2's random Fourier buffers) order-1, seed-determined values.

    Modules with ``reset_parameters`` (Linear, Conv2d, ConvTranspose2d, LayerNorm, Embedding…) use
    PyTorch's defaults, with Linear/Conv weights then scaled by ``WEIGHT_GAIN``. Everything else
    (positional embeddings, class/special tokens such as SAM2's ``no_memory_embedding`` or
    ``no_object_pointer``, custom norms, layer scales) is drawn from a generator seeded with
    ``seed``: 1-D ``weight`` parameters (norms) as ``1 + 0.1·N(0,1)``, anything else as ``N(0,1)``.
    The global RNG is left as it was.
    """
    import torch

    scaled = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            own = list(module.parameters(recurse=False))
            if callable(reset) and own:
                reset()
                if isinstance(module, scaled):
                    module.weight.mul_(WEIGHT_GAIN)
                covered.update(id(p) for p in own)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in covered:
                continue
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            is_norm_weight = name.rsplit(".", 1)[-1] == "weight" and param.ndim == 1
            param.copy_(1.0 + 0.1 * noise if is_norm_weight else noise)
        for name, buf in model.named_buffers():
            # SAM2's random Fourier features for image and prompt positions (saved in the checkpoint).
            if name.endswith("positional_embedding"):
                buf.copy_(torch.randn(buf.shape, generator=gen, dtype=torch.float32))


#: How many weight draws a seed may take before the output checks give up (a bug if reached:
#: about one OWLv2 draw in four passes, and one SAM2 draw in two).
MAX_DRAWS = 64


def _draw_seed(seed: int, draw: int) -> int:
    """Distinct seeds for distinct (seed, draw) pairs, given 0 <= draw < MAX_DRAWS."""
    return seed * MAX_DRAWS + draw


def _probe_image() -> Any:
    """A fixed 64x64 RGB test card (smooth gradients plus noise) for the output checks."""
    import numpy as np

    rng = np.random.default_rng(20240611)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    base = np.stack([xx, yy, 1.0 - (xx + yy) / 2], axis=-1) * 200
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def owl_output_problem(model: Any, processor: Any, image: Any = None) -> str | None:
    """Why this OWLv2 model's outputs are unfit for tests, or None if they are fine.

    Fit means: logits with spread of order 1 across patches; some patch scores above 0.1 and some
    below (for every query, so thresholding means something); queries changing the logits; boxes
    neither collapsed nor spanning the image.
    """
    import torch

    image = _probe_image() if image is None else image
    inputs = processor(
        text=[["a photo of a cat", "a photo of a dog"]], images=image, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits[0]  # (patches, queries)
    above = (torch.sigmoid(logits) > 0.1).float().mean(dim=0)
    wh = out.pred_boxes[0, :, 2:]
    if logits.std(dim=0).min() < 0.5:
        return f"logit spread across patches {logits.std(dim=0).min():.3f} < 0.5"
    if above.min() < 0.05 or above.max() > 0.95:
        return f"fraction of scores above 0.1 per query {above.tolist()} not within [0.05, 0.95]"
    if (logits[:, 0] - logits[:, 1]).abs().mean() < 0.05:
        return "logits hardly depend on the query"
    if wh.min() < 0.01 or wh.max() > 0.95:
        return f"box sizes {wh.min():.3f}..{wh.max():.3f} degenerate"
    return None


def sam_output_problem(model: Any, processor: Any, image: Any = None) -> str | None:
    """Why this SAM2 image model's outputs are unfit for tests, or None if they are fine.

    ``model`` is a ``Sam2Model``. Fit means, for two opposite box prompts: low-res mask logits with
    spread above 0.3 and 10–90 % positive pixels; masks that differ between the boxes by at least
    15 % of their spread; IoU scores and object-score logits that differ between the boxes; positive
    object-score logits.
    """
    import torch

    image = _probe_image() if image is None else image
    quarter = IMAGE_SIZE // 4
    boxes = ([2, 2, 2 * quarter, 2 * quarter], [2 * quarter, quarter, IMAGE_SIZE - 2, IMAGE_SIZE - 2])
    masks, ious, objects = [], [], []
    for box in boxes:
        inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        masks.append(out.pred_masks.flatten())
        ious.append(out.iou_scores.flatten()[0].item())
        objects.append(out.object_score_logits.flatten()[0].item())
    for m in masks:
        positive = (m > 0).float().mean().item()
        if m.std() < 0.3:
            return f"mask logit spread {m.std():.3f} < 0.3"
        if not 0.1 <= positive <= 0.9:
            return f"{positive:.0%} positive mask pixels, not within 10-90%"
    spread = (masks[0].std() + masks[1].std()) / 2
    if (masks[0] - masks[1]).abs().mean() < 0.15 * spread:
        return "masks hardly depend on the box"
    if abs(ious[0] - ious[1]) < 1e-3 or abs(objects[0] - objects[1]) < 1e-3:
        return "IoU or object scores do not depend on the box"
    if min(objects) <= 0:
        return f"object score logits {objects} not all positive (video tracking would blank them)"
    return None


def build_owl(seed: int, log: Callable[[str], None] | None = None, shape: TinyShape = TinyShape()) -> tuple[Any, Any]:
    """(model, processor) for the tiny OWLv2 checkpoint of ``shape``.

    Weights are drawn (``reinitialise``) for ``_draw_seed(seed, 0)``, ``(seed, 1)``… until
    ``owl_output_problem`` finds nothing on the probe image: deterministic per seed, fit for any.
    """
    import torch
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = build_tokenizer(max_length=shape.owl_tokenizer_length)
    config = owl_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        shape=shape,
    )
    side = shape.owl_image_size
    image_processor = Owlv2ImageProcessor(size={"height": side, "width": side})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
    for draw in range(MAX_DRAWS):
        reinitialise(model, _draw_seed(seed, draw))
        with torch.no_grad():
            model.class_head.logit_shift.bias.fill_(OWL_LOGIT_SHIFT_BIAS)
            model.class_head.logit_scale.bias.fill_(OWL_LOGIT_SCALE_BIAS)
        problem = owl_output_problem(model, processor)
        # Calling the tokenizer sets padding on its backend, which tokenizer.json would record.
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
        if problem is None:
            if log:
                log(f"OWLv2 weights: draw {draw} of seed {seed} passed the output checks")
            return model, processor
    raise RuntimeError(f"no OWLv2 draw of seed {seed} passed the output checks; last: {problem}")


def build_sam(seed: int, log: Callable[[str], None] | None = None, shape: TinyShape = TinyShape()) -> tuple[Any, Any]:
    """(model, processor) for the tiny SAM2 checkpoint of ``shape`` (a ``Sam2VideoModel`` and a
    ``Sam2Processor``; its ``mask_size`` left at the default unless ``shape`` sets it, its
    ``target_size`` the image size, as ``Sam2Processor`` derives it).

    Weights are drawn like ``build_owl``'s, until ``sam_output_problem`` (run on a ``Sam2Model``
    holding the same image weights) finds nothing on the probe image.
    """
    import torch
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor, Sam2VideoModel

    side, mask_side = shape.sam_image_size, shape.sam_processor_mask_size
    masks = {} if mask_side is None else {"mask_size": {"height": mask_side, "width": mask_side}}
    image_processor = Sam2ImageProcessor(size={"height": side, "width": side}, **masks)
    processor = Sam2Processor(image_processor=image_processor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2VideoModel(sam_config(shape)).eval()
        image_model = Sam2Model(sam_image_config(shape)).eval()
    for draw in range(MAX_DRAWS):
        reinitialise(model, _draw_seed(seed, draw))
        with torch.no_grad():
            # One Fourier matrix for image and prompt positions, as in SAM2 (whose single
            # ``pe_layer`` the conversion script maps to both).
            model.prompt_encoder.shared_embedding.positional_embedding.copy_(
                model.shared_image_embedding.positional_embedding
            )
            model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(SAM_OBJECT_SCORE_BIAS)
        missing, _video_only = image_model.load_state_dict(model.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"Sam2Model lacks weights in the video checkpoint: {missing}")
        problem = sam_output_problem(image_model, processor)
        if problem is None:
            if log:
                log(f"SAM2 weights: draw {draw} of seed {seed} passed the output checks")
            return model, processor
    raise RuntimeError(f"no SAM2 draw of seed {seed} passed the output checks; last: {problem}")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def write_tiny_checkpoints(
    out_dir: Path,
    seed: int = 0,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    shape: TinyShape = TinyShape(),
) -> TinyCheckpoints:
    """Write ``out_dir/owlv2`` and ``out_dir/sam2`` (of ``shape``: a :data:`FAMILY` member); return their paths.

    Everything is written to a temporary sibling of ``out_dir`` first and renamed into place at the
    end, so ``out_dir`` is either complete or untouched. An existing non-empty ``out_dir`` is a
    ``UserError`` unless ``force`` (then it is replaced); an empty one is replaced silently.
    ``log`` (e.g. ``print``) receives one line per step; ``None`` is silent.
    """
    say = log or (lambda _msg: None)
    if not 0 <= seed < 2**32:
        raise UserError(f"seed {seed} is out of range; use an integer from 0 to {2**32 - 1}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another OUT")
    if _is_nonempty_dir(out_dir) and not force:
        raise UserError(f"{out_dir} exists and is not empty; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    import torch
    import transformers.utils.logging as hf_logging
    from transformers import Sam2VideoVideoProcessor

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; OUT should look like any new directory
    try:
        verbosity = hf_logging.get_verbosity()
        progress_bars = hf_logging.is_progress_bar_enabled()
        threads = torch.get_num_threads()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # These models are tiny: one thread is faster, and far steadier on a busy machine.
        torch.set_num_threads(1)
        try:
            say(f"building tiny OWLv2 (seed {seed})")
            owl_model, owl_processor = build_owl(seed, log=say, shape=shape)
            say(f"writing {out_dir / OWL_DIRNAME}: model, tokenizer, processor")
            owl_model.save_pretrained(tmp / OWL_DIRNAME)
            owl_processor.save_pretrained(tmp / OWL_DIRNAME)

            say(f"building tiny SAM2 (seed {seed})")
            sam_model, sam_processor = build_sam(seed, log=say, shape=shape)
            say(f"writing {out_dir / SAM_DIRNAME}: model, processor")
            sam_model.save_pretrained(tmp / SAM_DIRNAME)
            sam_processor.save_pretrained(tmp / SAM_DIRNAME)
            # Only video_preprocessor_config.json: Sam2VideoProcessor.from_pretrained then loads too,
            # while processor_config.json (AutoProcessor) stays Sam2Processor's.
            side = shape.sam_image_size
            Sam2VideoVideoProcessor(size={"height": side, "width": side}).save_pretrained(tmp / SAM_DIRNAME)
        finally:
            torch.set_num_threads(threads)
            hf_logging.set_verbosity(verbosity)
            if progress_bars:
                hf_logging.enable_progress_bar()
        for path in tmp.rglob("*"):  # save_pretrained leaves some files 0600
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)

        if out_dir.exists():
            # rename() replaces an empty directory only: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TinyCheckpoints(owl=out_dir / OWL_DIRNAME, sam=out_dir / SAM_DIRNAME)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.tiny_checkpoints",
        description="Write tiny random-weight OWLv2 and SAM2 checkpoints (Hugging Face format, real "
        "CLIP BPE tokenizer) to OUT/owlv2 and OUT/sam2.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument(
        "--force", action="store_true", help="replace OUT if it exists and is not empty"
    )
    parser.add_argument("--shape", choices=list(FAMILY), default="default",
                        help="which member of the family of checkpoint shapes the tests use (default: default)")
    args = parser.parse_args(argv)
    written = write_tiny_checkpoints(args.out, seed=args.seed, force=args.force, log=print, shape=FAMILY[args.shape])
    print(f"wrote {written.owl} and {written.sam}")
    return 0


if __name__ == "__main__":
    from runtime.errors import run_cli

    run_cli(main)
