"""``CudaRuntime`` (``runtime.backends.cuda``) on cuda-bindings: one checked call per operation.

Imports ``cuda.bindings.runtime`` at module level so that the API check (tools/trt_api_check.py)
types every call here against the real bindings of each supported cuda-python version.
"""

from __future__ import annotations

from typing import Any

from cuda.bindings import runtime as cudart

from runtime.backends.cuda import CopyKind, CudaError, cuda_failure

_KINDS = {
    "HostToDevice": cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
    "DeviceToHost": cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
    "DeviceToDevice": cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
}


def _text(b: Any) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else str(b)


def error_name(err: Any) -> str:
    return _text(cudart.cudaGetErrorName(err)[1])


def check(result: Any, what: str) -> Any:
    """Unpack a ``(cudaError_t, *values)`` tuple: the value (None, one, or a tuple), or raise."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise cuda_failure(what, error_name(err), _text(cudart.cudaGetErrorString(err)[1]))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class CudaBindings:
    """The CUDA runtime of the process, through ``cuda.bindings.runtime``."""

    def device(self) -> tuple[str, tuple[int, int]]:
        if not check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"):
            raise CudaError("no CUDA device is visible; run on a machine with an NVIDIA GPU or use --backend onnxruntime")
        index = check(cudart.cudaGetDevice(), "cudaGetDevice")
        props = check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = _text(props.name).split("\x00", 1)[0].strip()
        return name, (int(props.major), int(props.minor))

    def stream_create(self) -> Any:
        return check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def stream_ptr(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def event_create(self) -> Any:
        flags = cudart.cudaEventDisableTiming | cudart.cudaEventBlockingSync
        return check(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")

    def event_record(self, event: Any, stream: Any) -> None:
        check(cudart.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: Any) -> None:
        check(cudart.cudaEventSynchronize(event), "cudaEventSynchronize")

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        check(cudart.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")

    def event_destroy(self, event: Any) -> None:
        check(cudart.cudaEventDestroy(event), "cudaEventDestroy")

    def malloc(self, nbytes: int) -> int:
        return int(check(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        check(cudart.cudaFree(ptr), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        return int(check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))

    def free_host(self, ptr: int) -> None:
        check(cudart.cudaFreeHost(ptr), "cudaFreeHost")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: CopyKind, stream: Any) -> None:
        check(cudart.cudaMemcpyAsync(dst, src, nbytes, _KINDS[kind], stream), f"cudaMemcpyAsync ({kind})")

    def begin_capture(self, stream: Any) -> None:
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # as trtexec captures
        check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> tuple[Any | None, str]:
        err, graph = cudart.cudaStreamEndCapture(stream)
        if err != cudart.cudaError_t.cudaSuccess or graph is None or int(graph) == 0:
            cudart.cudaGetLastError()  # clear the invalidation error so later calls do not report it
            return None, error_name(err)
        return graph, "cudaSuccess"

    def graph_instantiate(self, graph: Any) -> Any:
        return check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def graph_destroy(self, graph: Any) -> None:
        check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        check(cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        check(cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def peek_error(self) -> str:
        return error_name(cudart.cudaPeekAtLastError()[0])
