"""The ``intermediate_keys`` repository (envelope key mode): one statement per method, caller's connection.

A row holds an intermediate key wrapped by one KEK version (``kek_reference``), never the key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["IntermediateKeyRepository", "IntermediateRow"]


@dataclass(frozen=True)
class IntermediateRow:
    id: uuid.UUID
    kek_reference: str
    wrapped_key: bytes = field(repr=False)
    created_by: str
    created_at: datetime
    use_until: datetime
    max_files: int


class IntermediateKeyRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def insert(self, row: IntermediateRow) -> None:
        await self._conn.execute(
            "INSERT INTO intermediate_keys (id, kek_reference, wrapped_key, created_by, created_at, use_until, "
            "max_files) VALUES ($1, $2, $3, $4, $5, $6, $7)", row.id, row.kek_reference, row.wrapped_key,
            row.created_by, row.created_at, row.use_until, row.max_files)

    async def not_wrapped_by(self, kek_reference: str, limit: int) -> list[IntermediateRow]:
        """Intermediate keys wrapped by another KEK version than ``kek_reference`` (to rewrap)."""
        rows = await self._conn.fetch(
            "SELECT * FROM intermediate_keys WHERE kek_reference <> $1 ORDER BY created_at, id LIMIT $2",
            kek_reference, limit)
        return [IntermediateRow(**dict(r)) for r in rows]

    async def rewrap(self, row: IntermediateRow, kek_reference: str, wrapped_key: bytes) -> bool:
        """Replace the wrapping (a compare-and-set on the old KEK reference)."""
        status = await self._conn.execute(
            "UPDATE intermediate_keys SET kek_reference = $3, wrapped_key = $4 WHERE id = $1 AND kek_reference = $2",
            row.id, row.kek_reference, kek_reference, wrapped_key)
        return bool(status.endswith(" 1"))

    async def kek_references(self) -> dict[str, int]:
        """Each KEK version still wrapping intermediate keys, with how many."""
        rows = await self._conn.fetch(
            "SELECT kek_reference, count(*) AS n FROM intermediate_keys GROUP BY kek_reference ORDER BY 1")
        return {r["kek_reference"]: r["n"] for r in rows}

    async def any_recorded(self) -> bool:
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM intermediate_keys)"))
