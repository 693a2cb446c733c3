"""The CUDA runtime calls of the TensorRT backend, behind one small interface.

:class:`CudaRuntime` names the operations the backend makes; ``runtime.backends.cudart`` makes them
with cuda-bindings and checks every status (imported on first use: this module needs no CUDA).
Tests stand a recording double in for it (``tests/runtime/fake_cudart.py``). Handles (streams,
events, graphs) are opaque; memory is an integer address.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from runtime.errors import DeviceFault, UserError

INSTALL_HINT = "pip install 'owlsam-trt[trt]'"
MIN_CUDA_PYTHON = "12.9"

CopyKind = Literal["HostToDevice", "DeviceToHost", "DeviceToDevice"]

# Errors of the machine rather than of a run: no device, driver too old, out of memory at load.
ENVIRONMENT_ERRORS = frozenset({
    "cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorInitializationError", "cudaErrorInvalidDevice",
    "cudaErrorDevicesUnavailable", "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice",
    "cudaErrorStubLibrary", "cudaErrorCallRequiresNewerDriver", "cudaErrorMemoryAllocation",
})


class CudaError(UserError):
    """A CUDA call failed for a reason of this machine (no device, old driver, out of memory)."""


def cuda_failure(what: str, name: str, text: str) -> Exception:
    """The exception for CUDA call ``what`` failing with error ``name``: :class:`CudaError` for the
    machine's errors, :class:`~runtime.errors.DeviceFault` for everything else (a fault while
    running: the context may be unusable, the run must stop)."""
    if name in ENVIRONMENT_ERRORS:
        return CudaError(f"{what} failed: {name} ({text}); check the GPU, its driver and free memory")
    return DeviceFault(f"{what} failed: {name} ({text}); the GPU stopped this run. Run it again; if it "
                       "repeats, run it under compute-sanitizer (or with CUDA_LAUNCH_BLOCKING=1) to find the call")


class CudaRuntime(Protocol):
    """The CUDA runtime operations of the TensorRT backend. Every method raises :class:`CudaError`
    or :class:`~runtime.errors.DeviceFault` when its call fails."""

    def device(self) -> tuple[str, tuple[int, int]]:
        """Name and compute capability of the current device."""

    def stream_create(self) -> Any:
        """A non-blocking stream (no implicit synchronisation with the legacy default stream)."""

    def stream_ptr(self, stream: Any) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""

    def stream_synchronize(self, stream: Any) -> None: ...

    def stream_destroy(self, stream: Any) -> None: ...

    def event_create(self) -> Any:
        """An event without timing whose host waits block the thread (blocking sync, no spinning)."""

    def event_record(self, event: Any, stream: Any) -> None: ...

    def event_synchronize(self, event: Any) -> None: ...

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        """Later work on ``stream`` waits for ``event`` on the device."""

    def event_destroy(self, event: Any) -> None: ...

    def malloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory (so copies from and to it are asynchronous)."""

    def free_host(self, ptr: int) -> None: ...

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: CopyKind, stream: Any) -> None: ...

    def begin_capture(self, stream: Any) -> None:
        """Start capturing ``stream``'s work into a CUDA graph (thread-local mode)."""

    def end_capture(self, stream: Any) -> tuple[Any | None, str]:
        """End capture: ``(graph, "cudaSuccess")``, or ``(None, error name)`` when the capture was
        invalidated (the error is cleared, so later calls do not report it)."""

    def graph_instantiate(self, graph: Any) -> Any: ...

    def graph_destroy(self, graph: Any) -> None: ...

    def graph_launch(self, graph_exec: Any, stream: Any) -> None: ...

    def graph_exec_destroy(self, graph_exec: Any) -> None: ...

    def peek_error(self) -> str:
        """The name of the last error a runtime call produced on this thread (not cleared)."""
