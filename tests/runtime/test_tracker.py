"""Streaming tracking on the exported graphs (ONNX Runtime, FP32): parity with transformers'
``Sam2VideoModel``, the memory bank's bookkeeping and bounds, re-detection, and bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from runtime.backends import onnxruntime_opener
from runtime.errors import ArtifactError, UserError
from runtime.graphs import NUM_BOXES, NUM_OBJECTS, SAM2_IMAGE, SAM2_VIDEO_GRAPHS
from runtime.manifest import load_manifest
from runtime.metrics import mask_iou
from runtime.owl import Detections, OwlDetector
from runtime.preprocessing import Sam2Preprocessing
from runtime.tracker import (TRACKING_GRAPHS, Sam2Tracker, TrackedFrame, _Track, from_bfloat16_bits, mask_boxes,
                             to_bfloat16_bits, track, tracker_limits)
from tools.bench.synthetic import MovingShapes

from _reference import reference_tracking

MIN_IOU = 0.98


@pytest.fixture(scope="module")
def video_graphs(tiny_video_artifact):
    m = load_manifest(tiny_video_artifact)
    opener = onnxruntime_opener(m, intra_op_threads=1)
    return m, {g.name: opener(g) for g in TRACKING_GRAPHS}


@pytest.fixture()
def make_tracker(video_graphs):
    m, graphs = video_graphs

    def make(**options) -> Sam2Tracker:
        pre = Sam2Preprocessing.from_dict(m.preprocessing("sam"))
        return Sam2Tracker(graphs, pre, m.sizes, int(m.data["profiles"][NUM_OBJECTS]["max"]),
                           int(m.data["profiles"][NUM_BOXES]["max"]), **tracker_limits(m.data["profiles"]), **options)

    return make


# --- parity with Sam2VideoModel ----------------------------------------------------------------


def test_tracking_matches_sam2videomodel(make_tracker, tiny_checkpoints):
    """Same box prompts on frame 0, no re-detection: per-frame masks with IoU >= 0.98 for every object."""
    video = MovingShapes(30, 96, 128, num_shapes=3, seed=0)
    frames, boxes = list(video), video.boxes(0)
    ref = reference_tracking(str(tiny_checkpoints.sam), frames, boxes)
    ours = list(track(iter(frames), make_tracker(), boxes=boxes))
    assert len(ours) == len(ref) == 30
    ious = np.stack([mask_iou(r, o.masks) for r, o in zip(ref, ours, strict=True)])  # [frames, objects]
    print(f"\nIoU vs Sam2VideoModel: min {ious.min():.5f}, mean {ious.mean():.5f} over {ious.size} object-frames")
    assert ious.min() >= MIN_IOU, np.round(ious.min(axis=1), 4)
    for o in ours:
        assert o.object_ids.tolist() == [1, 2, 3] and o.labels.tolist() == [-1, -1, -1]
        assert o.masks.shape == (3, 96, 128) and o.present.all()
    assert ours[0].new.all() and not any(o.new.any() for o in ours[1:])
    # not a trivial comparison: masks neither empty nor full, and they change over time
    areas = np.array([r.mean(axis=(1, 2)) for r in ref])
    assert 0.02 < areas.min() and areas.max() < 0.98
    assert mask_iou(ref[0], ref[-1]).min() < 0.9


def test_mask_size_comes_from_the_model_not_the_processor(video_graphs, make_tracker):
    """An artifact whose SAM2 processor says mask_size 256 (its default, left on a 64 px model with
    16x16 low-res masks): the tracker sizes its masks from the exported graphs and tracks as usual."""
    import dataclasses

    m, graphs = video_graphs
    pre = Sam2Preprocessing.from_dict(m.preprocessing("sam"))
    assert pre.mask_size == m.sizes["sam_mask_size"] == 16
    stale = Sam2Tracker(graphs, dataclasses.replace(pre, mask_size=256), m.sizes,
                        int(m.data["profiles"][NUM_OBJECTS]["max"]), int(m.data["profiles"][NUM_BOXES]["max"]),
                        **tracker_limits(m.data["profiles"]))
    video = MovingShapes(4, 64, 80, num_shapes=2, seed=4)
    frames, boxes = list(video), video.boxes(0)
    got = list(track(iter(frames), stale, boxes=boxes))
    want = list(track(iter(frames), make_tracker(), boxes=boxes))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.masks, w.masks)


# --- memory bank ---------------------------------------------------------------------------------


def test_bfloat16_rounding_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10_000),
                        np.float32([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38, 1e-40])])
    ours = from_bfloat16_bits(to_bfloat16_bits(x))
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_bank_order_and_ring_buffers():
    """The reference's order: prompted frame first (last slot, offset t - start), memories oldest
    first (slot = offset - 1), pointers newest first; only the last 6 memories and 15 pointers."""
    tr = _Track(1, -1, start=3, recent_memories=6, recent_pointers=15, tokens=2, mem_dim=2, hidden=4)
    for t in range(3, 30):
        tr.store(t, np.full((2, 2), t, np.uint16), np.full(4, t, np.float32))
    mems, slots, ptrs, offs = tr.bank(30)
    assert [int(m[0, 0]) for m in mems] == [3, 24, 25, 26, 27, 28, 29] and slots == [6, 5, 4, 3, 2, 1, 0]
    assert [int(p[0]) for p in ptrs] == [3] + list(range(29, 14, -1)) and offs == [27] + list(range(1, 16))
    early = _Track(1, -1, start=3, recent_memories=6, recent_pointers=15, tokens=2, mem_dim=2, hidden=4)
    for t in (3, 4):
        early.store(t, np.full((2, 2), t, np.uint16), np.full(4, t, np.float32))
    mems, slots, ptrs, offs = early.bank(5)  # only frame 4 was tracked after the prompt at 3
    assert [int(m[0, 0]) for m in mems] == [3, 4] and slots == [6, 0]
    assert [int(p[0]) for p in ptrs] == [3, 4] and offs == [2, 1]
    assert early.bank(4)[1] == [6] and early.bank(4)[3] == [1]


def test_memory_stays_bounded(make_tracker):
    """Python-side memory (tracemalloc) and resident memory do not grow with the stream's length."""
    video = MovingShapes(None, 64, 64, num_shapes=2, seed=3)
    tracker = make_tracker()

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    tracemalloc.start()
    try:
        marks = {}
        for r in track(iter(video.frame(t) for t in range(400)), tracker, boxes=video.boxes(0)):
            if r.index + 1 in (100, 400):
                marks[r.index + 1] = (tracemalloc.get_traced_memory()[0], rss())
    finally:
        tracemalloc.stop()
    traced_growth = marks[400][0] - marks[100][0]
    rss_growth = marks[400][1] - marks[100][1]
    print(f"\nframes 100 -> 400: traced {traced_growth / 1024:+.0f} KiB, resident {rss_growth / 2**20:+.1f} MiB")
    assert traced_growth < 256 * 1024
    assert rss_growth < 8 * 2**20


