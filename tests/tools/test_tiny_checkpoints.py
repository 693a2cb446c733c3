"""tools.tiny_checkpoints: loadable, deterministic, a real tokenizer, outputs of order 1, a safe CLI.

Uses the session fixture ``tiny_checkpoints`` (tests/conftest.py: seed 0), so the checkpoints the other
tests run on are the ones checked here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.errors import UserError
from tools import tiny_checkpoints as tc

REPO_ROOT = Path(__file__).resolve().parents[2]

PROMPTS = [
    "a photo of a cat",
    "dog",
    "a photo of a zebra-crossing 42",  # unknown word, punctuation, digits
    "Ünï ✓ 😀 CAT",  # non-ASCII bytes, upper case
    "a photo of a " + " ".join(["person", "bicycle", "car", "bus", "bird", "horse"] * 3),  # > 16 tokens
    "",
]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster, and far steadier on a busy machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def owl(tiny_checkpoints):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model, info = Owlv2ForObjectDetection.from_pretrained(tiny_checkpoints.owl, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval(), Owlv2Processor.from_pretrained(tiny_checkpoints.owl)


@pytest.fixture(scope="module")
def sam(tiny_checkpoints):
    from transformers import Sam2Model, Sam2Processor

    model, info = Sam2Model.from_pretrained(tiny_checkpoints.sam, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    return model.eval(), Sam2Processor.from_pretrained(tiny_checkpoints.sam)


# --- layout and loading ------------------------------------------------------------------------


def test_layout(tiny_checkpoints):
    root = tiny_checkpoints.owl.parent
    assert tiny_checkpoints.owl == root / "owlv2" and tiny_checkpoints.sam == root / "sam2"
    assert sorted(p.name for p in root.iterdir()) == ["owlv2", "sam2"]  # no temporary leftovers
    assert sorted(p.name for p in tiny_checkpoints.owl.iterdir()) == [
        "config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    ]
    assert sorted(p.name for p in tiny_checkpoints.sam.iterdir()) == [
        "config.json", "model.safetensors", "processor_config.json", "video_preprocessor_config.json",
    ]
    assert not any(p.name.startswith(".") for p in root.parent.iterdir())


def test_sizes_are_tiny(owl, sam):
    owl_model, _ = owl
    sam_model, _ = sam
    assert 50_000 < owl_model.num_parameters() < 200_000
    assert 300_000 < sam_model.num_parameters() < 1_000_000
    v, t = owl_model.config.vision_config, owl_model.config.text_config
    assert (v.image_size, v.patch_size, v.hidden_size, t.hidden_size, t.max_position_embeddings) == (64, 16, 32, 32, 16)
    assert owl_model.config.projection_dim == t.hidden_size


def test_sam2_video_model_loads_and_tracks(tiny_checkpoints):
    from transformers import AutoModel, Sam2VideoModel, Sam2VideoProcessor

    model, info = Sam2VideoModel.from_pretrained(tiny_checkpoints.sam, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert type(AutoModel.from_pretrained(tiny_checkpoints.sam)) is Sam2VideoModel
    processor = Sam2VideoProcessor.from_pretrained(tiny_checkpoints.sam)
    frames = [_image(48, 80, seed) for seed in range(3)]
    session = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_inputs_to_inference_session(
        inference_session=session, frame_idx=0, obj_ids=1, input_boxes=[[[8, 6, 44, 40]]]
    )
    masks = []
    with torch.no_grad():
        model.eval()(inference_session=session, frame_idx=0)
        for out in model.propagate_in_video_iterator(session):
            masks.append(out.pred_masks)
    assert len(masks) == 3  # a second frame runs the memory attention: fails with a too-narrow config
    assert all(m.shape == (1, 1, 16, 16) and torch.isfinite(m).all() for m in masks)
    assert (masks[0] > 0).any() and masks[0].std() > 0.1  # object "present": masks not blanked


def test_auto_processors_give_64px_inputs(tiny_checkpoints):
    from transformers import AutoProcessor, Owlv2Processor, Sam2Processor

    owl_processor = AutoProcessor.from_pretrained(tiny_checkpoints.owl)
    sam_processor = AutoProcessor.from_pretrained(tiny_checkpoints.sam)
    assert type(owl_processor) is Owlv2Processor and type(sam_processor) is Sam2Processor
    # the fast (torchvision) image processors, the ones transformers picks by default
    assert type(owl_processor.image_processor).__name__ == "Owlv2ImageProcessor"
    assert type(sam_processor.image_processor).__name__ == "Sam2ImageProcessor"
    image = _image(48, 80, 1)
    assert tuple(owl_processor(images=image, return_tensors="pt")["pixel_values"].shape) == (1, 3, 64, 64)
    assert tuple(sam_processor(images=image, return_tensors="pt")["pixel_values"].shape) == (1, 3, 64, 64)
    assert sam_processor.target_size == 64


def test_processors_round_trip(tiny_checkpoints, tmp_path):
    from transformers import Owlv2Processor, Sam2Processor

    for cls, src in ((Owlv2Processor, tiny_checkpoints.owl), (Sam2Processor, tiny_checkpoints.sam)):
        first = cls.from_pretrained(src)
        first.save_pretrained(tmp_path / src.name)
        again = cls.from_pretrained(tmp_path / src.name)
        assert again.image_processor.to_dict() == first.image_processor.to_dict()
    assert (tmp_path / "owlv2" / "tokenizer.json").read_bytes() == (tiny_checkpoints.owl / "tokenizer.json").read_bytes()


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoints, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    (again / "junk.txt").write_text("replaced by --force")
    with pytest.raises(UserError, match="not empty"):
        tc.write_tiny_checkpoints(again, seed=0)
    same = tc.write_tiny_checkpoints(again, seed=0, force=True)
    assert not (again / "junk.txt").exists()
    other = tc.write_tiny_checkpoints(tmp_path / "other", seed=1)
    for name in ("owl", "sam"):
        reference = (getattr(tiny_checkpoints, name) / "model.safetensors").read_bytes()
        assert (getattr(same, name) / "model.safetensors").read_bytes() == reference
        assert (getattr(other, name) / "model.safetensors").read_bytes() != reference
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        assert (same.owl / name).read_bytes() == (tiny_checkpoints.owl / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temporary leftovers


def test_global_rng_is_left_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tc.build_owl(0)
    assert torch.equal(torch.rand(3), expected)


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(seed, log=None, shape=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(tc, "build_sam", broken)
    with pytest.raises(RuntimeError, match="boom"):
        tc.write_tiny_checkpoints(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- tokenizer ---------------------------------------------------------------------------------


def test_vocabulary_layout(owl):
    model, processor = owl
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    assert vocab["!"] == 0 and tok.pad_token == "!" and tok.pad_token_id == 0
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == max(vocab.values()) == len(vocab) - 1
    assert tok.bos_token == "<|startoftext|>" and tok.bos_token_id == tok.eos_token_id - 1
    assert tok.model_max_length == 16
    text = model.config.text_config
    assert text.vocab_size == len(vocab)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, 0)
    # all 256 byte symbols, with and without the end-of-word suffix, as in CLIP
    symbols = tc._byte_symbols()
    assert len(set(symbols)) == 256 and all(vocab[s] < 256 and vocab[s + "</w>"] < 512 for s in symbols)
    for word in ("cat", "dog", "person", "car", "bus", "bicycle", "bird", "horse", "sheep", "cow", "bottle",
                 "chair", "sofa", "plant", "table", "tv", "a", "photo", "of", "the", "an"):
        assert tok.tokenize(word) == [word + "</w>"], word


def test_clip_tokenizer_classes_load(tiny_checkpoints):
    from transformers import AutoTokenizer, CLIPTokenizer, CLIPTokenizerFast

    ids = [cls.from_pretrained(tiny_checkpoints.owl)("a photo of a cat")["input_ids"]
           for cls in (CLIPTokenizer, CLIPTokenizerFast, AutoTokenizer)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 7


def test_tokenizers_library_alone_matches_the_processor(owl, tiny_checkpoints):
    """What the runtime does (tokenizers + tokenizer.json) equals what Owlv2Processor does."""
    from tokenizers import Tokenizer

    _, processor = owl
    tok = Tokenizer.from_file(str(tiny_checkpoints.owl / "tokenizer.json"))
    tok.enable_padding(length=16, pad_id=0, pad_token="!")
    tok.enable_truncation(max_length=16)
    encodings = tok.encode_batch(PROMPTS)
    ids = np.array([e.ids for e in encodings])
    mask = np.array([e.attention_mask for e in encodings])

    # Owlv2Processor pads to 16 but does not truncate unless asked (same with the hub checkpoints):
    # a prompt longer than 16 tokens gives a longer row, which the 16-position text model rejects.
    short = [i for i, p in enumerate(PROMPTS) if len(tok.encode(p).overflowing) == 0]
    assert len(short) == len(PROMPTS) - 1
    plain = processor(text=[PROMPTS[i] for i in short], return_tensors="np")
    np.testing.assert_array_equal(plain["input_ids"], ids[short])
    np.testing.assert_array_equal(plain["attention_mask"], mask[short])
    truncated = processor(text=PROMPTS, return_tensors="np", truncation=True)
    np.testing.assert_array_equal(truncated["input_ids"], ids)
    np.testing.assert_array_equal(truncated["attention_mask"], mask)

    bos, eos = processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id
    assert ids.shape == (len(PROMPTS), 16) and (ids[:, 0] == bos).all()
    lengths = mask.sum(axis=1)
    assert (ids[np.arange(len(ids)), lengths - 1] == eos).all()  # EOS survives truncation
    assert (ids.argmax(axis=1) == lengths - 1).all()  # OWLv2 pools at argmax(input_ids): the EOS
    assert (ids[mask == 0] == 0).all() and lengths[-1] == 2 and lengths[-2] == 16
    assert ids[2].tolist()[:5] == ids[0].tolist()[:5]  # "a photo of a" tokenised alike
    assert eos not in ids[2, 1 : lengths[2] - 1]  # unknown text falls back to sub-words, not to UNK


# --- outputs of order 1 ------------------------------------------------------------------------


def test_owl_outputs_are_of_order_one(owl):
    model, processor = owl
    inputs = processor(text=[["a photo of a cat", "a photo of a dog", "person"]], images=_image(48, 80, 7),
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    logits = out.logits[0]  # (16 patches, 3 queries)
    assert logits.shape == (16, 3)
    assert (logits.std(dim=0) > 0.5).all(), logits.std(dim=0)  # spread across patches, every query
    scores = torch.sigmoid(logits)
    assert (scores > 0.1).any() and (scores < 0.1).any(), scores
    assert (logits[:, 0] - logits[:, 1]).abs().mean() > 0.02  # the query matters
    boxes = out.pred_boxes[0]  # cxcywh in [0, 1]
    assert ((boxes[:, 2:] > 0.02) & (boxes[:, 2:] < 0.95)).all(), boxes
    assert boxes[:, :2].std(dim=0).min() > 0.1  # boxes follow the patches, not one collapsed box
    assert out.objectness_logits.std() > 0.05
    results = processor.post_process_grounded_object_detection(out, threshold=0.1, target_sizes=[(48, 80)])
    assert 0 < len(results[0]["scores"]) < 16  # thresholding keeps some patches, not all


def test_owl_padding_query_is_masked(owl):
    model, processor = owl
    inputs = processor(text=[["a photo of a cat", ""]], images=_image(64, 64, 3), return_tensors="pt")
    inputs["input_ids"][1, 0] = 0  # a query whose first token is 0 is padding
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    assert (logits[:, 1] == torch.finfo(logits.dtype).min).all() and torch.isfinite(logits[:, 0]).all()


def test_sam_outputs_are_of_order_one_and_depend_on_the_box(sam):
    model, processor = sam
    image = _image(50, 70, 11)
    boxes = [[4, 4, 34, 28], [36, 20, 66, 46], [10, 5, 60, 45]]
    masks, ious, objects = [], [], []
    for box in boxes:
        inputs = processor(images=image, input_boxes=[[box]], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        assert out.pred_masks.shape == (1, 1, 1, 16, 16)
        m = out.pred_masks.flatten()
        assert m.std() > 0.1, m.std()
        assert 0.05 < (m > 0).float().mean() < 0.95, (m > 0).float().mean()
        masks.append(m)
        ious.append(out.iou_scores.item())
        objects.append(out.object_score_logits.item())
        full = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
        assert full.shape == (1, 1, 50, 70) and full.dtype == torch.bool and 0 < full.float().mean() < 1
    assert np.ptp(ious) > 1e-3 and np.ptp(objects) > 1e-3, (ious, objects)
    spread = torch.stack(masks).std()
    assert min((masks[i] - masks[j]).abs().mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 0.05 * spread


def test_sam_multimask_output(sam):
    model, processor = sam
    inputs = processor(images=_image(64, 64, 5), input_boxes=[[[8, 8, 40, 56], [30, 2, 60, 30]]],
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=True)
    assert out.pred_masks.shape == (1, 2, 3, 16, 16) and out.iou_scores.shape == (1, 2, 3)
    assert out.pred_masks.std(dim=(-1, -2)).min() > 0.1
    assert not torch.allclose(out.pred_masks[0, 0], out.pred_masks[0, 1], atol=1e-2)


# --- command line ------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.tiny_checkpoints", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_refuses_a_non_empty_out_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _cli(str(out))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "--force" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_rejects_a_bad_seed(tmp_path):
    r = _cli(str(tmp_path / "out"), "--seed", "-1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_main_prints_progress_and_the_two_directories(tmp_path, capsys):
    assert tc.main([str(tmp_path / "out"), "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("owlv2" in line and "writing" in line for line in lines)
    assert any("sam2" in line and "writing" in line for line in lines)
    assert lines[-1] == f"wrote {tmp_path / 'out' / 'owlv2'} and {tmp_path / 'out' / 'sam2'}"


def test_shape_writes_a_family_member_of_that_architecture(tmp_path):
    """``--shape`` writes the member's architecture; its SAM2 processor keeps transformers' default
    mask_size (256) where the member leaves it, as a user converting a smaller model would."""
    import json

    shape = tc.FAMILY["owl72p12-sam128"]
    assert tc.main([str(tmp_path / "out"), "--shape", "owl72p12-sam128"]) == 0
    owl = json.loads((tmp_path / "out" / "owlv2" / "config.json").read_text())
    sam = json.loads((tmp_path / "out" / "sam2" / "config.json").read_text())
    assert (owl["vision_config"]["image_size"], owl["vision_config"]["patch_size"]) == (72, 12)
    assert owl["text_config"]["max_position_embeddings"] == 20
    assert sam["image_size"] == 128 and sam["num_maskmem"] == shape.sam_num_maskmem == 5
    assert sam["vision_config"]["backbone_config"]["blocks_per_stage"] == list(shape.sam_blocks)
    tokenizer = json.loads((tmp_path / "out" / "owlv2" / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 16
    processor = json.loads((tmp_path / "out" / "sam2" / "processor_config.json").read_text())
    assert processor["image_processor"]["mask_size"] == {"height": 256, "width": 256}
    assert processor["image_processor"]["size"] == {"height": 128, "width": 128} and processor["target_size"] == 128


@pytest.mark.parametrize("bad", [dict(owl_image_size=70), dict(sam_image_size=80),
                                 dict(owl_tokenizer_length=20, owl_text_positions=16)])
def test_shapes_the_models_cannot_have_are_refused(bad):
    with pytest.raises(ValueError):
        tc.TinyShape(**bad)
