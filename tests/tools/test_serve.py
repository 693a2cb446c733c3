"""python -m tools.serve on a real Triton server (the nvidia-pytriton wheel's binary) on 127.0.0.1, and
python -m tools.client against it: the wire interface, parity over HTTP and gRPC, load, bad requests,
draining on SIGTERM, start-up errors and the written model repository. One server per module (its
start is the cost); each test bounded in time; every process the tests start is stopped by them."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.client import Connection, to_result
from tools.serve.interface import IMAGE, MODELS, OWL_DETECT, OWLSAM, PROMPTS, THRESHOLD
from tools.serve.server import Endpoints, TritonServer, free_ports

pytestmark = pytest.mark.usefixtures("serve_extra")

ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = 250 * 250
START_TIMEOUT_S = 180


# --- processes ----------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Served:
    process: subprocess.Popen
    endpoints: Endpoints
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 90) -> int:
        """SIGTERM, the exit status, and nothing left running below it."""
        below = descendants(self.process.pid)
        assert below, "tools.serve runs tritonserver and its model processes"
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        deadline = time.monotonic() + 30
        while any(alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in below if alive(p)], "tritonserver or a model process outlived tools.serve"
        return code

    def kill(self) -> None:
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)


def start_serve(engines: Path, log: Path, *args: str) -> Served:
    endpoints = Endpoints("127.0.0.1", *free_ports(3))
    cmd = [sys.executable, "-m", "tools.serve", "--engines", str(engines), "--http-port", str(endpoints.http_port),
           "--grpc-port", str(endpoints.grpc_port), "--metrics-port", str(endpoints.metrics_port), *args]
    with open(log, "w") as f:
        process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=f,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    served = Served(process, endpoints, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "INFO tools.serve: serving models" not in served.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            served.kill()
            pytest.fail(f"tools.serve did not start:\n{served.log_text()[-4000:]}")
        time.sleep(0.2)
    return served


def metric(url: str, name: str, model: str, required: bool = True) -> float:
    """A counter of ``model`` from the server's Prometheus metrics, summed over its other labels
    (``reason`` of failures); 0 when not ``required`` and absent (Triton adds failure counters on
    the first failure)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert f"# TYPE {name} counter" in text, f"{name} is not among the metrics"
    values = [float(v) for labels, v in re.findall(rf"^{name}{{(.*)}} (\S+)$", text, re.M)
              if f'model="{model}"' in labels.split(",")]
    assert values or not required, f"{name} of {model} is not in the metrics"
    return sum(values)


# --- data ------------------------------------------------------------------------------------------------

def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


SIZES = [(120, 160), (200, 90), (64, 64), (97, 131)]
PROMPT_LISTS = [["cat", "red car"], ["dog"], ["a bird", "tree", "cat"]]


@pytest.fixture(scope="module")
def images(make_image) -> list[np.ndarray]:
    return [make_image(h, w, seed=70 + i) for i, (h, w) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def expected(tiny_pipeline, images) -> dict[tuple[int, int], object]:
    """Pipeline.predict of every image with every prompt list."""
    return {(i, k): tiny_pipeline.predict(im, PROMPT_LISTS[k]) for i, im in enumerate(images) for k in range(len(PROMPT_LISTS))}


def profile_max_batch(artifact: Path) -> int:
    return json.loads((artifact / "manifest.json").read_text())["profiles"]["batch"]["max"]


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):
    """Batching as far as the artifact allows (above the onnxruntime default, so warned about)."""
    served = start_serve(tiny_artifact, tmp_path_factory.mktemp("serve") / "serve.log", "--backend", "onnxruntime",
                         "--max-pixels", str(MAX_PIXELS), "--max-batch", str(profile_max_batch(tiny_artifact)))
    try:
        yield served
    finally:
        if served.process.poll() is None:
            assert served.stop() == 0, served.log_text()[-4000:]


def connect(server: Served, grpc: bool, model: str = OWLSAM.name) -> Connection:
    e = server.endpoints
    return Connection(e.grpc_url if grpc else e.http_url, grpc, model, timeout_s=60)


