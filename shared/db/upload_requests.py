"""The ``upload_requests`` repository: what an ``Idempotency-Key`` of ``POST /api/files`` stands for.

One row per (caller, key): the upload attempt serving it (``attempt``, the ``files.pending_etag`` of
that upload, and its ``file_id``) and, once that upload is encrypted, the request's fingerprint and
the first answer, written in the same commit as the file's mark. A row whose ``expires_at`` passed
is free again (a new request with that key is a new upload); the reconciler deletes expired rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["UploadRequest", "UploadRequestRepository"]


@dataclass(frozen=True)
class UploadRequest:
    caller: str
    idempotency_key: str
    attempt: str
    file_id: uuid.UUID
    fingerprint: str | None  # None: not answered yet (in progress, or its attempt died)
    response: dict[str, Any] | None
    created_at: datetime
    expires_at: datetime


def _request(row: Any) -> UploadRequest | None:
    if row is None:
        return None
    response = row["response"]
    return UploadRequest(row["caller"], row["idempotency_key"], row["attempt"], row["file_id"], row["fingerprint"],
                         json.loads(response) if isinstance(response, str) else response, row["created_at"],
                         row["expires_at"])


class UploadRequestRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def claim(self, caller: str, key: str, *, attempt: str, file_id: uuid.UUID,
                    ttl_seconds: float) -> UploadRequest:
        """The key's row: made for ``attempt`` when there is none (or it expired), else the one there."""
        sql = """
            INSERT INTO upload_requests (caller, idempotency_key, attempt, file_id, expires_at)
            VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
            ON CONFLICT (caller, idempotency_key) DO UPDATE
               SET attempt = EXCLUDED.attempt, file_id = EXCLUDED.file_id, fingerprint = NULL, response = NULL,
                   created_at = now(), expires_at = EXCLUDED.expires_at
             WHERE upload_requests.expires_at <= now()
            RETURNING *"""
        claimed = _request(await self._conn.fetchrow(sql, caller, key, attempt, file_id, ttl_seconds))
        found = claimed or await self.get(caller, key)
        assert found is not None
        return found

    async def take_over(self, caller: str, key: str, *, dead_attempt: str, attempt: str, file_id: uuid.UUID,
                        ttl_seconds: float) -> bool:
        """Serve the key with ``attempt`` instead of ``dead_attempt`` (which never answered); False if another
        request took it first, or the dead one answered after all."""
        sql = """
            UPDATE upload_requests SET attempt = $4, file_id = $5, created_at = now(),
                   expires_at = now() + make_interval(secs => $6)
             WHERE caller = $1 AND idempotency_key = $2 AND attempt = $3 AND fingerprint IS NULL"""
        status = await self._conn.execute(sql, caller, key, dead_attempt, attempt, file_id, ttl_seconds)
        return str(status) == "UPDATE 1"

    async def answer(self, caller: str, key: str, *, attempt: str, fingerprint: str,
                     response: dict[str, Any]) -> bool:
        """Record the first answer (in the transaction that marks the file); False if ``attempt`` no longer
        serves the key (a retry took it over: this attempt must not make a file)."""
        sql = """
            UPDATE upload_requests SET fingerprint = $4, response = $5::jsonb
             WHERE caller = $1 AND idempotency_key = $2 AND attempt = $3 AND fingerprint IS NULL"""
        status = await self._conn.execute(sql, caller, key, attempt, fingerprint, json.dumps(response))
        return str(status) == "UPDATE 1"

    async def get(self, caller: str, key: str) -> UploadRequest | None:
        return _request(await self._conn.fetchrow(
            "SELECT * FROM upload_requests WHERE caller = $1 AND idempotency_key = $2", caller, key))

    async def expired(self, limit: int) -> list[tuple[str, str]]:
        """Keys whose time ran out (index ``upload_requests_expiry``), oldest first."""
        sql = ("SELECT caller, idempotency_key FROM upload_requests WHERE expires_at <= now() "
               "ORDER BY expires_at LIMIT $1")
        return [(r["caller"], r["idempotency_key"]) for r in await self._conn.fetch(sql, limit)]

    async def forget_expired(self, caller: str, key: str) -> bool:
        status = await self._conn.execute(
            "DELETE FROM upload_requests WHERE caller = $1 AND idempotency_key = $2 AND expires_at <= now()",
            caller, key)
        return str(status) == "DELETE 1"
