"""Encrypting an upload: ingest blob -> protected blob, key and rows durable, then delete.

Order (a crash anywhere leaves a state the next delivery completes):

1. read the ingest blob's properties (gone: an earlier delivery finished; nothing to do);
2. derive the file id (UUID at the start of the name, else stable from name and ETag);
3. register the file row (``pending``); an ``encrypted`` row means a duplicate delivery;
4. create or reuse the file's key (idempotent);
5. stream-encrypt into ``<file_id>/<key version>`` as staged blocks, committed at the end;
6. mark the row ``encrypted`` (size, key reference, blob);
7. delete the plaintext, only if unchanged since step 1 (ETag) and unless KEEP_PLAINTEXT.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.db.files import FileRepository
from shared.db.pool import Database
from shared.errors import BlobNotFoundError, UploadConflictError
from shared.keys import FileKeyService
from shared.metrics import BYTES_PROCESSED, FILE_SIZE, OPERATION_SECONDS, OPERATIONS
from shared.transfer import Transfer, seal

__all__ = ["IngestOutcome", "Ingestor", "identify_upload", "protected_blob_name"]

log = logging.getLogger(__name__)

# Namespace of file ids derived from blob names (uuid5); fixed forever.
UPLOAD_NAMESPACE = uuid.UUID("6f1d7a52-3b0e-5c8e-9a51-b10b5ea1f11e")
_LEADING_UUID = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?:[/.]|$)")


IngestStatus = Literal["encrypted", "duplicate", "gone", "disabled"]


@dataclass(frozen=True)
class IngestOutcome:
    status: IngestStatus
    file_id: uuid.UUID | None = None


def identify_upload(name: str, etag: str) -> tuple[uuid.UUID, str]:
    """(file id, display name) of an ingest blob name: ``<uuid>``, ``<uuid>/<name>``, ``<uuid>.<ext>``."""
    match = _LEADING_UUID.match(name)
    if match:
        rest = name[len(match.group(1)) :]
        display = rest[1:] if rest.startswith("/") and len(rest) > 1 else name
        return uuid.UUID(match.group(1)), display.rsplit("/", 1)[-1]
    return uuid.uuid5(UPLOAD_NAMESPACE, f"{name}\n{etag}"), name.rsplit("/", 1)[-1]


def protected_blob_name(file_id: uuid.UUID, key_reference: str) -> str:
    """One protected blob per key version: rotation writes a new name, never over the old one."""
    return f"{file_id}/{key_reference.rsplit('/', 1)[-1]}.bseal"


class Ingestor:
    """Encrypts uploads from the ``ingest`` container into the ``protected`` one."""

    def __init__(self, *, db: Database, keys: FileKeyService, ingest: Container, protected: Container,
                 transfer: Transfer, keep_plaintext: bool = False, enabled: bool = True,
                 clock: Clock = utcnow) -> None:
        self._db, self._keys = db, keys
        self._ingest, self._protected = ingest, protected
        self._transfer = transfer
        self._keep_plaintext, self._enabled = keep_plaintext, enabled
        self._clock = clock

    async def encrypt(self, name: str) -> IngestOutcome:
        started = time.perf_counter()
        try:
            outcome = await self._encrypt(name)
        except Exception as exc:
            OPERATIONS.labels("encrypt", type(exc).__name__).inc()
            raise
        OPERATIONS.labels("encrypt", outcome.status).inc()
        OPERATION_SECONDS.labels("encrypt").observe(time.perf_counter() - started)
        return outcome

    async def _encrypt(self, name: str) -> IngestOutcome:
        if not self._enabled:
            log.warning("encryption is disabled (ENCRYPTION_ENABLED=false): %s left in ingest", name)
            return IngestOutcome("disabled")
        try:
            info = await self._ingest.info(name)
        except BlobNotFoundError:
            log.info("ingest blob %s is gone: an earlier delivery completed it", name)
            return IngestOutcome("gone")
        file_id, display = identify_upload(name, info.etag)
        async with self._db.transaction("register_file") as conn:
            record = await FileRepository(conn).register(file_id, source_name=name, source_etag=info.etag,
                                                         name=display, content_type=info.content_type)
        if record.status == "encrypted":
            return await self._duplicate(name, info.etag, record.source_etag, file_id)
        key_ref = (await self._keys.create_key(file_id)).key_reference
        blob_name = protected_blob_name(file_id, key_ref)
        size = await seal(self._ingest.read(name, etag=info.etag), self._protected, blob_name,
                          key=await self._keys.get_key(key_ref), file_id=file_id, key_reference=key_ref,
                          transfer=self._transfer)
        async with self._db.transaction("mark_encrypted") as conn:
            await FileRepository(conn).mark_encrypted(file_id, size=size, key_reference=key_ref,
                                                      protected_blob=blob_name, now=self._clock())
        BYTES_PROCESSED.labels("encrypt").inc(size)
        FILE_SIZE.observe(size)
        log.info("encrypted %s as file %s (%d bytes)", name, file_id, size)
        await self._discard_plaintext(name, info.etag)
        return IngestOutcome("encrypted", file_id)

    async def _duplicate(self, name: str, etag: str, recorded_etag: str, file_id: uuid.UUID) -> IngestOutcome:
        if recorded_etag != etag:
            raise UploadConflictError("file id already holds other content; upload refused and kept in ingest",
                                      operation="ingest", details={"file_id": str(file_id)})
        log.info("duplicate delivery of %s (file %s): already encrypted", name, file_id)
        await self._discard_plaintext(name, etag)
        return IngestOutcome("duplicate", file_id)

    async def _discard_plaintext(self, name: str, etag: str) -> None:
        if not self._keep_plaintext:
            await self._ingest.delete(name, etag=etag)
