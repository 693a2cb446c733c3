"""The torch side: load the reference models, wrap sub-networks, write ONNX, check parity, build engines."""
