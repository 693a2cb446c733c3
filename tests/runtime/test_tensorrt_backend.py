"""The TensorRT backend.

Everywhere: its pure-Python half (engine names, manifest records and their verification against the
running TensorRT and GPU, the errors when tensorrt or a GPU is missing). Where tensorrt and a CUDA
device exist (tests marked ``gpu``): engines built from the tiny artifact against ONNX Runtime, two
streams with a device hand-off, outputs kept on the device (``host_outputs``), CUDA-graph replay. No
test here imitates TensorRT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from _tensorrt import tensorrt_importable
from runtime.backends.tensorrt import (
    DeviceInfo,
    EngineRecord,
    TrtEnvironment,
    backend_status,
    cuda_device_status,
    engine_file_name,
    gpu_slug,
    select_engine_record,
    verify_engine_record,
)
from runtime.errors import ArtifactError, UserError
from runtime.graphs import BATCH, GRAPHS, NUM_BOXES, SAM2_DECODER, SAM2_IMAGE, OWL_IMAGE, GraphSpec, resolve_shape
from runtime.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file

H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))
A100 = DeviceInfo("NVIDIA A100-SXM4-40GB", (8, 0))


# --- pure Python ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cc,slug", [
    ("NVIDIA H100 80GB HBM3", (9, 0), "nvidia-h100-80gb-hbm3-sm90"),
    ("NVIDIA GeForce RTX 4090", (8, 9), "nvidia-geforce-rtx-4090-sm89"),
    ("NVIDIA A100-SXM4-40GB", (8, 0), "nvidia-a100-sxm4-40gb-sm80"),
    ("  Tesla T4 / (PCIe)  ", (7, 5), "tesla-t4-pcie-sm75"),
    ("???", (12, 0), "gpu-sm120"),
])
def test_gpu_slug_is_filesystem_safe(name, cc, slug):
    assert gpu_slug(name, cc) == slug
    assert DeviceInfo(name, cc).slug == slug


def test_engine_file_name():
    assert engine_file_name("owl_image", "fp16", H100.slug) == "owl_image.fp16.nvidia-h100-80gb-hbm3-sm90.engine"


def fake_artifact(tmp_path: Path, device: DeviceInfo = H100, version: str = "10.9.0.34") -> tuple[Manifest, EngineRecord]:
    """A manifest with one engine record; the engine file holds arbitrary bytes, as verification
    only reads its hash (it never deserialises before the record checks pass)."""
    name = engine_file_name("owl_image", "fp16", device.slug)
    (tmp_path / name).write_bytes(b"serialized engine bytes")
    record = EngineRecord(
        graph="owl_image", precision="fp16", file=name, sha256=sha256_file(tmp_path / name), bytes=23,
        tensorrt_version=version, gpu_name=device.name, compute_capability=device.compute_capability,
        profiles={BATCH: {"min": 1, "opt": 1, "max": 4}}, builder={"optimization_level": 3, "workspace_bytes": None},
        onnx={"path": "owl_image.fp16.onnx", "sha256": "0" * 64},
    )
    data = {"engines": {"owl_image": {"fp16": {device.slug: record.to_dict()}}}}
    return Manifest(root=tmp_path, data=data), record


def test_engine_record_round_trips_through_json(tmp_path):
    _, record = fake_artifact(tmp_path)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["gpu"] == {"name": H100.name, "compute_capability": "9.0"}
    assert {"precision", "tensorrt", "profiles", "sha256", "file"} <= set(data)
    assert EngineRecord.from_dict("owl_image", data, "here") == record


def test_malformed_record_is_an_artifact_error():
    with pytest.raises(ArtifactError, match="malformed engine record"):
        EngineRecord.from_dict("owl_image", {"file": "x.engine"}, "here")


def test_matching_record_verifies(tmp_path):
    manifest, record = fake_artifact(tmp_path)
    env = TrtEnvironment("10.9.0.34", H100)
    assert select_engine_record(manifest, "owl_image", "fp16", env) == record
    assert verify_engine_record(manifest, record, env) == tmp_path / record.file


def test_engine_for_another_gpu_names_both(tmp_path):
    manifest, _ = fake_artifact(tmp_path, device=A100)
    with pytest.raises(ArtifactError) as e:
        select_engine_record(manifest, "owl_image", "fp16", TrtEnvironment("10.9.0.34", H100))
    msg = str(e.value)
    assert "NVIDIA A100-SXM4-40GB (sm80)" in msg and "NVIDIA H100 80GB HBM3 (sm90)" in msg
    assert "python -m export.build --from" in msg and "\n" not in msg


def test_record_for_another_gpu_fails_verification(tmp_path):
    manifest, record = fake_artifact(tmp_path, device=A100)
    with pytest.raises(ArtifactError, match=r"built for NVIDIA A100-SXM4-40GB \(sm80\), this machine has NVIDIA H100"):
        verify_engine_record(manifest, record, TrtEnvironment("10.9.0.34", H100))


def test_same_name_other_compute_capability_fails(tmp_path):
    manifest, record = fake_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="sm90.*sm89"):
        verify_engine_record(manifest, record, TrtEnvironment("10.9.0.34", DeviceInfo(H100.name, (8, 9))))


def test_other_tensorrt_version_names_both(tmp_path):
    manifest, record = fake_artifact(tmp_path, version="10.3.0.26")
    with pytest.raises(ArtifactError) as e:
        verify_engine_record(manifest, record, TrtEnvironment("11.1.0.5", H100))
    msg = str(e.value)
    assert "TensorRT 10.3.0.26" in msg and "TensorRT 11.1.0.5" in msg and "tensorrt==10.3.0.26" in msg


def test_changed_engine_file_fails_its_sha256(tmp_path):
    manifest, record = fake_artifact(tmp_path)
    (tmp_path / record.file).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        verify_engine_record(manifest, record, TrtEnvironment("10.9.0.34", H100))


def test_missing_engine_names_the_fix(tmp_path):
    manifest = Manifest(root=tmp_path, data={"engines": {}})
    with pytest.raises(ArtifactError, match=r"no fp16 TensorRT engine for 'sam2_decoder'.*--engines require"):
        select_engine_record(manifest, "sam2_decoder", "fp16", TrtEnvironment("10.9.0.34", H100))


def test_status_says_why_when_unavailable():
    ok, why = backend_status()
    assert isinstance(ok, bool) and why
    if not ok:
        assert any(s in why for s in ("tensorrt is not importable", "cuda-python is missing", "no CUDA device",
                                      "older than"))


def test_missing_tensorrt_is_a_user_error_naming_the_extra(tiny_artifact):
    if tensorrt_importable():
        pytest.skip("tensorrt is installed here")
    from runtime.backends.tensorrt import tensorrt_opener

    with pytest.raises(UserError, match=r"pip install 'owlsam-trt\[trt\]'"):
        tensorrt_opener(load_manifest(tiny_artifact), "fp32")


def test_no_cuda_device_is_reported_by_cuda_python():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    ok, why = cuda_device_status()
    if ok:
        pytest.skip(f"a CUDA device is present: {why}")
    assert "cudaGetDeviceCount failed" in why or "no CUDA device" in why


# --- on a GPU: the CUDA half (cuda-python only, no TensorRT needed) -------------------------------

def require_cuda() -> None:
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    ok, why = cuda_device_status()
    if not ok:
        pytest.skip(f"no CUDA device: {why}")


@pytest.mark.gpu
def test_device_is_described():
    require_cuda()
    from runtime.backends.tensorrt import cuda_device

    dev = cuda_device()
    assert dev.name and "\x00" not in dev.name and dev.compute_capability[0] >= 3
    assert dev.slug.endswith("-sm%d%d" % dev.compute_capability) and dev.slug == gpu_slug(dev.name, dev.compute_capability)


@pytest.mark.gpu
def test_copies_across_two_streams_ordered_by_an_event():
    require_cuda()
    from runtime.backends.tensorrt import DeviceBuffer, Event, PinnedBuffer, Stream, memcpy_async

    data = np.arange(1 << 22, dtype=np.float32)  # 16 MiB: long enough for a missing wait to show
    f32 = np.dtype(np.float32)
    s1, s2, ev = Stream(), Stream(), Event()
    host_in, host_out = PinnedBuffer(data.nbytes), PinnedBuffer(data.nbytes)
    a, b = DeviceBuffer(data.nbytes), DeviceBuffer(data.nbytes)
    try:
        np.copyto(host_in.view(f32, data.shape), data)
        host_out.view(f32, data.shape)[:] = -1
        memcpy_async(a.ptr, host_in.ptr, data.nbytes, "HostToDevice", s1)
        ev.record(s1)
        ev.wait_on(s2)  # s2's copy must see s1's upload
        memcpy_async(b.ptr, a.ptr, data.nbytes, "DeviceToDevice", s2)
        memcpy_async(host_out.ptr, b.ptr, data.nbytes, "DeviceToHost", s2)
        s2.synchronize()
        np.testing.assert_array_equal(host_out.view(f32, data.shape), data)
    finally:
        for r in (a, b, host_in, host_out, ev, s1, s2):
            r.close()


@pytest.mark.gpu
def test_cuda_graph_capture_and_replay_of_a_copy():
    require_cuda()
    from runtime.backends.tensorrt import DeviceBuffer, PinnedBuffer, Stream, capture_graph, memcpy_async

    n = 1024
    i64 = np.dtype(np.int64)
    s = Stream()
    src, dst = PinnedBuffer(n * 8), PinnedBuffer(n * 8)
    dev = DeviceBuffer(n * 8)

    def copy_through_device() -> bool:
        memcpy_async(dev.ptr, src.ptr, n * 8, "HostToDevice", s)
        memcpy_async(dst.ptr, dev.ptr, n * 8, "DeviceToHost", s)
        return True

    graph = capture_graph(s, copy_through_device, "cannot capture")
    try:
        for k in range(3):  # the graph replays whatever the pinned source holds at launch time
            src.view(i64, (n,))[:] = np.arange(n) * (k + 1)
            s.cuda.graph_launch(graph, s.handle)
            s.synchronize()
            np.testing.assert_array_equal(dst.view(i64, (n,)), np.arange(n) * (k + 1))
        with pytest.raises(UserError, match="refused on purpose"):
            capture_graph(s, lambda: False, "refused on purpose")
        copy_through_device()  # the stream is usable again after a refused capture
        s.synchronize()
    finally:
        s.cuda.graph_exec_destroy(graph)
        for r in (dev, src, dst, s):
            r.close()


@pytest.mark.gpu
def test_failed_cuda_call_is_a_one_line_error():
    require_cuda()
    from runtime.backends.cuda import CudaError
    from runtime.backends.tensorrt import DeviceBuffer

    with pytest.raises(CudaError, match=r"cudaMalloc\(\d+\) failed: cudaErrorMemoryAllocation") as e:
        DeviceBuffer(1 << 60)
    assert "\n" not in str(e.value)


# --- on a GPU with TensorRT ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_engines(build_fp32_engines, request) -> Path:
    """A copy of the tiny artifact with FP32 engines built for this GPU."""
    # build_fp32_engines needs tensorrt_gpu: it skips before the (slow) artifact fixture is built
    return build_fp32_engines(request.getfixturevalue("tiny_artifact"))


def feeds_for(spec: GraphSpec, sizes, dims, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = resolve_shape(t, sizes, dims)
        if t.dtype == "int64":  # token ids / attention mask of the text graph
            ids = rng.integers(1, 40, shape) if t.name == "input_ids" else np.ones(shape)
            out[t.name] = ids.astype(np.int64)
        elif t.name == "boxes":
            xy = rng.uniform(0, sizes["sam_image_size"] / 2, (*shape[:-1], 2))
            out[t.name] = np.concatenate([xy, xy + sizes["sam_image_size"] / 3], -1).astype(np.float32)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def assert_close(name, ref, got):
    assert got.shape == ref.shape and got.dtype == ref.dtype, name
    scale = float(np.abs(ref).max()) or 1.0
    err = float(np.abs(got.astype(np.float64) - ref).max())
    # FP32 engines may use TF32 (TensorRT's default): a looser bound than ORT vs torch.
    assert err <= 1e-2 * scale + 1e-4, f"{name}: max-abs {err:.3g} at scale {scale:.3g}"
    a, b = ref.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    if np.linalg.norm(a) > 0:
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.9999, name


@pytest.mark.gpu
def test_engines_match_onnxruntime(tiny_engines):
    from runtime.backends import onnxruntime_opener
    from runtime.backends.tensorrt import tensorrt_opener

    m = load_manifest(tiny_engines)
    open_trt, open_ort = tensorrt_opener(m, "fp32"), onnxruntime_opener(m, "fp32")
    for name in m.graphs:
        spec = GRAPHS[name]
        with open_trt(spec) as trt_graph:
            ort_graph = open_ort(spec)
            for dims in ({d: 1 for d in spec.dynamic_dims},
                         {d: m.data["profiles"][d]["max"] for d in spec.dynamic_dims},
                         {d: m.data["profiles"][d]["opt"] for d in spec.dynamic_dims}):
                feeds = feeds_for(spec, m.sizes, dims)
                ref, got = ort_graph.run(feeds), trt_graph.run(feeds)
                assert list(got) == spec.output_names
                for out in spec.output_names:
                    assert_close(f"{name}.{out} at {dims}", ref[out], got[out])


@pytest.mark.gpu
def test_two_streams_and_a_device_hand_off(tiny_engines):
    from runtime.backends.tensorrt import Stream, tensorrt_opener

    m = load_manifest(tiny_engines)
    open_trt = tensorrt_opener(m, "fp32")
    owl, enc, dec = open_trt(OWL_IMAGE), open_trt(SAM2_IMAGE), open_trt(SAM2_DECODER)
    s1, s2 = Stream(), Stream()
    try:
        dims = {BATCH: 1, NUM_BOXES: 3}
        owl_feeds, enc_feeds = feeds_for(OWL_IMAGE, m.sizes, dims, 1), feeds_for(SAM2_IMAGE, m.sizes, dims, 2)
        boxes = feeds_for(SAM2_DECODER, m.sizes, dims, 3)["boxes"]
        det = owl.enqueue(owl_feeds, s1)  # the two image graphs run concurrently
        feats = enc.enqueue(enc_feeds, s2)
        on_device = {n: feats.device(n) for n in SAM2_IMAGE.output_names}
        masks = dec.enqueue({**on_device, "boxes": boxes}, s1).outputs()  # other stream: waits on the event
        expected_feats = enc.run(enc_feeds)
        expected = dec.run({**expected_feats, "boxes": boxes})
        expected_det = owl.run(owl_feeds)
        # Other contexts, same engine and shapes: equal up to kernel-level non-determinism.
        for got, want in ((masks, expected), (det.outputs(), expected_det), (feats.outputs(), expected_feats)):
            assert list(got) == list(want)
            for n in want:
                np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6, err_msg=n)
        enc.enqueue(enc_feeds, s2)
        with pytest.raises(UserError, match="overwritten by a later call"):
            feats.outputs()
    finally:
        for g in (owl, enc, dec):
            g.close()
        s1.close()
        s2.close()


@pytest.mark.gpu
def test_host_outputs_copy_back_only_those(tiny_engines):
    """``enqueue(..., host_outputs=names)``: the encoder's features stay on the device, the decoder
    returns just the named outputs, equal to a plain ``run()``."""
    from runtime.backends.tensorrt import Stream, tensorrt_opener

    m = load_manifest(tiny_engines)
    open_trt = tensorrt_opener(m, "fp32")
    enc, dec = open_trt(SAM2_IMAGE), open_trt(SAM2_DECODER)
    stream = Stream()
    try:
        dims = {BATCH: 1, NUM_BOXES: 2}
        enc_feeds = feeds_for(SAM2_IMAGE, m.sizes, dims, 5)
        boxes = feeds_for(SAM2_DECODER, m.sizes, dims, 6)["boxes"]
        masks_name, _, scores_name = SAM2_DECODER.output_names
        feats = enc.enqueue(enc_feeds, stream, host_outputs=())
        on_device = {n: feats.device(n) for n in SAM2_IMAGE.output_names}
        got = dec.enqueue({**on_device, "boxes": boxes}, stream, host_outputs=(scores_name, masks_name)).outputs()
        assert feats.outputs() == {}
        expected_feats = enc.run(enc_feeds)
        want = dec.run({**expected_feats, "boxes": boxes})
        assert list(got) == [scores_name, masks_name]
        for n in got:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6, err_msg=n)
        with pytest.raises(ValueError, match=r"host_outputs \['nope'\] are not outputs"):
            dec.enqueue({**expected_feats, "boxes": boxes}, stream, host_outputs=("nope",))
    finally:
        for g in (enc, dec):
            g.close()
        stream.close()


@pytest.mark.gpu
def test_cuda_graph_replay_matches(tiny_engines):
    from runtime.backends.tensorrt import TrtGraph, select_engine_record, tensorrt_environment

    m = load_manifest(tiny_engines)
    rec = select_engine_record(m, SAM2_DECODER.name, "fp32", tensorrt_environment())
    with TrtGraph.from_file(tiny_engines / rec.file, SAM2_DECODER) as plain, \
            TrtGraph.from_file(tiny_engines / rec.file, SAM2_DECODER, cuda_graph=True) as graphed:
        graphed.max_cuda_graphs = 2  # buckets 2, 5 and 1 below: one is evicted and captured again
        for n_boxes, seed in ((2, 0), (2, 1), (5, 2), (2, 3), (1, 4), (5, 5), (5, 6), (1, 7)):
            feeds = feeds_for(SAM2_DECODER, m.sizes, {BATCH: 1, NUM_BOXES: n_boxes}, seed)
            want, got = plain.run(feeds), graphed.run(feeds)
            for n in SAM2_DECODER.output_names:
                np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6, err_msg=f"{n} ({n_boxes} boxes)")


@pytest.mark.gpu
def test_shape_outside_the_profile_is_a_user_error(tiny_engines):
    from runtime.backends.tensorrt import tensorrt_opener

    m = load_manifest(tiny_engines)
    too_many = m.data["profiles"][NUM_BOXES]["max"] + 1
    with tensorrt_opener(m, "fp32")(SAM2_DECODER) as dec:
        with pytest.raises(UserError, match=rf"num_boxes={too_many}.*--max-boxes"):
            dec.run(feeds_for(SAM2_DECODER, m.sizes, {BATCH: 1, NUM_BOXES: too_many}))


@pytest.mark.gpu
def test_opener_checks_the_record_before_deserialising(tiny_engines, tmp_path):
    from runtime.backends.tensorrt import tensorrt_environment, tensorrt_opener

    root = tmp_path / "copy"
    shutil.copytree(tiny_engines, root)
    data = json.loads((root / MANIFEST_NAME).read_text())
    slug = tensorrt_environment().device.slug
    data["engines"][OWL_IMAGE.name]["fp32"][slug]["tensorrt"] = "9.9.9"
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"built with TensorRT 9\.9\.9, this runtime has TensorRT"):
        tensorrt_opener(load_manifest(root), "fp32")(OWL_IMAGE)


@pytest.mark.gpu
@pytest.mark.parametrize("concurrent", [True, False])
def test_pipeline_runs_on_two_streams_and_matches_onnxruntime(tiny_engines, make_image, concurrent):
    """The image pipeline on TensorRT queues both encoders on its own streams (no graph's own run()
    stream is ever made for them) and hands the SAM2 features to the decoder on the device."""
    from runtime import Pipeline
    from runtime.metrics import box_iou, mask_iou

    images = [make_image(120, 160, seed=5), make_image(96, 64, seed=6)]
    with Pipeline.load(tiny_engines, backend="onnxruntime") as ort_pipe:
        ref = ort_pipe.predict_batch(images, ["cat", "dog"], threshold=0.0, max_detections=4)
    with Pipeline.load(tiny_engines, backend="tensorrt", precision="fp32", concurrent=concurrent) as pipe:
        assert pipe.on_streams
        got = pipe.predict_batch(images, ["cat", "dog"], threshold=0.0, max_detections=4)
        assert pipe.owl.image._own_stream is None and pipe.sam.image._own_stream is None
        assert set(pipe.sam.image._lanes) == {pipe.sam.stream.ptr}
        assert set(pipe.owl.image._lanes) == {pipe.owl.stream.ptr}
        assert pipe.sam.decoder.cuda_graph  # replayed per box bucket
        pipe.timer.synchronize = True  # exact stages for measuring: same results
        again = pipe.predict_batch(images, ["cat", "dog"], threshold=0.0, max_detections=4)
        assert all(np.array_equal(a.masks, g.masks) for a, g in zip(again, got, strict=True))
    for r, g in zip(ref, got, strict=True):
        assert len(g) == len(r) == 4
        np.testing.assert_array_equal(g.labels, r.labels)
        assert np.all(np.diag(box_iou(r.boxes, g.boxes)) >= 0.99)
        assert np.all(mask_iou(r.masks, g.masks) >= 0.98)


# --- on a GPU with TensorRT: the stream policy under load -------------------------------------------
# Run these under compute-sanitizer to catch what the results may not show (races, use after free):
#   compute-sanitizer --tool racecheck python -m pytest -q -m gpu tests/runtime/test_tensorrt_backend.py -k stress
#   compute-sanitizer --tool memcheck  python -m pytest -q -m gpu tests/runtime/test_tensorrt_backend.py

@pytest.mark.gpu
def test_hand_off_stress_loop_matches_plain_runs(tiny_engines):
    """Encoder outputs handed to the decoder on the device (row slices of a batch) while the encoder
    is re-enqueued with the next batch at once: every decoder result equals a plain run's."""
    from runtime.backends.tensorrt import Stream, close_streams, tensorrt_opener

    m = load_manifest(tiny_engines)
    open_trt = tensorrt_opener(m, "fp32")
    enc, dec = open_trt(SAM2_IMAGE), open_trt(SAM2_DECODER)
    s_enc, s_dec = Stream(), Stream()
    try:
        batches = [feeds_for(SAM2_IMAGE, m.sizes, {BATCH: 2}, seed) for seed in range(20)]
        boxes = feeds_for(SAM2_DECODER, m.sizes, {BATCH: 1, NUM_BOXES: 3}, 99)["boxes"]
        got = []
        pending = enc.enqueue(batches[0], s_enc, host_outputs=())
        for i in range(len(batches)):
            rows = {n: pending.device(n)[i % 2 : i % 2 + 1] for n in SAM2_IMAGE.output_names}
            decoded = dec.enqueue({**rows, "boxes": boxes}, s_dec)
            if i + 1 < len(batches):  # overwrites the encoder's buffers once the decoder's copy is done
                pending = enc.enqueue(batches[i + 1], s_enc, host_outputs=())
            got.append(decoded.outputs())
        for i, out in enumerate(got):
            feats = enc.run(batches[i])
            want = dec.run({**{n: feats[n][i % 2 : i % 2 + 1] for n in feats}, "boxes": boxes})
            for n in want:
                np.testing.assert_allclose(out[n], want[n], rtol=1e-5, atol=1e-6, err_msg=f"{n}, batch {i}")
    finally:
        close_streams([s_enc, s_dec])
        for g in (enc, dec):
            g.close()


