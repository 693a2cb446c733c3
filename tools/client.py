"""``python -m tools.client``: send images to a running ``python -m tools.serve`` (model ``owlsam``) with
``tritonclient`` over HTTP or gRPC, and write what ``tools.infer`` writes (SOWLv2's layout and
``detections.json``).

    python -m tools.client --url http://127.0.0.1:8000 --input IMAGE|FOLDER --prompt P [P ...]
                           [--output DIR] [--grpc] [--concurrency N] [--threshold T] [--model NAME]
                           [--timeout S] [--no-merged] [--no-binary] [--no-overlay] [--overwrite]

Each image goes as its encoded file bytes (the server decodes it as ``tools.infer`` does); the client
decodes it again only for the overlays. With ``--concurrency N``, N requests are in flight at once
(the server batches them). A folder's images the server refuses are reported and skipped (exit
status 1), as ``tools.infer`` skips unreadable files.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import rle
from runtime.errors import OneLineArgumentParser, UserError, run_cli, whole_number
from tools.serve.interface import BOXES, IMAGE, IMAGE_SIZE, LABELS, MASKS_RLE, OWLSAM, PROMPTS, SCORES, THRESHOLD


class RequestError(Exception):
    """The server's error response to one request (its message is the server's one line)."""


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m tools.client",
                              description="Segment images with a running python -m tools.serve (Triton) server.")
    p.add_argument("--url", help="the server's HTTP address (default 127.0.0.1:8000) or, with --grpc, its gRPC "
                                 "address (default 127.0.0.1:8001); http://, https:// and grpc:// are accepted")
    p.add_argument("--input", required=True, metavar="IMAGE|FOLDER", help="an image file or a folder of images")
    p.add_argument("--prompt", required=True, nargs="+", metavar="P", help="text prompts, e.g. --prompt cat 'red car'")
    p.add_argument("--output", default="output", metavar="DIR", help="output folder (default output)")
    p.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    p.add_argument("--concurrency", type=whole_number(1), default=1, metavar="N", help="requests in flight (default 1)")
    p.add_argument("--threshold", type=_unit_float, metavar="T", help="score threshold (default: the server's artifact's)")
    p.add_argument("--model", default=OWLSAM.name, help=f"model name (default {OWLSAM.name})")
    p.add_argument("--timeout", type=whole_number(1), default=600, metavar="S", help="seconds per request (default 600)")
    p.add_argument("--no-merged", dest="merged", action="store_false", help="no binary/merged, overlay/merged")
    p.add_argument("--no-binary", dest="binary", action="store_false", help="no binary/ masks")
    p.add_argument("--no-overlay", dest="overlay", action="store_false", help="no overlay/ images")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder (default: refuse)")
    return p


class Connection:
    """One tritonclient client (not shared between threads: the HTTP client is not thread-safe)."""

    def __init__(self, url: str, grpc: bool, model: str, timeout_s: float) -> None:
        self.grpc, self.model, self.timeout_s = grpc, model, timeout_s
        if grpc:
            import tritonclient.grpc as module

            self.client = module.InferenceServerClient(url.removeprefix("grpc://"))
        else:
            import tritonclient.http as module

            ssl = url.startswith("https://")
            self.client = module.InferenceServerClient(url.removeprefix("https://").removeprefix("http://"), ssl=ssl,
                                                       connection_timeout=timeout_s, network_timeout=timeout_s)
        self.module = module

    def infer(self, data: bytes, prompts: Sequence[str], threshold: float | None,
              outputs: Sequence[str] = OWLSAM.output_names) -> dict[str, np.ndarray]:
        """The output arrays of one request (batch dimension removed), or ``RequestError``."""
        from tritonclient.utils import InferenceServerException

        arrays = {IMAGE.name: np.array([[data]], dtype=object),
                  PROMPTS.name: np.array([[p.encode() for p in prompts]], dtype=object)}
        if threshold is not None:
            arrays[THRESHOLD.name] = np.array([[threshold]], THRESHOLD.numpy_dtype)
        datatypes = {t.name: t.datatype for t in OWLSAM.inputs}
        inputs = []
        for name, array in arrays.items():
            inputs.append(self.module.InferInput(name, list(array.shape), datatypes[name]))
            inputs[-1].set_data_from_numpy(array)
        requested = [self.module.InferRequestedOutput(n) for n in outputs]
        try:
            if self.grpc:
                response = self.client.infer(self.model, inputs, outputs=requested, client_timeout=self.timeout_s)
            else:
                response = self.client.infer(self.model, inputs, outputs=requested)
        except InferenceServerException as e:
            raise RequestError(e.message() or str(e)) from None
        return {n: response.as_numpy(n)[0] for n in outputs}

    def check_model(self, url: str) -> None:
        """Live server, ready model, and one that returns masks; else one line saying which is not."""
        try:
            live = self.client.is_server_live()
        except Exception as e:  # refused, unresolvable, TLS...: every transport raises its own
            raise UserError(f"cannot reach a Triton server at {url} ({' '.join(str(e).split())[:160]}); start one with "
                            "python -m tools.serve or check --url (and --grpc)") from None
        if not live:
            raise UserError(f"the server at {url} is not live; check its log")
        if not self.client.is_model_ready(self.model):
            raise UserError(f"model {self.model!r} is not ready on {url}; the server has {self._model_names()}")
        meta = self.client.get_model_metadata(self.model)
        names = [o.name for o in meta.outputs] if self.grpc else [o["name"] for o in meta["outputs"]]
        if MASKS_RLE.name not in names:
            raise UserError(f"model {self.model!r} returns no {MASKS_RLE.name}; tools.client writes masks: use "
                            f"--model {OWLSAM.name}")

    def _model_names(self) -> str:
        index = self.client.get_model_repository_index()
        names = [m.name for m in index.models] if self.grpc else [m["name"] for m in index]
        return ", ".join(names) or "no models"

    def close(self) -> None:
        self.client.close()


def to_result(outputs: dict[str, np.ndarray], prompts: Sequence[str]):
    """A ``runtime.Result`` from one response: masks decoded from their RLE."""
    from runtime.pipeline import Result

    h, w = (int(v) for v in outputs[IMAGE_SIZE.name])
    masks = [rle.decode(json.loads(bytes(s))) for s in outputs[MASKS_RLE.name]]
    masks_array = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
    return Result(outputs[BOXES.name], outputs[SCORES.name], outputs[LABELS.name], masks_array, tuple(prompts))


class Outputs:
    """What the client writes, through ``tools.infer``'s writer (``tools.outputs.OutputWriter``), in this one place."""

    def __init__(self, root: Path, binary: bool, overlay: bool, merged: bool, overwrite: bool, files: list[Path],
                 is_folder: bool) -> None:
        from tools.outputs import OutputOptions, OutputWriter, folder_names

        options = OutputOptions(binary=binary, overlay=overlay, merged=merged)
        self.writer = OutputWriter(root, options, overwrite=overwrite)
        self.folders = folder_names(files) if is_folder else [""] * len(files)

    def image(self, i: int, path: Path, image: np.ndarray, result: Any) -> None:
        """Queue one image's files (in file order: image ids and colours follow it)."""
        self.writer.add(image, result, name=path.name, folder=self.folders[i])

    def finish(self):
        self.writer.close()
        return self.writer

    def abort(self) -> None:
        self.writer.abort()


