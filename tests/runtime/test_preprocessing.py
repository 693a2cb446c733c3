"""runtime.preprocessing against transformers' processors (the fast, torchvision-backed ones).

The references are constructed here from the transformers classes; ``input_data_format`` is passed
explicitly because the processors guess the channel axis from the shape (a 1x1x3 array would be
read as channels-first).
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.preprocessing import owl_preprocessing_from_processor, sam2_preprocessing_from_processor
from runtime import imageops
from runtime.errors import UserError
from runtime.preprocessing import (
    OwlPreprocessing,
    Sam2Preprocessing,
    boxes_to_sam2_input,
    postprocess_owl,
    postprocess_sam2_masks,
    preprocess_owl,
    preprocess_sam2,
)

transformers = pytest.importorskip("transformers")
from transformers import Owlv2ImageProcessor, Sam2ImageProcessor, Sam2Processor  # noqa: E402

PIXEL_TOL = 1e-4  # max-abs on pixel_values (normalised units)

# (height, width): square, landscape, portrait, a single pixel, large downscales where the
# anti-aliasing blur matters, upscales, and a one-row pad.
SHAPES = [(200, 200), (480, 640), (640, 480), (1, 1), (1500, 1000), (1000, 1500), (20, 30), (30, 20), (63, 64)]
# 3000x2000 -> 64 once: the processor blurs it with a 139x139 convolution (~45 s on 2 cores).
BIG = (3000, 2000)


def _image(h: int, w: int, kind: str, make_image) -> np.ndarray:
    if kind == "smooth":
        return make_image(h, w, seed=h * 7 + w)
    return np.random.default_rng(h * 31 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _owl_reference(proc, img: np.ndarray) -> np.ndarray:
    return proc(images=[img], return_tensors="np", input_data_format="channels_last")["pixel_values"]


def _sam_reference(proc, img: np.ndarray) -> np.ndarray:
    return proc(images=[img], return_tensors="np", input_data_format="channels_last")["pixel_values"]


def _uint8_bilinear_native() -> bool:
    # torchvision resizes uint8 natively (the kernel reproduced here) on these CPUs; elsewhere it
    # resizes in float32 and rounds, which differs from it by one grey level on some pixels.
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


@pytest.fixture(scope="module")
def owl64():
    proc = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    return proc, owl_preprocessing_from_processor(proc, text_length=16)


@pytest.fixture(scope="module")
def sam64():
    proc = Sam2ImageProcessor(size={"height": 64, "width": 64})
    return proc, sam2_preprocessing_from_processor(proc)


# ---------------------------------------------------------------------------------------------
# Pixel values.


@pytest.mark.parametrize("kind", ["smooth", "noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_owl_pixel_values_match_processor(shape, kind, owl64, make_image):
    proc, cfg = owl64
    img = _image(*shape, kind, make_image)
    ref = _owl_reference(proc, img)
    mine = preprocess_owl([img], cfg)
    assert mine.dtype == np.float32 and mine.shape == ref.shape == (1, 3, 64, 64)
    err = float(np.abs(mine - ref).max())
    print(f"owl {shape} {kind}: max-abs {err:.2e}")
    assert err <= PIXEL_TOL


@pytest.fixture(scope="module")
def big_owl_case(owl64, make_image):
    proc, cfg = owl64
    img = make_image(*BIG, seed=5)
    return img, _owl_reference(proc, img), preprocess_owl([img], cfg)


@pytest.mark.slow
def test_owl_pixel_values_large_downscale(big_owl_case):
    _, ref, mine = big_owl_case
    err = float(np.abs(mine - ref).max())
    print(f"owl {BIG} smooth: max-abs {err:.2e}")
    assert mine.shape == ref.shape and err <= PIXEL_TOL


def _axis_operator(side: int, size: int, sigma: float, ksize: int) -> np.ndarray:
    """float64 [side, size] matrix of reflect-pad -> Gaussian -> linear resize along one axis, built
    with torch's own ops (conv1d on unit impulses, then interpolate)."""
    from torchvision.transforms.v2.functional._misc import _get_gaussian_kernel1d

    eye = torch.eye(side, dtype=torch.float64)[:, None, :]
    k = _get_gaussian_kernel1d(ksize, sigma, torch.float64, "cpu").view(1, 1, ksize)
    # 64 impulses at a time: float64 conv1d unfolds its whole batch (3000 x 139 x 3000 doubles, 10 GB)
    blurred = torch.cat([F.conv1d(F.pad(rows, (ksize // 2, ksize // 2), mode="reflect"), k) for rows in eye.split(64)])
    return F.interpolate(blurred, size, mode="linear", align_corners=False)[:, 0, :].numpy()


@pytest.mark.slow
def test_owl_large_downscale_is_closer_to_exact_math_than_the_reference(big_owl_case, owl64):
    """3000x2000 -> 64: the processor blurs with a 139x139 float32 convolution whose own rounding
    is ~4e-5; against the same operations in float64, the runtime is within 1e-5."""
    _, cfg = owl64
    img, ref, mine = big_owl_case
    h, w = BIG
    side = max(h, w)
    sigma, ksize = imageops.owl_blur_sigma_and_ksize(side, 64)
    assert ksize == 2 * math.ceil(3 * sigma) + 1 and ksize > 100
    op = _axis_operator(side, 64, sigma, ksize)
    x = img.astype(np.float64) / 255  # padding is 0: only the first h rows / w columns contribute
    r = np.stack([op[:h].T @ x[:, :, c] @ op[:w] for c in range(3)])
    exact = (r - np.array(cfg.mean)[:, None, None]) / np.array(cfg.std)[:, None, None]
    err_mine, err_ref = float(np.abs(mine[0] - exact).max()), float(np.abs(ref[0] - exact).max())
    print(f"owl {BIG} vs float64: runtime {err_mine:.2e}, processor {err_ref:.2e}")
    assert err_mine <= 1e-5
    assert err_mine < err_ref


@pytest.mark.parametrize("kind", ["smooth", "noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sam2_pixel_values_match_processor(shape, kind, sam64, make_image):
    if not _uint8_bilinear_native():
        pytest.skip("torchvision resizes uint8 in float32 on this CPU (no AVX2): a different reference")
    proc, cfg = sam64
    img = _image(*shape, kind, make_image)
    ref = _sam_reference(proc, img)
    mine = preprocess_sam2([img], cfg)
    assert mine.dtype == np.float32 and mine.shape == ref.shape == (1, 3, 64, 64)
    err = float(np.abs(mine - ref).max())
    print(f"sam2 {shape} {kind}: max-abs {err:.2e}")
    assert err <= PIXEL_TOL
    assert err == 0.0  # the uint8 resize is reproduced bit for bit


def test_default_sizes_960_and_1024(make_image):
    img = make_image(1080, 1920, seed=3)
    owl_proc, sam_proc = Owlv2ImageProcessor(), Sam2ImageProcessor()
    owl_cfg = owl_preprocessing_from_processor(owl_proc, text_length=16)
    sam_cfg = sam2_preprocessing_from_processor(sam_proc)
    assert owl_cfg.image_size == 960 and sam_cfg.image_size == 1024 and sam_cfg.mask_size == 256
    ref = _owl_reference(owl_proc, img)
    mine = preprocess_owl([img], owl_cfg)
    err = float(np.abs(mine - ref).max())
    print(f"owl 1080x1920 @960: max-abs {err:.2e}")
    assert mine.shape == (1, 3, 960, 960) and err <= PIXEL_TOL
    if _uint8_bilinear_native():
        ref = _sam_reference(sam_proc, img)
        mine = preprocess_sam2([img], sam_cfg)
        err = float(np.abs(mine - ref).max())
        print(f"sam2 1080x1920 @1024: max-abs {err:.2e}")
        assert mine.shape == (1, 3, 1024, 1024) and err <= PIXEL_TOL


def test_batch_of_mixed_sizes(owl64, sam64, make_image):
    imgs = [make_image(48, 80, seed=1), make_image(90, 30, seed=2), make_image(48, 80, seed=3)]
    owl_proc, owl_cfg = owl64
    ref = owl_proc(images=imgs, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    assert np.abs(preprocess_owl(imgs, owl_cfg) - ref).max() <= PIXEL_TOL
    if _uint8_bilinear_native():
        sam_proc, sam_cfg = sam64
        ref = sam_proc(images=imgs, return_tensors="np", input_data_format="channels_last")["pixel_values"]
        assert np.abs(preprocess_sam2(imgs, sam_cfg) - ref).max() <= PIXEL_TOL


def test_owl_nonzero_pad_value_is_applied(make_image):
    """The processor pads with 0.0; other values (OWL-ViT used 0.5) go through the same operator."""
    img = make_image(40, 64, seed=9)
    cfg0 = OwlPreprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    cfg5 = OwlPreprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, pad_value=0.5)
    # Equivalent: pad a float image with 0.5 ourselves, then the zero-pad path sees no padding.
    a0, a5 = preprocess_owl([img], cfg0)[0], preprocess_owl([img], cfg5)[0]
    assert np.allclose(a5[:, :10], a0[:, :10], atol=1e-6)  # top rows: far from the padding
    assert np.allclose(a5[:, -4:], 0.0, atol=1e-5)  # bottom rows: pure padding, (0.5 - 0.5) / 0.25
    assert np.allclose(a0[:, -4:], -2.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# OWLv2 boxes.


@pytest.mark.parametrize("image_hw", [(480, 640), (640, 480), (300, 300), (1, 1)])
@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_postprocess_owl_matches_processor(image_hw, threshold):
    rng = np.random.default_rng(sum(image_hw))
    patches, prompts = 256, 3
    logits = rng.normal(-1.5, 2.0, (patches, prompts)).astype(np.float32)
    boxes = np.concatenate([rng.uniform(0, 1, (patches, 2)), rng.uniform(0.01, 0.6, (patches, 2))], 1).astype(np.float32)
    outputs = SimpleNamespace(logits=torch.from_numpy(logits)[None], pred_boxes=torch.from_numpy(boxes)[None])
    ref = Owlv2ImageProcessor().post_process_object_detection(outputs, threshold=threshold, target_sizes=[image_hw])[0]
    b, s, l = postprocess_owl(logits, boxes, image_hw, threshold)
    assert b.dtype == np.float32 and s.dtype == np.float32 and l.dtype == np.int64
    assert b.shape == tuple(ref["boxes"].shape) and len(b) > 0
    np.testing.assert_array_equal(l, ref["labels"].numpy())
    np.testing.assert_allclose(s, ref["scores"].numpy(), rtol=1e-6, atol=1e-7)
    side = max(image_hw)
    err = float(np.abs(b - ref["boxes"].numpy()).max())
    assert err <= 1e-3 * side * 1e-3 + 1e-4, err  # far inside 1e-3 px relative
    # Scaled by the padded square's side on both axes: the relative box of the whole padded
    # square maps to [0, side] x [0, side], not to [0, w] x [0, h].
    full, _, _ = postprocess_owl(np.full((1, 1), 10.0, np.float32), np.array([[0.5, 0.5, 1, 1]], np.float32), image_hw, 0.1)
    np.testing.assert_allclose(full[0], [0, 0, side, side])


def test_postprocess_owl_drops_scores_exactly_on_the_threshold():
    """The reference keeps ``score > threshold``. A best logit of exactly 0 scores exactly 0.5 (in
    float32, here and in torch), so at threshold 0.5 those patches sit on the threshold: dropped;
    one float32 step lower they are kept, one step higher dropped too."""
    rng = np.random.default_rng(7)
    patches, prompts = 64, 2
    logits = rng.choice(np.array([-3.0, -0.5, 0.0, 0.25, 2.0], np.float32), (patches, prompts))
    logits[:8] = [0.0, -1.0]  # eight patches whose best score is exactly 0.5
    boxes = np.concatenate([rng.uniform(0, 1, (patches, 2)), rng.uniform(0.01, 0.6, (patches, 2))], 1).astype(np.float32)
    outputs = SimpleNamespace(logits=torch.from_numpy(logits)[None], pred_boxes=torch.from_numpy(boxes)[None])
    best = logits.max(axis=1)
    on = np.float32(0.5)
    below, above = np.nextafter(on, np.float32(0)), np.nextafter(on, np.float32(1))
    for t, expected in ((on, best > 0), (below, best >= 0), (above, best > 0)):
        _, s, l = postprocess_owl(logits, boxes, (100, 120), float(t))
        ref = Owlv2ImageProcessor().post_process_object_detection(outputs, threshold=float(t), target_sizes=[(100, 120)])[0]
        assert len(s) == int(expected.sum()) == len(ref["scores"]), float(t)
        np.testing.assert_array_equal(s, ref["scores"].numpy())
        np.testing.assert_array_equal(l, ref["labels"].numpy())
        assert (s > t).all()
    assert (best == 0).sum() >= 8 and (best > 0).any(), "ties and scores above the threshold both present"


def test_postprocess_owl_rejects_bad_threshold_and_no_prompts():
    logits = np.zeros((4, 2), np.float32)
    boxes = np.full((4, 4), 0.5, np.float32)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(UserError):
            postprocess_owl(logits, boxes, (10, 10), bad)
    with pytest.raises(UserError):
        postprocess_owl(np.zeros((4, 0), np.float32), boxes, (10, 10), 0.1)


# ---------------------------------------------------------------------------------------------
# SAM2 boxes and masks.


@pytest.mark.parametrize("image_hw", [(480, 640), (640, 480), (1080, 1920), (17, 5)])
def test_boxes_to_sam2_input_matches_processor(image_hw):
    h, w = image_hw
    rng = np.random.default_rng(h + w)
    x0, y0 = rng.uniform(0, w / 2, 6), rng.uniform(0, h / 2, 6)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, w / 2, 6), y0 + rng.uniform(0, h / 2, 6)], 1).astype(np.float32)
    proc = Sam2Processor(image_processor=Sam2ImageProcessor())
    img = np.zeros((h, w, 3), np.uint8)
    ref = proc(images=img, input_boxes=[boxes.tolist()], return_tensors="pt", input_data_format="channels_last")["input_boxes"][0]
    cfg = sam2_preprocessing_from_processor(proc)
    assert cfg.coord_size == proc.target_size == 1024
    mine = boxes_to_sam2_input(boxes, image_hw, cfg)
    assert mine.dtype == np.float32 and mine.shape == (6, 4)
    np.testing.assert_allclose(mine, ref.numpy(), rtol=1e-6, atol=1e-5)


def test_boxes_to_sam2_input_clips_and_rejects_non_finite():
    cfg = Sam2Preprocessing(image_size=1024, mean=(0, 0, 0), std=(1, 1, 1))
    out = boxes_to_sam2_input(np.array([[-50, -10, 700, 500.0]]), (480, 640), cfg)
    np.testing.assert_allclose(out, [[0, 0, 1024, 1024]])
    assert boxes_to_sam2_input(np.zeros((0, 4)), (480, 640), cfg).shape == (0, 4)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(UserError) as e:
            boxes_to_sam2_input(np.array([[0, 0, 10, 10], [1, 2, bad, 4]]), (480, 640), cfg)
        assert "box 1" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):
        boxes_to_sam2_input(np.zeros((3, 5)), (480, 640), cfg)


@pytest.mark.parametrize("image_hw,masks_per_box", [((1080, 1920), 1), ((480, 640), 3), ((37, 53), 1), ((1, 1), 1), ((64, 64), 3)])
def test_postprocess_sam2_masks_match_processor(image_hw, masks_per_box):
    rng = np.random.default_rng(image_hw[0])
    n = 4
    low = rng.normal(0, 3, (n, masks_per_box, 16, 16)).astype(np.float32)
    low = F.interpolate(torch.from_numpy(low), (64, 64), mode="bilinear").numpy()  # smooth, like real logits
    low[:, :, :8, :8] = 0.0  # ties at exactly 0
    ref = Sam2ImageProcessor().post_process_masks([torch.from_numpy(low)], [image_hw])[0].numpy()
    mine = postprocess_sam2_masks(low, image_hw, Sam2Preprocessing(image_size=64, mean=(0, 0, 0), std=(1, 1, 1), mask_size=16))
    assert mine.dtype == np.bool_ and mine.shape == ref.shape == (n, masks_per_box, *image_hw)
    same = float((mine == ref).mean())
    print(f"masks {image_hw} x{masks_per_box}: identical fraction {same:.6f}")
    assert same >= 0.999
    assert same == 1.0  # bit-exact threshold decisions expected


def test_resize_bilinear_matches_interpolate():
    rng = np.random.default_rng(0)
    for (h, w, oh, ow) in [(256, 256, 1080, 1920), (7, 5, 3, 9), (1, 1, 4, 6), (300, 200, 64, 64)]:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(x), (oh, ow), mode="bilinear", align_corners=False).numpy()
        assert np.abs(imageops.resize_bilinear(x, oh, ow) - ref).max() <= 1e-6


def test_gaussian_blur_matches_torchvision():
    import torchvision.transforms.v2.functional as tvF

    rng = np.random.default_rng(0)
    for (h, w, sh, sw) in [(50, 40, 1.5, 0.7), (100, 100, 10.0, 10.0), (9, 9, 0.5, 0.5)]:
        x = rng.standard_normal((3, h, w)).astype(np.float32)
        kh = 2 * math.ceil(3 * sh) + 1
        kw = 2 * math.ceil(3 * sw) + 1
        ref = tvF.gaussian_blur(torch.from_numpy(x), [kw, kh], [sw, sh]).numpy()  # torchvision: (x, y) order
        assert np.abs(imageops.gaussian_blur(x, sh, sw) - ref).max() <= 1e-6


# ---------------------------------------------------------------------------------------------
# Configs.


def test_configs_round_trip_through_json():
    owl = OwlPreprocessing(image_size=960, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), text_length=16)
    sam = Sam2Preprocessing(image_size=1024, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], mask_size=256)
    for cfg in (owl, sam):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert type(cfg).from_dict(d) == cfg
    assert sam.coord_size == 1024
    with pytest.raises(UserError):
        OwlPreprocessing.from_dict({**owl.to_dict(), "surprise": 1})
    with pytest.raises(UserError):
        Sam2Preprocessing.from_dict({**sam.to_dict(), "std": [0, 1, 1]})


def test_configs_are_read_from_the_processor_not_assumed():
    owl = owl_preprocessing_from_processor(SimpleNamespace(
        image_processor=Owlv2ImageProcessor(size={"height": 128, "width": 128}, image_mean=[0.1, 0.2, 0.3]),
        tokenizer=SimpleNamespace(model_max_length=24)))
    assert owl.image_size == 128 and owl.text_length == 24 and owl.mean == (0.1, 0.2, 0.3)
    assert owl.pad_value == 0.0 and owl.rescale_factor == pytest.approx(1 / 255)
    sam = sam2_preprocessing_from_processor(Sam2Processor(image_processor=Sam2ImageProcessor(
        size={"height": 512, "width": 512}, mask_size={"height": 128, "width": 128})))
    assert (sam.image_size, sam.mask_size, sam.coord_size) == (512, 128, 512)


def test_the_processors_mask_size_gives_way_to_the_models(caplog):
    """A processor left at its default mask_size (256) on a model whose low-res masks are 16x16: the
    processor's value only resizes mask prompts, so it is ignored, with the reason logged."""
    processor = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 64, "width": 64}))
    with caplog.at_level("WARNING", logger="export.preprocessing"):
        sam = sam2_preprocessing_from_processor(processor, mask_size=16)
    assert (sam.image_size, sam.mask_size, sam.coord_size) == (64, 16, 64)
    assert "ignoring the processor's mask_size 256" in caplog.text and "16x16 (from the model)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="export.preprocessing"):
        assert sam2_preprocessing_from_processor(processor, mask_size=256).mask_size == 256
    assert caplog.text == ""


