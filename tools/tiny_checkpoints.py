"""Tiny random OWLv2 and SAM2 checkpoints in Hugging Face format, with a real CLIP BPE tokenizer.

    python -m tools.tiny_checkpoints OUT [--seed N] [--force]

writes ``OUT/owlv2`` (``Owlv2ForObjectDetection`` + ``Owlv2Processor``) and ``OUT/sam2`` (a ``Sam2VideoModel``
that ``Sam2Model`` also loads, ``Sam2Processor``/``Sam2VideoProcessor``), weights of order 1 drawn per
seed until the outputs pass fixed checks. What is written and why: docs/ARCHITECTURE.md ("Tiny
checkpoints").
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


def build_tokenizer(words: tuple[str, ...] = TOKENIZER_WORDS) -> Any:
    """A ``CLIPTokenizer`` (tokenizers-backed) over ``build_vocab_and_merges(words)``."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(words)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=OWL_MAX_TEXT_LENGTH,
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


def owl_config(vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> Any:
    """Tiny ``Owlv2Config`` (about 100k parameters with a ~1k-token vocabulary)."""
    from transformers import Owlv2Config

    hidden = 32
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=OWL_MAX_TEXT_LENGTH,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=16,
    )
    # projection_dim must equal the text hidden size (the class head projects query embeds with it).
    return Owlv2Config(text_config=text_config, vision_config=vision_config, projection_dim=hidden)


def _sam_parts() -> dict[str, dict[str, Any]]:
    """Vision, prompt-encoder and mask-decoder settings shared by the SAM2 image and video configs."""
    dims = [8, 16, 32, 64]
    hidden = SAM_HIDDEN
    smallest = IMAGE_SIZE // 16  # 4: the last of the feature sizes
    backbone_config = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=dims[0],
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_kernel_size=[7, 7],
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        # Block 3 is the second block of stage 2; a first block of stages 1-3 would divide by zero.
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    return dict(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=backbone_config,
            backbone_channel_list=dims[::-1],
            backbone_feature_sizes=[[16, 16], [8, 8], [smallest, smallest]],
            fpn_hidden_size=hidden,
        ),
        prompt_encoder_config=dict(
            hidden_size=hidden, image_size=IMAGE_SIZE, patch_size=IMAGE_SIZE // smallest, mask_input_channels=8
        ),
        mask_decoder_config=dict(
            hidden_size=hidden,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=32,
        ),
    )


def sam_config() -> Any:
    """Tiny ``Sam2VideoConfig`` that ``Sam2Model`` and ``Sam2VideoModel`` both load.

    About 1.2M parameters: 0.63M for the image model (Hiera 40k, FPN 50k, prompt encoder and
    mask decoder 540k), 0.59M for the video-only memory modules. The mask down-sampler keeps the real
    checkpoints' stride-2 structure.
    """
    from transformers import Sam2VideoConfig

    hidden = SAM_HIDDEN
    smallest = IMAGE_SIZE // 16
    return Sam2VideoConfig(
        **_sam_parts(),
        image_size=IMAGE_SIZE,
        num_maskmem=7,
        max_object_pointers_in_encoder=16,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=2,
        memory_attention_num_attention_heads=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[smallest, smallest],
        memory_encoder_hidden_size=hidden,
        # 64 is hard-wired in Sam2VideoMemoryAttentionLayer (cross-attention kv_in_dim=64).
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )


def sam_image_config() -> Any:
    """The ``Sam2Config`` that ``Sam2Model.from_pretrained`` derives from ``sam_config()``."""
    from transformers import Sam2Config

    return Sam2Config(**_sam_parts())


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


def build_owl(seed: int, log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model, processor) for the tiny OWLv2 checkpoint.

    Weights are drawn (``reinitialise``) for ``_draw_seed(seed, 0)``, ``(seed, 1)``… until
    ``owl_output_problem`` finds nothing on the probe image: deterministic per seed, fit for any.
    """
    import torch
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = build_tokenizer()
    config = owl_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
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


def build_sam(seed: int, log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(model, processor) for the tiny SAM2 checkpoint (a ``Sam2VideoModel`` and a ``Sam2Processor``).

    Weights are drawn like ``build_owl``'s, until ``sam_output_problem`` (run on a ``Sam2Model``
    holding the same image weights) finds nothing on the probe image.
    """
    import torch
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor, Sam2VideoModel

    image_processor = Sam2ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        mask_size={"height": SAM_MASK_SIZE, "width": SAM_MASK_SIZE},
    )
    processor = Sam2Processor(image_processor=image_processor, target_size=IMAGE_SIZE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2VideoModel(sam_config()).eval()
        image_model = Sam2Model(sam_image_config()).eval()
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
) -> TinyCheckpoints:
    """Write ``out_dir/owlv2`` and ``out_dir/sam2``; return their paths.

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
            owl_model, owl_processor = build_owl(seed, log=say)
            say(f"writing {out_dir / OWL_DIRNAME}: model, tokenizer, processor")
            owl_model.save_pretrained(tmp / OWL_DIRNAME)
            owl_processor.save_pretrained(tmp / OWL_DIRNAME)

            say(f"building tiny SAM2 (seed {seed})")
            sam_model, sam_processor = build_sam(seed, log=say)
            say(f"writing {out_dir / SAM_DIRNAME}: model, processor")
            sam_model.save_pretrained(tmp / SAM_DIRNAME)
            sam_processor.save_pretrained(tmp / SAM_DIRNAME)
            # Only video_preprocessor_config.json: Sam2VideoProcessor.from_pretrained then loads too,
            # while processor_config.json (AutoProcessor) stays Sam2Processor's.
            Sam2VideoVideoProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
                tmp / SAM_DIRNAME
            )
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
    args = parser.parse_args(argv)
    written = write_tiny_checkpoints(args.out, seed=args.seed, force=args.force, log=print)
    print(f"wrote {written.owl} and {written.sam}")
    return 0


if __name__ == "__main__":
    from runtime.errors import run_cli

    run_cli(main)
