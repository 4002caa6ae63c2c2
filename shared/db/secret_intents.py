"""The ``secret_intents`` repository: vault secrets announced before they are placed.

Placing a key in the vault and recording its row are two systems: a worker killed in between
leaves a vault version no row names. So the secret custody announces each placement here first
(``announce``), and the transaction that records the row removes the announcement (``done``); an
announcement that outlives the settle time names a file whose vault versions the reconciler
compares with its rows (``SecretCustody.repair``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

__all__ = ["SecretIntentRepository"]


class SecretIntentRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def announce(self, file_id: uuid.UUID, token: str) -> None:
        await self._conn.execute("INSERT INTO secret_intents (file_id, token) VALUES ($1, $2)", file_id, token)

    async def done(self, file_id: uuid.UUID, token: str) -> None:
        await self._conn.execute("DELETE FROM secret_intents WHERE file_id = $1 AND token = $2", file_id, token)

    async def settled(self, before: datetime, limit: int) -> dict[uuid.UUID, list[str]]:
        """Files with announcements older than ``before`` (oldest first), each with its tokens."""
        rows = await self._conn.fetch(
            "SELECT file_id, array_agg(token) AS tokens FROM secret_intents WHERE since < $1 "
            "GROUP BY file_id ORDER BY min(since) LIMIT $2", before, limit)
        return {r["file_id"]: list(r["tokens"]) for r in rows}

    async def forget(self, file_id: uuid.UUID, tokens: list[str]) -> None:
        await self._conn.execute("DELETE FROM secret_intents WHERE file_id = $1 AND token = ANY($2)", file_id, tokens)
