"""TensorRT backend: engines built by ``export.engine``, run on CUDA streams. tensorrt + cuda-python only.

Nothing here imports tensorrt or cuda-python at module level: the pure-Python half (engine file
names, manifest records, their verification against the running TensorRT and GPU) works and is
tested anywhere; the other half imports them on first use and says what is missing if it cannot.
CUDA calls go through ``runtime.backends.cuda.CudaRuntime`` (cuda-bindings by default).
The stream policy (execution context per stream, buffers sized from the profile maxima, events
between streams, device hand-offs, CUDA graphs): docs/ARCHITECTURE.md ("Backends and their stream
policy").
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from runtime.backends import call_all, check_feeds
from runtime.backends.cuda import INSTALL_HINT, MIN_CUDA_PYTHON, CudaError, CudaRuntime, CopyKind
from runtime.errors import ArtifactError, DeviceFault, UserError, one_line
from runtime.graphs import GraphSpec
from runtime.manifest import Manifest


@functools.lru_cache(maxsize=1)
def cuda_bindings() -> CudaRuntime:
    """The CUDA runtime through cuda-bindings (``cuda.bindings.runtime``), or a UserError saying what is missing."""
    try:
        from runtime.backends.cudart import CudaBindings
    except (ImportError, RuntimeError, OSError) as e:  # cuda-python < 12.9 raises RuntimeError without a driver
        raise UserError(f"the tensorrt backend needs cuda-python >= {MIN_CUDA_PYTHON} for cuda.bindings.runtime "
                        f"({' '.join(str(e).split())}); {INSTALL_HINT}") from None
    return CudaBindings()


if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)

__all__ = ["CudaError", "DeviceFault", "TrtGraph", "TrtEngine", "Stream", "Event", "Pending", "DeviceTensor",
           "tensorrt_opener", "backend_status", "open_streams", "close_streams"]

MIN_TENSORRT_MAJOR = 10
ENGINES_KEY = "engines"  # the manifest section: {graph: {precision: {gpu slug: record}}}
MAX_CUDA_GRAPHS = 8  # captured CUDA graphs (each with its context and buffers) kept per graph and stream


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

def import_tensorrt() -> None:
    """Check that a usable tensorrt imports (callers then ``import tensorrt as trt``, typed)."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there, its shared libraries are not
        raise UserError(f"the tensorrt backend needs TensorRT >= {MIN_TENSORRT_MAJOR} ({e}); {INSTALL_HINT} "
                        "on a machine with an NVIDIA GPU, or use --backend onnxruntime") from None
    if tensorrt_major(tensorrt.__version__) < MIN_TENSORRT_MAJOR:
        raise UserError(f"TensorRT {tensorrt.__version__} is too old: strongly typed engines need TensorRT >= "
                        f"{MIN_TENSORRT_MAJOR}; {INSTALL_HINT}")


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"cannot read the TensorRT version {version!r}; reinstall tensorrt") from None


def tensorrt_object(make: Callable[[], Any], what: str, error: type[UserError] = UserError) -> Any:
    """``make()`` for TensorRT's factories (Builder, Runtime, OnnxParser), which raise ``TypeError:
    ... factory function returned nullptr`` when TensorRT cannot make the object (never None)."""
    try:
        made = make()
    except TypeError as e:
        made, why = None, one_line(e)
    else:
        why = "it returned None"
    if made is None:
        raise error(f"TensorRT could not create {what} ({why}); its log above says why: check that a GPU is "
                    "visible, its driver is new enough for this TensorRT, and GPU memory is free")
    return made


def cuda_device(cuda: CudaRuntime | None = None) -> DeviceInfo:
    """The current CUDA device's name and compute capability."""
    name, cc = (cuda or cuda_bindings()).device()
    return DeviceInfo(name=name, compute_capability=cc)


def tensorrt_environment() -> TrtEnvironment:
    import_tensorrt()
    import tensorrt as trt

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
        cuda_bindings()
    except UserError as e:
        return False, f"cuda-python is missing ({e})"
    ok, device = cuda_device_status()
    if not ok:
        return False, f"no CUDA device ({device})"
    return True, f"TensorRT {trt.__version__} on {device}"


@functools.lru_cache(maxsize=1)
def trt_logger() -> trt.ILogger:
    """One logger for every builder and runtime: TensorRT keeps the first one it was given."""
    import_tensorrt()
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


# --- CUDA resources ----------------------------------------------------------------------------

