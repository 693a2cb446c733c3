"""TensorRT backend: engines built by ``export.engine``, run on CUDA streams. tensorrt + cuda-python only.

Nothing here imports tensorrt or cuda-python at module level: the pure-Python half (engine file
names, manifest records, their verification against the running TensorRT and GPU) works and is
tested anywhere; the other half imports them on first use and says what is missing if it cannot.
The stream policy (execution context per stream, buffers sized from the profile maxima, events
between streams, device hand-offs, CUDA graphs): docs/ARCHITECTURE.md ("Backends and their stream
policy").
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backends import check_feeds
from runtime.errors import ArtifactError, UserError
from runtime.graphs import GraphSpec
from runtime.manifest import Manifest


INSTALL_HINT = "pip install 'owlsam-trt[trt]'"
MIN_TENSORRT_MAJOR = 10
ENGINES_KEY = "engines"  # the manifest section: {graph: {precision: {gpu slug: record}}}


def rebuild_hint(root: Path | str) -> str:
    return f"python -m export.build --from {root} --engines require"


# --- pure Python: names, records, verification -----------------------------------------------

@dataclass(frozen=True)
class DeviceInfo:
    name: str  # as CUDA reports it, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]

    @property
    def slug(self) -> str:
        return gpu_slug(self.name, self.compute_capability)

    def __str__(self) -> str:
        return f"{self.name} (sm{self.compute_capability[0]}{self.compute_capability[1]})"


@dataclass(frozen=True)
class TrtEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    device: DeviceInfo


def gpu_slug(name: str, compute_capability: tuple[int, int]) -> str:
    """Filesystem-safe GPU tag: ``NVIDIA H100 80GB HBM3``, (9, 0) -> ``nvidia-h100-80gb-hbm3-sm90``."""
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
    major, minor = compute_capability
    return f"{base}-sm{int(major)}{int(minor)}"


def engine_file_name(graph: str, precision: str, gpu: str) -> str:
    """``<graph>.<precision>.<gpu slug>.engine``."""
    return f"{graph}.{precision}.{gpu}.engine"


@dataclass(frozen=True)
class EngineRecord:
    """One engine in the manifest: what it was built from, with what, for which GPU."""

    graph: str
    precision: str
    file: str  # relative to the artifact root
    sha256: str
    bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    profiles: dict[str, dict[str, int]]  # dynamic dim -> {"min", "opt", "max"}
    builder: dict[str, Any] = field(default_factory=dict)  # the build options that change the engine
    onnx: dict[str, str] = field(default_factory=dict)  # {"path", "sha256"} of the source graph

    @property
    def gpu_slug(self) -> str:
        return gpu_slug(self.gpu_name, self.compute_capability)

    @property
    def device(self) -> DeviceInfo:
        return DeviceInfo(self.gpu_name, self.compute_capability)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "sha256": self.sha256, "bytes": self.bytes, "precision": self.precision,
            "tensorrt": self.tensorrt_version,
            "gpu": {"name": self.gpu_name, "compute_capability": "%d.%d" % self.compute_capability},
            "profiles": self.profiles, "builder": self.builder, "onnx": self.onnx,
        }

    @classmethod
    def from_dict(cls, graph: str, data: Mapping[str, Any], where: str) -> "EngineRecord":
        try:
            major, minor = (int(x) for x in str(data["gpu"]["compute_capability"]).split("."))
            return cls(graph=graph, precision=str(data["precision"]), file=str(data["file"]),
                       sha256=str(data["sha256"]), bytes=int(data["bytes"]), tensorrt_version=str(data["tensorrt"]),
                       gpu_name=str(data["gpu"]["name"]), compute_capability=(major, minor),
                       profiles=dict(data["profiles"]), builder=dict(data.get("builder", {})),
                       onnx=dict(data.get("onnx", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: malformed engine record ({type(e).__name__}: {e}); rebuild the engines") from None


def select_engine_record(manifest: Manifest, graph: str, precision: str, env: TrtEnvironment) -> EngineRecord:
    """The manifest's record of ``graph`` at ``precision`` for the running GPU, or a clear error."""
    per_gpu = manifest.data.get(ENGINES_KEY, {}).get(graph, {}).get(precision, {})
    where = f"{manifest.root} ({graph}, {precision})"
    if env.device.slug in per_gpu:
        return EngineRecord.from_dict(graph, per_gpu[env.device.slug], where)
    if not per_gpu:
        raise ArtifactError(
            f"{manifest.root} has no {precision} TensorRT engine for {graph!r}; build engines on this GPU "
            f"({env.device}) with {rebuild_hint(manifest.root)}"
        )
    others = ", ".join(str(EngineRecord.from_dict(graph, r, where).device) for r in per_gpu.values())
    raise ArtifactError(
        f"{manifest.root}: the {precision} {graph!r} engine was built for {others}, this machine has "
        f"{env.device}; engines are tied to a GPU: build them here with {rebuild_hint(manifest.root)}"
    )


