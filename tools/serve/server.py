"""Run the ``tritonserver`` binary bundled in the nvidia-pytriton wheel on a model repository.

The Python backend is laid out for this interpreter (the wheel's stub for its version), and the
server's environment makes the stub load this interpreter's own ``libpython`` (its ``LIBDIR`` first on
``LD_LIBRARY_PATH``: otherwise the loader may find the system's ``libpython3.X.so.1.0`` of another patch
release, and the model fails to start), this environment's packages (its ``bin`` first on ``PATH``) and
this checkout of the project (``PYTHONPATH``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import runtime
from runtime.errors import UserError

log = logging.getLogger("tools.serve")

SERVE_EXTRA = "pip install 'owlsam-trt[serve]'"


@dataclass(frozen=True)
class Endpoints:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def _local(self) -> str:  # where this machine reaches the server
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self._local}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._local}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._local}:{self.metrics_port}/metrics"

    def describe(self) -> str:
        return f"HTTP {self.http_url}, gRPC {self.grpc_url}, metrics {self.metrics_url}"


@dataclass(frozen=True)
class BundledTriton:
    binary: Path
    libs: Path  # the wheel's shared libraries (libtritonserver, ...)
    python_backend: Path  # libtriton_python.so, triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this interpreter's version


def bundled_triton() -> BundledTriton:
    """The server inside the nvidia-pytriton wheel, or a ``UserError`` saying how to install it."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
    except ImportError as e:
        raise UserError(f"serving needs nvidia-pytriton ({e}); {SERVE_EXTRA}") from None
    root = get_root_module_path() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = BundledTriton(root / "bin" / "tritonserver", Path(get_libs_path()), root / "backends" / "python",
                          Path(get_stub_path(version)))
    for path in (found.binary, found.libs, found.python_backend, found.stub):
        if not path.exists():
            raise UserError(f"{path} is missing from the nvidia-pytriton install (Python {version}); "
                            f"reinstall it: {SERVE_EXTRA}")
    return found


def python_backend_dir(triton: BundledTriton, root: Path) -> Path:
    """A backend directory (for ``--backend-directory``) whose ``python`` backend has this interpreter's stub."""
    python = root / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (*triton.python_backend.glob("*.so"), *triton.python_backend.glob("*.py"), triton.stub):
        (python / src.name).symlink_to(src)
    return root


def _libpython_dir() -> str | None:
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    log.warning("this Python has no shared %s in %s: the Python backend's stub will load whichever libpython "
                "the system has, and fails if its version differs (use a Python built with --enable-shared)",
                soname or "libpython", libdir)
    return None


def server_environment(triton: BundledTriton) -> dict[str, str]:
    env = dict(os.environ)
    libs = [p for p in (_libpython_dir(), str(triton.libs), env.get("LD_LIBRARY_PATH")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    project = str(Path(runtime.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    return env


def check_ports_free(endpoints: Endpoints) -> None:
    """One line naming the port when one of the three is taken (rather than the server's own failure)."""
    ports = {"--http-port": endpoints.http_port, "--grpc-port": endpoints.grpc_port,
             "--metrics-port": endpoints.metrics_port}
    if len(set(ports.values())) < 3:
        raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in endpoints.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((endpoints.host, port))
            except OSError as e:
                why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
                raise UserError(f"port {port} on {endpoints.host} {why}; choose another with {flag}") from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now (for tests and benchmarks: a later bind can still race)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_ready(process: subprocess.Popen, endpoints: Endpoints, models: Sequence[str],
               timeout_s: float | None = None) -> bool:
    """Until every model of the server ``process`` answers ready over HTTP (True: Triton is ready before
    its models are), or ``process`` has exited (False); a ``UserError`` after ``timeout_s``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(models)
    while pending:
        if process.poll() is not None:
            return False
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"the models {', '.join(pending)} were not ready after {timeout_s:.0f} s")
        try:
            with urllib.request.urlopen(f"{endpoints.http_url}/v2/models/{pending[0]}/ready", timeout=2) as r:
                if r.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return True


def _die_with_parent() -> None:  # runs in the child before exec
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a supervisor killed outright takes the server along


class TritonServer:
    """One ``tritonserver`` process on ``repository``; :meth:`stop` (SIGTERM) lets it finish the
    requests it has (up to ``exit_timeout_s``) before it exits."""

    def __init__(self, repository: Path, endpoints: Endpoints, workdir: Path, exit_timeout_s: int = 30,
                 extra_args: Sequence[str] = ()) -> None:
        self.triton = bundled_triton()
        self.repository, self.endpoints, self.workdir = Path(repository), endpoints, Path(workdir)
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        e = self.endpoints
        backends = python_backend_dir(self.triton, self.workdir / "backends")
        shm_prefix = f"owlsam{os.getpid()}_{secrets.token_hex(4)}_"  # servers on one machine must not share regions
        return [str(self.triton.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
                f"--http-address={e.host}", f"--http-port={e.http_port}",
                f"--grpc-address={e.host}", f"--grpc-port={e.grpc_port}",
                f"--metrics-address={e.host}", f"--metrics-port={e.metrics_port}",
                "--allow-gpu-metrics=false", f"--exit-timeout-secs={self.exit_timeout_s}", *self.extra_args]

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), env=server_environment(self.triton), stdin=subprocess.DEVNULL,
                                        stdout=sys.stderr, start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, models: Sequence[str], timeout_s: float | None = None) -> bool:
        """Until every model answers ready (True), or the server has exited (False)."""
        assert self.process is not None
        return wait_ready(self.process, self.endpoints, models, timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float | None = None) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
