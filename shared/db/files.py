"""The ``files`` and ``retired_blobs`` repository: one statement per method, caller's connection.

A file row is registered (``pending``) when its upload is first seen (a newer attempt of the
same upload name takes the pending row over with its ETag), marked ``encrypted`` by the attempt
that holds it once its protected blob, key and metadata are durable, and switched to a new blob and key
reference by rotation (a compare-and-set on the old reference). Old protected blobs wait in
``retired_blobs`` until their grace period ends, so downloads that started before a
rotation can finish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

__all__ = ["FileRecord", "FileRepository", "FileStatus"]


FileStatus = Literal["pending", "encrypted"]


@dataclass(frozen=True)
class FileRecord:
    file_id: uuid.UUID
    source_name: str
    source_etag: str
    name: str
    content_type: str
    size: int | None
    status: FileStatus
    protected_blob: str | None
    key_reference: str | None
    created_at: datetime
    encrypted_at: datetime | None
    updated_at: datetime


_FIELDS = tuple(f.name for f in fields(FileRecord))


def _record(row: Any) -> FileRecord | None:
    return None if row is None else FileRecord(**{name: row[name] for name in _FIELDS})


class FileRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def register(self, file_id: uuid.UUID, *, source_name: str, source_etag: str, name: str,
                       content_type: str) -> FileRecord:
        """Insert a pending row, or take over a pending one of the same upload name (the newest
        attempt registers its ETag); any other row (encrypted, or pending under another name)
        is returned as it is, for the caller to refuse or treat as a duplicate."""
        sql = """
            INSERT INTO files (file_id, source_name, source_etag, name, content_type)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (file_id) DO UPDATE
               SET source_etag = EXCLUDED.source_etag, name = EXCLUDED.name,
                   content_type = EXCLUDED.content_type, updated_at = now()
             WHERE files.status = 'pending' AND files.source_name = EXCLUDED.source_name
            RETURNING *"""
        row = await self._conn.fetchrow(sql, file_id, source_name, source_etag, name, content_type)
        record = _record(row) or await self.get(file_id)
        assert record is not None
        return record

    async def get(self, file_id: uuid.UUID) -> FileRecord | None:
        return _record(await self._conn.fetchrow("SELECT * FROM files WHERE file_id = $1", file_id))

    async def by_source_name(self, source_name: str) -> FileRecord | None:
        sql = "SELECT * FROM files WHERE source_name = $1 ORDER BY created_at DESC LIMIT 1"
        return _record(await self._conn.fetchrow(sql, source_name))

    async def mark_encrypted(self, file_id: uuid.UUID, *, source_name: str, source_etag: str, size: int,
                             key_reference: str, protected_blob: str, now: datetime) -> bool:
        """Mark the file encrypted, only for the attempt that holds its row (same upload and ETag)."""
        sql = """
            UPDATE files SET status = 'encrypted', size = $4, key_reference = $5, protected_blob = $6,
                   encrypted_at = $7, updated_at = $7
             WHERE file_id = $1 AND status = 'pending' AND source_name = $2 AND source_etag = $3"""
        status = await self._conn.execute(sql, file_id, source_name, source_etag, size, key_reference,
                                          protected_blob, now)
        return str(status) == "UPDATE 1"

    async def pending_before(self, cutoff: datetime, limit: int) -> list[FileRecord]:
        """Pending rows untouched since ``cutoff``, oldest first (index ``files_pending``)."""
        sql = "SELECT * FROM files WHERE status = 'pending' AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        return [r for r in map(_record, await self._conn.fetch(sql, cutoff, limit)) if r is not None]

    async def updated_since(self, since: datetime, limit: int) -> list[FileRecord]:
        """Rows changed at or after ``since``, oldest change first (index ``files_updated``)."""
        sql = "SELECT * FROM files WHERE updated_at >= $1 ORDER BY updated_at LIMIT $2"
        return [r for r in map(_record, await self._conn.fetch(sql, since, limit)) if r is not None]

    async def delete_pending(self, file_id: uuid.UUID, source_etag: str) -> bool:
        status = await self._conn.execute(
            "DELETE FROM files WHERE file_id = $1 AND status = 'pending' AND source_etag = $2", file_id, source_etag)
        return str(status) == "DELETE 1"

    async def encrypted_versions(self, source_names: list[str]) -> set[tuple[str, str]]:
        """``(source_name, source_etag)`` of the encrypted files among ``source_names``."""
        sql = "SELECT source_name, source_etag FROM files WHERE status = 'encrypted' AND source_name = ANY($1)"
        return {(r["source_name"], r["source_etag"]) for r in await self._conn.fetch(sql, source_names)}

    async def referenced_blobs(self, blob_names: list[str]) -> set[str]:
        """The protected blobs among ``blob_names`` that a file points at or that wait out their grace."""
        sql = """
            SELECT protected_blob AS name FROM files WHERE protected_blob = ANY($1)
            UNION SELECT blob_name FROM retired_blobs WHERE blob_name = ANY($1)"""
        return {r["name"] for r in await self._conn.fetch(sql, blob_names)}

    async def switch(self, file_id: uuid.UUID, *, old_reference: str, key_reference: str, protected_blob: str,
                     now: datetime) -> bool:
        """Point the file at its re-encrypted blob, only if it still uses ``old_reference``."""
        sql = """
            UPDATE files SET key_reference = $3, protected_blob = $4, updated_at = $5
             WHERE file_id = $1 AND key_reference = $2 AND status = 'encrypted'"""
        return str(await self._conn.execute(sql, file_id, old_reference, key_reference, protected_blob, now)) \
            == "UPDATE 1"

    async def retire_blob(self, blob_name: str, file_id: uuid.UUID, *, delete_after: datetime) -> None:
        sql = """
            INSERT INTO retired_blobs (blob_name, file_id, delete_after) VALUES ($1, $2, $3)
            ON CONFLICT (blob_name) DO NOTHING"""
        await self._conn.execute(sql, blob_name, file_id, delete_after)

    async def retired_blobs_due(self, now: datetime, limit: int) -> list[str]:
        sql = "SELECT blob_name FROM retired_blobs WHERE delete_after <= $1 ORDER BY delete_after LIMIT $2"
        return [row["blob_name"] for row in await self._conn.fetch(sql, now, limit)]

    async def forget_retired_blob(self, blob_name: str) -> None:
        await self._conn.execute("DELETE FROM retired_blobs WHERE blob_name = $1", blob_name)
