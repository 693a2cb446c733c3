"""Whether TensorRT's Python package imports here: tests of what happens without it skip where it does."""


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True