def test_mask_boxes():
    m = np.zeros((2, 5, 6), bool)
    m[0, 1:3, 2:5] = True
    assert mask_boxes(m).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]


# --- new objects ---------------------------------------------------------------------------------


class FakeDetector:
    """Detections chosen by the test: frame index -> (boxes, scores, labels)."""

    def __init__(self, per_frame):
        self.per_frame, self.calls = per_frame, 0

    def detect(self, images, queries, threshold=0.1):
        boxes, scores, labels = self.per_frame.get(self.calls, (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
        self.calls += 1
        return [Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                           np.asarray(labels, np.int64))]


def test_select_new_by_mask_iou(make_tracker):
    tracker = make_tracker(new_object_iou=0.5)
    base = np.full((1, 1, 4, 4), -5.0, np.float32)
    tracked = base.copy()
    tracked[0, 0, :2, :] = 5  # 8 pixels
    new = np.repeat(base, 5, axis=0)
    new[0, 0, :2, :3] = 5  # IoU 6/8 with tracked: not new
    new[1, 0, 2:, :2] = 5  # disjoint: new
    new[2, 0, :1, :] = 5  # IoU 4/8 = 0.5: not new (>= threshold)
    new[3, 0, 3:, :1] = 5  # IoU 1/4 with new[1] (accepted before it) and 0 with tracked: new
    check = np.array([True, True, True, True, True])
    assert tracker._select_new(tracked, new, check) == [1, 3]  # new[4] is empty: starts nothing
    assert tracker._select_new(tracked, new, np.zeros(5, bool)) == [0, 1, 2, 3, 4]  # box prompts: all start


def test_redetection_starts_new_ids(make_tracker):
    video = MovingShapes(12, 96, 128, num_shapes=3, seed=0)
    b = [video.boxes(t) for t in range(12)]
    detector = FakeDetector({
        0: ([b[0][0], b[0][0]], [0.9, 0.8], [0, 0]),  # the same box twice: one object
        1: ([b[4][1]], [0.7], [1]),  # frame 4: a second object
        2: ([], [], []),  # frame 8: nothing
    })
    results = list(track(iter(video), make_tracker(), detector, ["a", "b"], redetect_every=4))
    assert detector.calls == 3
    assert [r.object_ids.tolist() for r in results] == [[1]] * 4 + [[1, 2]] * 8
    assert results[4].labels.tolist() == [0, 1] and results[4].new.tolist() == [False, True]
    assert not results[5].new.any()


def test_max_objects_and_forgetting(make_tracker, caplog):
    video = MovingShapes(3, 96, 128, num_shapes=3, seed=0)
    tracker = make_tracker(max_objects=2)
    with caplog.at_level("WARNING", logger="runtime.tracker"):
        results = list(track(iter(video), tracker, boxes=video.boxes(0)))
    assert results[-1].object_ids.tolist() == [1, 2]
    assert "room for 2" in caplog.text
    # forgetting: an object whose score stays <= 0 is dropped after forget_after frames
    tracker = make_tracker(forget_after=1)
    r0 = tracker.step(video.frame(0), video.boxes(0)[:1])
    tracker.tracks[0].absent_for = 0
    fake = TrackedFrame(1, np.array([1]), np.array([-1]), np.zeros((1, 2, 2), bool), np.zeros((1, 4), np.float32),
                        np.array([-1.0], np.float32), np.zeros(1, bool))
    tracker._forget(fake)
    assert r0.object_ids.tolist() == [1] and tracker.num_objects == 0


def test_tracking_with_the_owl_detector(make_tracker, tiny_video_artifact):
    """End to end with the exported OWLv2 graphs: detections on frames 0, 3, 6, 9."""
    m = load_manifest(tiny_video_artifact)
    detector = OwlDetector.from_manifest(m, onnxruntime_opener(m, intra_op_threads=1))
    video = MovingShapes(10, 96, 128, num_shapes=3, seed=0)
    tracker = make_tracker()
    results = list(track(iter(video), tracker, detector, ["a photo of a cat", "a photo of a dog"], redetect_every=3,
                         threshold=0.1))
    assert len(results) == 10 and len(results[0]) > 0
    seen: dict[int, int] = {}
    for r in results:
        assert len(set(r.object_ids.tolist())) == len(r) and np.all(np.diff(r.object_ids) > 0)
        assert set(r.labels.tolist()) <= {0, 1}
        for oid, label in zip(r.object_ids.tolist(), r.labels.tolist()):
            assert seen.setdefault(oid, label) == label  # an id keeps its label
        new_ids = set(r.object_ids[r.new].tolist())
        assert r.index % 3 == 0 or not new_ids, "objects start on detection frames only"
    assert tracker.timer.seconds["detection"] > 0


# --- bad input -----------------------------------------------------------------------------------


def test_frame_size_change_is_one_line_error(make_tracker):
    video = MovingShapes(2, 96, 128, seed=0)
    frames = [video.frame(0), MovingShapes(1, 64, 64, seed=0).frame(0)]
    results = []
    with pytest.raises(UserError, match=r"frame 1 is 64x64 but the stream started at 128x96") as e:
        for r in track(iter(frames), make_tracker(), boxes=video.boxes(0)):
            results.append(r)
    assert len(results) == 1 and "\n" not in str(e.value)


@pytest.mark.parametrize("frame, fragment", [
    (np.zeros((8, 8), np.uint8), "HxWx3 uint8"),
    (np.zeros((8, 8, 3), np.float32), "HxWx3 uint8"),
])
def test_bad_frames(make_tracker, frame, fragment):
    with pytest.raises(UserError, match=fragment):
        make_tracker().step(frame, np.array([[0, 0, 4, 4]]))


def test_bad_arguments(make_tracker):
    with pytest.raises(UserError, match="nothing to track"):
        next(track(iter([]), make_tracker()))
    with pytest.raises(UserError, match="need an OWLv2 detector"):
        next(track(iter([]), make_tracker(), None, ["cat"]))
    with pytest.raises(UserError, match="redetect_every"):
        next(track(iter([]), make_tracker(), boxes=np.zeros((1, 4)), redetect_every=-1))
    with pytest.raises(UserError, match="max_objects"):
        make_tracker(max_objects=0)


def test_artifact_without_video_graphs(tiny_artifact):
    m = load_manifest(tiny_artifact)
    with pytest.raises(ArtifactError, match="--video"):
        Sam2Tracker.from_manifest(m, onnxruntime_opener(m))


def test_no_objects_means_no_sam2_work(make_tracker):
    tracker = make_tracker()
    video = MovingShapes(3, 96, 128, seed=0)
    results = list(track(iter(video), tracker, FakeDetector({}), ["cat"], redetect_every=1))
    assert [len(r) for r in results] == [0, 0, 0] and results[0].masks.shape == (0, 96, 128)
    assert "sam2_image" not in tracker.timer.seconds


def test_onnxruntime_objects_per_call_fits_the_attention_budget(tiny_video_artifact):
    from runtime.tracker import ort_objects_per_call

    real = {"sam_memory_tokens": 4096, "sam_embed_dim": 256, "sam_memory_dim": 64, "sam_num_maskmem": 7,
            "sam_max_object_pointers": 16}
    assert ort_objects_per_call(real) == 2  # 470 MB of attention map per object and layer, 1 GiB budget
    assert ort_objects_per_call(real, budget=1) == 1
    tracker = Sam2Tracker.open(load_manifest(tiny_video_artifact), "onnxruntime")
    assert tracker.objects_per_call == 16  # tiny maps: the profile maximum
    with pytest.raises(UserError, match="cannot track"):
        Sam2Tracker.open(load_manifest(tiny_video_artifact), "torch")
