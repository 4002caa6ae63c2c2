"""Serving a file: response headers, and a body that streams only verified plaintext.

Everything that can fail cheaply is checked before the first byte is sent: the file's row,
the Range header, the key, the header of the protected blob (file id, key reference, key
commitment), the ciphertext size against the recorded plaintext size, and the final block.
The body then fetches only the blocks covering the range (pinned to the blob's ETag), and
releases each block's plaintext after its tag verifies.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from shared.blobs import BlobStore
from shared.crypto.cipher import open_header
from shared.crypto.format import MAX_HEADER_SIZE, Header, Layout
from shared.crypto.ranges import RangeOpener, plan_range
from shared.db.files import FileRecord
from shared.errors import IntegrityError
from shared.http_range import ByteRange
from shared.metrics import BYTES_PROCESSED, ERRORS

__all__ = ["Download", "open_body", "response_headers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    status: int
    headers: dict[str, str]
    body: AsyncIterator[memoryview] | None


def response_headers(record: FileRecord, byte_range: ByteRange | None) -> dict[str, str]:
    size = record.size or 0
    length = byte_range.length if byte_range else size
    headers = {
        "Content-Type": record.content_type,
        "Content-Disposition": content_disposition(record.name),
        "Content-Length": str(length),
        "ETag": f'"{record.file_id}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if byte_range:
        headers["Content-Range"] = byte_range.content_range(size)
    return headers


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def open_body(blobs: BlobStore, container: str, record: FileRecord, key: bytes,
                    byte_range: ByteRange | None) -> AsyncIterator[memoryview]:
    """Check the stored file, then return the verified plaintext stream of the range."""
    assert record.protected_blob is not None and record.size is not None
    info = await blobs.info(container, record.protected_blob)
    header_bytes = await blobs.read_exact(container, record.protected_blob, 0, min(MAX_HEADER_SIZE, info.size),
                                          etag=info.etag)
    header = Header.parse(header_bytes)
    if header.file_id != record.file_id or header.key_reference != record.key_reference:
        raise IntegrityError("stored blob belongs to another file or key", operation="download")
    layout = Layout(header.size, header.block_size, info.size)
    if layout.plaintext_size != record.size:
        raise IntegrityError("stored blob size does not match the file", operation="download")
    plan = plan_range(layout, *((byte_range.start, byte_range.length) if byte_range else (0, record.size)))
    final_offset, final_length = plan.final_span
    final_block = await blobs.read_exact(container, record.protected_blob, final_offset, final_length, etag=info.etag)
    opener = RangeOpener(open_header(key, header), layout, plan, final_block)
    source = blobs.read(container, record.protected_blob, offset=plan.cipher_offset, length=plan.cipher_length,
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
    except Exception as exc:
        ERRORS.labels("download", type(exc).__name__).inc()
        log.error("download of file %s aborted: %s", file_id, type(exc).__name__)
        raise
