"""Reading a file back: check what is stored, then stream only verified plaintext of a span.

Everything that can fail cheaply is checked before the body starts: the header of the
protected blob (file id, key reference, key commitment), the ciphertext size against the
recorded plaintext size, and the file's final block. The body then fetches only the blocks
covering the span (pinned to the blob's ETag) and releases each block's plaintext after its
tag verifies. Nothing here knows HTTP: a span is a start and a length.

The file's row records the blob's ETag and block size, so the layout is known without asking
storage: a small file (up to 1 MiB stored) is one request; a larger one fetches its header, its
final block and the body at once, and a blob read recently (same ETag) only its body, since that
request is pinned to the ETag the remembered header and final block were verified under. The
final block is verified again for every request before the first byte goes out. (Rows from
before the layout was recorded, and a blob written again since, ask storage first.)
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from shared.blobs import Container, Streamed
from shared.crypto.cipher import open_header
from shared.crypto.format import COMMITMENT_SIZE, FIXED_HEADER_SIZE, MAX_HEADER_SIZE, Header, Layout
from shared.crypto.ranges import RangeOpener, RangePlan, plan_range
from shared.db.files import FileRecord
from shared.errors import BlobChangedError, IntegrityError
from shared.metrics import BYTES_PROCESSED, ERRORS, INTEGRITY_FAILURES

__all__ = ["Reader", "Span", "Tails", "integrity_failed"]

log = logging.getLogger(__name__)

ONE_REQUEST = 1024 * 1024  # a blob up to this size is read whole: one request instead of two or three
Body = AsyncGenerator[bytes, None] | Streamed  # a download's ciphertext source: iterated, then closed
INLINE_OPEN = 512 * 1024  # pieces up to this size are opened on the event loop, larger ones in a thread
TAILS_BUDGET = 8 * 1024 * 1024  # remembered headers and final blocks (a 64 KiB-block file's: ~64 KiB each)


@dataclass(frozen=True)
class Span:
    """Plaintext bytes ``[start, start + length)`` of a file."""

    start: int
    length: int

    @property
    def end(self) -> int:
        """The last byte, inclusive."""
        return self.start + self.length - 1


class Reader:
    """Opens files of the protected container; remembers the verified header and final block of
    recently read blobs by ETag (``Tails``), so a repeated read of a large blob asks storage only
    for its body."""

    def __init__(self, protected: Container, tails: Tails | None = None) -> None:
        self._protected, self._tails = protected, tails or Tails()

    async def open(self, record: FileRecord, key: bytes, span: Span | None) -> AsyncIterator[memoryview]:
        """Check the stored file, then return the verified plaintext stream of ``span`` (None: all of it)."""
        try:
            return await self._open_checked(record, key, span)
        except IntegrityError as exc:
            integrity_failed("download", record.file_id, exc)
            raise

    async def _open_checked(self, record: FileRecord, key: bytes, span: Span | None) -> AsyncIterator[memoryview]:
        facts = _recorded_facts(record)
        if facts is not None:
            try:
                return await self._open_with(record, key, span, *facts)
            except BlobChangedError:  # written again since it was recorded (a duplicate delivery): ask storage
                log.info("file %s: the protected blob changed since it was recorded; reading what is there",
                         record.file_id)
        return await self._open_with(record, key, span, *await _asked_facts(self._protected, record))

    async def _open_with(self, record: FileRecord, key: bytes, span: Span | None, layout: Layout,
                         etag: str) -> AsyncIterator[memoryview]:
        """Get the header and the final block, check them, and return the stream of the covering blocks."""
        assert record.protected_blob is not None and record.size is not None
        if layout.plaintext_size != record.size:
            raise IntegrityError("stored blob size does not match the file", operation="download")
        span = span or Span(0, record.size)
        plan = plan_range(layout, span.start, span.length)
        head, final, body = await self._fetch(record.protected_blob, etag, layout, plan)
        try:
            header = Header.parse(head)
            if header.file_id != record.file_id or header.key_reference != record.key_reference:
                raise IntegrityError("stored blob belongs to another file or key", operation="download")
            if (header.size, header.block_size) != (layout.header_size, layout.block_size):
                raise IntegrityError("stored blob's header does not match the file", operation="download")
            opener = RangeOpener(open_header(key, header), layout, plan, final)  # verifies the final block
        except BaseException:
            await body.aclose()
            raise
        if layout.ciphertext_size > ONE_REQUEST:  # a small blob is read whole every time: nothing to remember
            self._tails.keep(record.protected_blob, etag, head, final)
        return _stream(body, opener, record.file_id)

    async def _fetch(self, blob: str, etag: str, layout: Layout, plan: RangePlan) -> tuple[bytes, bytes, Body]:
        """(header, final block, body source), in as few requests as the blob allows, all at once."""
        protected, final_offset, final_length = self._protected, *plan.final_span
        if layout.ciphertext_size <= ONE_REQUEST:
            whole = await protected.read_exact(blob, 0, layout.ciphertext_size, etag=etag)
            return whole[: layout.header_size], whole[final_offset:], _slice(whole, plan.cipher_offset,
                                                                               plan.cipher_length)
        body = self._body(blob, plan, etag)
        if (tail := self._tails.get(blob, etag)) is not None and plan.cipher_length:
            # the body's request is pinned to the same ETag: the remembered header and final block are its own
            return tail[0], tail[1], await body  # a blob written since fails here, and storage is asked again
        # all three at once; the body's bytes are released only after the final block verifies
        head, final, source = await asyncio.gather(
            protected.read_exact(blob, 0, layout.header_size, etag=etag),
            protected.read_exact(blob, final_offset, final_length, etag=etag), body, return_exceptions=True)
        if not isinstance(source, BaseException) and isinstance(head, bytes) and isinstance(final, bytes):
            return head, final, source
        if not isinstance(source, BaseException):
            await source.aclose()
        raise next(r for r in (head, final, source) if isinstance(r, BaseException))

    async def _body(self, blob: str, plan: RangePlan, etag: str) -> Body:
        if not plan.cipher_length:
            return _slice(b"", 0, 0)
        return await self._protected.open_stream(blob, plan.cipher_offset, plan.cipher_length, etag=etag)


class Tails:
    """Verified headers and final blocks of recently read blobs, by (blob, ETag), LRU within a byte budget."""

    def __init__(self, budget: int = TAILS_BUDGET) -> None:
        self._budget, self._used = budget, 0
        self._entries: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = OrderedDict()

    def get(self, blob: str, etag: str) -> tuple[bytes, bytes] | None:
        entry = self._entries.get((blob, etag))
        if entry is not None:
            self._entries.move_to_end((blob, etag))
        return entry

    def keep(self, blob: str, etag: str, head: bytes, final: bytes) -> None:
        size = len(head) + len(final)
        if (blob, etag) in self._entries or size > self._budget // 16:
            return
        self._entries[(blob, etag)] = (bytes(head), bytes(final))
        self._used += size
        while self._used > self._budget:
            _, (old_head, old_final) = self._entries.popitem(last=False)
            self._used -= len(old_head) + len(old_final)


def _recorded_facts(record: FileRecord) -> tuple[Layout, str] | None:
    """The layout and ETag of the protected blob from the file's row alone (no storage request)."""
    if not (record.protected_etag and record.block_size and record.key_reference is not None):
        return None  # a row from before these were recorded
    assert record.size is not None
    header_size = FIXED_HEADER_SIZE + len(record.key_reference) + COMMITMENT_SIZE
    return Layout.for_plaintext(header_size, record.block_size, record.size), record.protected_etag


async def _asked_facts(protected: Container, record: FileRecord) -> tuple[Layout, str]:
    assert record.protected_blob is not None
    info = await protected.info(record.protected_blob)
    prefix = await protected.read_exact(record.protected_blob, 0, min(MAX_HEADER_SIZE, info.size), etag=info.etag)
    header = Header.parse(prefix)
    return Layout(header.size, header.block_size, info.size), info.etag


async def _slice(data: bytes, offset: int, length: int) -> AsyncGenerator[bytes, None]:
    if length:
        yield data[offset : offset + length]


async def _stream(source: Body, opener: RangeOpener, file_id: uuid.UUID) -> AsyncIterator[memoryview]:
    try:
        async for chunk in source:
            # a streamed piece (256 KiB at most) opens in about 0.1 ms: on the loop, cheaper than a thread hop
            plaintext = opener.update(chunk) if len(chunk) <= INLINE_OPEN else await asyncio.to_thread(
                opener.update, chunk)
            if plaintext:
                BYTES_PROCESSED.labels("decrypt").inc(len(plaintext))
                yield memoryview(plaintext)  # a fresh buffer per piece: no copy, never reused
        if last := opener.finalize():
            BYTES_PROCESSED.labels("decrypt").inc(len(last))
            yield memoryview(last)
    except IntegrityError as exc:
        integrity_failed("download", file_id, exc)
        raise
    except Exception as exc:
        ERRORS.labels("download", type(exc).__name__).inc()
        log.error("download of file %s aborted: %s", file_id, type(exc).__name__)
        raise
    finally:
        await source.aclose()  # requests still in flight (a client that went away) are cancelled


def integrity_failed(operation: str, file_id: uuid.UUID, exc: IntegrityError) -> None:
    """Count and log a stored file that failed authentication: what an operator alerts on."""
    INTEGRITY_FAILURES.labels(operation).inc()
    log.error("integrity check failed for file %s (block %s): %s; nothing unverified was served",
              file_id, exc.details.get("block", "header"), exc.message,
              extra={"blobseal_error": exc.to_dict(), "file_id": str(file_id)})