class Stream:
    """A non-blocking CUDA stream."""

    def __init__(self, cuda: CudaRuntime | None = None) -> None:
        self.cuda = cuda or cuda_bindings()
        self.handle: Any = self.cuda.stream_create()

    @property
    def ptr(self) -> int:
        """The handle as the integer ``execute_async_v3`` takes."""
        return self.cuda.stream_ptr(self.handle)

    def synchronize(self) -> None:
        self.cuda.stream_synchronize(self.handle)

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.cuda.stream_destroy(handle)


def open_streams(n: int, cuda: CudaRuntime | None = None) -> tuple[Stream, ...]:
    """``n`` new streams; if one cannot be made, those made before it are closed again."""
    streams: list[Stream] = []
    try:
        for _ in range(n):
            streams.append(Stream(cuda))
    except BaseException:
        call_all(s.close for s in streams)
        raise
    return tuple(streams)


def close_streams(streams: Sequence[Stream]) -> None:
    """Wait for the work queued on each of ``streams`` and destroy it; every stream is destroyed
    even when a wait fails, and the first failure is raised after."""
    call_all(step for s in streams for step in (s.synchronize, s.close))


class Event:
    """A CUDA event without timing; a host wait on it blocks the thread instead of spinning."""

    def __init__(self, cuda: CudaRuntime | None = None) -> None:
        self.cuda = cuda or cuda_bindings()
        self.handle: Any = self.cuda.event_create()
        self.recorded = False

    def record(self, stream: Stream) -> None:
        self.cuda.event_record(self.handle, stream.handle)
        self.recorded = True

    def wait_on(self, stream: Stream) -> None:
        """Make later work on ``stream`` wait for this event, on the device (the host does not block)."""
        self.cuda.stream_wait_event(stream.handle, self.handle)

    def synchronize(self) -> None:
        if self.recorded:
            self.cuda.event_synchronize(self.handle)

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.cuda.event_destroy(handle)


class DeviceBuffer:
    def __init__(self, nbytes: int, cuda: CudaRuntime | None = None) -> None:
        self.cuda = cuda or cuda_bindings()
        self.nbytes = int(nbytes)
        self.ptr = self.cuda.malloc(max(self.nbytes, 1))
        self.freed = False

    def close(self) -> None:
        if not self.freed:
            self.freed = True
            self.cuda.free(self.ptr)


class PinnedBuffer:
    """Page-locked host memory with a uint8 numpy view."""

    def __init__(self, nbytes: int, cuda: CudaRuntime | None = None) -> None:
        self.cuda = cuda or cuda_bindings()
        self.nbytes = int(nbytes)
        self.ptr = self.cuda.malloc_host(max(self.nbytes, 1))
        self.freed = False
        raw = ctypes.cast(ctypes.c_void_p(self.ptr), ctypes.POINTER(ctypes.c_ubyte))
        self.bytes: np.ndarray | None = np.ctypeslib.as_array(raw, (max(self.nbytes, 1),))

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if self.bytes is None:
            raise ValueError("the pinned buffer was freed")
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.bytes[:n].view(dtype).reshape(shape)

    def close(self) -> None:
        if not self.freed:
            self.freed, self.bytes = True, None
            self.cuda.free_host(self.ptr)


def memcpy_async(dst: int, src: int, nbytes: int, kind: CopyKind, stream: Stream) -> None:
    stream.cuda.memcpy_async(dst, src, nbytes, kind, stream.handle)


def capture_graph(stream: Stream, enqueue: Callable[[], bool], refusal: str) -> Any:
    """Capture what ``enqueue`` queues on ``stream`` into an instantiated CUDA graph (free it with
    ``graph_exec_destroy``). When ``enqueue`` returns False, or the capture is invalidated, the work
    cannot be captured: :class:`UserError` (``refusal``); the stream is usable again after."""
    cuda = stream.cuda
    cuda.begin_capture(stream.handle)
    try:
        ok = bool(enqueue())
    except BaseException:
        graph, _ = cuda.end_capture(stream.handle)  # the stream stays unusable until capture is ended
        if graph is not None:
            cuda.graph_destroy(graph)
        raise
    graph, err = cuda.end_capture(stream.handle)
    if not ok or graph is None:
        if graph is not None:
            cuda.graph_destroy(graph)
        raise UserError(f"{refusal} (enqueue -> {ok}, cudaStreamEndCapture -> {err})")
    try:
        return cuda.graph_instantiate(graph)
    finally:
        cuda.graph_destroy(graph)


