"""The TensorRT backend's stream bookkeeping on a recording test double of the CUDA runtime
(tests/runtime/fake_cudart.py): ordering invariants, stale handles, failure paths and teardown,
for the image pipeline's and the tracker's call sequences. Not a TensorRT test: the double's
"kernels" run the graphs in ONNX Runtime, so results can be compared with the ONNX Runtime path,
and say nothing about TensorRT itself (the ``gpu`` tests in test_tensorrt_backend.py do).
"""

from __future__ import annotations

import numpy as np
import pytest

from export.engine import profile_shapes
from runtime.backends import close_graphs, onnxruntime_opener
from runtime.backends.cuda import CudaError
from runtime.backends.tensorrt import DeviceTensor, Stream, TrtGraph, close_streams
from runtime.errors import DeviceFault, UserError
from runtime.graphs import BATCH, NUM_BOXES, SAM2_DECODER, SAM2_IMAGE
from runtime.manifest import load_manifest
from runtime.metrics import box_iou, mask_iou
from runtime.owl import OwlDetector
from runtime.pipeline import BackendChoice, Pipeline
from runtime.sam2 import Sam2Segmenter, box_bucket
from fake_cudart import FakeEngine, OrderingError, RecordingCudaRuntime  # beside this file

PROMPTS = ["cat", "dog"]


def recording_opener(manifest, rt: RecordingCudaRuntime, cuda_graphs=(), opened=None):
    """TrtGraphs whose engines are FakeEngines on ``rt``, computing with ONNX Runtime (FP32)."""
    ort = onnxruntime_opener(manifest, "fp32", intra_op_threads=1)

    def open_graph(spec):
        profile = profile_shapes(spec, manifest.sizes, manifest.data["profiles"])
        graph = TrtGraph(FakeEngine(spec, manifest.sizes, profile, rt, ort(spec).run), rt,
                         cuda_graph=spec.name in cuda_graphs)
        if opened is not None:
            opened.append(graph)
        return graph

    return open_graph


@pytest.fixture
def rt():
    return RecordingCudaRuntime()


def feeds_for(spec, manifest, dims, seed=0):
    from runtime.graphs import resolve_shape

    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = resolve_shape(t, manifest.sizes, dims)
        if t.name == "boxes":
            xy = rng.uniform(0, 20, (*shape[:-1], 2))
            out[t.name] = np.concatenate([xy, xy + 30], -1).astype(np.float32)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


# --- the double catches what it claims to (its checks can fail) -------------------------------------

def test_the_double_catches_a_missing_wait_a_early_free_and_a_rewritten_source(rt):
    s1, s2 = rt.stream_create(), rt.stream_create()
    a, b, host = rt.malloc(64), rt.malloc(64), rt.malloc_host(64)
    rt.memcpy_async(a, host, 64, "HostToDevice", s1)
    with pytest.raises(OrderingError, match="races with memcpy HostToDevice"):
        rt.memcpy_async(b, a, 64, "DeviceToDevice", s2)  # s2 never waited for s1's upload
    ev = rt.event_create()
    rt.event_record(ev, s1)
    rt.stream_wait_event(s2, ev)
    rt.memcpy_async(b, a, 64, "DeviceToDevice", s2)  # now ordered
    with pytest.raises(OrderingError, match="free while memcpy .* may still use it"):
        rt.free(a)  # the host never waited for s2's copy
    rt.view(host, 64)[:] = 7  # the host rewrites the upload's source before it ran
    with pytest.raises(OrderingError, match="rewrote pinned memory"):
        rt.stream_synchronize(s1)


def test_an_output_read_before_its_event_is_poison(rt):
    s = rt.stream_create()
    dev, host = rt.malloc(16), rt.malloc_host(16)
    rt.view(dev, 16)[:] = 0
    rt.memcpy_async(host, dev, 16, "DeviceToHost", s)
    assert np.isnan(rt.view(host, 16).view(np.float32)).all()
    rt.stream_synchronize(s)
    assert not rt.view(host, 16).any()  # the device memory's zeros, once the host waited


# --- the image pipeline's sequence ----------------------------------------------------------------

