"""The tracker's TensorRT path: its frames on two CUDA streams (runtime.tracker's stream policy).

Everywhere: the choice of the path (ONNX Runtime graphs have no ``enqueue``: every graph runs with
``run()``, no stream is created). Where tensorrt and a CUDA device exist (tests marked ``gpu``):
FP32 engines built from the tiny video artifact, the TensorRT tracker's masks against the ONNX
Runtime tracker's, and proof that no graph was run with ``run()``. No test here imitates TensorRT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.backends import onnxruntime_opener
from runtime.graphs import NUM_BOXES, NUM_OBJECTS, SAM2_MEMORY_ENCODER
from runtime.manifest import load_manifest
from runtime.metrics import mask_iou
from runtime.preprocessing import Sam2Preprocessing
from runtime.tracker import DEVICE_WAIT, TRACKING_GRAPHS, Sam2Tracker, runs_on_streams, track, tracker_limits
from tools.bench.synthetic import MovingShapes

MIN_IOU = 0.98


# --- everywhere: the choice of the path -----------------------------------------------------------

def test_onnxruntime_graphs_run_with_run_and_no_streams(tiny_video_artifact):
    m = load_manifest(tiny_video_artifact)
    opener = onnxruntime_opener(m, intra_op_threads=1)
    graphs = {g.name: opener(g) for g in TRACKING_GRAPHS}
    assert not runs_on_streams(graphs)
    assert not runs_on_streams({})  # no graphs at all: nothing to queue
    tracker = Sam2Tracker(graphs, Sam2Preprocessing.from_dict(m.preprocessing("sam")), m.sizes,
                          int(m.data["profiles"][NUM_OBJECTS]["max"]), int(m.data["profiles"][NUM_BOXES]["max"]),
                          **tracker_limits(m.data["profiles"]))
    assert not tracker.on_streams and tracker.streams is None
    video = MovingShapes(3, 96, 128, num_shapes=2, seed=0)
    results = list(track(iter(video), tracker, boxes=video.boxes(0)))
    assert [r.object_ids.tolist() for r in results] == [[1, 2]] * 3
    # run() stores each frame's memories at once: frame 2's are in the banks when step returns
    assert all(tr.memory_frame.max() == 2 for tr in tracker.tracks) and tracker._unstored is None
    assert DEVICE_WAIT not in tracker.timer.seconds and SAM2_MEMORY_ENCODER.name in tracker.timer.seconds
    tracker.close()  # nothing to free; the tracker still works
    tracker.reset()
    assert tracker.step(video.frame(0), video.boxes(0)).object_ids.tolist() == [1, 2]


# --- on a GPU with TensorRT ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_engines(build_fp32_engines, request) -> Path:
    """A copy of the tiny video artifact with FP32 engines of the tracking graphs for this GPU."""
    # build_fp32_engines needs tensorrt_gpu: it skips before the (slow) artifact fixture is built
    return build_fp32_engines(request.getfixturevalue("tiny_video_artifact"), [g.name for g in TRACKING_GRAPHS])


def track_both(root: Path, run, **options):
    """``run(tracker)`` -> results, on ONNX Runtime and on TensorRT (FP32); the TensorRT tracker
    and its graphs are closed after the stream checks."""
    m = load_manifest(root)
    ort = Sam2Tracker.open(m, "onnxruntime", "fp32", **options)
    trt = Sam2Tracker.open(m, "tensorrt", "fp32", **options)
    try:
        assert trt.on_streams and len(trt.streams) == 2
        ref, got = run(ort), run(trt)
        # The stream path was taken: no graph was ever run with run() (TrtGraph.run opens a stream
        # of the graph's own), the memory encoder ran on the second stream only, the rest on the first.
        frame_stream, memory_stream = trt.streams
        for name, graph in trt.graphs.items():
            assert graph._own_stream is None, f"{name} was called with run()"
            want = {memory_stream.ptr} if name == SAM2_MEMORY_ENCODER.name else {frame_stream.ptr}
            assert set(graph._lanes) == want, name
        assert trt.timer.seconds[DEVICE_WAIT] > 0
        return ref, got, trt
    finally:
        trt.close()
        for graph in trt.graphs.values():
            graph.close()


def assert_same_tracks(ref, got) -> np.ndarray:
    assert len(got) == len(ref)
    ious = []
    for r, g in zip(ref, got, strict=True):
        assert g.object_ids.tolist() == r.object_ids.tolist() and g.new.tolist() == r.new.tolist(), r.index
        assert g.masks.shape == r.masks.shape
        ious.extend(mask_iou(r.masks, g.masks).tolist())
    ious = np.array(ious)
    print(f"\nIoU TensorRT vs ONNX Runtime: min {ious.min():.5f}, mean {ious.mean():.5f} over {ious.size} object-frames")
    assert ious.min() >= MIN_IOU
    return ious


@pytest.mark.gpu
def test_tensorrt_tracker_matches_onnxruntime(video_engines):
    """Box prompts on frame 0, 10 frames: masks with IoU >= 0.98 per object and frame."""
    video = MovingShapes(10, 96, 128, num_shapes=3, seed=0)
    frames, boxes = list(video), video.boxes(0)
    ref, got, _ = track_both(video_engines, lambda tracker: list(track(iter(frames), tracker, boxes=boxes)))
    assert_same_tracks(ref, got)
    assert all(len(r) == 3 for r in ref)
    areas = np.array([r.masks.mean(axis=(1, 2)) for r in ref])  # not a trivial comparison
    assert 0.02 < areas.min() and areas.max() < 0.98


@pytest.mark.gpu
def test_tensorrt_tracker_with_chunks_and_a_new_object(video_engines):
    """Two objects per call (several memory-encoder calls per frame on the memory stream, several
    memory-attention groups) and an object started on frame 5 while the others are tracked."""
    video = MovingShapes(10, 96, 128, num_shapes=3, seed=0)
    frames = list(video)
    starts = {0: video.boxes(0), 5: video.boxes(5)[:1]}

    def run(tracker):
        tracker.reset()
        return [tracker.step(f, starts.get(t)) for t, f in enumerate(frames)]  # box prompts: no dedupe

    ref, got, trt = track_both(video_engines, run, objects_per_call=2)
    assert trt.objects_per_call == 2
    assert [r.object_ids.tolist() for r in ref] == [[1, 2, 3]] * 5 + [[1, 2, 3, 4]] * 5
    assert_same_tracks(ref, got)


@pytest.mark.gpu
def test_a_delay_on_the_memory_stream_changes_nothing(video_engines):
    """Each memory-encoder call is preceded on the memory stream by ~100 ms of device copies: the
    next frame's encoder must wait for its copy of the embedding and the host for its memories, so
    the results stay those of a run without the delay (a missing wait reads overwritten or
    half-written data)."""
    from runtime.backends.tensorrt import DeviceBuffer, memcpy_async

    video = MovingShapes(6, 96, 128, num_shapes=2, seed=1)
    frames, boxes = list(video), video.boxes(0)
    m = load_manifest(video_engines)

    def run(delay: bool):
        with Sam2Tracker.open(m, "tensorrt", "fp32") as tracker:
            if delay:
                graph = tracker.graphs[SAM2_MEMORY_ENCODER.name]
                scratch = [DeviceBuffer(256 << 20, graph.cuda) for _ in range(2)]
                enqueue = graph.enqueue

                def slow_enqueue(feeds, stream, host_outputs=None):
                    for _ in range(40):  # queued before the call: its copy of the embedding and outputs come late
                        memcpy_async(scratch[1].ptr, scratch[0].ptr, 256 << 20, "DeviceToDevice", stream)
                    return enqueue(feeds, stream, host_outputs)

                graph.enqueue = slow_enqueue
            try:
                return list(track(iter(frames), tracker, boxes=boxes))
            finally:
                if delay:
                    tracker.streams[1].synchronize()
                    for buf in scratch:
                        buf.close()

    plain, delayed = run(False), run(True)
    for a, b in zip(plain, delayed, strict=True):
        assert a.object_ids.tolist() == b.object_ids.tolist()
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.object_scores, b.object_scores, rtol=1e-5, atol=1e-5)
