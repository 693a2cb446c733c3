"""``python -m tools.serve``: the pipeline behind NVIDIA Triton Inference Server (models ``owlsam`` and
``owl_detect``; KServe v2 over HTTP and gRPC, dynamic batching, Prometheus metrics).

    python -m tools.serve --engines DIR [--backend auto|tensorrt|onnxruntime] [--precision fp32|fp16|int8]
                          [--host 127.0.0.1] [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]
                          [--max-batch N] [--max-queue-delay-us N] [--instances N] [--max-pixels N]
                          [--threads N] [--drain-timeout S] [--models owlsam owl_detect]
    python -m tools.serve --engines DIR --write-model-repository OUT [same model options]

Serving writes the model repository to a temporary folder and runs the ``tritonserver`` binary of the
nvidia-pytriton wheel on it until SIGINT or SIGTERM, which it forwards: the server finishes the
requests it has (up to ``--drain-timeout`` seconds) and the command exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from runtime.manifest import PRECISIONS
from runtime.pipeline import BACKENDS
from tools.serve.interface import MODELS
from tools.serve.model import DEFAULT_MAX_PIXELS

log = logging.getLogger("tools.serve")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tools.serve",
                              description="Serve the pipeline with NVIDIA Triton Inference Server (models "
                                          + ", ".join(m.name for m in MODELS) + ").")
    p.add_argument("--engines", metavar="DIR", required=True, help="engines directory (python -m export.build --out DIR)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="default auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default fp32")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP, gRPC and metrics endpoints bind to (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--http-port", type=whole_number(1), default=8000, metavar="N", help="default 8000")
    p.add_argument("--grpc-port", type=whole_number(1), default=8001, metavar="N", help="default 8001")
    p.add_argument("--metrics-port", type=whole_number(1), default=8002, metavar="N", help="default 8002")
    p.add_argument("--max-batch", type=whole_number(1), metavar="N",
                   help="requests Triton batches together (default: on tensorrt the artifact's batch profile "
                        "maximum; on onnxruntime and auto 1, as on a CPU a batch adds memory, not throughput)")
    p.add_argument("--max-queue-delay-us", type=whole_number(0), default=1000, metavar="N",
                   help="how long a request may wait for others to join its batch (default 1000)")
    p.add_argument("--instances", type=whole_number(1), default=1, metavar="N",
                   help="instances per model, each a process with its own pipeline (default 1)")
    p.add_argument("--max-pixels", type=whole_number(1), default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images of more pixels (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--threads", type=whole_number(1), metavar="N", help="ONNX Runtime threads per instance (default: its own)")
    p.add_argument("--drain-timeout", type=whole_number(1), default=30, metavar="S",
                   help="on SIGINT/SIGTERM, seconds to finish the requests in flight (default 30)")
    p.add_argument("--models", nargs="+", choices=[m.name for m in MODELS], default=[m.name for m in MODELS],
                   metavar="NAME", help=f"the models to serve (default: {' '.join(m.name for m in MODELS)})")
    p.add_argument("--write-model-repository", metavar="OUT",
                   help="write a Triton model repository for the official tritonserver container and exit")
    return p


def _options(args: argparse.Namespace, engines: Path, backend: str, max_batch: int):
    from tools.serve.repository import RepositoryOptions

    return RepositoryOptions(engines=engines, backend=backend, precision=args.precision, max_batch=max_batch,
                             max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                             max_pixels=args.max_pixels, threads=args.threads or 0)


def _max_batch(args: argparse.Namespace, manifest, backend: str) -> int:
    """``--max-batch`` or the backend's default (``tools.serve.batching``), logged with the reason."""
    from runtime.graphs import BATCH
    from tools.serve.batching import choose_max_batch

    choice = choose_max_batch(backend, manifest.profile_max(BATCH, 1), args.max_batch)
    log.info("max batch %d: %s", choice.value, choice.reason)
    if choice.warning:
        log.warning("%s", choice.warning)
    return choice.value


def _models(args: argparse.Namespace) -> tuple:
    return tuple(m for m in MODELS if m.name in args.models)


def write_only(args: argparse.Namespace) -> int:
    """``--write-model-repository``: the requested backend as is (the repository may be served on
    another machine, e.g. a GPU server, where ``auto`` chooses again)."""
    from runtime.manifest import load_manifest
    from runtime.pipeline import engine_precisions, verify_artifact
    from tools.serve.repository import write_repository

    if args.backend == "tensorrt":  # engines are checked against the GPU where the repository is served
        manifest = load_manifest(args.engines)
        if args.precision not in engine_precisions(manifest):
            raise UserError(f"{manifest.root} has no {args.precision} TensorRT engines; build them on the target GPU "
                            f"with python -m export.build --from {manifest.root} --engines require")
    else:
        manifest, _ = verify_artifact(args.engines, args.backend, args.precision)
    out = write_repository(Path(args.write_model_repository),
                           _options(args, manifest.root.resolve(), args.backend, _max_batch(args, manifest, args.backend)),
                           _models(args))
    print(f"wrote {out}: models {', '.join(args.models)} for tritonserver --model-repository={out}",
          file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    from runtime.pipeline import verify_artifact
    from tools.serve.repository import write_repository
    from tools.serve.server import Endpoints, TritonServer, bundled_triton, check_ports_free

    bundled_triton()  # installed? before the artifact's hashes are checked
    manifest, choice = verify_artifact(args.engines, args.backend, args.precision)
    log.info("%s: %s", manifest.root, choice.describe())
    endpoints = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)
    check_ports_free(endpoints)
    stopping: list[str] = []
    with tempfile.TemporaryDirectory(prefix="owlsam-serve-") as tmp:
        repository = write_repository(Path(tmp) / "models",
                                      _options(args, manifest.root.resolve(), choice.backend,
                                               _max_batch(args, manifest, choice.backend)),
                                      _models(args))
        server = TritonServer(repository, endpoints, Path(tmp), exit_timeout_s=args.drain_timeout)

        def on_signal(signum: int, _frame) -> None:
            name = signal.Signals(signum).name
            if not stopping:
                log.info("%s: finishing the requests in flight, then stopping", name)
            stopping.append(name)
            server.stop()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        server.start()
        if stopping:  # a signal before the server existed
            server.stop()
        try:
            ready = server.wait_ready(args.models)
            if ready:
                log.info("serving models %s (%d instance%s each): %s", ", ".join(args.models),
                         args.instances, "s" * (args.instances != 1), endpoints.describe())
            code = server.wait()
        finally:
            server.kill()  # only if still running: an error on the way out
    if stopping and code == 0:
        log.info("stopped")
        return 0
    raise UserError(f"tritonserver exited with status {code}{'' if ready else ' before its models were ready'}; "
                    "its log above says why")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.models = list(dict.fromkeys(args.models))
    return write_only(args) if args.write_model_repository else serve(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("tools.serve", "runtime.pipeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    run_cli(main)