def open_pipeline(manifest, rt, opened):
    opener = recording_opener(manifest, rt, cuda_graphs=(SAM2_DECODER.name,), opened=opened)
    owl = OwlDetector.from_manifest(manifest, opener)
    sam = Sam2Segmenter.from_manifest(manifest, opener)
    return Pipeline(manifest, BackendChoice("tensorrt", "fp32", "RecordingCudaRuntime"), owl, sam)


@pytest.mark.parametrize("concurrent", [True, False])
def test_pipeline_sequence_keeps_order_and_matches_onnxruntime(tiny_artifact, make_image, rt, concurrent):
    m = load_manifest(tiny_artifact)
    images = [make_image(120, 160, seed=5), make_image(96, 64, seed=6), make_image(64, 96, seed=7)]
    with Pipeline.load(tiny_artifact, backend="onnxruntime") as ort_pipe:
        ref = ort_pipe.predict_batch(images, PROMPTS, threshold=0.0, max_detections=5)
    opened: list = []
    pipe = open_pipeline(m, rt, opened)
    pipe.concurrent = concurrent
    try:
        assert pipe.on_streams
        made = rt.calls.count("malloc")
        assert made > 0  # contexts and buffers at load ...
        got = pipe.predict_batch(images, PROMPTS, threshold=0.0, max_detections=5)
        again = [pipe.predict(im, PROMPTS, threshold=0.0, max_detections=5) for im in images]  # re-enqueued encoders
        decoder = pipe.sam.decoder
        buckets = {box_bucket(len(r), int(m.data["profiles"][NUM_BOXES]["max"])) for r in ref}
        # ... and later only per new CUDA-graph bucket of the decoder
        assert rt.calls.count("graph_instantiate") == len(buckets) and rt.calls.count("graph_launch") > 0
        assert len(decoder._lanes) == 1 and len(next(iter(decoder._lanes.values())).bindings) == len(buckets)
    finally:
        pipe.close()
        close_graphs(opened)
    assert rt.live() == []  # teardown freed everything, each after its readers (or the double raised)
    for r, g, a in zip(ref, got, again, strict=True):
        assert len(g) == len(r) == len(a) == 5
        np.testing.assert_array_equal(g.labels, r.labels)
        np.testing.assert_allclose(g.boxes, r.boxes, rtol=1e-5, atol=1e-4)
        assert np.all(mask_iou(r.masks, g.masks) >= 0.99) and np.all(mask_iou(r.masks, a.masks) >= 0.99)
        assert np.all(np.diag(box_iou(r.boxes, a.boxes)) >= 0.999)


# --- the tracker's sequence ------------------------------------------------------------------------

def test_tracker_sequence_keeps_order_and_matches_onnxruntime(tiny_video_artifact, rt):
    """Two objects per call (several memory-encoder calls per frame on the memory stream) and an
    object started on frame 3 while the others are tracked."""
    from runtime.graphs import NUM_OBJECTS
    from runtime.preprocessing import Sam2Preprocessing
    from runtime.tracker import TRACKING_GRAPHS, Sam2Tracker, tracker_limits
    from tools.bench.synthetic import MovingShapes

    m = load_manifest(tiny_video_artifact)
    video = MovingShapes(6, 96, 128, num_shapes=3, seed=0)
    frames, starts = list(video), {0: video.boxes(0), 3: video.boxes(3)[:1]}

    def run(tracker):
        tracker.reset()
        return [tracker.step(f, starts.get(t)) for t, f in enumerate(frames)]

    with Sam2Tracker.open(m, "onnxruntime", "fp32", objects_per_call=2) as ort:
        ref = run(ort)
    opened: list = []
    opener = recording_opener(m, rt, opened=opened)
    graphs = {g.name: opener(g) for g in TRACKING_GRAPHS}
    tracker = Sam2Tracker(graphs, Sam2Preprocessing.from_dict(m.preprocessing("sam")), m.sizes,
                          int(m.data["profiles"][NUM_OBJECTS]["max"]), int(m.data["profiles"][NUM_BOXES]["max"]),
                          **tracker_limits(m.data["profiles"]), objects_per_call=2)
    try:
        assert tracker.on_streams
        made = rt.calls.count("malloc")
        got = run(tracker)
        assert rt.calls.count("malloc") == made  # every context and buffer was made at load
        assert all(g._own_stream is None for g in graphs.values())  # no run(): all on the tracker's streams
    finally:
        tracker.close()
        close_graphs(opened)
    assert rt.live() == []
    assert [r.object_ids.tolist() for r in ref] == [[1, 2, 3]] * 3 + [[1, 2, 3, 4]] * 3
    for r, g in zip(ref, got, strict=True):
        assert g.object_ids.tolist() == r.object_ids.tolist()
        assert np.all(mask_iou(r.masks, g.masks) >= 0.99), r.index
        np.testing.assert_allclose(g.object_scores, r.object_scores, rtol=1e-4, atol=1e-4)


