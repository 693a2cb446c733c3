"""Serving with NVIDIA Triton Inference Server: ``python -m tools.serve`` (see ``__main__``), the wire
interface (``interface``), the Python-backend model (``model``), the model repository (``repository``)
and the bundled ``tritonserver`` process (``server``)."""
