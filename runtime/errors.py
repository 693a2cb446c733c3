"""One error type for everything a user can get wrong.

A ``UserError`` carries a one-line message that names the problem and the fix; command-line entry
points print it and exit with status 2, without a traceback. A ``DeviceFault`` (the GPU failed
mid-run) stops a run with status 3. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class UserError(Exception):
    """Bad input or an unusable environment: the message says what is wrong and how to fix it."""


class ArtifactError(UserError):
    """An engines directory that is missing, incomplete, tampered with or built elsewhere."""


class DeviceFault(Exception):
    """The GPU failed while running (a CUDA or TensorRT call after loading). Not the input's fault,
    and the CUDA context may be unusable: a run stops here instead of skipping to the next input."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line of at most 160 characters (its type name when empty),
    to quote inside a ``UserError``."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main`` and turn a UserError into one line on stderr and exit status 2 (a DeviceFault:
    one line and status 3; its traceback would point where the host noticed, not where it failed)."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except DeviceFault as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors are one line with the fix, like every other error."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def whole_number(minimum: int = 1) -> Callable[[str], int]:
    """An ``argparse`` type: a whole number of at least ``minimum``, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse
