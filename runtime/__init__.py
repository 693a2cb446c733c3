"""The light runtime: numpy, pillow, tokenizers and one backend; never torch or transformers.

    from runtime.manifest import load_manifest
    from runtime.backends import onnxruntime_opener
    from runtime.owl import OwlDetector
"""
