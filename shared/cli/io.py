"""File plumbing for the command line: key files, '-' for stdio, atomic outputs, progress."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from shared.crypto.format import KEY_SIZE

__all__ = ["CHUNK", "Progress", "UsageError", "atomic_output", "open_input", "read_key_file"]

CHUNK = 1024 * 1024


class UsageError(Exception):
    """Bad arguments or inputs the user can fix; reported as one line."""


def read_key_file(path: str) -> bytes:
    """The 32-byte key from a file holding it in base64 (trailing newline allowed)."""
    try:
        text = Path(path).read_bytes().strip()
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise UsageError(f"key file {path} is not base64") from None
    if len(key) != KEY_SIZE:
        raise UsageError(f"key file {path} must hold a base64-encoded 32-byte key")
    return key


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as handle:
        yield handle


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """Write to ``path`` through a temporary file renamed on success; no file is left on failure."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    try:
        temporary = target.parent / f".{target.name}.{os.urandom(6).hex()}.partial"  # as mkstemp: 0600, new
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def input_size(handle: BinaryIO) -> int | None:
    """The size of a seekable regular input, else None."""
    try:
        if not handle.seekable():
            return None
        return os.fstat(handle.fileno()).st_size
    except (OSError, ValueError):
        return None


class Progress:
    """A one-line progress meter on stderr, shown only on a terminal and for long runs."""

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._clock = clock
        self._start = self._last = clock()

    def advance(self, count: int) -> None:
        self.done += count
        now = self._clock()
        if self.enabled and now - self._start > 1.0 and now - self._last > 0.2:
            self._last = now
            share = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
            rate = self.done / max(now - self._start, 1e-9) / 1e6
            print(f"\r{self.label}:{share} {self.done / 1e6:,.0f} MB at {rate:,.0f} MB/s", end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled and self._last != self._start:
            print(file=sys.stderr)
