"""Erasing a deleted file: every byte of it in any container, and every key that opens any copy.

``Eraser.delete`` (what ``DELETE /api/files/{id}`` and ``blobseal delete`` call) marks the row
``deleted`` (a tombstone: who, when) and forgets its retired blobs in one commit (a lost answer to it
is settled by a re-read: the deletion goes on when the row is a tombstone), then calls
``Eraser.erase``; the reconciler calls the same ``erase`` for every tombstone whose ``erased_at`` is
still empty (a deletion that stopped half way). In order:

1. the plaintext in ``ingest``: the blob under the file's upload name, if what is there now is
   this file (its name and ETag identify this file id; a new upload under a non-UUID name is
   another file and stays); with ``KEEP_PLAINTEXT`` that is the kept copy;
2. every protected blob under ``<file_id>/`` (committed versions, staged blocks);
3. the keys: each custody destroys what it keeps outside the rows (the vault secret, every
   version), then the rows go (wrapped keys with them);
4. the file's ``retired_blobs`` rows go (their blobs went in 2) and ``erased_at`` is set, in one
   commit: only now is the deletion complete.

Each step is idempotent; a crash anywhere leaves the tombstone without ``erased_at``, and the next
call (or the reconciler) finishes. Keys are never recorded for a deleted file (the key service
locks the file's row), and an upload of a deleted file is erased on arrival (``shared.ingest``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from shared.blobs import Container
from shared.clock import Clock, utcnow
from shared.db.files import FileRecord, FileRepository
from shared.db.pool import Database
from shared.errors import BlobNotFoundError, UnknownFileError
from shared.ingest import identify_upload
from shared.keys import FileKeyService
from shared.upload import UPLOAD_ATTEMPT_PREFIX

__all__ = ["Eraser"]

log = logging.getLogger(__name__)


class Eraser:
    def __init__(self, *, db: Database, keys: FileKeyService, ingest: Container, protected: Container,
                 clock: Clock = utcnow) -> None:
        self._db, self._keys, self._ingest, self._protected, self._clock = db, keys, ingest, protected, clock

    async def delete(self, file_id: uuid.UUID, *, by: str) -> FileRecord:
        """Make the file a tombstone (idempotent: a tombstone keeps its first who and when), then erase it."""
        async def mark(conn: Any) -> FileRecord | None:
            files = FileRepository(conn)
            record = await files.mark_deleted(file_id, by=by, now=self._clock())
            await files.forget_retired_of(file_id)  # in the same commit: no row outlives the blob it names
            return record

        record = await self._db.resolved("delete_file", mark,
                                         committed=lambda conn: FileRepository(conn).is_deleted(file_id))
        if record is None:
            raise UnknownFileError("no such file", operation="delete_file", details={"file_id": str(file_id)})
        await self.erase(record)
        return record

    async def erase(self, record: FileRecord) -> None:
        """Everything of a deleted file, then the mark that says so."""
        assert record.status == "deleted"
        await self._erase_plaintext(record)
        blobs, _ = await self._protected.page(prefix=f"{record.file_id}/", size=1000, uncommitted=True)
        for blob in blobs:
            await self._protected.discard(blob.name)
        await self._keys.delete_file_keys(record.file_id)
        async with self._db.transaction("erase_file") as conn:
            files = FileRepository(conn)
            await files.forget_retired_of(record.file_id)
            await files.mark_erased(record.file_id, self._clock())
        log.info("erased file %s: blobs, plaintext and keys", record.file_id)

    async def unfinished(self, limit: int) -> list[FileRecord]:
        """Tombstones whose erasure has not completed, oldest deletion first."""
        async with self._db.connection("unfinished_erasures") as conn:
            return await FileRepository(conn).unerased(limit)

    async def _erase_plaintext(self, record: FileRecord) -> None:
        """The upload's plaintext in ingest, if the blob under its name is still this file's content."""
        if record.source_etag.startswith(UPLOAD_ATTEMPT_PREFIX):
            return  # uploaded over HTTP: never stored in plaintext
        try:
            info = await self._ingest.info(record.source_name)
        except BlobNotFoundError:
            return
        if _belongs(record.file_id, record.source_name, info.etag):
            await self._ingest.delete(record.source_name, etag=info.etag)


def _belongs(file_id: uuid.UUID, name: str, etag: str) -> bool:
    return identify_upload(name, etag)[0] == file_id