def assert_result(outputs: dict, expected, hw, prompts, masks: bool = True) -> None:
    n = len(expected)
    assert outputs["boxes"].shape == (n, 4)
    np.testing.assert_allclose(outputs["boxes"], expected.boxes, rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs["scores"], expected.scores, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["labels"], expected.labels)
    np.testing.assert_array_equal(outputs["image_size"], hw)
    if masks:
        result = to_result(outputs, prompts)
        assert result.masks.shape == expected.masks.shape
        np.testing.assert_array_equal(result.masks, expected.masks)


# --- tests ------------------------------------------------------------------------------------------------

def test_start_log_names_backend_batch_and_urls(server, tiny_artifact):
    log = server.log_text()
    e = server.endpoints
    assert "backend onnxruntime, precision fp32: requested" in log
    n = profile_max_batch(tiny_artifact)
    assert f"\nINFO tools.serve: max batch {n}: --max-batch\n" in log
    warnings = [line for line in log.splitlines() if line.startswith("WARNING tools.serve:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"WARNING tools.serve: --max-batch {n} with onnxruntime: ")
    assert "python -m tools.bench.batching --engines DIR" in warnings[0]
    assert (f"serving models owlsam, owl_detect (1 instance each): HTTP http://127.0.0.1:{e.http_port}, "
            f"gRPC 127.0.0.1:{e.grpc_port}, metrics http://127.0.0.1:{e.metrics_port}/metrics") in log
    # bound to loopback only
    assert f"Started HTTPService at 127.0.0.1:{e.http_port}" in log
    assert f"Started GRPCInferenceService at 127.0.0.1:{e.grpc_port}" in log


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_metadata_reports_the_wire_interface(server, grpc):
    conn = connect(server, grpc)
    try:
        for spec in MODELS:
            meta = conn.client.get_model_metadata(spec.name, as_json=True) if grpc else conn.client.get_model_metadata(spec.name)
            for got, want in ((meta["inputs"], spec.inputs), (meta["outputs"], spec.outputs)):
                assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in got] == \
                       [(t.name, t.datatype, [-1, *t.dims]) for t in want]
    finally:
        conn.close()


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_parity_with_pipeline_predict(server, images, expected, grpc, spec):
    conn = connect(server, grpc, spec.name)
    try:
        count = 0
        for i, im in enumerate(images):
            k = i % len(PROMPT_LISTS)
            out = conn.infer(png(im), PROMPT_LISTS[k], None, outputs=spec.output_names)
            assert_result(out, expected[(i, k)], im.shape[:2], PROMPT_LISTS[k], masks=spec is OWLSAM)
            count += len(expected[(i, k)])
        assert count > 10
        # an explicit threshold is used
        out = conn.infer(png(images[0]), PROMPT_LISTS[0], 0.3, outputs=spec.output_names)
        assert len(out["scores"]) < len(expected[(0, 0)]) and (out["scores"] > 0.3).all()
    finally:
        conn.close()


def test_16_clients_x_10_requests_all_correct_and_counted(server, images, expected):
    metrics = server.endpoints.metrics_url
    before = {n: metric(metrics, n, OWLSAM.name) for n in ("nv_inference_request_success", "nv_inference_exec_count")}
    failures_before = metric(metrics, "nv_inference_request_failure", OWLSAM.name, required=False)
    encoded = [png(im) for im in images]
    failures: list[str] = []

    def client(c: int) -> int:
        conn = connect(server, grpc=bool(c % 2))
        done = 0
        try:
            for r in range(10):
                i, k = (c + r) % len(images), (c * 7 + r) % len(PROMPT_LISTS)
                out = conn.infer(encoded[i], PROMPT_LISTS[k], None)
                try:
                    assert_result(out, expected[(i, k)], images[i].shape[:2], PROMPT_LISTS[k])
                    done += 1
                except AssertionError as e:
                    failures.append(f"client {c} request {r}: {e}")
        finally:
            conn.close()
        return done

    with ThreadPoolExecutor(16) as pool:
        done = sum(pool.map(client, range(16), timeout=300))
    assert not failures, failures[:3]
    assert done == 160
    deadline = time.monotonic() + 10
    while metric(metrics, "nv_inference_request_success", OWLSAM.name) - before["nv_inference_request_success"] < 160:
        assert time.monotonic() < deadline, "the server's metrics did not count 160 requests"
        time.sleep(0.2)
    assert metric(metrics, "nv_inference_request_success", OWLSAM.name) - before["nv_inference_request_success"] == 160
    assert metric(metrics, "nv_inference_request_failure", OWLSAM.name, required=False) == failures_before
    batches = metric(metrics, "nv_inference_exec_count", OWLSAM.name) - before["nv_inference_exec_count"]
    assert batches < 160, "dynamic batching never put two requests in one batch"


def _raw_request(conn: Connection, arrays: dict[str, tuple[np.ndarray, str]], model: str = OWLSAM.name):
    inputs = []
    for name, (array, datatype) in arrays.items():
        inputs.append(conn.module.InferInput(name, list(array.shape), datatype))
        inputs[-1].set_data_from_numpy(array)
    return conn.client.infer(model, inputs)


def _bad_requests(good: bytes) -> list[tuple[str, dict, str]]:
    image = (np.array([[good]], dtype=object), "BYTES")
    prompts = (np.array([[b"cat"]], dtype=object), "BYTES")
    big = png(np.zeros((260, 250, 3), np.uint8))
    return [
        ("corrupt image", {IMAGE.name: (np.array([[good[: len(good) // 2]]], dtype=object), "BYTES"), PROMPTS.name: prompts},
         "image: the image data is truncated or corrupt"),
        ("not an image", {IMAGE.name: (np.array([[b"hello"]], dtype=object), "BYTES"), PROMPTS.name: prompts},
         "image: not an image file PIL can read; pass a JPEG, PNG, BMP, TIFF or WebP image"),
        ("empty image", {IMAGE.name: (np.array([[b""]], dtype=object), "BYTES"), PROMPTS.name: prompts},
         "image: no image data (0 bytes)"),
        ("too many pixels", {IMAGE.name: (np.array([[big]], dtype=object), "BYTES"), PROMPTS.name: prompts},
         f"image: 250x260 is 65000 pixels, more than the limit of {MAX_PIXELS}; downscale it first"),
        ("no prompts", {IMAGE.name: image, PROMPTS.name: (np.zeros((1, 0), dtype=object), "BYTES")},
         "no prompts given; pass at least one text prompt"),
        ("empty prompt", {IMAGE.name: image, PROMPTS.name: (np.array([[b"cat", b""]], dtype=object), "BYTES")},
         "prompt 1 is empty"),
        ("non-UTF-8 prompt", {IMAGE.name: image, PROMPTS.name: (np.array([[b"\xc3\x28"]], dtype=object), "BYTES")},
         "prompt 0 is not valid UTF-8; send each prompt as UTF-8 text"),
        ("threshold above 1", {IMAGE.name: image, PROMPTS.name: prompts,
                               THRESHOLD.name: (np.array([[1.5]], np.float32), "FP32")},
         "threshold must be in [0, 1], got 1.5"),
        ("negative threshold", {IMAGE.name: image, PROMPTS.name: prompts,
                                THRESHOLD.name: (np.array([[-0.1]], np.float32), "FP32")},
         "threshold must be in [0, 1], got -0.1"),
        ("threshold of a wrong dtype", {IMAGE.name: image, PROMPTS.name: prompts,
                                        THRESHOLD.name: (np.array([[0.5]], np.float64), "FP64")},
         "inference input 'threshold' data-type is 'FP64', but model 'owlsam' expects 'FP32'"),
        ("prompts of a wrong dtype", {IMAGE.name: image, PROMPTS.name: (np.array([[1]], np.int32), "INT32")},
         "inference input 'prompts' data-type is 'INT32', but model 'owlsam' expects 'BYTES'"),
        ("image of a wrong shape", {IMAGE.name: (np.array([[good, good]], dtype=object), "BYTES"), PROMPTS.name: prompts},
         "unexpected shape for input 'image' for model 'owlsam'. Expected [-1,1], got [1,2]"),
        ("two images in one request", {IMAGE.name: (np.array([[good], [good]], dtype=object), "BYTES"),
                                       PROMPTS.name: (np.array([[b"cat"], [b"cat"]], dtype=object), "BYTES")},
         "input 'image' has batch size 2; send one image per request (batch size 1): the server batches requests itself"),
        ("no prompts input", {IMAGE.name: image}, "missing required input(s) ['prompts']"),
    ]


@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
def test_each_bad_request_gets_an_error_and_the_next_good_one_succeeds(server, images, expected, grpc):
    from tritonclient.utils import InferenceServerException

    good = png(images[0])
    conn = connect(server, grpc)
    try:
        for what, arrays, message in _bad_requests(good):
            with pytest.raises(InferenceServerException) as info:
                _raw_request(conn, arrays)
            text = info.value.message()
            assert message in text, (what, text)
            assert "Traceback" not in text and "At:" not in text and ".py" not in text, (what, text)
            out = conn.infer(good, PROMPT_LISTS[0], None)
            assert_result(out, expected[(0, 0)], images[0].shape[:2], PROMPT_LISTS[0])
    finally:
        conn.close()


def test_client_writes_what_infer_writes(server, tiny_artifact, images, run_module, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"photo {i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    prompts = ["cat", "red car"]
    r = run_module("tools.infer", "--engines", tiny_artifact, "--input", folder, "--prompt", *prompts,
                   "--output", tmp_path / "infer", check=1)
    assert "skipped broken.png" in r.stderr
    for grpc in (False, True):
        out = tmp_path / ("grpc" if grpc else "http")
        url = server.endpoints.grpc_url if grpc else server.endpoints.http_url
        r = run_module("tools.client", "--url", url, *(["--grpc"] if grpc else []), "--input", folder,
                       "--prompt", *prompts, "--output", out, "--concurrency", "3", check=1)
        assert "warning: skipped broken.png: image: not an image file PIL can read" in r.stderr
        theirs = sorted(p.relative_to(tmp_path / "infer") for p in (tmp_path / "infer").rglob("*") if p.is_file())
        ours = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        assert ours == theirs and len(ours) > 10
        for rel in ours:
            assert (out / rel).read_bytes() == (tmp_path / "infer" / rel).read_bytes(), rel


def test_client_errors_are_one_line(server, images, run_module, one_error_line, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(images[0]).save(path)
    port = free_ports(1)[0]
    r = run_module("tools.client", "--url", f"127.0.0.1:{port}", "--input", path, "--prompt", "cat",
                   "--output", tmp_path / "o", check=2)
    one_error_line(r, f"cannot reach a Triton server at 127.0.0.1:{port}", "python -m tools.serve")
    r = run_module("tools.client", "--url", server.endpoints.http_url, "--model", OWL_DETECT.name, "--input", path,
                   "--prompt", "cat", "--output", tmp_path / "o", check=2)
    one_error_line(r, "model 'owl_detect' returns no masks_rle; tools.client writes masks: use --model owlsam")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(big)
    r = run_module("tools.client", "--url", server.endpoints.http_url, "--input", big, "--prompt", "cat",
                   "--output", tmp_path / "o", check=2)
    one_error_line(r, f"{big}: image: 300x300 is 90000 pixels, more than the limit of {MAX_PIXELS}")


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(tiny_artifact, make_image, tmp_path):
    # the default --max-batch (1 on onnxruntime): the 8 requests drain one by one, within --drain-timeout
    served = start_serve(tiny_artifact, tmp_path / "serve.log", "--backend", "onnxruntime", "--models", OWLSAM.name,
                         "--drain-timeout", "80")
    try:
        data = png(make_image(1500, 2000, seed=5))  # threshold 0: 16 masks of 3 MP per request

        def one(_):
            conn = connect(served, grpc=False)
            try:
                return conn.infer(data, ["cat", "dog"], 0.0)
            finally:
                conn.close()

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(8)]
            time.sleep(0.5)
            in_flight = sum(not f.done() for f in futures)
            code = served.stop()
            results = [f.result(timeout=60) for f in futures]
    except BaseException:
        served.kill()
        raise
    assert in_flight >= 2, "the requests finished before SIGTERM; the test needs slower requests"
    assert code == 0, served.log_text()[-4000:]
    assert all(len(r["scores"]) > 0 for r in results)
    log = served.log_text()
    assert "serving models owlsam (1 instance each)" in log and "owl_detect" not in log
    assert "\nINFO tools.serve: max batch 1: default for onnxruntime: ONNX Runtime runs on the CPU, where a batch" in log
    assert "WARNING tools.serve" not in log
    assert "INFO tools.serve: SIGTERM: finishing the requests in flight, then stopping" in log
    assert log.rstrip().endswith("INFO tools.serve: stopped")


def test_start_refuses_a_bad_artifact_with_pipeline_load_errors(tiny_artifact, tmp_path, run_module, one_error_line):
    from runtime import Pipeline
    from runtime.errors import UserError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    graph = next(broken.glob("owl_head*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"tampered")
    for engines in (broken, tmp_path / "missing"):
        with pytest.raises(UserError) as info:
            Pipeline.load(engines, backend="onnxruntime")
        r = run_module("tools.serve", "--engines", engines, "--backend", "onnxruntime", check=2)
        assert one_error_line(r) == f"error: {info.value}"


def test_start_refuses_a_port_in_use(tiny_artifact, run_module, one_error_line):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        http, grpc = free_ports(2)
        r = run_module("tools.serve", "--engines", tiny_artifact, "--http-port", http, "--grpc-port", grpc,
                       "--metrics-port", port, check=2)
    assert one_error_line(r) == f"error: port {port} on 127.0.0.1 is in use; choose another with --metrics-port"


def test_written_repository_is_served_by_the_bundled_tritonserver(tiny_artifact, images, expected, run_module,
                                                                   one_error_line, tmp_path):
    out = tmp_path / "repo"
    r = run_module("tools.serve", "--engines", tiny_artifact, "--write-model-repository", out, "--instances", "2",
                   "--max-batch", "3", "--backend", "onnxruntime")
    assert f"wrote {out}" in r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == \
        sorted(f"{m.name}/{f}" for m in MODELS for f in ("config.pbtxt", "1/model.py"))
    one_error_line(run_module("tools.serve", "--engines", tiny_artifact, "--write-model-repository", out, check=2),
                   f"{out} exists and is not an empty folder")

    endpoints = Endpoints("127.0.0.1", *free_ports(3))
    (tmp_path / "work").mkdir()
    server = TritonServer(out, endpoints, tmp_path / "work")
    server.start()
    try:
        assert server.wait_ready([m.name for m in MODELS], timeout_s=START_TIMEOUT_S)
        conn = Connection(endpoints.http_url, False, OWLSAM.name, 60)
        try:
            config = conn.client.get_model_config(OWLSAM.name)
            assert config["max_batch_size"] == 3 and config["instance_group"][0]["count"] == 2
            for spec in MODELS:
                conn.model = spec.name
                out_ = conn.infer(png(images[1]), PROMPT_LISTS[0], None, outputs=spec.output_names)
                assert_result(out_, expected[(1, 0)], images[1].shape[:2], PROMPT_LISTS[0], masks=spec is OWLSAM)
        finally:
            conn.close()
        server.stop()
        assert server.wait(60) == 0
    finally:
        server.kill()


def test_readme_documents_the_wire_interface():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- serve:interface -->\n(.+?)\n<!-- /serve:interface -->", text, re.S)
    assert block, "README has no serve:interface table"
    rows = re.findall(r"^\| `(\w+)` \| (input|output) \| `(\w+)` \| `(\w+)` \| `\[([-\d, ]+)\]` \|", block.group(1), re.M)
    documented = {(model, direction, name, dtype, tuple(int(d) for d in dims.split(",")))
                  for model, direction, name, dtype, dims in rows}
    declared = {(m.name, direction, t.name, t.datatype, t.dims) for m in MODELS
                for direction, tensors in (("input", m.inputs), ("output", m.outputs)) for t in tensors}
    assert documented == declared


def test_readme_curl_example_answers(server, images, tiny_pipeline, tmp_path):
    """The README's curl command (KServe v2 JSON + binary image bytes), run as written against this server."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    text = (ROOT / "README.md").read_text()
    command = next(b for b in re.findall(r"```bash\n(.+?)\n```", text, re.S) if "Inference-Header-Content-Length" in b)
    Image.fromarray(images[0]).save(tmp_path / "photo.jpg", quality=95)
    command = command.replace("http://127.0.0.1:8000", server.endpoints.http_url)
    r = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"])[0] for o in json.loads(r.stdout)["outputs"]}
    from runtime.images import load_image

    jpeg = load_image(tmp_path / "photo.jpg")
    want = tiny_pipeline.predict(jpeg, ["cat", "red car"])
    assert len(want) > 0
    assert_result(outputs, want, jpeg.shape[:2], ["cat", "red car"], masks=False)
