"""Random access: which blocks cover a plaintext byte range, and opening just those.

A range ``[offset, offset + length)`` of the plaintext maps to blocks
``offset // B .. (offset + length - 1) // B``; only their sealed bytes are fetched (one
contiguous span of the ciphertext). Because a range response reveals the file size, the
final block is verified too (fetched separately when the range does not reach it), so a
file truncated at a block boundary is refused even by a range that ends early.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.crypto.cipher import BlockCipher
from shared.crypto.format import Buffer, Layout
from shared.errors import EncryptionError, IntegrityError

__all__ = ["RangeOpener", "RangePlan", "plan_range"]


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

    def update(self, data: Buffer) -> bytes:
        """Verified plaintext of the range, from the complete blocks fed so far."""
        if not self._final_verified:
            raise EncryptionError("verify the final block first", operation="open_range")
        self._pending += data
        pieces = []
        consumed = 0
        with memoryview(self._pending) as pending:
            while self._index <= self._plan.last_block:
                _, length = self._layout.block_span(self._index)
                if len(pending) - consumed < length:
                    break
                pieces.append(self._open_next(pending[consumed : consumed + length]))
                consumed += length
        del self._pending[:consumed]
        return b"".join(pieces)

    def finalize(self) -> None:
        """Refuse a short feed or extra bytes."""
        if self._index <= self._plan.last_block or self._pending:
            self._failed = True
            raise IntegrityError("range data incomplete or oversized", operation="open_range")

    def _open_next(self, sealed: memoryview) -> bytes:
        index, block_size = self._index, self._layout.block_size
        plaintext = self._open_block(index, sealed)
        self._index += 1
        low = max(0, self._plan.offset - index * block_size)
        high = min(len(plaintext), self._plan.offset + self._plan.length - index * block_size)
        return plaintext[low:high]

    def _open_block(self, index: int, sealed: Buffer) -> bytes:
        if self._failed:
            raise IntegrityError("stream failed earlier", operation="open_range")
        try:
            return self._cipher.open(index, index == self._plan.final_block, sealed)
        except IntegrityError:
            self._failed = True
            raise
