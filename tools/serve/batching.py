"""How many requests Triton puts in one model execution (``python -m tools.serve --max-batch``): the
default per backend, why, and the warning for an explicit value above what is safe.

The rule: TensorRT takes the engines' batch profile maximum, the batch they were built for. ONNX Runtime
takes 1: on a CPU a batch of full-size images is no faster per image than one at a time, while each
image in it adds its activations to the model process's memory (docs/BENCHMARKS.md, "Batching on a
CPU": batches of up to 4 grew it to 16.7 GB, OOM-killed). ``auto`` (a written repository, chosen again
where it is served) takes 1 too: it may be served on ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURE = "python -m tools.bench.batching --engines DIR"  # per-image time and memory at each batch size


@dataclass(frozen=True)
class MaxBatch:
    value: int
    reason: str  # why this value (logged at start)
    warning: str = ""  # an explicit value above the safe one: what it costs and what to do


def choose_max_batch(backend: str, profile_max: int, requested: int | None = None) -> MaxBatch:
    """``--max-batch`` for ``backend`` ("tensorrt", "onnxruntime" or "auto") given the artifact's batch
    profile maximum and the value asked for (None: the default)."""
    cpu = f"the CPU, where a batch adds each image's activations to memory, not throughput (measure an artifact with {MEASURE})"
    if backend == "tensorrt":
        safe, why = profile_max, (f"the engines' batch profile maximum ({profile_max}), the batch they were built for "
                                  "(a GPU has the parallelism to run several images at once)")
    elif backend == "onnxruntime":
        safe, why = 1, f"ONNX Runtime runs on {cpu}"
    else:
        safe, why = 1, (f"the repository may be served on ONNX Runtime, on {cpu}; "
                        f"--backend tensorrt takes the engines' maximum ({profile_max})")
    if requested is None:
        return MaxBatch(safe, f"default for {backend}: {why}")
    reason = "--max-batch"
    if requested > profile_max:
        reason += f" (the pipeline runs a batch in chunks of {profile_max}, the artifact's batch maximum)"
    held = min(requested, profile_max)  # images in the image encoders at once
    if backend == "tensorrt" or held <= safe:
        return MaxBatch(requested, reason)
    return MaxBatch(requested, reason, (
        f"--max-batch {requested} with {backend}: a batch puts up to {held} images through the image encoders at once "
        f"on the CPU, {held}x the activation memory of one, for no more throughput than --max-batch 1; leave "
        f"--max-batch out (default 1), or first measure this artifact with {MEASURE}"))