def main(argv: list[str] | None = None) -> int:
    from runtime.images import load_image
    from runtime.pipeline import check_prompts
    from runtime.video_io import is_video_file
    from tools.infer import list_images

    args = build_parser().parse_args(argv)
    prompts = list(check_prompts(args.prompt))
    source = Path(args.input)
    if not source.exists():
        raise UserError(f"input {source} does not exist; pass an image or a folder of images")
    if is_video_file(args.input):
        raise UserError(f"{args.input} is a video; tools.client sends images (use python -m tools.infer for videos)")
    files = list_images(source) if source.is_dir() else [source]
    url = args.url or ("127.0.0.1:8001" if args.grpc else "127.0.0.1:8000")
    try:
        import tritonclient  # noqa: F401
    except ImportError as e:
        raise UserError(f"tools.client needs tritonclient ({e}); pip install 'owlsam-trt[serve]'") from None

    connections: list[Connection] = []
    lock = threading.Lock()
    local = threading.local()

    def connection() -> Connection:
        if not hasattr(local, "conn"):
            local.conn = Connection(url, args.grpc, args.model, args.timeout)
            with lock:
                connections.append(local.conn)
        return local.conn

    def one(i: int, path: Path):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise RequestError(f"cannot read it ({e.strerror or e})") from None
        outputs = connection().infer(data, prompts, args.threshold)
        image = load_image(path)
        result = to_result(outputs, prompts)
        if tuple(outputs[IMAGE_SIZE.name]) != image.shape[:2]:
            raise RequestError(f"the server saw a {tuple(outputs[IMAGE_SIZE.name])} image, this client {image.shape[:2]}")
        return image, result

    writer = None
    try:
        connection().check_model(url)
        writer = Outputs(Path(args.output), args.binary, args.overlay, args.merged, args.overwrite, files,
                         source.is_dir())
        t0 = time.perf_counter()
        skipped = _run_all(files, one, args.concurrency, lambda i, path, got: writer.image(i, path, *got))
        if len(files) == 1 and skipped:
            raise UserError(f"{files[0]}: {skipped[0][1]}")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        for c in connections:
            c.close()
    out = writer.finish()
    rows = out.rows
    done = len(files) - len(skipped)
    print(f"wrote {out.root}: {done} image{'s' * (done != 1)}, {len(rows)} detection{'s' * (len(rows) != 1)}"
          f"{f', {len(skipped)} skipped' if skipped else ''} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


def _run_all(files: list[Path], one, concurrency: int, take) -> list[tuple[Path, str]]:
    """``one(i, path)`` for every file on ``concurrency`` threads, at most twice that many queued;
    ``take(i, path, its value)`` on this thread in file order; a ``RequestError`` (or ``UserError``
    of a local decode) skips its file. Returns the skipped files with the reason."""
    from tqdm import tqdm

    skipped: list[tuple[Path, str]] = []
    bar = tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
               disable=len(files) == 1)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="request") as pool:
        todo = iter(enumerate(files))
        running: deque[tuple[int, Path, Future]] = deque()
        try:
            while True:
                while len(running) < 2 * concurrency and (nxt := next(todo, None)) is not None:
                    running.append((nxt[0], nxt[1], pool.submit(one, *nxt)))
                if not running:
                    break
                i, path, future = running.popleft()
                try:
                    got = future.result()
                except (RequestError, UserError) as e:
                    message = str(e).removeprefix(f"{path}: ")
                    skipped.append((path, message))
                    if len(files) > 1:
                        bar.write(f"warning: skipped {path.name}: {message}", file=sys.stderr)
                else:
                    take(i, path, got)
                bar.update()
        finally:
            for _, _, f in running:
                f.cancel()
            bar.close()
    return skipped


if __name__ == "__main__":
    run_cli(main)
