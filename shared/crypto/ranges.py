"""Random access: which blocks cover a plaintext byte range, and opening just those.

A range ``[offset, offset + length)`` of the plaintext maps to blocks
``offset // B .. (offset + length - 1) // B``. The file's final block is always fetched and
verified first, when the ``RangeOpener`` is built: a range response reveals the file size,
and a file truncated at a block boundary must be refused before any byte is released, even
by a range that ends early. The covering blocks before the final one are then streamed (one
contiguous span of the ciphertext); if the range reaches the final block, its already
verified plaintext comes out of ``finalize``, so no block is fetched twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.crypto.cipher import BlockCipher
from shared.crypto.engine import BlockStream, Opening
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
    final_block: int
    final_span: tuple[int, int]  # (offset, length) of the final block: fetched and verified first
    cipher_offset: int  # the sealed span to stream: blocks first..min(last, final - 1)
    cipher_length: int  # 0 when the range lies in the final block alone

    @property
    def covers_final(self) -> bool:
        return self.last_block == self.final_block


def plan_range(layout: Layout, offset: int, length: int) -> RangePlan:
    """The blocks covering plaintext ``[offset, offset+length)``; EncryptionError if out of bounds.

    ``length`` 0 is accepted only for the whole of an empty file.
    """
    size = layout.plaintext_size
    empty_file = (size, offset, length) == (0, 0, 0)
    if not empty_file and (offset < 0 or length < 1 or offset + length > size):
        raise EncryptionError("range outside the file", operation="plan_range",
                              details={"offset": offset, "length": length, "size": size})
    final = layout.block_count - 1
    first, last = offset // layout.block_size, max(offset, offset + length - 1) // layout.block_size
    start = layout.block_span(first)[0]
    end = layout.block_span(min(last, final - 1))[0] + layout.sealed_block_size if first < final else start
    return RangePlan(offset=offset, length=length, first_block=first, last_block=last, final_block=final,
                     final_span=layout.block_span(final), cipher_offset=start, cipher_length=end - start)


class RangeOpener(BlockStream):
    """Opens the sealed span of ``plan`` (fed in order, any chunking) into the plaintext range.

    Built with the file's final sealed block, which it verifies at once: there is no way to
    release a byte of a range before the final block has checked.
    """

    def __init__(self, cipher: BlockCipher, layout: Layout, plan: RangePlan, final_block: Buffer) -> None:
        super().__init__(Opening(cipher, layout.block_size), hold_back=False, first_index=plan.first_block)
        self._plan, self._block = plan, layout.block_size
        self._position = plan.first_block * layout.block_size  # plaintext offset of the next byte out
        try:
            self._final_plain = cipher.open(plan.final_block, True, final_block)
        except IntegrityError as exc:
            self._failure = exc
            raise

    def update(self, data: Buffer) -> bytearray:
        """Verified plaintext of the range, from the complete blocks fed so far."""
        view = memoryview(data).cast("B")
        out = bytearray(self._ready_units(len(view)) * self._block)
        with self._step(out):
            if self._index + self._ready_units(len(view)) > self._stream_end():
                raise IntegrityError("range data oversized", operation="open_range")
            del out[self._feed(view, memoryview(out)) :]
        return self._cut(out)

    def finalize(self) -> bytearray:
        """Refuse a short feed or extra bytes; the final block's part of the range, if any."""
        with self._step():
            if self._index != self._stream_end() or self._pending:
                raise IntegrityError("range data incomplete or oversized", operation="open_range")
            self._finished = True
        if not self._plan.covers_final:
            return bytearray()
        self._position = self._plan.final_block * self._block
        return self._cut(bytearray(self._final_plain))

    def _stream_end(self) -> int:
        """One past the last block streamed (the final block never is: it was verified first)."""
        return min(self._plan.last_block + 1, self._plan.final_block)

    def _cut(self, piece: bytearray) -> bytearray:
        """Trim a run of whole blocks (starting at ``_position``) to the range."""
        start, self._position = self._position, self._position + len(piece)
        low = max(0, self._plan.offset - start)
        high = max(0, min(len(piece), self._plan.offset + self._plan.length - start))
        del piece[high:]
        del piece[:low]
        return piece