def test_processor_configs_the_runtime_cannot_follow_are_refused():
    with pytest.raises(UserError):  # no tokenizer: no text length
        owl_preprocessing_from_processor(Owlv2ImageProcessor())
    with pytest.raises(UserError):
        owl_preprocessing_from_processor(SimpleNamespace(image_processor=Owlv2ImageProcessor(),
                                                         tokenizer=SimpleNamespace(model_max_length=int(1e30))))
    with pytest.raises(UserError):
        owl_preprocessing_from_processor(Owlv2ImageProcessor(size={"height": 64, "width": 96}), text_length=16)
    with pytest.raises(UserError):
        owl_preprocessing_from_processor(Owlv2ImageProcessor(resample=0), text_length=16)
    with pytest.raises(UserError):
        owl_preprocessing_from_processor(Owlv2ImageProcessor(do_normalize=False), text_length=16)
    with pytest.raises(UserError):
        sam2_preprocessing_from_processor(Sam2ImageProcessor(resample=3))
    with pytest.raises(UserError):
        sam2_preprocessing_from_processor(object())


def test_preprocess_rejects_bad_images(owl64, sam64):
    _, owl_cfg = owl64
    _, sam_cfg = sam64
    for fn, cfg in ((preprocess_owl, owl_cfg), (preprocess_sam2, sam_cfg)):
        for bad in ([], [np.zeros((4, 4, 3), np.float32)], [np.zeros((0, 4, 3), np.uint8)], [np.zeros((4, 4), np.uint8)], ["x.jpg"]):
            with pytest.raises(UserError):
                fn(bad, cfg)


# ---------------------------------------------------------------------------------------------
# Timings (printed, not asserted): run with -s to see them.


def test_print_timings(make_image):
    img = make_image(1080, 1920, seed=11)
    owl_cfg = OwlPreprocessing(image_size=960, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    sam_cfg = Sam2Preprocessing(image_size=1024, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    low = np.random.default_rng(0).normal(0, 4, (8, 1, 256, 256)).astype(np.float32)

    def best(fn, n=3):
        fn()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1e3

    print(f"\npreprocess_owl 1080x1920 @960: {best(lambda: preprocess_owl([img], owl_cfg)):.1f} ms")
    print(f"preprocess_sam2 1080x1920 @1024: {best(lambda: preprocess_sam2([img], sam_cfg)):.1f} ms")
    print(f"postprocess_sam2_masks 8 boxes @1080x1920: {best(lambda: postprocess_sam2_masks(low, (1080, 1920), sam_cfg)):.1f} ms")