# --- handles, failures, teardown of one graph ------------------------------------------------------

@pytest.fixture
def encoder_and_decoder(tiny_artifact, rt):
    m = load_manifest(tiny_artifact)
    opener = recording_opener(m, rt)
    enc, dec = opener(SAM2_IMAGE), opener(SAM2_DECODER)
    yield m, enc, dec
    close_graphs([enc, dec])


def test_stale_handles_raise_and_a_device_hand_off_is_ordered(encoder_and_decoder, rt):
    m, enc, dec = encoder_and_decoder
    s1, s2 = Stream(rt), Stream(rt)
    dims = {BATCH: 2, NUM_BOXES: 3}
    feeds = feeds_for(SAM2_IMAGE, m, dims, 1)
    boxes = feeds_for(SAM2_DECODER, m, {BATCH: 1, NUM_BOXES: 3}, 2)["boxes"]
    first = enc.enqueue(feeds, s1, host_outputs=())
    row = {n: first.device(n)[1:2] for n in SAM2_IMAGE.output_names}  # image 1 of the batch, on the device
    masks = dec.enqueue({**row, "boxes": boxes}, s2).outputs()
    second = enc.enqueue(feeds_for(SAM2_IMAGE, m, dims, 3), s1, host_outputs=())  # re-enqueued while s2 copies
    with pytest.raises(UserError, match="overwritten by a later call"):
        first.outputs()
    with pytest.raises(UserError, match="overwritten by a later call"):
        dec.enqueue({**row, "boxes": boxes}, s2)
    plain = enc.run(feeds)
    want = dec.run({**{n: plain[n][1:2] for n in plain}, "boxes": boxes})
    for n in want:
        np.testing.assert_allclose(masks[n], want[n], rtol=1e-6, atol=1e-6, err_msg=n)
    enc.close()
    with pytest.raises(UserError, match="graph .* was closed"):
        second.device(SAM2_IMAGE.output_names[0])
    close_streams([s1, s2])


def test_a_failed_execute_stales_the_old_handles_and_the_next_call_is_ordered(encoder_and_decoder, rt):
    m, enc, _ = encoder_and_decoder
    s = Stream(rt)
    feeds = feeds_for(SAM2_IMAGE, m, {BATCH: 1}, 4)
    old = enc.enqueue(feeds, s)
    enc.engine.fail_execution = enc.engine.executions + 1
    with pytest.raises(DeviceFault, match=r"sam2_image: TensorRT execute_async_v3 failed \(last CUDA error: cudaSuccess"):
        enc.enqueue(feeds_for(SAM2_IMAGE, m, {BATCH: 1}, 5), s)
    with pytest.raises(UserError, match="overwritten by a later call"):
        old.outputs()  # stale before anything was written, not the failed call's data under the old shape
    out = enc.enqueue(feeds, s).outputs()  # waits for what the failed call queued (else the double raises)
    np.testing.assert_allclose(out[SAM2_IMAGE.output_names[0]], enc.run(feeds)[SAM2_IMAGE.output_names[0]], atol=1e-6)
    s.close()


