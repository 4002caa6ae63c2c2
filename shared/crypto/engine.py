"""The block engine: the one loop that cuts a byte stream into blocks and seals or opens them.

``Encryptor``, ``Decryptor`` and ``RangeOpener`` are all a ``BlockStream``. Bytes arrive in
pieces of any size; whole units (a plaintext block to seal, or a sealed block to open) are
transformed straight from the caller's buffer into the output, and only a unit split across
two calls is copied into the one pending buffer. With ``hold_back`` the last complete unit
waits until one more byte arrives, because only then is it known not to be the final block
(which is sealed with the last-block flag); without it every unit is a full, non-final block.

One failure rule for all three: the first failure poisons the stream (its pending bytes are
dropped and the output buffer of that call is zeroed), and every later call raises again.
A finished stream refuses further use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from shared.crypto.cipher import BlockCipher
from shared.crypto.format import TAG_SIZE, Buffer
from shared.errors import BlobsealError, EncryptionError, IntegrityError

__all__ = ["BlockStream", "Opening", "Sealing", "Transform"]


class Transform(Protocol):
    """What one kind of stream does to a unit: seal a plaintext block, or open a sealed one."""

    unit_in: int
    unit_out: int

    def run(self, index: int, count: int, source: memoryview, target: memoryview) -> None:
        """Transform ``count`` full, non-final units starting at block ``index``."""

    def final(self, index: int, unit: bytearray) -> bytearray:
        """Transform the final unit (block ``index``, 0..unit_in bytes); returns its output."""


class Sealing:
    def __init__(self, cipher: BlockCipher, block_size: int) -> None:
        self._cipher, self._block = cipher, block_size
        self.unit_in, self.unit_out = block_size, block_size + TAG_SIZE

    def run(self, index: int, count: int, source: memoryview, target: memoryview) -> None:
        self._cipher.seal_run_into(index, count, self._block, source, target)

    def final(self, index: int, unit: bytearray) -> bytearray:
        out = bytearray(len(unit) + TAG_SIZE)
        self._cipher.seal_into(index, True, unit, out)
        return out


class Opening:
    def __init__(self, cipher: BlockCipher, block_size: int) -> None:
        self._cipher, self._block = cipher, block_size
        self.unit_in, self.unit_out = block_size + TAG_SIZE, block_size

    def run(self, index: int, count: int, source: memoryview, target: memoryview) -> None:
        self._cipher.open_run_into(index, count, self._block, source, target)

    def final(self, index: int, unit: bytearray) -> bytearray:
        # The final block holds 1..block_size bytes; an empty one only when it is the only block.
        if len(unit) < TAG_SIZE or (len(unit) == TAG_SIZE and index > 0):
            raise IntegrityError("authentication failed (truncated file)", operation="open_block",
                                 details={"block": index})
        out = bytearray(len(unit) - TAG_SIZE)
        self._cipher.open_into(index, True, unit, out)
        return out


class BlockStream:
    """The loop and the failure rule; subclasses add what is before the blocks or around them."""

    def __init__(self, transform: Transform | None, *, hold_back: bool, first_index: int = 0) -> None:
        self._transform = transform
        self._hold_back = hold_back
        self._index = first_index
        self._pending = bytearray()
        self._failure: Exception | None = None
        self._finished = False

    @property
    def _operation(self) -> str:
        return type(self).__name__.lower()

    @contextmanager
    def _step(self, out: Buffer | None = None) -> Iterator[None]:
        """Run one call under the failure rule; on failure zero ``out`` (nothing unverified stays)."""
        if self._failure is not None:
            kind = type(self._failure) if isinstance(self._failure, BlobsealError) else EncryptionError
            raise kind("stream failed earlier", operation=self._operation) from self._failure
        if self._finished:
            raise EncryptionError("stream already finalized", operation=self._operation)
        try:
            yield
        except Exception as exc:
            self._failure, self._pending = exc, bytearray()
            if out is not None:
                with memoryview(out).cast("B") as target:
                    target[:] = bytes(len(target))
            raise

    def _ready_units(self, input_size: int) -> int:
        """Whole units that can be transformed now (with hold-back: followed by one more byte)."""
        assert self._transform is not None
        available = len(self._pending) + input_size
        return (max(0, available - 1) if self._hold_back else available) // self._transform.unit_in

    def _feed(self, view: memoryview, target: memoryview) -> int:
        """Transform every ready unit of pending + ``view`` into ``target``; returns bytes written."""
        transform = self._transform
        assert transform is not None
        count = self._ready_units(len(view))
        written = taken = 0
        if count and self._pending:  # complete the unit split across calls, then go on in place
            taken = transform.unit_in - len(self._pending)
            self._pending += view[:taken]
            transform.run(self._index, 1, memoryview(self._pending), target[: transform.unit_out])
            self._pending.clear()
            self._index, written, count = self._index + 1, transform.unit_out, count - 1
        transform.run(self._index, count, view[taken:], target[written:])
        self._index += count
        self._pending += view[taken + count * transform.unit_in :]
        return written + count * transform.unit_out

    def _final(self) -> bytearray:
        """Transform what is pending as the final block."""
        assert self._transform is not None
        out = self._transform.final(self._index, self._pending)
        self._pending.clear()
        self._index += 1
        return out
