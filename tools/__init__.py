"""Command-line tools people run: infer, parity, benchmark, tiny checkpoints, triton repo."""