def verify_engine_record(manifest: Manifest, record: EngineRecord, env: TrtEnvironment) -> Path:
    """Check ``record`` against the running TensorRT and GPU and the file's sha256; return its path."""
    path = manifest.root / record.file
    if (record.gpu_name, record.compute_capability) != (env.device.name, env.device.compute_capability):
        raise ArtifactError(
            f"{path} was built for {record.device}, this machine has {env.device}; engines are tied to a GPU: "
            f"build them here with {rebuild_hint(manifest.root)}"
        )
    if record.tensorrt_version != env.tensorrt_version:
        raise ArtifactError(
            f"{path} was built with TensorRT {record.tensorrt_version}, this runtime has TensorRT "
            f"{env.tensorrt_version}; engines are tied to a TensorRT version: rebuild with "
            f"{rebuild_hint(manifest.root)} (or install tensorrt=={record.tensorrt_version})"
        )
    manifest.verify_file(record.file, record.sha256)
    return path


# --- lazy imports ------------------------------------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there, its shared libraries are not
        raise UserError(f"the tensorrt backend needs TensorRT >= {MIN_TENSORRT_MAJOR} ({e}); {INSTALL_HINT} "
                        "on a machine with an NVIDIA GPU, or use --backend onnxruntime") from None
    if tensorrt_major(trt.__version__) < MIN_TENSORRT_MAJOR:
        raise UserError(f"TensorRT {trt.__version__} is too old: strongly typed engines need TensorRT >= "
                        f"{MIN_TENSORRT_MAJOR}; {INSTALL_HINT}")
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise UserError(f"the tensorrt backend needs cuda-python >= 12.6 for cuda.bindings.runtime ({e}); "
                        f"{INSTALL_HINT}") from None
    return cudart


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}; reinstall tensorrt") from None


class CudaError(UserError):
    """A CUDA runtime call failed (out of memory, no device, driver too old...)."""


