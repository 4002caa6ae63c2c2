"""Uploading over HTTP without plaintext at rest: a request body encrypted on the fly.

``POST /api/files`` streams its body through the same seal step as the ingest path: the file
gets its own key, a ``files`` row and a protected blob in the same format; no byte of
plaintext is written to storage (there is no ingest blob). Order:

1. a new file id and a pending row whose attempt is ``upload:<random>`` (so the reconciler
   knows no ingest blob will come: a dead upload's leftovers are dropped);
2. the file's key;
3. the body, re-cut into transfer chunks, sealed into staged blocks, committed at the end; the
   row is touched every minute meanwhile (a live upload never looks abandoned);
4. the row marked encrypted.

A body over ``UPLOAD_MAX_MB``, a client that goes away, or any failure leaves nothing: the
staged blocks are discarded, the row and the key deleted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.errors import BlobsealError, UploadTooLargeError
from shared.ingest import attempt_tag, protected_blob_name
from shared.keys import FileKeyService
from shared.metrics import BYTES_PROCESSED, FILE_SIZE, OPERATIONS
from shared.transfer import Transfer, seal

__all__ = ["UPLOAD_ATTEMPT_PREFIX", "UploadRequest", "Uploader"]

log = logging.getLogger(__name__)

UPLOAD_ATTEMPT_PREFIX = "upload:"
HEARTBEAT_SECONDS = 60.0


@dataclass(frozen=True)
class UploadRequest:
    name: str
    content_type: str
    declared_size: int | None = None  # Content-Length, when the client sent one


class Uploader:
    def __init__(self, *, db: Database, keys: FileKeyService, protected: Container, transfer: Transfer,
                 max_bytes: int, clock: Clock = utcnow) -> None:
        self._db, self._keys, self._protected = db, keys, protected
        self._transfer, self._max, self._clock = transfer, max_bytes, clock

    async def upload(self, request: UploadRequest, body: AsyncIterator[bytes]) -> FileRecord:
        if request.declared_size is not None and request.declared_size > self._max:
            raise self._too_large()
        file_id, attempt = uuid.uuid4(), f"{UPLOAD_ATTEMPT_PREFIX}{uuid.uuid4().hex}"
        async with self._db.transaction("register_upload") as conn:
            await FileRepository(conn).register(file_id, source_name=request.name, source_etag=attempt,
                                                name=request.name.rsplit("/", 1)[-1],
                                                content_type=request.content_type)
        blob_name = ""
        try:
            key = await self._keys.create_key(file_id)
            key_ref, blob_name = key.key_reference, protected_blob_name(file_id, key.key_reference,
                                                                        attempt=attempt_tag())
            sealed = await seal(self._bounded(body, file_id, attempt), self._protected, blob_name,
                                key=await self._keys.key_of(key.key_reference), file_id=file_id, key_reference=key_ref,
                                transfer=self._transfer, size_hint=request.declared_size)
            async with self._db.transaction("mark_encrypted") as conn:
                files = FileRepository(conn)
                await files.mark_encrypted(file_id, source_name=request.name, source_etag=attempt,
                                           name=request.name.rsplit("/", 1)[-1], content_type=request.content_type,
                                           size=sealed.size, key_reference=key_ref, protected_blob=blob_name,
                                           protected_etag=sealed.etag, block_size=sealed.block_size,
                                           now=self._clock())
                record = await files.get(file_id)
        except BaseException as exc:
            OPERATIONS.labels("upload", type(exc).__name__).inc()
            await self._leave_nothing(file_id, attempt, blob_name)
            raise
        assert record is not None
        OPERATIONS.labels("upload", "encrypted").inc()
        BYTES_PROCESSED.labels("encrypt").inc(sealed.size)
        FILE_SIZE.observe(sealed.size)
        log.info("uploaded and encrypted file %s (%d bytes)", file_id, sealed.size)
        return record

    async def _bounded(self, body: AsyncIterator[bytes], file_id: uuid.UUID, attempt: str) -> AsyncIterator[bytes]:
        """The body in transfer chunks, refused past the size limit; the row touched now and then."""
        buffer, total, touched = bytearray(), 0, time.monotonic()
        async for piece in body:
            total += len(piece)
            if total > self._max:
                raise self._too_large()
            buffer += piece
            if len(buffer) >= self._transfer.chunk_size:
                yield bytes(buffer)
                buffer.clear()
            if time.monotonic() - touched > HEARTBEAT_SECONDS:
                touched = time.monotonic()
                await self._touch(file_id, attempt)
        if buffer:
            yield bytes(buffer)

    async def _touch(self, file_id: uuid.UUID, attempt: str) -> None:
        async with self._db.connection("upload_heartbeat") as conn:
            await conn.execute("UPDATE files SET updated_at = now() WHERE file_id = $1 AND pending_etag = $2",
                               file_id, attempt)

    async def _leave_nothing(self, file_id: uuid.UUID, attempt: str, blob_name: str) -> None:
        """Undo an upload that did not finish: staged blocks, the row, the key (best effort; the
        reconciler drops what a crash leaves)."""
        try:
            if blob_name:
                await self._protected.discard(blob_name)
            async with self._db.transaction("upload_abandoned") as conn:
                await FileRepository(conn).forget_attempt(file_id, attempt)
            await self._keys.delete_file_keys(file_id)
        except BlobsealError as exc:
            log.warning("file %s: cleaning up an unfinished upload failed (the reconciler will): %s", file_id, exc)

    def _too_large(self) -> UploadTooLargeError:
        return UploadTooLargeError(f"the body is larger than UPLOAD_MAX_MB ({self._max // (1024 * 1024)} MiB)",
                                   operation="upload", details={"limit": self._max})
