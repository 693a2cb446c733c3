"""RecordingCudaRuntime: a test double of the CUDA runtime calls of the TensorRT backend
(``runtime.backends.cuda.CudaRuntime``) that records them and checks the ordering invariants.

It is neither CUDA nor TensorRT and proves nothing about either: it checks the backend's
bookkeeping. Memory is real host memory. Work queued on a stream runs lazily, in stream order,
only when the host waits for it (an event or stream synchronise) or a later op depends on it, so
an output read before its event is poison (NaN) and a missing wait shows in the data as well as
in the checks:

* every access of a queued op (copy, kernel) to a byte range is checked against earlier accesses
  of other streams and of the host with vector clocks: a conflicting pair (one a write) not
  ordered by an event wait or a host wait is an :class:`OrderingError`;
* freeing memory while an op that touches it is not known (by the host) to be complete, or using
  freed memory, is an error;
* an op that copies from pinned host memory checks, when it runs, that the host did not rewrite
  that memory after queueing it.

``FakeEngine``/``FakeContext`` stand in for TensorRT's engine and execution context with the
calls the backend makes; their kernel computes the graph with ONNX Runtime on the double's memory
(``compute``), so results can be compared with the ONNX Runtime path.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from runtime.backends.cuda import cuda_failure
from runtime.graphs import GraphSpec

POISON = 0xFF  # float32 0xFFFFFFFF is NaN


class OrderingError(AssertionError):
    """The backend broke an ordering invariant."""


@dataclass
class _Alloc:
    base: int
    data: np.ndarray
    kind: str  # "device" or "host"
    freed: bool = False
    accesses: list = field(default_factory=list)  # (agent, clock, write, lo, hi, what)


@dataclass
class _Op:
    stream: int
    what: str
    accesses: list  # (alloc, lo, hi, write)
    run: Callable[[], None]
    deps: list  # (stream, number of ops) that must have run first
    done: bool = False


class RecordingCudaRuntime:
    """See the module docstring. ``calls`` lists every call by name; ``fail(name, error)`` makes the
    next call of ``name`` fail with that CUDA error (``sticky``: every later call fails too)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._allocs: dict[int, _Alloc] = {}
        self._bases: list[int] = []
        self._vc: dict[Any, dict[Any, int]] = {"host": {"host": 0}}
        self._queues: dict[int, list[_Op]] = {}
        self._barriers: dict[int, list] = {}
        self._events: dict[int, dict] = {}
        self._capturing: dict[int, list] = {}
        self._graphs: dict[int, list] = {}
        self._next = 1
        self._failures: dict[str, tuple[str, bool]] = {}
        self._sticky: str | None = None

    # --- failure injection ---------------------------------------------------------------------
    def fail(self, call: str, error: str = "cudaErrorIllegalAddress", sticky: bool = False) -> None:
        self._failures[call] = (error, sticky)

    def _enter(self, call: str) -> None:
        self.calls.append(call)
        if call in self._failures:
            error, sticky = self._failures.pop(call)
            if sticky:
                self._sticky = error
            raise cuda_failure(call, error, "injected by the test")
        if self._sticky is not None:
            raise cuda_failure(call, self._sticky, "sticky, injected by the test")

    def _handle(self) -> int:
        self._next += 1
        return self._next

    # --- clocks and memory ---------------------------------------------------------------------
    def _join(self, into: Any, other: Mapping[Any, int]) -> None:
        vc = self._vc[into]
        for agent, t in other.items():
            if vc.get(agent, 0) < t:
                vc[agent] = t

    def _alloc(self, ptr: int, nbytes: int) -> tuple[_Alloc, int, int]:
        i = bisect.bisect_right(self._bases, ptr) - 1
        a = self._allocs.get(self._bases[i]) if i >= 0 else None
        if a is None or not a.base <= ptr <= ptr + nbytes <= a.base + a.data.nbytes:
            raise OrderingError(f"address {ptr:#x}+{nbytes} is outside every allocation")
        if a.freed:
            raise OrderingError(f"address {ptr:#x} is in freed {a.kind} memory")
        return a, ptr - a.base, ptr - a.base + nbytes

    def _check_access(self, agent: Any, a: _Alloc, lo: int, hi: int, write: bool, what: str) -> None:
        vc = self._vc[agent]
        for other, t, w, plo, phi, pwhat in a.accesses:
            if other != agent and (w or write) and plo < hi and lo < phi and vc.get(other, 0) < t:
                raise OrderingError(f"{what} races with {pwhat}: no event or host wait orders them")
        a.accesses.append((agent, vc[agent], write, lo, hi, what))

    def _new(self, nbytes: int, kind: str) -> int:
        data = np.full(nbytes + 64, POISON, np.uint8)
        base = (data.ctypes.data + 63) // 64 * 64  # aligned, as CUDA's are
        a = _Alloc(base, data[base - data.ctypes.data:][:nbytes], kind)
        self._allocs[base] = a
        bisect.insort(self._bases, base)
        return base

    def _free(self, ptr: int, kind: str, call: str) -> None:
        a = self._allocs.get(ptr)
        if a is None or a.kind != kind or a.freed:
            raise OrderingError(f"{call} of {ptr:#x}: not a live {kind} allocation")
        host = self._vc["host"]
        for agent, t, _, _, _, what in a.accesses:
            if agent != "host" and host.get(agent, 0) < t:
                raise OrderingError(f"{call} while {what} may still use it (the host never waited for it)")
        a.freed = True

    def live(self) -> list[str]:
        """Allocations not freed: empty after a clean teardown."""
        return [f"{a.kind} {a.base:#x} ({a.data.nbytes} bytes)" for a in self._allocs.values() if not a.freed]

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes at ``ptr`` (for a kernel's data effect)."""
        a, lo, hi = self._alloc(ptr, nbytes)
        return a.data[lo:hi]

    # --- queued work ---------------------------------------------------------------------------
    def enqueue(self, stream: int, what: str, reads: list[tuple[int, int]], writes: list[tuple[int, int]],
                run: Callable[[], None]) -> None:
        """Queue an op that reads and writes ``(ptr, nbytes)`` ranges (or capture it)."""
        if stream in self._capturing:
            self._capturing[stream].append((what, reads, writes, run))
            return
        if stream not in self._queues:
            raise OrderingError(f"{what} on a stream that does not exist (destroyed?)")
        self._join(stream, self._vc["host"])  # queued after everything the host did so far
        self._vc[stream][stream] = self._vc[stream].get(stream, 0) + 1
        accesses = []
        for (ptr, n), write in [*((r, False) for r in reads), *((w, True) for w in writes)]:
            a, lo, hi = self._alloc(ptr, n)
            self._check_access(stream, a, lo, hi, write, f"{what} ({'writes' if write else 'reads'} {a.kind} {ptr:#x})")
            accesses.append((a, lo, hi, write))
            if write and a.kind == "host":
                a.data[lo:hi] = POISON  # may change from now on: read it after the event
        self._queues[stream].append(_Op(stream, what, accesses, run, self._barriers.pop(stream, [])))

    def _run_until(self, stream: int, count: int) -> None:
        for op in self._queues[stream][:count]:
            if op.done:
                continue
            for dep_stream, dep_count in op.deps:
                if dep_stream in self._queues:  # a destroyed stream ran all its work
                    self._run_until(dep_stream, dep_count)
            op.run()
            op.done = True

    # --- CudaRuntime ---------------------------------------------------------------------------
    def device(self) -> tuple[str, tuple[int, int]]:
        self._enter("device")
        return "RecordingCudaRuntime", (0, 0)

    def stream_create(self) -> int:
        self._enter("stream_create")
        s = self._handle()
        self._queues[s], self._vc[s] = [], {s: 0}
        return s

    def stream_ptr(self, stream: int) -> int:
        return stream

    def stream_synchronize(self, stream: int) -> None:
        self._enter("stream_synchronize")
        self._run_until(stream, len(self._queues[stream]))
        self._join("host", self._vc[stream])

    def stream_destroy(self, stream: int) -> None:
        self._enter("stream_destroy")
        if stream not in self._queues:
            raise OrderingError("stream destroyed twice")
        self._run_until(stream, len(self._queues[stream]))  # CUDA finishes its work after the destroy
        del self._queues[stream]

    def event_create(self) -> int:
        self._enter("event_create")
        e = self._handle()
        self._events[e] = {"vc": {}, "pos": None}
        return e

    def event_record(self, event: int, stream: int) -> None:
        self._enter("event_record")
        if stream in self._capturing:
            raise OrderingError("event recorded inside a capture")
        self._events[event] = {"vc": dict(self._vc[stream]), "pos": (stream, len(self._queues[stream]))}

    def event_synchronize(self, event: int) -> None:
        self._enter("event_synchronize")
        e = self._events[event]
        if e["pos"] is not None:
            stream, count = e["pos"]
            if stream in self._queues:
                self._run_until(stream, count)
        self._join("host", e["vc"])

    def stream_wait_event(self, stream: int, event: int) -> None:
        self._enter("stream_wait_event")
        e = self._events[event]
        self._join(stream, e["vc"])
        if e["pos"] is not None:
            self._barriers.setdefault(stream, []).append(e["pos"])

    def event_destroy(self, event: int) -> None:
        self._enter("event_destroy")
        del self._events[event]

    def malloc(self, nbytes: int) -> int:
        self._enter("malloc")
        return self._new(nbytes, "device")

    def free(self, ptr: int) -> None:
        self._enter("free")
        self._free(ptr, "device", "free")

    def malloc_host(self, nbytes: int) -> int:
        self._enter("malloc_host")
        return self._new(nbytes, "host")

    def free_host(self, ptr: int) -> None:
        self._enter("free_host")
        self._free(ptr, "host", "free_host")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        self._enter("memcpy_async")
        want = {"HostToDevice": ("device", "host"), "DeviceToHost": ("host", "device"),
                "DeviceToDevice": ("device", "device")}[kind]
        got = (self._alloc(dst, nbytes)[0].kind, self._alloc(src, nbytes)[0].kind)
        if got != want:
            raise OrderingError(f"memcpy {kind} from {got[1]} to {got[0]} memory")
        source = self.view(src, nbytes)
        queued = source.copy() if kind == "HostToDevice" else None

        def run() -> None:
            if queued is not None and not np.array_equal(source, queued):
                raise OrderingError(f"the host rewrote pinned memory {src:#x} before the copy queued from it ran")
            self.view(dst, nbytes)[...] = source

        self.enqueue(stream, f"memcpy {kind}", [(src, nbytes)], [(dst, nbytes)], run)

    def begin_capture(self, stream: int) -> None:
        self._enter("begin_capture")
        self._capturing[stream] = []

    def end_capture(self, stream: int) -> tuple[Any | None, str]:
        self._enter("end_capture")
        ops = self._capturing.pop(stream)
        if not ops:
            return None, "cudaErrorStreamCaptureInvalidated"
        g = self._handle()
        self._graphs[g] = ops
        return g, "cudaSuccess"

    def graph_instantiate(self, graph: int) -> int:
        self._enter("graph_instantiate")
        e = self._handle()
        self._graphs[e] = self._graphs[graph]
        return e

    def graph_destroy(self, graph: int) -> None:
        self._enter("graph_destroy")
        del self._graphs[graph]

    def graph_launch(self, graph_exec: int, stream: int) -> None:
        self._enter("graph_launch")
        for what, reads, writes, run in self._graphs[graph_exec]:
            self.enqueue(stream, f"graph {what}", reads, writes, run)

    def graph_exec_destroy(self, graph_exec: int) -> None:
        self._enter("graph_exec_destroy")
        del self._graphs[graph_exec]

    def peek_error(self) -> str:
        return self._sticky or "cudaSuccess"


# --- TensorRT's engine and context, as far as the backend calls them ------------------------------

class FakeEngine:
    """``TrtEngine``'s interface for ``spec``: dtypes, profile (min, opt, max per input) and contexts
    whose kernel is ``compute(feeds) -> outputs`` (e.g. an ONNX Runtime session of the graph)."""

    def __init__(self, spec: GraphSpec, sizes: Mapping[str, int], profile: Mapping[str, tuple], rt: RecordingCudaRuntime,
                 compute: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]) -> None:
        self.spec, self.sizes, self.profile, self.rt, self.compute = spec, dict(sizes), dict(profile), rt, compute
        self.dtypes = {t.name: np.dtype(t.dtype) for t in (*spec.inputs, *spec.outputs)}
        self.contexts: list[FakeContext] = []
        self.executions = 0
        self.fail_execution: int | None = None  # execute_async_v3 number N (from 1) returns False

    def create_context(self) -> "FakeContext":
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        from runtime.backends.tensorrt import TrtEngine

        TrtEngine.check_shape(self, name, shape)  # type: ignore[arg-type]  # the real check, on our profile


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        lo, _, hi = self.engine.profile[name]
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(hi) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def _dims(self) -> dict[str, int]:
        dims: dict[str, int] = {}
        for t in self.engine.spec.inputs:
            for sym, n in zip(t.shape, self.shapes[t.name]):
                if isinstance(sym, str) and sym not in self.engine.sizes:
                    dims[sym] = n
        return dims

    def infer_shapes(self) -> list[str]:
        return [n for n in self.engine.spec.input_names if n not in self.shapes]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        from runtime.graphs import resolve_shape

        return resolve_shape(self.engine.spec.output(name), self.engine.sizes, self._dims())

    def execute_async_v3(self, stream: int) -> bool:
        e = self.engine
        e.executions += 1
        if e.executions == e.fail_execution:
            return False
        spec, dtypes = e.spec, e.dtypes
        ins = {n: (self.addresses[n], self.shapes[n]) for n in spec.input_names}  # as enqueued
        outs = {n: (self.addresses[n], self.get_tensor_shape(n)) for n in spec.output_names}

        def nbytes(name: str, shape: tuple[int, ...]) -> int:
            return int(np.prod(shape, dtype=np.int64)) * dtypes[name].itemsize

        def run() -> None:
            feeds = {n: e.rt.view(p, nbytes(n, s)).view(dtypes[n]).reshape(s).copy() for n, (p, s) in ins.items()}
            result = e.compute(feeds)
            for n, (p, s) in outs.items():
                e.rt.view(p, nbytes(n, s))[...] = np.ascontiguousarray(result[n], dtypes[n]).reshape(s).view(np.uint8).ravel()

        e.rt.enqueue(stream, f"{spec.name} kernel", [(p, nbytes(n, s)) for n, (p, s) in ins.items()],
                     [(p, nbytes(n, s)) for n, (p, s) in outs.items()], run)
        return True