def cuda_check(result, what: str):
    """Unpack a cuda-python ``(cudaError_t, *values)`` tuple, raising :class:`CudaError` on failure."""
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        raise CudaError(f"{what} failed: {_decode(name)} ({_decode(text)}); check the GPU, its driver and free memory")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _decode(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def cuda_device() -> DeviceInfo:
    """The current CUDA device's name and compute capability (``cudaGetDeviceProperties``)."""
    cudart = import_cudart()
    count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise CudaError("no CUDA device is visible; run on a machine with an NVIDIA GPU or use --backend onnxruntime")
    index = cuda_check(cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = _decode(props.name).split("\x00", 1)[0].strip()
    return DeviceInfo(name=name, compute_capability=(int(props.major), int(props.minor)))


def tensorrt_environment() -> TrtEnvironment:
    trt = import_tensorrt()
    return TrtEnvironment(tensorrt_version=trt.__version__, device=cuda_device())


def cuda_device_status() -> tuple[bool, str]:
    """``(True, device)`` if cuda-python sees a CUDA device, else ``(False, why)``."""
    try:
        return True, str(cuda_device())
    except UserError as e:
        return False, str(e)


def backend_status() -> tuple[bool, str]:
    """Whether engines can be built and run here: ``(available, reason)``, never raising."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        return False, f"tensorrt is not importable ({e}); {INSTALL_HINT}"
    if tensorrt_major(trt.__version__) < MIN_TENSORRT_MAJOR:
        return False, f"TensorRT {trt.__version__} is older than {MIN_TENSORRT_MAJOR}; {INSTALL_HINT}"
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError as e:
        return False, f"cuda-python is missing ({e}); {INSTALL_HINT}"
    ok, device = cuda_device_status()
    if not ok:
        return False, f"no CUDA device ({device})"
    return True, f"TensorRT {trt.__version__} on {device}"


@functools.lru_cache(maxsize=1)
def trt_logger():
    """One logger for every builder and runtime: TensorRT keeps the first one it was given."""
    trt = import_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


# --- CUDA resources ----------------------------------------------------------------------------

class Stream:
    """A non-blocking CUDA stream (``cudaStreamCreateWithFlags``)."""

    def __init__(self) -> None:
        cudart = import_cudart()
        self.handle = cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                 "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The handle as the integer ``execute_async_v3`` takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        cuda_check(import_cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cuda_check(import_cudart().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


def open_streams(n: int) -> tuple[Stream, ...]:
    """``n`` new streams; if one cannot be made, those made before it are closed again."""
    streams: list[Stream] = []
    try:
        for _ in range(n):
            streams.append(Stream())
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return tuple(streams)


def close_streams(streams: Sequence[Stream]) -> None:
    """Wait for the work queued on each of ``streams``, then destroy it."""
    for stream in streams:
        stream.synchronize()
        stream.close()


class Event:
    """A CUDA event without timing (cheaper to record and wait on)."""

    def __init__(self) -> None:
        cudart = import_cudart()
        self.handle = cuda_check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                                 "cudaEventCreateWithFlags")
        self.recorded = False

    def record(self, stream: Stream) -> None:
        cuda_check(import_cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")
        self.recorded = True

    def wait_on(self, stream: Stream) -> None:
        """Make later work on ``stream`` wait for this event, on the device (the host does not block)."""
        cuda_check(import_cudart().cudaStreamWaitEvent(stream.handle, self.handle, 0), "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        if self.recorded:
            cuda_check(import_cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cuda_check(import_cudart().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = cuda_check(import_cudart().cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes})")

    def close(self) -> None:
        if self.ptr is not None:
            cuda_check(import_cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = None


class PinnedBuffer:
    """Page-locked host memory with a uint8 numpy view (``cudaMallocHost``)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = cuda_check(import_cudart().cudaMallocHost(max(self.nbytes, 1)), f"cudaMallocHost({self.nbytes})")
        raw = ctypes.cast(ctypes.c_void_p(self.ptr), ctypes.POINTER(ctypes.c_ubyte))
        self.bytes = np.ctypeslib.as_array(raw, (max(self.nbytes, 1),))

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.bytes[:n].view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr is not None:
            self.bytes = None
            cuda_check(import_cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = None


def capture_graph(stream: Stream, enqueue: Callable[[], bool], refusal: str):
    """Capture what ``enqueue`` queues on ``stream`` into an instantiated CUDA graph (a
    ``cudaGraphExec_t``; free it with ``cudaGraphExecDestroy``). ``enqueue`` returns False, or the
    capture is invalidated, when the work cannot be captured: then :class:`UserError` (``refusal``)."""
    cudart = import_cudart()
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # as trtexec captures
    cuda_check(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
    try:
        ok = bool(enqueue())
    except BaseException:
        graph, _ = _end_capture(stream)  # the stream stays unusable until capture is ended
        if graph is not None:
            cudart.cudaGraphDestroy(graph)
        raise
    graph, err = _end_capture(stream)
    if not ok or graph is None:
        if graph is not None:
            cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")
        raise UserError(f"{refusal} (enqueue -> {ok}, cudaStreamEndCapture -> {err})")
    try:
        return cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    finally:
        cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")


def _end_capture(stream: Stream):
    """End capture on ``stream``: ``(graph, error name)``, graph None when the capture was invalidated."""
    cudart = import_cudart()
    err, graph = cudart.cudaStreamEndCapture(stream.handle)
    if err != cudart.cudaError_t.cudaSuccess or graph is None or int(graph) == 0:
        cudart.cudaGetLastError()  # clear the invalidation error so later calls do not report it
        return None, _decode(cudart.cudaGetErrorName(err)[1])
    return graph, "cudaSuccess"


def memcpy_async(dst: int, src: int, nbytes: int, kind_name: str, stream: Stream) -> None:
    cudart = import_cudart()
    kind = getattr(cudart.cudaMemcpyKind, kind_name)
    cuda_check(cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream.handle), f"cudaMemcpyAsync ({kind_name})")


# --- engines -----------------------------------------------------------------------------------

class TrtEngine:
    """A deserialised engine whose I/O matches a graph spec: names, modes, dtypes, profile 0."""

    def __init__(self, data: bytes, spec: GraphSpec, where: str) -> None:
        trt = import_tensorrt()
        self.spec = spec
        self._runtime = trt.Runtime(trt_logger())  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {where} (its log above says why); rebuild the engines")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
            raise ArtifactError(f"{where} has bindings {inputs} -> {outputs}, the spec of {spec.name!r} says "
                                f"{spec.input_names} -> {spec.output_names}; rebuild the engines")
        self.dtypes: dict[str, np.dtype] = {}
        for t in (*spec.inputs, *spec.outputs):
            trt_dtype = self.engine.get_tensor_dtype(t.name)
            try:
                got = np.dtype(trt.nptype(trt_dtype))
            except TypeError:  # BF16/FP8 I/O has no numpy type; our specs never declare it
                raise ArtifactError(f"{where}: tensor {t.name!r} is {trt_dtype} in the engine, {t.dtype} in the spec; "
                                    "re-export the graph with that I/O type and rebuild") from None
            if got != np.dtype(t.dtype):
                raise ArtifactError(f"{where}: tensor {t.name!r} is {got} in the engine, {t.dtype} in the spec; "
                                    "re-export the graph with that I/O type and rebuild")
            self.dtypes[t.name] = got
        # (min, opt, max) of every input in optimisation profile 0, the only one we build.
        self.profile = {n: tuple(tuple(int(d) for d in dims) for dims in self.engine.get_tensor_profile_shape(n, 0))
                        for n in spec.input_names}

    @classmethod
    def from_file(cls, path: Path, spec: GraphSpec) -> "TrtEngine":
        return cls(Path(path).read_bytes(), spec, str(path))

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile[name]
        tensor = self.spec.input(name)
        if len(shape) != len(hi) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            dims = ", ".join(f"{d}={s} (engine {a}..{b})" for d, s, a, b in zip(tensor.shape, shape, lo, hi)
                             if not a <= s <= b) or f"rank {len(shape)}, engine rank {len(hi)}"
            raise UserError(f"{self.spec.name}: input {name!r} of shape {shape} is outside the engine profile: "
                            f"{dims}; rebuild the engines with larger --max-prompts/--max-boxes/--max-batch")


@dataclass
class DeviceTensor:
    """An output left on the device, valid until the producer's next call on that stream."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    event: Event
    _binding: "_Binding"
    _generation: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, rows: slice) -> "DeviceTensor":
        """Rows of the first (batch) dimension, without a copy: ``features[i : i + 1]`` of a batch
        hands image ``i``'s features to a decoder as an array slice would."""
        if not isinstance(rows, slice):
            raise TypeError(f"a DeviceTensor is sliced by a slice of its first dimension, not {type(rows).__name__}")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("a DeviceTensor slice must be contiguous (step 1)")
        row_bytes = self.nbytes // self.shape[0] if self.shape[0] else 0
        return replace(self, ptr=self.ptr + start * row_bytes, shape=(max(stop - start, 0), *self.shape[1:]))


class _Binding:
    """One execution context on one stream, with device and pinned buffers sized for the maxima."""

    def __init__(self, engine: TrtEngine, stream: Stream) -> None:
        self.engine, self.stream = engine, stream
        spec = engine.spec
        self.context = engine.engine.create_execution_context()
        if self.context is None:
            raise CudaError(f"{spec.name}: TensorRT could not create an execution context (out of GPU memory?)")
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, PinnedBuffer] = {}
        self.done = Event()
        self.readers: list[Event] = []  # consumers' copies of our outputs still to finish
        self.generation = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.graph_exec = None
        self.graph_key: tuple | None = None
        try:
            for name in spec.input_names:
                self.set_shape(name, engine.profile[name][2])
            self.infer_shapes()
            for t in (*spec.inputs, *spec.outputs):
                shape = tuple(int(d) for d in self.context.get_tensor_shape(t.name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(f"{spec.name}: output {t.name!r} has a data-dependent shape {shape}; "
                                        "re-export the graph with a fixed-size output (python -m export.trt_check)")
                nbytes = int(np.prod(shape, dtype=np.int64)) * engine.dtypes[t.name].itemsize
                self.device[t.name] = DeviceBuffer(nbytes)
                self.host[t.name] = PinnedBuffer(nbytes)
                # Addresses never change: bind them once.
                if not self.context.set_tensor_address(t.name, self.device[t.name].ptr):
                    raise UserError(f"{spec.name}: TensorRT refused the address of {t.name!r} (see its log)")
        except BaseException:
            self.close()
            raise

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.shapes.get(name) != shape:
            if not self.context.set_input_shape(name, shape):
                raise UserError(f"{self.engine.spec.name}: TensorRT refused input shape {shape} for {name!r} "
                                "(see its log)")
            self.shapes[name] = shape

    def infer_shapes(self) -> dict[str, tuple[int, ...]]:
        missing = self.context.infer_shapes()
        if missing:
            raise UserError(f"{self.engine.spec.name}: TensorRT could not infer shapes; unspecified: {list(missing)}")
        return {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self.engine.spec.output_names}

    def wait_for_readers(self) -> None:
        """Order our next writes after other streams' copies of our previous outputs (device-side)."""
        for event in self.readers:
            event.wait_on(self.stream)
            event.close()  # safe: the wait above already captured the event's state
        self.readers.clear()

    def drop_graph(self) -> None:
        if self.graph_exec is not None:
            cuda_check(import_cudart().cudaGraphExecDestroy(self.graph_exec), "cudaGraphExecDestroy")
            self.graph_exec, self.graph_key = None, None

    def close(self) -> None:
        if self.stream.handle is not None:
            self.stream.synchronize()
        self.drop_graph()
        for event in self.readers:
            event.close()
        self.readers.clear()
        for buf in (*self.device.values(), *self.host.values()):
            buf.close()
        self.device.clear()
        self.host.clear()
        self.done.close()
        self.context = None


class Pending:
    """The result of :meth:`TrtGraph.enqueue`: outputs once ``event`` completes."""

    def __init__(self, binding: _Binding, shapes: dict[str, tuple[int, ...]], host_outputs: Sequence[str]) -> None:
        self._binding, self._generation, self.shapes = binding, binding.generation, shapes
        # the outputs this call copied back to the host (the others are on the device only)
        self.host_outputs = tuple(host_outputs)

    @property
    def event(self) -> Event:
        return self._binding.done

    def _check_fresh(self) -> None:
        if self._binding.generation != self._generation:
            raise UserError(f"{self._binding.engine.spec.name}: these outputs were overwritten by a later call on the "
                            "same stream; read a call's outputs before enqueueing the graph again on that stream")

    def outputs(self) -> dict[str, np.ndarray]:
        """Wait for this call (its event only) and return copies of its outputs (those of
        ``host_outputs`` when the call named them)."""
        self._check_fresh()
        self.event.synchronize()
        b = self._binding
        return {n: b.host[n].view(b.engine.dtypes[n], self.shapes[n]).copy() for n in self.host_outputs}

    def device(self, name: str) -> DeviceTensor:
        """Output ``name`` left on the device, for another graph's :meth:`TrtGraph.enqueue`."""
        self._check_fresh()
        b = self._binding
        return DeviceTensor(b.device[name].ptr, self.shapes[name], b.engine.dtypes[name], b.done, b, self._generation)

    def as_mapping(self) -> "QueuedOutputs":
        """The outputs by name, as a graph's ``run()`` gives them: host arrays for ``host_outputs``
        (the first read waits for this call), device tensors for the others."""
        return QueuedOutputs(self)


class QueuedOutputs(Mapping):
    """:meth:`Pending.as_mapping`: code written for ``run()``'s dict of arrays reads a queued call's
    outputs unchanged, and device outputs passed on to another graph never visit the host."""

    def __init__(self, pending: Pending) -> None:
        self._pending = pending
        self._host: dict[str, np.ndarray] | None = None

    def __getitem__(self, name: str):
        if name in self._pending.host_outputs:
            if self._host is None:
                self._host = self._pending.outputs()
            return self._host[name]
        return self._pending.device(name)

    def __iter__(self):
        return iter(self._pending.shapes)

    def __len__(self) -> int:
        return len(self._pending.shapes)


class TrtGraph:
    """A graph as a TensorRT engine: the :class:`~runtime.backends.GraphRunner` protocol plus streams."""

    def __init__(self, path: Path, spec: GraphSpec, cuda_graph: bool = False) -> None:
        self.spec = spec
        self.path = Path(path)
        self.cuda_graph = cuda_graph
        self.engine = TrtEngine.from_file(self.path, spec)
        self._bindings: dict[int, _Binding] = {}
        self._own_stream: Stream | None = None

    # GraphRunner
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._own_stream is None:
            self._own_stream = Stream()
        return self.enqueue(feeds, self._own_stream).outputs()

    def enqueue(self, feeds: Mapping[str, np.ndarray | DeviceTensor], stream: Stream,
                host_outputs: Sequence[str] | None = None) -> Pending:
        """Queue one call on ``stream`` and return at once; device inputs are waited for on the device.
        Only the outputs named in ``host_outputs`` (default: all) are copied back to the host."""
        spec = self.spec
        check_feeds(spec, feeds)
        to_host = tuple(spec.output_names if host_outputs is None else host_outputs)
        unknown = [n for n in to_host if n not in spec.output_names]
        if unknown:
            raise ValueError(f"{spec.name}: host_outputs {unknown} are not outputs of the graph ({spec.output_names})")
        b = self._binding(stream)
        b.done.synchronize()  # the previous call on this stream is done with our pinned buffers
        b.wait_for_readers()
        for name in spec.input_names:
            value = feeds[name]
            dtype = self.engine.dtypes[name]
            if isinstance(value, DeviceTensor):
                self._copy_device_input(b, name, value)
                shape = value.shape
            else:
                array = np.ascontiguousarray(value, dtype=dtype)
                shape = tuple(array.shape)
                self.engine.check_shape(name, shape)
                host = b.host[name].view(dtype, shape)
                np.copyto(host, array)
                memcpy_async(b.device[name].ptr, b.host[name].ptr, array.nbytes, "cudaMemcpyHostToDevice", stream)
            b.set_shape(name, shape)
        shapes = b.infer_shapes()
        self._execute(b, stream)
        for name in to_host:
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * self.engine.dtypes[name].itemsize
            memcpy_async(b.host[name].ptr, b.device[name].ptr, nbytes, "cudaMemcpyDeviceToHost", stream)
        b.done.record(stream)
        b.generation += 1
        return Pending(b, shapes, to_host)

    def close(self) -> None:
        for b in self._bindings.values():
            b.close()
        self._bindings.clear()
        if self._own_stream is not None:
            self._own_stream.close()
            self._own_stream = None

    def __enter__(self) -> "TrtGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # internals
    def _binding(self, stream: Stream) -> _Binding:
        if stream.handle is None:
            raise ValueError(f"{self.spec.name}: the stream was closed")
        # Free the contexts and buffers of streams closed since (a new stream may reuse the handle)
        for closed in [k for k, bound in self._bindings.items() if bound.stream.handle is None]:
            self._bindings.pop(closed).close()
        key = stream.ptr
        b = self._bindings.get(key)
        if b is None:
            b = self._bindings[key] = _Binding(self.engine, stream)
        return b

    def _copy_device_input(self, b: _Binding, name: str, value: DeviceTensor) -> None:
        if value._binding.generation != value._generation:
            raise UserError(f"{self.spec.name}: input {name!r} comes from an output that a later call overwrote; "
                            "pass the device output of the latest call")
        if value.dtype != self.engine.dtypes[name]:
            raise ValueError(f"{self.spec.name}: input {name!r} is {value.dtype} on the device, the engine takes "
                             f"{self.engine.dtypes[name]}")
        self.engine.check_shape(name, value.shape)
        value.event.wait_on(b.stream)  # producer's outputs are complete before we copy them
        memcpy_async(b.device[name].ptr, value.ptr, value.nbytes, "cudaMemcpyDeviceToDevice", b.stream)
        copied = Event()  # the producer's next call must not overwrite the source before this copy ran
        copied.record(b.stream)
        value._binding.readers.append(copied)
        # The event object is freed by the producer once it has waited on it.

    def _execute(self, b: _Binding, stream: Stream) -> None:
        if not self.cuda_graph:
            self._enqueue_v3(b, stream)
            return
        cudart = import_cudart()
        key = tuple(b.shapes[n] for n in self.spec.input_names)
        if b.graph_key == key:
            cuda_check(cudart.cudaGraphLaunch(b.graph_exec, stream.handle), "cudaGraphLaunch")
            return
        b.drop_graph()
        # Run once outside capture (it also computes this call) so TensorRT's lazy set-up for these
        # shapes is not captured, then capture the same enqueue for the next calls.
        self._enqueue_v3(b, stream)
        stream.synchronize()
        b.graph_exec = capture_graph(stream, lambda: b.context.execute_async_v3(stream.ptr),
                                     f"{self.spec.name}: this engine cannot be captured into a CUDA graph; "
                                     "open it with cuda_graph=False")
        b.graph_key = key

    def _enqueue_v3(self, b: _Binding, stream: Stream) -> None:
        if not b.context.execute_async_v3(stream.ptr):
            raise UserError(f"{self.spec.name}: TensorRT execute_async_v3 failed (see its log above)")


def tensorrt_opener(manifest: Manifest, precision: str = "fp16",
                    cuda_graph: bool = False) -> Callable[[GraphSpec], TrtGraph]:
    """A function that opens a graph's engine, its manifest record verified before deserialising:
    sha256, TensorRT version, GPU name and compute capability against the running ones."""
    env = tensorrt_environment()

    def open_graph(spec: GraphSpec) -> TrtGraph:
        record = select_engine_record(manifest, spec.name, precision, env)
        path = verify_engine_record(manifest, record, env)
        return TrtGraph(path, spec, cuda_graph=cuda_graph)

    return open_graph
