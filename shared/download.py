"""Reading a file back: check what is stored, then stream only verified plaintext of a span.

Everything that can fail cheaply is checked before the body starts: the header of the
protected blob (file id, key reference, key commitment), the ciphertext size against the
recorded plaintext size, and the file's final block. The body then fetches only the blocks
covering the span (pinned to the blob's ETag) and releases each block's plaintext after its
tag verifies. Nothing here knows HTTP: a span is a start and a length.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.blobs import Container
from shared.crypto.cipher import open_header
from shared.crypto.format import MAX_HEADER_SIZE, Header, Layout
from shared.crypto.ranges import RangeOpener, plan_range
from shared.db.files import FileRecord
from shared.errors import IntegrityError
from shared.metrics import BYTES_PROCESSED, ERRORS, INTEGRITY_FAILURES

__all__ = ["Span", "integrity_failed", "open_span"]

log = logging.getLogger(__name__)


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
    assert record.protected_blob is not None and record.size is not None
    blob = record.protected_blob
    info = await protected.info(blob)
    header = Header.parse(await protected.read_exact(blob, 0, min(MAX_HEADER_SIZE, info.size), etag=info.etag))
    if header.file_id != record.file_id or header.key_reference != record.key_reference:
        raise IntegrityError("stored blob belongs to another file or key", operation="download")
    layout = Layout(header.size, header.block_size, info.size)
    if layout.plaintext_size != record.size:
        raise IntegrityError("stored blob size does not match the file", operation="download")
    span = span or Span(0, record.size)
    plan = plan_range(layout, span.start, span.length)
    final_block = await protected.read_exact(blob, *plan.final_span, etag=info.etag)
    opener = RangeOpener(open_header(key, header), layout, plan, final_block)
    source = protected.read(blob, offset=plan.cipher_offset, length=plan.cipher_length,
                            etag=info.etag) if plan.cipher_length else _nothing()
    return _stream(source, opener, record.file_id)


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
