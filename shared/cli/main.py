"""The argument parser and the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from shared.cli import format_commands, ops_commands
from shared.cli.io import UsageError
from shared.errors import BlobsealError

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"blobseal: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blobseal", description="blobseal: per-file encryption for Azure Blob Storage")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    format_commands.register(commands)
    ops_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; ``environ`` replaces the process environment (tests, embedding)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.environ = environ
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as cat does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (BlobsealError, UsageError, OSError) as exc:
        print(f"blobseal: error: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("blobseal: interrupted", file=sys.stderr)
        return 130


def describe(exc: BaseException) -> str:
    """One line, safe to print: our own messages (without the internal operation names), or the OS
    error without its arguments' contents."""
    if isinstance(exc, OSError):
        target = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{target}"
    text = exc.message if isinstance(exc, BlobsealError) else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