@pytest.mark.gpu
def test_shapes_below_the_maxima_and_row_slices_match_onnxruntime(tiny_engines):
    """Buffers are sized for the profile maxima; calls with fewer boxes, a smaller batch and row
    slices of a batch on the device give ONNX Runtime's results."""
    from runtime.backends import onnxruntime_opener
    from runtime.backends.tensorrt import Stream, tensorrt_opener

    m = load_manifest(tiny_engines)
    open_trt, open_ort = tensorrt_opener(m, "fp32"), onnxruntime_opener(m, "fp32")
    enc, dec = open_trt(SAM2_IMAGE), open_trt(SAM2_DECODER)
    ort_enc, ort_dec = open_ort(SAM2_IMAGE), open_ort(SAM2_DECODER)
    stream = Stream()
    try:
        max_batch, max_boxes = (int(m.data["profiles"][d]["max"]) for d in (BATCH, NUM_BOXES))
        batch = min(3, max_batch)
        feeds = feeds_for(SAM2_IMAGE, m.sizes, {BATCH: batch}, 11)
        feats = enc.enqueue(feeds, stream, host_outputs=())
        ref_feats = ort_enc.run(feeds)
        for i in range(batch):
            for n_boxes in sorted({1, max(1, max_boxes // 2), max_boxes}):
                boxes = feeds_for(SAM2_DECODER, m.sizes, {BATCH: 1, NUM_BOXES: n_boxes}, 20 + i)["boxes"]
                got = dec.enqueue({**{n: feats.device(n)[i : i + 1] for n in SAM2_IMAGE.output_names},
                                   "boxes": boxes}, stream).outputs()
                want = ort_dec.run({**{n: ref_feats[n][i : i + 1] for n in ref_feats}, "boxes": boxes})
                for n in want:
                    assert_close(f"{n}, image {i}, {n_boxes} boxes", want[n], got[n])
    finally:
        for g in (enc, dec):
            g.close()
        stream.close()


@pytest.mark.gpu
def test_staleness_rules_on_the_device(tiny_engines):
    from runtime.backends.tensorrt import Stream, tensorrt_opener

    m = load_manifest(tiny_engines)
    enc = tensorrt_opener(m, "fp32")(SAM2_IMAGE)
    s1, s2 = Stream(), Stream()
    feeds = feeds_for(SAM2_IMAGE, m.sizes, {BATCH: 1}, 1)
    first = enc.enqueue(feeds, s1)
    other = enc.enqueue(feeds, s2)  # another stream: the first call's outputs stay valid
    assert set(first.outputs()) == set(other.outputs()) == set(SAM2_IMAGE.output_names)
    enc.enqueue(feeds, s1)
    with pytest.raises(UserError, match="overwritten by a later call"):
        first.device(SAM2_IMAGE.output_names[0])
    enc.close()
    with pytest.raises(UserError, match="was closed"):
        other.outputs()
    s1.close()
    s2.close()
