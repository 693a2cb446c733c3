"""The light runtime: numpy, pillow, tokenizers and one backend; never torch or transformers.

    from runtime.manifest import load_manifest
    from runtime.backends import onnxruntime_opener
    from runtime.owl import OwlDetector

or, for the whole image pipeline, ``from runtime import Pipeline`` (imported on first use, so that
``import runtime`` itself stays cheap).
"""

__all__ = ["Pipeline", "Result"]


def __getattr__(name: str):
    if name in __all__:
        from runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
