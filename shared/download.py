"""Reading a file back: check what is stored, then stream only verified plaintext of a span.

Everything that can fail cheaply is checked before the body starts: the header of the
protected blob (file id, key reference, key commitment), the ciphertext size against the
recorded plaintext size, and the file's final block. The body then fetches only the blocks
covering the span (pinned to the blob's ETag) and releases each block's plaintext after its
tag verifies. Nothing here knows HTTP: a span is a start and a length.

The file's row records the blob's ETag and block size, so the layout is known without asking
storage: a small file is one request, a larger one fetches its header and final block at once,
then the body. (Rows from before that, and a blob written again since, ask storage first.)
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.blobs import Container
from shared.crypto.cipher import open_header
from shared.crypto.format import COMMITMENT_SIZE, FIXED_HEADER_SIZE, MAX_HEADER_SIZE, Header, Layout
from shared.crypto.ranges import RangeOpener, plan_range
from shared.db.files import FileRecord
from shared.errors import BlobChangedError, IntegrityError
from shared.metrics import BYTES_PROCESSED, ERRORS, INTEGRITY_FAILURES

__all__ = ["Span", "integrity_failed", "open_span"]

log = logging.getLogger(__name__)

ONE_REQUEST = 1024 * 1024  # a blob up to this size is read whole: one request instead of two or three


@dataclass(frozen=True)
class Span:
    """Plaintext bytes ``[start, start + length)`` of a file."""

    start: int
    length: int

    @property
    def end(self) -> int:
        """The last byte, inclusive."""
        return self.start + self.length - 1


async def open_span(protected: Container, record: FileRecord, key: bytes,
                    span: Span | None) -> AsyncIterator[memoryview]:
    """Check the stored file, then return the verified plaintext stream of ``span`` (None: all of it)."""
    try:
        return await _open_checked(protected, record, key, span)
    except IntegrityError as exc:
        integrity_failed("download", record.file_id, exc)
        raise


async def _open_checked(protected: Container, record: FileRecord, key: bytes,
                        span: Span | None) -> AsyncIterator[memoryview]:
    facts = _recorded_facts(record)
    if facts is not None:
        try:
            return await _open_with(protected, record, key, span, *facts)
        except BlobChangedError:  # written again since it was recorded (a duplicate delivery): ask storage
            log.info("file %s: the protected blob changed since it was recorded; reading what is there",
                     record.file_id)
    return await _open_with(protected, record, key, span, *await _asked_facts(protected, record))


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


async def _open_with(protected: Container, record: FileRecord, key: bytes, span: Span | None, layout: Layout,
                     etag: str) -> AsyncIterator[memoryview]:
    """Fetch the header and the final block (in one request for a small file, else two at once),
    check them, and return the stream of the covering blocks."""
    assert record.protected_blob is not None and record.size is not None
    if layout.plaintext_size != record.size:
        raise IntegrityError("stored blob size does not match the file", operation="download")
    span = span or Span(0, record.size)
    plan = plan_range(layout, span.start, span.length)
    blob, final_offset, final_length = record.protected_blob, *plan.final_span
    if layout.ciphertext_size <= ONE_REQUEST:
        whole = await protected.read_exact(blob, 0, layout.ciphertext_size, etag=etag)
        head, final = whole[: layout.header_size], whole[final_offset:]
        body = _slice(whole, plan.cipher_offset, plan.cipher_length)
    else:
        head, final = await asyncio.gather(protected.read_exact(blob, 0, layout.header_size, etag=etag),
                                           protected.read_exact(blob, final_offset, final_length, etag=etag))
        body = protected.read(blob, offset=plan.cipher_offset, length=plan.cipher_length,
                              etag=etag) if plan.cipher_length else _nothing()
    header = Header.parse(head)
    if header.file_id != record.file_id or header.key_reference != record.key_reference:
        raise IntegrityError("stored blob belongs to another file or key", operation="download")
    if (header.size, header.block_size) != (layout.header_size, layout.block_size):
        raise IntegrityError("stored blob's header does not match the file", operation="download")
    opener = RangeOpener(open_header(key, header), layout, plan, final)
    return _stream(body, opener, record.file_id)


async def _slice(data: bytes, offset: int, length: int) -> AsyncIterator[bytes]:
    if length:
        yield data[offset : offset + length]


async def _nothing() -> AsyncIterator[bytes]:
    nothing: tuple[bytes, ...] = ()
    for piece in nothing:
        yield piece


async def _stream(source: AsyncIterator[bytes], opener: RangeOpener,
                  file_id: uuid.UUID) -> AsyncIterator[memoryview]:
    try:
        async for chunk in source:
            # AES releases the GIL: opening in a thread lets the prefetch keep the network busy
            plaintext = await asyncio.to_thread(opener.update, chunk)
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


def integrity_failed(operation: str, file_id: uuid.UUID, exc: IntegrityError) -> None:
    """Count and log a stored file that failed authentication: what an operator alerts on."""
    INTEGRITY_FAILURES.labels(operation).inc()
    log.error("integrity check failed for file %s (block %s): %s; nothing unverified was served",
              file_id, exc.details.get("block", "header"), exc.message,
              extra={"blobseal_error": exc.to_dict(), "file_id": str(file_id)})
