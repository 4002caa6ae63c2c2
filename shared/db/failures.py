"""The ``ingest_failures`` and ``reconciler_state`` repository: one statement per method.

A failed upload is one row per ingest blob version (name and ETag): the error's type and
message (already free of secrets), whether it is permanent (waits for an operator:
``failed``, ``replay``) or retried by the reconciler after ``next_attempt_at``, and how many
attempts were made. Encrypting the upload clears its rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

__all__ = ["FailureRecord", "FailureRepository"]


@dataclass(frozen=True)
class FailureRecord:
    source_name: str
    source_etag: str
    file_id: uuid.UUID | None
    error: str
    reason: str
    permanent: bool
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_attempt_at: datetime | None


_FIELDS = tuple(f.name for f in fields(FailureRecord))


def _failure(row: Any) -> FailureRecord:
    return FailureRecord(**{name: row[name] for name in _FIELDS})


class FailureRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def record(self, *, source_name: str, source_etag: str, file_id: uuid.UUID | None, error: str,
                     reason: str, permanent: bool, now: datetime, next_attempt_at: datetime | None) -> int:
        """Insert or count one more failure of this upload version; returns the attempts so far."""
        sql = """
            INSERT INTO ingest_failures (source_name, source_etag, file_id, error, reason, permanent,
                                         first_failed_at, last_failed_at, next_attempt_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
            ON CONFLICT (source_name, source_etag) DO UPDATE
               SET error = EXCLUDED.error, reason = EXCLUDED.reason, permanent = EXCLUDED.permanent,
                   file_id = COALESCE(EXCLUDED.file_id, ingest_failures.file_id),
                   attempts = ingest_failures.attempts + 1, last_failed_at = EXCLUDED.last_failed_at,
                   next_attempt_at = EXCLUDED.next_attempt_at
            RETURNING attempts"""
        return int(await self._conn.fetchval(sql, source_name, source_etag, file_id, error, reason[:1000],
                                             permanent, now, next_attempt_at))

    async def clear(self, source_name: str) -> None:
        """Forget every failure of this upload name (its current content is encrypted or gone)."""
        await self._conn.execute("DELETE FROM ingest_failures WHERE source_name = $1", source_name)

    async def held(self, source_names: list[str], now: datetime) -> set[tuple[str, str]]:
        """The upload versions among ``source_names`` not to retry now (permanent, or backing off)."""
        sql = """
            SELECT source_name, source_etag FROM ingest_failures
             WHERE source_name = ANY($1) AND (permanent OR next_attempt_at > $2)"""
        return {(r["source_name"], r["source_etag"]) for r in await self._conn.fetch(sql, source_names, now)}

    async def listed(self, limit: int) -> list[FailureRecord]:
        sql = "SELECT * FROM ingest_failures ORDER BY permanent DESC, first_failed_at LIMIT $1"
        return [_failure(r) for r in await self._conn.fetch(sql, limit)]

    async def forget_absent(self, present: set[tuple[str, str]], names: list[str] | None) -> int:
        """Drop rows whose upload version is no longer in the ingest container: among ``names``, or
        any row at all when ``names`` is None (the listing was complete)."""
        rows = await self._conn.fetch("SELECT source_name, source_etag FROM ingest_failures "
                                      "WHERE $1::text[] IS NULL OR source_name = ANY($1)", names)
        gone = [v for v in ((r["source_name"], r["source_etag"]) for r in rows) if v not in present]
        for name, etag in gone:
            await self._conn.execute("DELETE FROM ingest_failures WHERE source_name = $1 AND source_etag = $2",
                                     name, etag)
        return len(gone)

    async def counts(self) -> dict[str, int]:
        rows = await self._conn.fetch("SELECT permanent, count(*) AS n FROM ingest_failures GROUP BY permanent")
        found = {("permanent" if r["permanent"] else "retrying"): int(r["n"]) for r in rows}
        return {"permanent": found.get("permanent", 0), "retrying": found.get("retrying", 0)}

    async def state(self, name: str) -> str | None:
        """What the reconciler remembered under ``name`` (a time, a listing cursor), or None."""
        value = await self._conn.fetchval("SELECT value FROM reconciler_state WHERE name = $1", name)
        return None if value is None else str(value)

    async def set_state(self, name: str, value: str) -> None:
        await self._conn.execute(
            "INSERT INTO reconciler_state (name, value) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, value)