def test_a_device_fault_names_the_cuda_error_and_is_not_a_user_error(encoder_and_decoder, rt):
    m, enc, _ = encoder_and_decoder
    s = Stream(rt)
    rt.fail("memcpy_async", "cudaErrorIllegalAddress", sticky=True)
    with pytest.raises(DeviceFault, match="memcpy_async failed: cudaErrorIllegalAddress") as e:
        enc.enqueue(feeds_for(SAM2_IMAGE, m, {BATCH: 1}, 6), s)
    assert not isinstance(e.value, UserError) and "\n" not in str(e.value)
    # Teardown after a sticky fault: every step is tried, the first failure is raised.
    with pytest.raises(DeviceFault, match="cudaErrorIllegalAddress"):
        enc.close()
    frees = rt.calls.count("free") + rt.calls.count("free_host") + rt.calls.count("event_destroy")
    assert frees >= len(SAM2_IMAGE.input_names + SAM2_IMAGE.output_names)  # tried them all, not stopped at the first


def test_out_of_memory_at_load_is_a_user_error(tiny_artifact, rt):
    m = load_manifest(tiny_artifact)
    graph = recording_opener(m, rt)(SAM2_IMAGE)
    rt.fail("malloc", "cudaErrorMemoryAllocation")
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        graph.prepare()
    graph.close()
    assert rt.live() == []  # what the failed binding had made was freed


def test_close_streams_destroys_every_stream_when_a_wait_fails(rt):
    streams = [Stream(rt) for _ in range(3)]
    rt.fail("stream_synchronize", "cudaErrorLaunchFailure")
    with pytest.raises(DeviceFault, match="cudaErrorLaunchFailure"):
        close_streams(streams)
    assert all(s.handle is None for s in streams) and rt.calls.count("stream_destroy") == 3


def test_cuda_graph_buckets_replay_and_match_plain_runs(tiny_artifact, rt):
    m = load_manifest(tiny_artifact)
    opener = recording_opener(m, rt, cuda_graphs=(SAM2_DECODER.name,))
    plain, graphed = recording_opener(m, rt)(SAM2_DECODER), opener(SAM2_DECODER)
    graphed.max_cuda_graphs = 2
    try:
        for n_boxes, seed in ((2, 0), (2, 1), (4, 2), (2, 3), (1, 4), (4, 5)):  # capture, replay, evict
            feeds = feeds_for(SAM2_DECODER, m, {BATCH: 1, NUM_BOXES: n_boxes}, seed)
            want, got = plain.run(feeds), graphed.run(feeds)
            for n in want:
                np.testing.assert_allclose(got[n], want[n], rtol=1e-6, atol=1e-6, err_msg=f"{n} ({n_boxes} boxes)")
        # buckets kept (least recent first): [2], [2] replayed, [2, 4], [4, 2] replayed, [2, 1] (4 evicted),
        # [1, 4] (2 evicted): four captures, two replays
        assert rt.calls.count("graph_instantiate") == 4 and rt.calls.count("graph_launch") == 2
        assert len(next(iter(graphed._lanes.values())).bindings) == 2
    finally:
        close_graphs([plain, graphed])
    assert rt.live() == []


def test_a_refused_capture_is_an_error_and_leaves_the_graph_usable(tiny_artifact, rt):
    m = load_manifest(tiny_artifact)
    graphed = recording_opener(m, rt, cuda_graphs=(SAM2_DECODER.name,))(SAM2_DECODER)
    feeds = feeds_for(SAM2_DECODER, m, {BATCH: 1, NUM_BOXES: 2}, 0)
    graphed.engine.fail_execution = 2  # the warm-up runs, the captured enqueue is refused
    with pytest.raises(UserError, match="cannot be captured into a CUDA graph.*cuda_graph=False"):
        graphed.run(feeds)
    graphed.engine.fail_execution = None
    assert set(graphed.run(feeds)) == set(SAM2_DECODER.output_names)
    graphed.close()
    assert rt.live() == []


def test_device_tensor_rows_are_pointer_offsets_without_a_copy():
    t = DeviceTensor(ptr=4096, shape=(3, 2, 5), dtype=np.dtype(np.float32), producer=None)
    row = t[1:2]
    assert (row.ptr, row.shape, row.nbytes) == (4096 + 40, (1, 2, 5), 40)
    assert (t[2:].ptr, t[2:].shape) == (4096 + 80, (1, 2, 5))
    with pytest.raises(ValueError, match="contiguous"):
        t[::2]
