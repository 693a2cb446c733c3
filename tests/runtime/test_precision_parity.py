"""Task-level acceptance of the FP16 and INT8 graphs on CPU, through the torch-free runtime.

``OwlDetector`` / ``Sam2Segmenter`` opened with ``onnxruntime_opener(manifest, precision=...)`` on
the ``--fp16 --int8`` artifact of the tiny checkpoints — INT8 twice: ONNX Runtime's own INT8 flavour
(what ``Pipeline.load(..., "onnxruntime", "int8")`` runs, Q/DQ fused into integer kernels) and the
portable INT8 graphs TensorRT builds from (fake-quantised) — against the FP32 transformers pipeline
(``Owlv2ForObjectDetection`` + ``post_process_grounded_object_detection``, ``Sam2Model`` +
``Sam2Processor.post_process_masks``), with the thresholds of ``runtime.graphs.PRECISION_ACCEPTANCE``:
FP16 detections matched one to one with box IoU >= 0.95 and masks IoU >= 0.97; INT8 the labels of the
five best detections and masks IoU >= 0.90; embeddings by cosine per graph (0.999 / 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.backends import onnxruntime_opener
from runtime.graphs import PRECISION_ACCEPTANCE
from runtime.manifest import load_manifest
from runtime.owl import OwlDetector
from runtime.preprocessing import preprocess_sam2
from runtime.sam2 import Sam2Segmenter
from runtime.metrics import box_iou, mask_iou

from export.acceptance import IOU_TIE
from _sam2_candidates import SAME_OBJECT_BOX_IOU, sam2_candidates, single_mask_accepted

PROMPTS = ["a photo of a cat", "a photo of a dog", "a photo of a person", "a photo of a red car", "a photo of a bird"]
THRESHOLD = 0.1
# detections whose reference score is this close to the threshold may fall on either side of it
BORDER = 0.01
IMAGES = [((480, 640), 11), ((640, 480), 12), ((333, 500), 13)]


#: (precision, flavour of runtime.backends.onnxruntime_opener)
CASES = [("fp16", "onnxruntime"), ("int8", "onnxruntime"), ("int8", "portable")]
CASE_IDS = ["fp16", "int8-onnxruntime", "int8-portable"]


@pytest.fixture(scope="module")
def manifest(tiny_precision_artifact):
    return load_manifest(tiny_precision_artifact)


@pytest.fixture(scope="module")
def owl_reference(tiny_checkpoints):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model = Owlv2ForObjectDetection.from_pretrained(tiny_checkpoints.owl).eval()
    processor = Owlv2Processor.from_pretrained(tiny_checkpoints.owl)

    def run(image: np.ndarray):
        inputs = processor(text=[PROMPTS], images=image, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        (r,) = processor.post_process_grounded_object_detection(out, threshold=THRESHOLD, target_sizes=[image.shape[:2]])
        return (r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()), out

    return run


@pytest.fixture(scope="module")
def sam_reference(tiny_checkpoints):
    from transformers import Sam2Model, Sam2Processor

    model = Sam2Model.from_pretrained(tiny_checkpoints.sam).eval()
    processor = Sam2Processor.from_pretrained(tiny_checkpoints.sam)

    def masks(image: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
        return sam2_candidates(model, processor, image, boxes)

    def embeddings(pixel_values: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [e.numpy() for e in model.get_image_embeddings(torch.from_numpy(pixel_values))]

    return masks, embeddings


def cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def random_boxes(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 0.7 * w, n), rng.uniform(0, 0.7 * h, n)
    bw, bh = rng.uniform(0.15, 0.3, n) * w + 4, rng.uniform(0.15, 0.3, n) * h + 4
    return np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], 1).astype(np.float32)


@pytest.mark.parametrize("precision,flavour", CASES, ids=CASE_IDS)
def test_detections_match_the_fp32_reference(manifest, owl_reference, make_image, precision, flavour):
    acc = PRECISION_ACCEPTANCE[precision]
    detector = OwlDetector.from_manifest(manifest, onnxruntime_opener(manifest, precision=precision, flavour=flavour))
    for hw, seed in IMAGES:
        image = make_image(*hw, seed=seed)
        (rb, rs, rl), _ = owl_reference(image)
        (got,) = detector.detect([image], PROMPTS, threshold=THRESHOLD)
        assert len(rb) > 0
        if acc.min_box_iou is not None:  # FP16: one to one, same label, box IoU
            clear = np.abs(rs - THRESHOLD) > BORDER
            iou = np.where(rl[:, None] == got.labels[None, :], box_iou(rb, got.boxes), 0.0)
            assert np.all(iou[clear].max(axis=1) >= acc.min_box_iou), (hw, iou[clear].max(axis=1).min())
            got_clear = np.abs(got.scores - THRESHOLD) > BORDER
            assert np.all(iou[:, got_clear].max(axis=0) >= acc.min_box_iou), "a detection the reference lacks"
        if acc.top_k_labels is not None:  # INT8: the labels of the best detections
            top = np.argsort(-rs, kind="stable")[: acc.top_k_labels]
            iou = box_iou(rb[top], got.boxes)
            partner = iou.argmax(axis=1)
            assert np.all(iou[np.arange(len(top)), partner] >= SAME_OBJECT_BOX_IOU), hw
            np.testing.assert_array_equal(got.labels[partner], rl[top])


@pytest.mark.parametrize("precision,flavour", CASES, ids=CASE_IDS)
def test_masks_match_the_fp32_reference(manifest, sam_reference, make_image, precision, flavour):
    """Single-mask decoder (the runtime's default). SAM2 replaces the single mask by the best multimask
    output when the single mask's stability score (an area ratio of the 16x16 low-res mask here) is
    below 0.98; where that score is within ``TIE_PIXELS`` low-res pixels of the threshold the choice
    is a tie that any perturbation flips (the random tiny SAM2 puts most boxes there). A mask must
    match the reference's choice, or at a tie the reference's other candidate, with the precision's IoU."""
    masks, _ = sam_reference
    min_iou = PRECISION_ACCEPTANCE[precision].min_mask_iou
    segmenter = Sam2Segmenter.from_manifest(manifest, onnxruntime_opener(manifest, precision=precision, flavour=flavour))
    for (h, w), seed in IMAGES:
        image = make_image(h, w, seed=seed)
        boxes = random_boxes(5, h, w, seed)
        ref = masks(image, boxes)
        assert ref["chosen"].any(axis=(1, 2)).all(), "the reference masks should not be empty"
        got = segmenter.segment(image, boxes).masks
        ok, iou, other = single_mask_accepted(got, ref, min_iou)
        assert np.all(ok), (iou, other, ref["margin_pixels"])


@pytest.mark.parametrize("precision,flavour", CASES, ids=CASE_IDS)
def test_multimask_masks_match_the_fp32_reference(manifest, sam_reference, make_image, precision, flavour):
    """The multimask decoder, best of three by predicted IoU: every mask matches the reference's best,
    or, where the reference's two best predicted IoUs are within ``IOU_TIE``, its second best."""
    masks, _ = sam_reference
    min_iou = PRECISION_ACCEPTANCE[precision].min_mask_iou
    segmenter = Sam2Segmenter.from_manifest(manifest, onnxruntime_opener(manifest, precision=precision, flavour=flavour),
                                            multimask=True)
    for (h, w), seed in IMAGES:
        image = make_image(h, w, seed=seed)
        boxes = random_boxes(5, h, w, seed)
        ref = masks(image, boxes)
        got = segmenter.segment(image, boxes).masks
        iou, second = mask_iou(got, ref["multi"]), mask_iou(got, ref["multi_second"])
        tie = ref["multi_margin"] <= IOU_TIE
        assert np.all((iou >= min_iou) | (tie & (second >= min_iou))), (iou, second, ref["multi_margin"])


@pytest.mark.parametrize("precision,flavour", CASES, ids=CASE_IDS)
def test_embeddings_match_by_cosine_per_graph(manifest, owl_reference, sam_reference, make_image, precision, flavour):
    min_cos = PRECISION_ACCEPTANCE[precision].min_cosine
    opener = onnxruntime_opener(manifest, precision=precision, flavour=flavour)
    detector = OwlDetector.from_manifest(manifest, opener)
    segmenter = Sam2Segmenter.from_manifest(manifest, opener)
    _, sam_embeddings = sam_reference
    for (h, w), seed in IMAGES:
        image = make_image(h, w, seed=seed)
        _, out = owl_reference(image)
        # owl_text: the query embeddings
        assert cos_rows(detector.query_embeds(PROMPTS), out.text_embeds[0].numpy()).min() >= min_cos
        # owl_image: per-patch class embeddings (rows) and boxes
        feats = detector.image_features([image])
        assert cos_rows(feats["image_class_embeds"][0], out.class_embeds[0].numpy()).min() >= min_cos
        # owl_head: the logits of every patch for every prompt
        logits = detector.head.run({"image_class_embeds": feats["image_class_embeds"], "logit_shift": feats["logit_shift"],
                                    "logit_scale": feats["logit_scale"], "query_embeds": detector.query_embeds(PROMPTS)})
        assert cos_rows(logits["logits"], out.logits.numpy()).min() >= min_cos
        # sam2_image: the image embedding and the two high-resolution maps
        got = segmenter.image_features([image])
        ref = sam_embeddings(preprocess_sam2([image], segmenter.preprocessing))
        for name, r in zip(("high_res_feat0", "high_res_feat1", "image_embed"), ref, strict=True):
            assert cos_rows(got[name], r).min() >= min_cos, name


def test_the_acceptance_refuses_broken_graphs(manifest, owl_reference, sam_reference, make_image, tmp_path):
    """Negative test of the task-level acceptance above, with FP16's thresholds: the FP32 graphs pass it,
    and fail it once ``owl_image``'s boxes are shifted by 5 % of the padded square or the single-mask
    decoder's logits by +2 (its masks grow past their border)."""
    from _perturb import perturb_outputs
    from runtime.backends.onnxruntime import OrtGraph
    from runtime.graphs import OWL_IMAGE, SAM2_DECODER

    acc = PRECISION_ACCEPTANCE["fp16"]
    fp32 = onnxruntime_opener(manifest, precision="fp32")
    broken = {
        OWL_IMAGE.name: perturb_outputs(manifest.root / "owl_image.onnx", tmp_path / "owl.onnx", ["pred_boxes"],
                                        offset=0.05),
        SAM2_DECODER.name: perturb_outputs(manifest.root / "sam2_decoder.onnx", tmp_path / "dec.onnx", ["mask_logits"],
                                           offset=2.0),
    }
    opener = lambda spec: OrtGraph(broken[spec.name], spec) if spec.name in broken else fp32(spec)  # noqa: E731
    (h, w), seed = IMAGES[0]
    image = make_image(h, w, seed=seed)
    (rb, rs, rl), _ = owl_reference(image)
    boxes = random_boxes(5, h, w, seed)
    ref = sam_reference[0](image, boxes)
    verdicts = {}
    for name, open_graph in (("fp32", fp32), ("broken", opener)):
        (got,) = OwlDetector.from_manifest(manifest, open_graph).detect([image], PROMPTS, threshold=THRESHOLD)
        iou = np.zeros((len(rb), 1))
        if len(got.boxes):
            iou = np.where(rl[:, None] == got.labels[None, :], box_iou(rb, got.boxes), 0.0)
        masks = Sam2Segmenter.from_manifest(manifest, open_graph).segment(image, boxes).masks
        verdicts[name] = (bool(np.all(iou.max(axis=1) >= acc.min_box_iou)),
                          bool(np.all(single_mask_accepted(masks, ref, acc.min_mask_iou)[0])))
    assert verdicts == {"fp32": (True, True), "broken": (False, False)}, verdicts
