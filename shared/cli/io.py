"""File plumbing for the command line: key files, '-' for stdio, atomic outputs, progress."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from shared.crypto.format import KEY_SIZE

__all__ = ["CHUNK", "Progress", "UsageError", "atomic_output", "open_input", "read_key_file"]

CHUNK = 1024 * 1024


class UsageError(Exception):
    """Bad arguments or inputs the user can fix; reported as one line."""


MAX_KEY_FILE = 1024  # a base64 key is 44 characters; anything much larger is not a key file


def read_key_file(path: str) -> bytes:
    """The 32-byte key from a regular file holding it in base64 (trailing newline allowed).

    Devices, FIFOs and large files are refused before reading (``/dev/zero`` never ends).
    """
    try:
        status = os.stat(path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    if not stat.S_ISREG(status.st_mode):
        raise UsageError(f"key file {path} is not a regular file")
    if status.st_size > MAX_KEY_FILE:
        raise UsageError(f"key file {path} is {status.st_size} bytes: a key file holds one base64 key")
    try:
        text = Path(path).read_bytes()[:MAX_KEY_FILE].strip()
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise UsageError(f"key file {path} is not base64") from None
    if len(key) != KEY_SIZE:
        raise UsageError(f"key file {path} must hold a base64-encoded 32-byte key")
    return key


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """``-`` for stdin, else a regular file (a FIFO or a device given by name is refused)."""
    if path == "-":
        yield sys.stdin.buffer
        return
    if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: opening a FIFO waits for a writer
        raise UsageError(f"{path} is not a regular file (use - to read a pipe from stdin)")
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
    """A progress bar on stderr (tqdm), only on a terminal; it ends at exactly 100%.

    ``tqdm`` is imported only when a bar is shown: the format commands load nothing else
    when their output is not a terminal.
    """

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=True)

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            if self.total is not None and self.done < self.total:  # e.g. a header or tag counted apart
                self._bar.update(self.total - self.done)
            self._bar.close()
