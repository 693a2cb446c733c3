"""ONNX Runtime backend: one InferenceSession per graph, created once, run by binding name.

No IO binding: measured on the CPU execution provider (full-size graphs, 2 threads, medians of 5),
``session.run`` and ``run_with_iobinding`` into preallocated outputs are equal within noise
(sam2_decoder 8 boxes 772 vs 780 ms, sam2_image 6672 vs 6616 ms, owl_image 7729 vs 7613 ms, on a
loaded machine): contiguous numpy inputs of the right dtype are not copied, and the outputs (at
most 17 MB per call) cost milliseconds next to seconds of compute. Binding pays off when tensors can
stay in device memory between graphs (CUDA execution provider), which this backend is not tuned for:
on GPUs the TensorRT backend keeps the encoder outputs on the device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtime.backends.feeds import check_feeds
from runtime.errors import UserError
from runtime.graphs import GraphSpec

log = logging.getLogger(__name__)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the onnxruntime backend needs the onnxruntime package; pip install 'owlsam-trt[ort]' "
            "(or [gpu] for onnxruntime-gpu, never both)"
        ) from None
    return onnxruntime


class OrtGraph:
    """A graph in an ONNX Runtime session.

    ``disable_qdq_fusion`` runs Q/DQ graphs as written (fake-quantised in float) instead of fusing
    them into MLAS integer kernels: how the portable INT8 graphs, written for TensorRT, are checked
    (on x86 CPUs without VNNI the fused kernels saturate, with 5-10x the error of the graph as
    written: an object-score cosine of -0.84 on the tiny SAM2 decoder). ONNX Runtime's own INT8
    flavour runs fused: that is its point.
    """

    def __init__(
        self,
        path: Path,
        spec: GraphSpec,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        disable_qdq_fusion: bool = False,
    ) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        if disable_qdq_fusion:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        opts.log_severity_level = 3
        self.spec = spec
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != spec.input_names or got_out != spec.output_names:
            raise UserError(
                f"{path} has bindings {got_in} -> {got_out}, the spec of {spec.name!r} says "
                f"{spec.input_names} -> {spec.output_names}; re-export the artifact"
            )
        self._dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.spec, feeds)
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.spec.input_names}
        outs = self.session.run(self.spec.output_names, arrays)
        return dict(zip(self.spec.output_names, outs, strict=True))
