"""Random access: which blocks cover a plaintext byte range, and opening just those.

A range ``[offset, offset + length)`` of the plaintext maps to blocks
``offset // B .. (offset + length - 1) // B``; only their sealed bytes are fetched (one
contiguous span of the ciphertext). Because a range response reveals the file size, the
final block is verified too (fetched separately when the range does not reach it), so a
file truncated at a block boundary is refused even by a range that ends early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.crypto.cipher import BlockCipher
from shared.crypto.format import TAG_SIZE, Buffer, Layout
from shared.errors import EncryptionError, IntegrityError

__all__ = ["RangeOpener", "RangePlan", "plan_range"]

T = TypeVar("T")


@dataclass(frozen=True)
class RangePlan:
    """What to fetch for one plaintext range, and how to trim what it opens."""

    offset: int
    length: int
    first_block: int
    last_block: int
    cipher_offset: int
    cipher_length: int
    final_block: int
    final_span: tuple[int, int] | None  # (offset, length) of the final block to verify, if not covered


def plan_range(layout: Layout, offset: int, length: int) -> RangePlan:
    """The blocks covering plaintext ``[offset, offset+length)``; EncryptionError if out of bounds."""
    size = layout.plaintext_size
    if offset < 0 or length < 1 or offset + length > size:
        raise EncryptionError("range outside the file", operation="plan_range",
                              details={"offset": offset, "length": length, "size": size})
    first, last = offset // layout.block_size, (offset + length - 1) // layout.block_size
    start, _ = layout.block_span(first)
    end_offset, end_length = layout.block_span(last)
    final = layout.block_count - 1
    return RangePlan(
        offset=offset,
        length=length,
        first_block=first,
        last_block=last,
        cipher_offset=start,
        cipher_length=end_offset + end_length - start,
        final_block=final,
        final_span=None if last == final else layout.block_span(final),
    )


class RangeOpener:
    """Opens the sealed bytes of ``plan`` (fed in order, any chunking) into the plaintext range."""

    def __init__(self, cipher: BlockCipher, layout: Layout, plan: RangePlan) -> None:
        self._cipher, self._layout, self._plan = cipher, layout, plan
        self._index = plan.first_block
        self._pending = bytearray()
        self._final_verified = plan.final_span is None
        self._failed = False

    def verify_final(self, sealed: Buffer) -> None:
        """Check the file's final block (needed first when the range does not cover it)."""
        self._open_block(self._plan.final_block, sealed)
        self._final_verified = True

    def update(self, data: Buffer) -> bytearray:
        """Verified plaintext of the range, from the complete blocks fed so far.

        Whole blocks are opened straight from ``data`` into the output; only a block split
        across two calls is buffered.
        """
        if not self._final_verified:
            raise EncryptionError("verify the final block first", operation="open_range")
        view = memoryview(data).cast("B")
        out = bytearray(len(self._pending) + len(view))
        written = 0
        if self._pending:
            taken = min(len(view), self._sealed_length() - len(self._pending))
            self._pending += view[:taken]
            view = view[taken:]
            if len(self._pending) == self._sealed_length():
                written = self._open_next(self._pending, out, written)
                self._pending.clear()
        while self._index <= self._plan.last_block and len(view) >= self._sealed_length():
            length = self._sealed_length()
            written = self._open_next(view[:length], out, written)
            view = view[length:]
        self._pending += view
        del out[written:]
        return out

    def finalize(self) -> None:
        """Refuse a short feed or extra bytes."""
        if self._index <= self._plan.last_block or self._pending:
            self._failed = True
            raise IntegrityError("range data incomplete or oversized", operation="open_range")

    def _sealed_length(self) -> int:
        return self._layout.block_span(self._index)[1]

    def _open_next(self, sealed: Buffer, out: bytearray, written: int) -> int:
        """Open the next block into ``out`` at ``written``, trimmed to the range; returns the new end."""
        index, block_size = self._index, self._layout.block_size
        plain_length = len(sealed) - TAG_SIZE
        low = max(0, self._plan.offset - index * block_size)
        high = min(plain_length, self._plan.offset + self._plan.length - index * block_size)
        if (low, high) == (0, plain_length):
            with memoryview(out) as target:
                self._guarded(lambda: self._cipher.open_into(index, index == self._plan.final_block, sealed,
                                                              target[written : written + plain_length]))
        else:
            out[written : written + high - low] = self._open_block(index, sealed)[low:high]
        self._index += 1
        return written + high - low

    def _guarded(self, step: Callable[[], T]) -> T:
        """Run one opening step; any failure leaves the opener failed for good."""
        if self._failed:
            raise IntegrityError("stream failed earlier", operation="open_range")
        try:
            return step()
        except IntegrityError:
            self._failed = True
            raise

    def _open_block(self, index: int, sealed: Buffer) -> bytes:
        return self._guarded(lambda: self._cipher.open(index, index == self._plan.final_block, sealed))
