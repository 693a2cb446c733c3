"""The pixel graphs (owl_pixels, sam2_pixels, sam2_masks) on real resampling tables against the
transformers processors: pixel values for odd sizes and image modes, masks at the input resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from export.graph_export import export_to_onnx
from export.pixels import image_ranges, max_owl_taps, max_sam2_taps, pixel_graph_exports, pixel_sizes
from export.preprocessing import owl_preprocessing_from_processor, sam2_preprocessing_from_processor
from runtime.backends.onnxruntime import OrtGraph
from runtime.graphs import COLUMN_TAPS, DYNAMIC_DIMS, IMAGE_HEIGHT, OWL_PIXELS, ROW_TAPS, SAM2_MASKS, SAM2_PIXELS
from runtime.images import load_image
from runtime.preprocessing import preprocess_owl
from runtime.resample import mask_tables, owl_tables, sam2_tables

transformers = pytest.importorskip("transformers")
from transformers import Owlv2ImageProcessor, Sam2ImageProcessor  # noqa: E402

PIXEL_TOL = 1e-4  # max-abs on pixel_values (normalised units), as the numpy reference is held to
MASK_SIZE = 16
# (height, width): a single pixel, odd tiny sizes, portrait and landscape, HD; the 3000x2000 downscale
# (OWLv2's blur table has ~140 taps there) is in its own slow test.
SHAPES = [(1, 1), (7, 3), (3, 7), (480, 640), (640, 480), (720, 1280), (63, 64)]


@pytest.fixture(scope="module")
def processors():
    owl = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    sam = Sam2ImageProcessor(size={"height": 64, "width": 64})
    return owl, sam


@pytest.fixture(scope="module")
def graphs(processors, tmp_path_factory):
    owl_proc, sam_proc = processors
    owl = owl_preprocessing_from_processor(owl_proc, text_length=16)
    sam = sam2_preprocessing_from_processor(sam_proc, mask_size=MASK_SIZE)
    sizes = {"owl_image_size": 64, "sam_image_size": 64, "sam_mask_size": MASK_SIZE, "channels": 3, **pixel_sizes()}
    ranges = image_ranges(DYNAMIC_DIMS, owl, sam)
    out = tmp_path_factory.mktemp("pixel-graphs")
    opened = {}
    for g in pixel_graph_exports(owl, sam, sizes, ranges):
        files = export_to_onnx(g, out / f"{g.spec.name}.onnx")
        opened[g.spec.name] = OrtGraph(files[0], g.spec, intra_op_threads=2)
    return opened, owl, sam


def _run_pixels(graphs, spec, image: np.ndarray, tables) -> np.ndarray:
    feeds = {spec.input_names[0]: image[None], **tables}
    return graphs[spec.name].run(feeds)[spec.output_names[0]]


def _image(h: int, w: int, make_image) -> np.ndarray:
    return make_image(h, w, seed=h * 7 + w) if min(h, w) > 8 else np.random.default_rng(h + w).integers(
        0, 256, (h, w, 3), dtype=np.uint8)


def _uint8_bilinear_native() -> bool:
    # torchvision resizes uint8 natively (the kernel reproduced here) on these CPUs; elsewhere in
    # float32 and rounds, which differs from it by one grey level on some pixels
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _reference(proc, image: np.ndarray) -> np.ndarray:
    return proc(images=[image], return_tensors="np", input_data_format="channels_last")["pixel_values"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_owl_pixels_match_the_processor(shape, graphs, processors, make_image):
    opened, owl, _ = graphs
    image = _image(*shape, make_image)
    got = _run_pixels(opened, OWL_PIXELS, image, owl_tables(*shape, owl))
    ref = _reference(processors[0], image)
    assert got.dtype == np.float32 and got.shape == ref.shape == (1, 3, 64, 64)
    assert float(np.abs(got - ref).max()) <= PIXEL_TOL


@pytest.mark.parametrize("shape", SHAPES + [(3000, 2000), (2000, 3000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_sam2_pixels_match_the_processor(shape, graphs, processors, make_image):
    opened, _, sam = graphs
    image = _image(*shape, make_image)
    got = _run_pixels(opened, SAM2_PIXELS, image, sam2_tables(*shape, sam))
    ref = _reference(processors[1], image)
    assert got.shape == ref.shape == (1, 3, 64, 64)
    if _uint8_bilinear_native():  # torch's fixed-point uint8 kernel, in the graph's int32: bit for bit
        np.testing.assert_array_equal(got, ref)
    else:
        assert float(np.abs(got - ref).max()) <= float(np.max(1.0 / (np.asarray(sam.std) * 255.0))) + PIXEL_TOL


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_images_of_other_modes_through_the_loader(mode, graphs, processors, make_image):
    opened, owl, sam = graphs
    rgb = make_image(50, 70, seed=9)
    image = load_image(Image.fromarray(rgb).convert(mode))
    assert image.shape == (50, 70, 3) and image.dtype == np.uint8
    for spec, tables, proc in ((OWL_PIXELS, owl_tables(50, 70, owl), processors[0]),
                               (SAM2_PIXELS, sam2_tables(50, 70, sam), processors[1])):
        got = _run_pixels(opened, spec, image, tables)
        exact = spec is SAM2_PIXELS and _uint8_bilinear_native()  # as for RGB images above
        assert float(np.abs(got - _reference(proc, image)).max()) <= (0.0 if exact else PIXEL_TOL), spec.name


@pytest.mark.slow
def test_owl_pixels_large_downscale_match_the_numpy_reference(graphs, make_image):
    """3000x2000 -> 64: the processor's 139x139 blur takes ~45 s; tests/runtime/test_preprocessing.py
    holds the numpy reference to it on this very case, here the graph is held to the reference."""
    opened, owl, _ = graphs
    image = make_image(3000, 2000, seed=5)
    tables = owl_tables(3000, 2000, owl)
    assert tables["row_index"].shape[1] > 100  # the blur's wide table
    got = _run_pixels(opened, OWL_PIXELS, image, tables)
    assert float(np.abs(got - preprocess_owl([image], owl)).max()) <= PIXEL_TOL


@pytest.mark.parametrize("image_hw", [(1080, 1920), (480, 640), (37, 53), (1, 1), (16, 16)])
def test_masks_at_the_input_resolution_match_post_process_masks(image_hw, graphs):
    opened, _, _ = graphs
    rng = np.random.default_rng(image_hw[0])
    low = rng.normal(0, 3, (5, 1, 4, 4)).astype(np.float32)
    low = F.interpolate(torch.from_numpy(low), (MASK_SIZE, MASK_SIZE), mode="bilinear").numpy()  # smooth, like logits
    low[:, :, :4, :4] = 0.0  # ties at exactly the threshold
    ref = Sam2ImageProcessor().post_process_masks([torch.from_numpy(low)], [image_hw])[0].numpy()[:, 0]
    feeds = {SAM2_MASKS.input_names[0]: low[:, 0], **mask_tables(*image_hw, MASK_SIZE)}
    got = opened[SAM2_MASKS.name].run(feeds)[SAM2_MASKS.output_names[0]]
    assert got.dtype == np.bool_ and got.shape == ref.shape == (5, *image_hw)
    # torch evaluates each bilinear step as one fused multiply-add, the graph as two roundings: a
    # decision may differ only where the upsampled logit is within float32 rounding of the threshold
    upsampled = F.interpolate(torch.from_numpy(low).double(), image_hw, mode="bilinear").numpy()[:, 0]
    differ = got != ref
    assert float(np.abs(upsampled[differ]).max(initial=0.0)) <= 1e-5
    assert float(differ.mean()) <= 1e-5


def test_taps_maxima_cover_the_largest_image(graphs):
    _, owl, sam = graphs
    ranges = image_ranges(DYNAMIC_DIMS, owl, sam, max_side=2000)
    side = ranges[IMAGE_HEIGHT].max
    assert side == 2000
    for h, w in ((side, side), (side, 1), (1, side)):
        for tables in (owl_tables(h, w, owl), sam2_tables(h, w, sam)):
            assert tables["row_index"].shape[1] <= ranges[ROW_TAPS].max
            assert tables["column_index"].shape[1] <= ranges[COLUMN_TAPS].max
    assert ranges[ROW_TAPS].max == max(max_owl_taps(2000, 64), max_sam2_taps(2000, 64))