# --- engines -----------------------------------------------------------------------------------

class TrtEngine:
    """A deserialised engine whose I/O matches a graph spec: names, modes, dtypes, profile 0."""

    def __init__(self, data: bytes, spec: GraphSpec, where: str) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.spec = spec
        runtime: trt.Runtime = tensorrt_object(lambda: trt.Runtime(trt_logger()), "a runtime")
        self._runtime = runtime  # must outlive the engine
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {where} (its log above says why); rebuild the engines")
        self.engine: trt.ICudaEngine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
            raise ArtifactError(f"{where} has bindings {inputs} -> {outputs}, the spec of {spec.name!r} says "
                                f"{spec.input_names} -> {spec.output_names}; rebuild the engines")
        self.dtypes: dict[str, np.dtype] = {}
        for t in (*spec.inputs, *spec.outputs):
            trt_dtype = engine.get_tensor_dtype(t.name)
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
        self.profile: dict[str, tuple[tuple[int, ...], ...]] = {
            n: tuple(dims_tuple(dims) for dims in engine.get_tensor_profile_shape(n, 0)) for n in spec.input_names}

    @classmethod
    def from_file(cls, path: Path, spec: GraphSpec) -> "TrtEngine":
        return cls(Path(path).read_bytes(), spec, str(path))

    def create_context(self) -> trt.IExecutionContext:
        context = self.engine.create_execution_context()
        if context is None:
            raise CudaError(f"{self.spec.name}: TensorRT could not create an execution context (out of GPU memory?)")
        return context

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile[name]
        tensor = self.spec.input(name)
        if len(shape) != len(hi) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            dims = ", ".join(f"{d}={s} (engine {a}..{b})" for d, s, a, b in zip(tensor.shape, shape, lo, hi)
                             if not a <= s <= b) or f"rank {len(shape)}, engine rank {len(hi)}"
            raise UserError(f"{self.spec.name}: input {name!r} of shape {shape} is outside the engine profile: "
                            f"{dims}; rebuild the engines with larger --max-prompts/--max-boxes/--max-batch")


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _nbytes(shape: Iterable[int], dtype: np.dtype) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * dtype.itemsize


