"""The ``intermediate_keys`` repository (envelope key mode): one statement per method, caller's connection.

A row holds an intermediate key wrapped by one KEK version (``kek_reference``), never the key,
and the signing key's signature over the row (``signature`` by ``signing_key``; NULL on rows made
before migration 8, which are refused until ``blobseal attest-intermediates`` signs them). The
repository only stores and returns what it is given: the custody verifies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
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
    signing_key: str | None = None
    signature: bytes | None = field(default=None, repr=False)

    def signed(self, signing_key: str, signature: bytes) -> IntermediateRow:
        return replace(self, signing_key=signing_key, signature=signature)


_FIELDS = tuple(f.name for f in fields(IntermediateRow))


def _row(record: Any) -> IntermediateRow:
    return IntermediateRow(**{name: record[name] for name in _FIELDS if name in record})


class IntermediateKeyRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def insert(self, row: IntermediateRow) -> None:
        await self._conn.execute(
            "INSERT INTO intermediate_keys (id, kek_reference, wrapped_key, created_by, created_at, use_until, "
            "max_files, signing_key, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", row.id,
            row.kek_reference, row.wrapped_key, row.created_by, row.created_at, row.use_until, row.max_files,
            row.signing_key, row.signature)

    async def get(self, intermediate_id: uuid.UUID) -> IntermediateRow | None:
        record = await self._conn.fetchrow("SELECT * FROM intermediate_keys WHERE id = $1", intermediate_id)
        return None if record is None else _row(record)

    async def not_wrapped_by(self, kek_reference: str, limit: int) -> list[IntermediateRow]:
        """Intermediate keys wrapped by another KEK version than ``kek_reference`` (to rewrap)."""
        rows = await self._conn.fetch(
            "SELECT * FROM intermediate_keys WHERE kek_reference <> $1 ORDER BY created_at, id LIMIT $2",
            kek_reference, limit)
        return [_row(r) for r in rows]

    async def rewrap(self, row: IntermediateRow, again: IntermediateRow) -> bool:
        """Replace the wrapping and its signature (a compare-and-set on the old KEK reference and wrapping)."""
        status = await self._conn.execute(
            "UPDATE intermediate_keys SET kek_reference = $4, wrapped_key = $5, signing_key = $6, signature = $7 "
            "WHERE id = $1 AND kek_reference = $2 AND wrapped_key = $3", row.id, row.kek_reference, row.wrapped_key,
            again.kek_reference, again.wrapped_key, again.signing_key, again.signature)
        return bool(status.endswith(" 1"))

    async def unsigned(self, limit: int) -> list[IntermediateRow]:
        """Rows without a signature (made before migration 8), oldest first."""
        rows = await self._conn.fetch(
            "SELECT * FROM intermediate_keys WHERE signature IS NULL ORDER BY created_at, id LIMIT $1", limit)
        return [_row(r) for r in rows]

    async def attest(self, row: IntermediateRow) -> bool:
        """Store the signature of an unsigned row, if it is still the row that was signed."""
        status = await self._conn.execute(
            "UPDATE intermediate_keys SET signing_key = $4, signature = $5 "
            "WHERE id = $1 AND kek_reference = $2 AND wrapped_key = $3 AND signature IS NULL",
            row.id, row.kek_reference, row.wrapped_key, row.signing_key, row.signature)
        return bool(status.endswith(" 1"))

    async def kek_references(self) -> dict[str, int]:
        """Each KEK version still wrapping intermediate keys, with how many."""
        rows = await self._conn.fetch(
            "SELECT kek_reference, count(*) AS n FROM intermediate_keys GROUP BY kek_reference ORDER BY 1")
        return {r["kek_reference"]: r["n"] for r in rows}

    async def any_recorded(self) -> bool:
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM intermediate_keys)"))

    async def any_signed(self) -> bool:
        return bool(await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM intermediate_keys WHERE signature IS NOT NULL)"))
