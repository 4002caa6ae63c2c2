"""The ``files`` and ``retired_blobs`` repository: one statement per method, caller's connection.

A file row is registered (``pending``) when its upload is first seen. ``pending_etag`` names
the newest attempt at the upload's name (a newer attempt, or a new version of an encrypted
file, takes it over); only that attempt marks the row ``encrypted`` (pointing it at its blob),
once its protected blob, key and metadata are durable. Rotation switches the row to a new blob
and key (a compare-and-set on the old blob and key). Old protected blobs (rotated out, or an
old version's content) wait in ``retired_blobs`` until their grace period ends, so downloads
that started before can finish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

__all__ = ["FileRecord", "FileRepository", "FileStatus"]


FileStatus = Literal["pending", "encrypted", "deleted"]


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
    pending_etag: str | None = None  # the ETag of the newest attempt in flight (a first upload or a new version)
    deleted_at: datetime | None = None
    deleted_by: str | None = None
    protected_etag: str | None = None  # the protected blob's ETag at commit (NULL: rows from before)
    block_size: int | None = None  # the format's block size of the protected blob
    erased_at: datetime | None = None  # a deleted file's blobs, plaintext and keys are all gone (shared.erase)


_FIELDS = tuple(f.name for f in fields(FileRecord))


def _record(row: Any) -> FileRecord | None:
    return None if row is None else FileRecord(**{name: row[name] for name in _FIELDS if name in row})


class FileRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def register(self, file_id: uuid.UUID, *, source_name: str, source_etag: str, name: str,
                       content_type: str) -> FileRecord:
        """Claim the file's row for this attempt: insert it (``pending``), or set ``pending_etag`` on a
        row of the same upload name (a newer attempt, or a new version of an encrypted file).

        A row of another upload name, or an encrypted row already holding this very content, is
        returned untouched, for the caller to refuse or treat as a duplicate.
        """
        sql = """
            INSERT INTO files (file_id, source_name, source_etag, pending_etag, name, content_type)
            VALUES ($1, $2, $3, $3, $4, $5)
            ON CONFLICT (file_id) DO UPDATE
               SET pending_etag = EXCLUDED.pending_etag, updated_at = now()
             WHERE files.source_name = EXCLUDED.source_name AND files.status <> 'deleted'
               AND NOT (files.status = 'encrypted' AND files.source_etag = EXCLUDED.source_etag)
            RETURNING *"""
        row = await self._conn.fetchrow(sql, file_id, source_name, source_etag, name, content_type)
        record = _record(row) or await self.get(file_id)
        assert record is not None
        return record

    async def get(self, file_id: uuid.UUID) -> FileRecord | None:
        return _record(await self._conn.fetchrow("SELECT * FROM files WHERE file_id = $1", file_id))

    async def lock(self, file_id: uuid.UUID) -> FileRecord | None:
        """The row, locked for this transaction: a transaction still writing it (a COMMIT on its way) is waited
        for, so what is read here is what was decided."""
        return _record(await self._conn.fetchrow("SELECT * FROM files WHERE file_id = $1 FOR UPDATE", file_id))

    async def by_source_name(self, source_name: str) -> FileRecord | None:
        sql = "SELECT * FROM files WHERE source_name = $1 ORDER BY created_at DESC LIMIT 1"
        return _record(await self._conn.fetchrow(sql, source_name))

    async def mark_encrypted(self, file_id: uuid.UUID, *, source_name: str, source_etag: str, name: str,
                             content_type: str, size: int, key_reference: str, protected_blob: str,
                             protected_etag: str, block_size: int, now: datetime) -> tuple[bool, str | None]:
        """Point the file at this attempt's blob, only if the attempt still holds the row (its name and
        ETag are the newest) and the key it used is still the file's (a rotation did not switch it).

        Returns whether it did, and the blob it replaced (a new version's old content), if any.
        """
        # ``previous`` is read in the statement's snapshot: the blob before this update. Two marks
        # cannot both succeed (each needs its own ETag to be the pending one), so it is never stale.
        sql = """
            UPDATE files SET status = 'encrypted', source_etag = $3, pending_etag = NULL, name = $4,
                   content_type = $5, size = $6, key_reference = $7, protected_blob = $8, encrypted_at = $9,
                   updated_at = $9, protected_etag = $10, block_size = $11
              FROM (SELECT protected_blob AS blob FROM files WHERE file_id = $1) previous
             WHERE files.file_id = $1 AND files.source_name = $2 AND files.pending_etag = $3
               AND (files.key_reference IS NULL OR files.key_reference = $7)
            RETURNING previous.blob AS replaced"""
        row = await self._conn.fetchrow(sql, file_id, source_name, source_etag, name, content_type, size,
                                        key_reference, protected_blob, now, protected_etag, block_size)
        return row is not None, (row["replaced"] if row is not None else None)

    async def points_at(self, file_id: uuid.UUID, protected_blob: str, key_reference: str | None = None) -> bool:
        """Whether the file is encrypted in ``protected_blob`` (with ``key_reference``): an attempt's mark or a
        rotation's switch committed (blob names are unique to the attempt that wrote them)."""
        sql = """
            SELECT EXISTS (SELECT 1 FROM files WHERE file_id = $1 AND status = 'encrypted' AND protected_blob = $2
                           AND ($3::text IS NULL OR key_reference = $3))"""
        return bool(await self._conn.fetchval(sql, file_id, protected_blob, key_reference))

    async def holds_attempt(self, file_id: uuid.UUID, pending_etag: str, *, fresh_seconds: float | None = None) -> bool:
        """Whether the attempt ``pending_etag`` holds the file's row (with ``fresh_seconds``: and touched it that
        recently, in the database's time: a live upload touches its row every minute)."""
        sql = """
            SELECT EXISTS (SELECT 1 FROM files WHERE file_id = $1 AND pending_etag = $2
                           AND ($3::float8 IS NULL OR updated_at > now() - make_interval(secs => $3)))"""
        return bool(await self._conn.fetchval(sql, file_id, pending_etag, fresh_seconds))

    async def touch_attempt(self, file_id: uuid.UUID, pending_etag: str) -> None:
        """A live attempt's heartbeat: the row looks abandoned to nobody while it is touched."""
        await self._conn.execute("UPDATE files SET updated_at = now() WHERE file_id = $1 AND pending_etag = $2",
                                 file_id, pending_etag)

    async def is_deleted(self, file_id: uuid.UUID) -> bool:
        """Whether the file's row is a tombstone (its deletion committed)."""
        return bool(await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM files WHERE file_id = $1 AND status = 'deleted')", file_id))

    async def pending_before(self, cutoff: datetime, limit: int) -> list[FileRecord]:
        """Rows with an attempt in flight untouched since ``cutoff``, oldest first (index ``files_pending``)."""
        sql = ("SELECT * FROM files WHERE pending_etag IS NOT NULL AND updated_at < $1 "
               "ORDER BY updated_at LIMIT $2")
        return [r for r in map(_record, await self._conn.fetch(sql, cutoff, limit)) if r is not None]

    async def forget_attempt(self, file_id: uuid.UUID, pending_etag: str) -> Literal["deleted", "kept", None]:
        """Drop an abandoned attempt: a pending row is deleted; an encrypted one keeps its content
        (``kept``); None when the row moved on meanwhile (another attempt holds it)."""
        status = await self._conn.execute(
            "DELETE FROM files WHERE file_id = $1 AND status = 'pending' AND pending_etag = $2", file_id, pending_etag)
        if str(status) == "DELETE 1":
            return "deleted"
        status = await self._conn.execute(
            "UPDATE files SET pending_etag = NULL WHERE file_id = $1 AND pending_etag = $2", file_id, pending_etag)
        return "kept" if str(status) == "UPDATE 1" else None

    async def mark_deleted(self, file_id: uuid.UUID, *, by: str, now: datetime) -> FileRecord | None:
        """Keep the row as a tombstone (who, when); it points at no blob and no key any more, and its erasure
        is not complete (``erased_at`` empty) until ``shared.erase`` says so."""
        sql = """
            UPDATE files SET status = 'deleted', deleted_at = COALESCE(deleted_at, $3), erased_at = NULL,
                   deleted_by = COALESCE(deleted_by, $2), protected_blob = NULL, key_reference = NULL,
                   pending_etag = NULL, protected_etag = NULL, updated_at = $3
             WHERE file_id = $1 RETURNING *"""
        return _record(await self._conn.fetchrow(sql, file_id, by, now))

    async def listed(self, *, prefix: str, status: str | None, after: tuple[str, uuid.UUID] | None,
                     limit: int) -> list[tuple[FileRecord, datetime | None]]:
        """Files whose upload name starts with ``prefix``, by name then id, after the cursor; with the
        active key's expiry (one query, index ``files_listing``)."""
        sql = """
            SELECT f.*, k.expires_at AS key_expires_at FROM files f
              LEFT JOIN file_keys k ON k.file_id = f.file_id AND k.state = 'active'
             WHERE f.source_name LIKE $1 ESCAPE '\\' AND ($2::text IS NULL OR f.status = $2)
               AND ($3::text IS NULL OR (f.source_name, f.file_id) > ($3, $4::uuid))
             ORDER BY f.source_name, f.file_id LIMIT $5"""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._conn.fetch(sql, pattern, status, after[0] if after else None, after[1] if after else None,
                                      limit)
        return [(record, row["key_expires_at"]) for row in rows if (record := _record(row)) is not None]

    async def unerased(self, limit: int) -> list[FileRecord]:
        """Deleted files whose erasure has not completed (index ``files_unerased``), oldest deletion first."""
        sql = "SELECT * FROM files WHERE status = 'deleted' AND erased_at IS NULL ORDER BY deleted_at LIMIT $1"
        return [r for r in map(_record, await self._conn.fetch(sql, limit)) if r is not None]

    async def mark_erased(self, file_id: uuid.UUID, now: datetime) -> None:
        await self._conn.execute(
            "UPDATE files SET erased_at = $2 WHERE file_id = $1 AND status = 'deleted' AND erased_at IS NULL",
            file_id, now)

    async def forget_retired_of(self, file_id: uuid.UUID) -> None:
        await self._conn.execute("DELETE FROM retired_blobs WHERE file_id = $1", file_id)

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

    async def switch(self, file_id: uuid.UUID, *, old_reference: str, old_blob: str, key_reference: str,
                     protected_blob: str, protected_etag: str, block_size: int, now: datetime) -> bool:
        """Point the file at its re-encrypted blob, only if it still is the blob and key that were
        re-encrypted (a new version uploaded meanwhile wins; the rotation is tried again later)."""
        sql = """
            UPDATE files SET key_reference = $4, protected_blob = $5, updated_at = $6, protected_etag = $7,
                   block_size = $8
             WHERE file_id = $1 AND key_reference = $2 AND protected_blob = $3 AND status = 'encrypted'"""
        status = await self._conn.execute(sql, file_id, old_reference, old_blob, key_reference, protected_blob, now,
                                          protected_etag, block_size)
        return str(status) == "UPDATE 1"

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