class _Binding:
    """One execution context on one stream with device buffers sized for ``input_shapes`` (the
    profile maxima; a CUDA-graph bucket's own shapes), pinned host buffers for the tensors the host
    writes or reads, and the event of its last call."""

    def __init__(self, engine: TrtEngine, stream: Stream, input_shapes: Mapping[str, tuple[int, ...]],
                 host_tensors: Iterable[str]) -> None:
        self.engine, self.stream, self.cuda = engine, stream, stream.cuda
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, PinnedBuffer] = {}
        self.capacity: dict[str, int] = {}
        self.readers: list[Event] = []  # other streams' copies of our outputs, recorded after them
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.graph_exec: Any = None  # the CUDA graph of a bucket, once captured
        self.closed = False
        self.context: trt.IExecutionContext | None = None
        self.done = Event(self.cuda)
        try:
            self.context = engine.create_context()
            for name in engine.spec.input_names:
                self.set_shape(name, tuple(input_shapes[name]))
            self.infer_shapes()
            for t in (*engine.spec.inputs, *engine.spec.outputs):
                shape = dims_tuple(self.context.get_tensor_shape(t.name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(f"{engine.spec.name}: output {t.name!r} has a data-dependent shape {shape}; "
                                        "re-export the graph with a fixed-size output (python -m export.trt_check)")
                self.capacity[t.name] = _nbytes(shape, engine.dtypes[t.name])
                self.device[t.name] = DeviceBuffer(self.capacity[t.name], self.cuda)
                # Addresses never change: bind them once.
                if not self.context.set_tensor_address(t.name, self.device[t.name].ptr):
                    raise UserError(f"{engine.spec.name}: TensorRT refused the address of {t.name!r} (see its log)")
            for name in host_tensors:
                self.pinned(name)
        except BaseException:
            call_all([self.close])
            raise

    def pinned(self, name: str) -> PinnedBuffer:
        """The pinned host buffer of ``name`` (made on first use for tensors not named at creation)."""
        buf = self.host.get(name)
        if buf is None:
            buf = self.host[name] = PinnedBuffer(self.capacity[name], self.cuda)
        return buf

    def set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        assert self.context is not None
        if self.shapes.get(name) != shape:
            if not self.context.set_input_shape(name, shape):
                raise UserError(f"{self.engine.spec.name}: TensorRT refused input shape {shape} for {name!r} "
                                "(see its log)")
            self.shapes[name] = shape

    def infer_shapes(self) -> dict[str, tuple[int, ...]]:
        assert self.context is not None
        missing = self.context.infer_shapes()
        if missing:
            raise UserError(f"{self.engine.spec.name}: TensorRT could not infer shapes; unspecified: {list(missing)}")
        return {n: dims_tuple(self.context.get_tensor_shape(n)) for n in self.engine.spec.output_names}

    def execute(self) -> None:
        assert self.context is not None
        if not self.context.execute_async_v3(self.stream.ptr):
            raise DeviceFault(f"{self.engine.spec.name}: TensorRT execute_async_v3 failed (last CUDA error: "
                              f"{self.cuda.peek_error()}; TensorRT's log above says why)")

    def wait_for_readers(self) -> None:
        """Order our next writes after other streams' copies of our previous outputs (device-side)."""
        readers, self.readers = self.readers, []
        for event in readers:
            event.wait_on(self.stream)
            event.close()  # safe: the wait above already captured the event's state

    def close(self) -> None:
        """Invalidate this binding's handles, wait until its last call and every reader of its
        outputs are done (host-side: freeing does not wait by itself), then free everything; all
        steps are tried, the first failure is raised after."""
        self.closed = True
        readers, self.readers = self.readers, []
        steps: list[Callable[[], object]] = [self.done.synchronize, *(e.synchronize for e in readers)]
        if self.graph_exec is not None:
            graph_exec, self.graph_exec = self.graph_exec, None
            steps.append(lambda: self.cuda.graph_exec_destroy(graph_exec))
        steps += [*(e.close for e in readers), *(d.close for d in self.device.values()),
                  *(h.close for h in self.host.values()), self.done.close]
        try:
            call_all(steps)
        finally:
            self.context = None


class _Lane:
    """A graph's calls on one stream: its binding (or one per CUDA-graph bucket, least recently
    used last) and the number of calls queued, which makes older handles stale."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.calls = 0
        self.bindings: OrderedDict[Any, _Binding] = OrderedDict()

    def close(self) -> None:
        self.calls += 1
        bindings: list[_Binding] = list(self.bindings.values())
        self.bindings = OrderedDict()
        call_all(b.close for b in bindings)


class Pending:
    """The result of :meth:`TrtGraph.enqueue`: outputs once ``event`` completes. Stale (raises)
    once the graph is called again on that stream, or closed."""

    def __init__(self, name: str, lane: _Lane, binding: _Binding, shapes: dict[str, tuple[int, ...]],
                 host_outputs: Sequence[str]) -> None:
        self.name, self._lane, self._binding, self._call = name, lane, binding, lane.calls
        self.shapes = shapes
        self.host_outputs = tuple(host_outputs)  # copied back to the host (the others stay on the device)

    @property
    def event(self) -> Event:
        return self._binding.done

    def check_fresh(self) -> None:
        if self._binding.closed:
            raise UserError(f"{self.name}: these outputs are gone: the graph (or its buffers) was closed")
        if self._lane.calls != self._call:
            raise UserError(f"{self.name}: these outputs were overwritten by a later call on the same stream; "
                            "read a call's outputs before enqueueing the graph again on that stream")

    def outputs(self) -> dict[str, np.ndarray]:
        """Wait for this call (its event only) and return copies of its outputs (those of
        ``host_outputs`` when the call named them)."""
        self.check_fresh()
        self.event.synchronize()
        b = self._binding
        return {n: b.host[n].view(b.engine.dtypes[n], self.shapes[n]).copy() for n in self.host_outputs}

    def device(self, name: str) -> "DeviceTensor":
        """Output ``name`` left on the device, for another graph's :meth:`TrtGraph.enqueue`."""
        self.check_fresh()
        b = self._binding
        return DeviceTensor(b.device[name].ptr, self.shapes[name], b.engine.dtypes[name], self)

    def as_mapping(self) -> "QueuedOutputs":
        """The outputs by name, as a graph's ``run()`` gives them: host arrays for ``host_outputs``
        (the first read waits for this call), device tensors for the others."""
        return QueuedOutputs(self)


@dataclass
class DeviceTensor:
    """An output left on the device; as fresh as the :class:`Pending` that produced it."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    producer: Pending | None

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.dtype)

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


class QueuedOutputs(Mapping):
    """:meth:`Pending.as_mapping`: code written for ``run()``'s dict of arrays reads a queued call's
    outputs unchanged, and device outputs passed on to another graph never visit the host."""

    def __init__(self, pending: Pending) -> None:
        self._pending = pending
        self._host: dict[str, np.ndarray] | None = None

    def __getitem__(self, name: str) -> Any:
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
    """A graph as a TensorRT engine: the :class:`~runtime.backends.GraphRunner` protocol plus streams.

    ``cuda_graph``: each distinct set of input shapes (a bucket) gets its own execution context,
    buffers and CUDA graph on a stream (a graph fixes the shapes, addresses and context it was
    captured with); its first call runs normally and is captured, later calls replay it. At most
    ``max_cuda_graphs`` buckets are kept per stream, least recently used dropped. Callers that
    want replays keep the shapes few (the SAM2 decoder pads its boxes to powers of two)."""

    def __init__(self, engine: TrtEngine, cuda: CudaRuntime | None = None, cuda_graph: bool = False,
                 max_cuda_graphs: int = MAX_CUDA_GRAPHS) -> None:
        self.engine, self.spec = engine, engine.spec
        self.cuda = cuda or cuda_bindings()
        self.cuda_graph, self.max_cuda_graphs = cuda_graph, max(1, int(max_cuda_graphs))
        self._lanes: dict[int, _Lane] = {}
        self._own_stream: Stream | None = None

    @classmethod
    def from_file(cls, path: Path, spec: GraphSpec, cuda: CudaRuntime | None = None, cuda_graph: bool = False,
                  ) -> "TrtGraph":
        return cls(TrtEngine.from_file(path, spec), cuda, cuda_graph)

    # GraphRunner
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.enqueue(feeds, self.own_stream()).outputs()

    def own_stream(self) -> Stream:
        """The stream of :meth:`run`."""
        if self._own_stream is None:
            self._own_stream = Stream(self.cuda)
        return self._own_stream

    def prepare(self, stream: Stream | None = None, host_inputs: Sequence[str] | None = None,
                host_outputs: Sequence[str] | None = None) -> None:
        """Create the execution context and buffers for calls on ``stream`` (None: :meth:`run`'s)
        now rather than in the first call, pinned host buffers only for ``host_inputs`` and
        ``host_outputs`` (default: all). With ``cuda_graph`` each bucket is made by its first call."""
        stream = stream or self.own_stream()
        lane = self._lane(stream)
        if self.cuda_graph or lane.bindings:
            return
        spec = self.spec
        host = [*(spec.input_names if host_inputs is None else host_inputs),
                *(spec.output_names if host_outputs is None else host_outputs)]
        maxima = {n: self.engine.profile[n][2] for n in spec.input_names}
        lane.bindings[None] = _Binding(self.engine, stream, maxima, host)

    def enqueue(self, feeds: Mapping[str, Any], stream: Stream, host_outputs: Sequence[str] | None = None) -> Pending:
        """Queue one call on ``stream`` and return at once; device inputs are waited for on the device.
        Only the outputs named in ``host_outputs`` (default: all) are copied back to the host."""
        spec = self.spec
        check_feeds(spec, feeds)
        to_host = tuple(spec.output_names if host_outputs is None else host_outputs)
        unknown = [n for n in to_host if n not in spec.output_names]
        if unknown:
            raise ValueError(f"{spec.name}: host_outputs {unknown} are not outputs of the graph ({spec.output_names})")
        shapes = {}
        for name in spec.input_names:
            value = feeds[name]
            shape = value.shape if isinstance(value, DeviceTensor) else np.shape(value)
            shapes[name] = tuple(int(d) for d in shape)
            self.engine.check_shape(name, shapes[name])
        lane = self._lane(stream)
        lane.calls += 1  # the previous call's handles are stale before anything is overwritten
        b = self._binding(lane, shapes)
        b.done.synchronize()  # this binding's previous call is done with its pinned buffers
        b.wait_for_readers()
        try:
            for name in spec.input_names:
                self._copy_input(b, name, feeds[name])
                b.set_shape(name, shapes[name])
            out_shapes = b.infer_shapes()
            self._execute(b)
            for name in to_host:
                memcpy_async(b.pinned(name).ptr, b.device[name].ptr, _nbytes(out_shapes[name], self.engine.dtypes[name]),
                             "DeviceToHost", stream)
        except BaseException:
            # The next call on this binding must wait for whatever this one queued before failing.
            call_all([lambda: b.done.record(stream)], raise_first=False)
            raise
        b.done.record(stream)
        return Pending(spec.name, lane, b, out_shapes, to_host)

    def close(self) -> None:
        """Invalidate every handle, then free every context and buffer once their readers are done;
        all are freed even when one fails, the first failure is raised after."""
        lanes, self._lanes = list(self._lanes.values()), {}
        own, self._own_stream = self._own_stream, None
        call_all([*(lane.close for lane in lanes), *([own.close] if own is not None else [])])

    def __enter__(self) -> "TrtGraph":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals
    def _lane(self, stream: Stream) -> _Lane:
        if stream.handle is None:
            raise ValueError(f"{self.spec.name}: the stream was closed")
        # Free the contexts and buffers of streams closed since (a new stream may reuse the handle)
        for key in [k for k, lane in self._lanes.items() if lane.stream.handle is None]:
            self._lanes.pop(key).close()
        lane = self._lanes.get(stream.ptr)
        if lane is None or lane.stream is not stream:
            lane = self._lanes[stream.ptr] = _Lane(stream)
        return lane

    def _binding(self, lane: _Lane, shapes: dict[str, tuple[int, ...]]) -> _Binding:
        if not self.cuda_graph:
            if None not in lane.bindings:
                self.prepare(lane.stream)
            return lane.bindings[None]
        key = tuple(shapes[n] for n in self.spec.input_names)
        b = lane.bindings.get(key)
        if b is not None:
            lane.bindings.move_to_end(key)
            return b
        while len(lane.bindings) >= self.max_cuda_graphs:
            _, oldest = lane.bindings.popitem(last=False)
            oldest.close()  # waits for its last call and its readers
        b = lane.bindings[key] = _Binding(self.engine, lane.stream, shapes, ())
        return b

    def _copy_input(self, b: _Binding, name: str, value: Any) -> None:
        dtype = self.engine.dtypes[name]
        dst = b.device[name].ptr
        if isinstance(value, DeviceTensor):
            if value.producer is None:
                raise ValueError(f"{self.spec.name}: input {name!r} is a DeviceTensor of no call")
            value.producer.check_fresh()
            if value.dtype != dtype:
                raise ValueError(f"{self.spec.name}: input {name!r} is {value.dtype} on the device, the engine "
                                 f"takes {dtype}")
            value.producer.event.wait_on(b.stream)  # the producer's outputs are complete before we copy them
            memcpy_async(dst, value.ptr, value.nbytes, "DeviceToDevice", b.stream)
            copied = Event(self.cuda)  # the producer's next call must not overwrite the source before this copy ran
            try:
                copied.record(b.stream)
            except BaseException:
                copied.close()
                raise
            value.producer._binding.readers.append(copied)  # the producer frees it once it has waited on it
            return
        array = np.ascontiguousarray(value, dtype=dtype)
        host = b.pinned(name)
        np.copyto(host.view(dtype, array.shape), array)
        memcpy_async(dst, host.ptr, array.nbytes, "HostToDevice", b.stream)

    def _execute(self, b: _Binding) -> None:
        if not self.cuda_graph:
            b.execute()
        elif b.graph_exec is not None:
            self.cuda.graph_launch(b.graph_exec, b.stream.handle)
        else:
            # The bucket's first call runs outside capture (TensorRT's lazy set-up for these shapes
            # stays out of the graph); the same enqueue is then captured for the next calls.
            b.execute()
            b.stream.synchronize()
            context = b.context
            assert context is not None
            b.graph_exec = capture_graph(b.stream, lambda: context.execute_async_v3(b.stream.ptr),
                                         f"{self.spec.name}: this engine cannot be captured into a CUDA graph; "
                                         "open it with cuda_graph=False")


def tensorrt_opener(manifest: Manifest, precision: str = "fp16", cuda_graphs: Iterable[str] = (),
                    cuda: CudaRuntime | None = None) -> Callable[[GraphSpec], TrtGraph]:
    """A function that opens a graph's engine, its manifest record verified before deserialising:
    sha256, TensorRT version, GPU name and compute capability against the running ones. Graphs
    named in ``cuda_graphs`` replay CUDA graphs (see :class:`TrtGraph`)."""
    env = tensorrt_environment()
    graphed = frozenset(cuda_graphs)

    def open_graph(spec: GraphSpec) -> TrtGraph:
        record = select_engine_record(manifest, spec.name, spec.runs_at(precision), env)
        path = verify_engine_record(manifest, record, env)
        return TrtGraph.from_file(path, spec, cuda, cuda_graph=spec.name in graphed)

    return open_graph
