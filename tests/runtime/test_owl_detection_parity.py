"""End to end on CPU: the exported OWLv2 graphs + numpy processing give the reference's detections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.backends import onnxruntime_opener
from runtime.manifest import load_manifest
from runtime.owl import OwlDetector
from runtime.metrics import box_iou

PROMPTS_5 = ["a photo of a cat", "a photo of a dog", "a photo of a person", "a photo of a red car", "a photo of a bird"]
THRESHOLD = 0.1


@pytest.fixture(scope="module")
def reference(tiny_checkpoints):
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model = Owlv2ForObjectDetection.from_pretrained(tiny_checkpoints.owl).eval()
    processor = Owlv2Processor.from_pretrained(tiny_checkpoints.owl)

    def detect(image: np.ndarray, prompts: list[str]):
        inputs = processor(text=[prompts], images=image, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        (result,) = processor.post_process_grounded_object_detection(
            outputs, threshold=THRESHOLD, target_sizes=[image.shape[:2]]
        )
        return result["boxes"].numpy(), result["scores"].numpy(), result["labels"].numpy()

    return detect


@pytest.fixture(scope="module")
def detector(tiny_artifact):
    manifest = load_manifest(tiny_artifact)
    return OwlDetector.from_manifest(manifest, onnxruntime_opener(manifest))


@pytest.mark.parametrize("hw", [(64, 64), (480, 640), (640, 480), (333, 97)])
@pytest.mark.parametrize("num_prompts", [1, 5])
def test_detections_match_reference(reference, detector, make_image, hw, num_prompts):
    image = make_image(*hw, seed=hw[0] + num_prompts)
    prompts = PROMPTS_5[:num_prompts]
    ref_boxes, ref_scores, ref_labels = reference(image, prompts)
    (got,) = detector.detect([image], prompts, threshold=THRESHOLD)

    assert len(ref_boxes) > 0, "the tiny model should detect something at this threshold"
    assert len(got.boxes) == len(ref_boxes)
    iou = box_iou(ref_boxes, got.boxes)
    match = iou.argmax(axis=1)
    assert np.all(iou[np.arange(len(ref_boxes)), match] >= 0.99)
    np.testing.assert_allclose(got.scores[match], ref_scores, atol=1e-3)
    np.testing.assert_array_equal(got.labels[match], ref_labels)


def test_query_embeddings_cached_per_prompt_tuple(detector):
    a = detector.query_embeds(["a photo of a cat", "a photo of a dog"])
    b = detector.query_embeds(["a photo of a cat", "a photo of a dog"])
    c = detector.query_embeds(["a photo of a dog"])
    assert a is b
    np.testing.assert_allclose(c[0], a[1], atol=1e-6)
