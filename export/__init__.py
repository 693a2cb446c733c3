"""The torch side: load the reference models, wrap sub-networks, write ONNX, check parity, build engines."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (the exporter's and ModelOpt's run to pages), else its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
