"""The ``file_keys`` repository: one SQL statement per method, on a caller's connection.

The repository neither opens connections nor decides anything: the key service runs it
inside ``Database.transaction()`` (its own or a caller's), so statements of several
repositories can commit together. Rows come back as ``KeyRow``; no key material passes
through here: references, and in envelope mode wrapped keys (useless without the KEK).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Literal

__all__ = ["Custody", "FileKeyRepository", "KeyRow", "KeyState", "Placement"]

KeyState = Literal["pending", "active", "retired"]
Custody = Literal["secret", "envelope"]


@dataclass(frozen=True)
class Placement:
    """Where a file key lives: a vault secret version, or wrapped by an intermediate key (envelope)."""

    custody: Custody
    vault_reference: str | None = None
    wrapped_key: bytes | None = field(default=None, repr=False)
    intermediate_id: uuid.UUID | None = None
    intent: str | None = None  # not a column: the announcement a secret placement removes once recorded


@dataclass(frozen=True)
class KeyRow:
    """One row of ``file_keys``."""

    id: int
    file_id: uuid.UUID
    key_reference: str
    created_at: datetime
    expires_at: datetime | None
    state: KeyState
    retired_at: datetime | None
    vault_disabled_at: datetime | None
    rotation_claimed_by: str | None
    rotation_claimed_at: datetime | None
    rotation_lease_until: datetime | None
    rotation_failures: int = 0
    rotation_next_attempt_at: datetime | None = None
    rotation_last_error: str | None = None
    custody: Custody = "secret"
    vault_reference: str | None = None
    wrapped_key: bytes | None = field(default=None, repr=False)
    intermediate_id: uuid.UUID | None = None

    @property
    def placement(self) -> Placement:
        """Where the key lives; a secret row without a ``vault_reference`` is at its ``key_reference``."""
        vault_reference = self.vault_reference or (self.key_reference if self.custody == "secret" else None)
        return Placement(self.custody, vault_reference, self.wrapped_key, self.intermediate_id)


_FIELDS = tuple(f.name for f in fields(KeyRow))


def _row(record: Any) -> KeyRow | None:
    # Picks the known columns, so a later migration may add columns without breaking this.
    return None if record is None else KeyRow(**{name: record[name] for name in _FIELDS if name in record})


def _rows(records: list[Any]) -> list[KeyRow]:
    return [row for row in map(_row, records) if row is not None]


class FileKeyRepository:
    """Statements on ``file_keys`` over one connection (usually inside a transaction)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def active(self, file_id: uuid.UUID) -> KeyRow | None:
        sql = "SELECT * FROM file_keys WHERE file_id = $1 AND state = 'active'"
        return _row(await self._conn.fetchrow(sql, file_id))

    async def pending(self, file_id: uuid.UUID) -> KeyRow | None:
        sql = "SELECT * FROM file_keys WHERE file_id = $1 AND state = 'pending'"
        return _row(await self._conn.fetchrow(sql, file_id))

    async def by_reference(self, file_id: uuid.UUID, reference: str) -> KeyRow | None:
        sql = "SELECT * FROM file_keys WHERE file_id = $1 AND key_reference = $2"
        return _row(await self._conn.fetchrow(sql, file_id, reference))

    async def insert(
        self, file_id: uuid.UUID, reference: str, placement: Placement, *, state: KeyState, created_at: datetime,
        expires_at: datetime | None
    ) -> KeyRow | None:
        """Insert a key; ``None`` if the file already has one in that state (a lost race)."""
        sql = (
            "INSERT INTO file_keys (file_id, key_reference, created_at, expires_at, state, custody, "
            "vault_reference, wrapped_key, intermediate_id) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING *"
        )
        values = (file_id, reference, created_at, expires_at, state, *_columns(placement))
        return _row(await self._conn.fetchrow(sql, *values))

    async def of_file(self, file_id: uuid.UUID) -> list[KeyRow]:
        """Every key row of the file, whatever its state or custody."""
        return _rows(await self._conn.fetch("SELECT * FROM file_keys WHERE file_id = $1 ORDER BY id", file_id))

    async def lock_file(self, file_id: uuid.UUID) -> bool:
        """Lock the file's row for this transaction (a deletion waits for it); False if the file is deleted.
        A key of a file with no row yet (the key service used on its own) is not refused."""
        status = await self._conn.fetchval("SELECT status FROM files WHERE file_id = $1 FOR SHARE", file_id)
        return bool(status != "deleted")

    async def readable_elsewhere(self, custody: Custody, after: int, limit: int) -> list[KeyRow]:
        """Keys held outside ``custody`` that can still be read (not retired and disabled), by id after ``after``."""
        sql = (
            "SELECT * FROM file_keys WHERE custody <> $1 AND (state <> 'retired' OR vault_disabled_at IS NULL) "
            "AND id > $2 ORDER BY id LIMIT $3"
        )
        return _rows(await self._conn.fetch(sql, custody, after, limit))

    async def move(self, row: KeyRow, placement: Placement) -> bool:
        """Record the key of ``row`` at ``placement`` (a compare-and-set on where it was)."""
        status = await self._conn.execute(
            "UPDATE file_keys SET custody = $3, vault_reference = $4, wrapped_key = $5, intermediate_id = $6 "
            "WHERE id = $1 AND custody = $2", row.id, row.custody, *_columns(placement))
        return _count(status) == 1

    async def claim(self, file_id: uuid.UUID, worker: str, *, now: datetime, lease_until: datetime) -> KeyRow | None:
        """Claim the rotation of a file if unclaimed, ours, or its lease ran out."""
        sql = (
            "UPDATE file_keys SET rotation_claimed_by = $2, rotation_claimed_at = $3, "
            "rotation_lease_until = $4 WHERE file_id = $1 AND state = 'active' AND "
            "(rotation_claimed_by IS NULL OR rotation_claimed_by = $2 OR rotation_lease_until <= $3) "
            "RETURNING *"
        )
        return _row(await self._conn.fetchrow(sql, file_id, worker, now, lease_until))

    async def release_claim(self, file_id: uuid.UUID, worker: str) -> bool:
        status = await self._conn.execute(
            "UPDATE file_keys SET rotation_claimed_by = NULL, rotation_claimed_at = NULL, "
            "rotation_lease_until = NULL WHERE file_id = $1 AND state = 'active' AND rotation_claimed_by = $2",
            file_id,
            worker,
        )
        return _count(status) == 1

    async def release_any_claim(self, file_id: uuid.UUID) -> bool:
        status = await self._conn.execute(
            "UPDATE file_keys SET rotation_claimed_by = NULL, rotation_claimed_at = NULL, rotation_lease_until = NULL "
            "WHERE file_id = $1 AND state = 'active' AND rotation_claimed_by IS NOT NULL", file_id)
        return _count(status) == 1

    async def retire_claimed(self, file_id: uuid.UUID, reference: str, worker: str, *, now: datetime) -> bool:
        """Retire the active key if ``worker`` still holds its rotation claim."""
        status = await self._conn.execute(
            "UPDATE file_keys SET state = 'retired', retired_at = $4, expires_at = NULL, rotation_claimed_by = NULL, "
            "rotation_claimed_at = NULL, rotation_lease_until = NULL "
            "WHERE file_id = $1 AND key_reference = $2 AND state = 'active' AND rotation_claimed_by = $3",
            file_id,
            reference,
            worker,
            now,
        )
        return _count(status) == 1

    async def activate_pending(self, file_id: uuid.UUID, reference: str) -> KeyRow | None:
        sql = (
            "UPDATE file_keys SET state = 'active' WHERE file_id = $1 AND key_reference = $2 "
            "AND state = 'pending' RETURNING *"
        )
        return _row(await self._conn.fetchrow(sql, file_id, reference))

    async def delete_pending(self, file_id: uuid.UUID, reference: str) -> KeyRow | None:
        """Delete the pending key; the row deleted (its placement, to discard), or ``None``."""
        sql = "DELETE FROM file_keys WHERE file_id = $1 AND key_reference = $2 AND state = 'pending' RETURNING *"
        return _row(await self._conn.fetchrow(sql, file_id, reference))

    async def due(self, now: datetime, limit: int) -> list[KeyRow]:
        """Active keys of encrypted files, expired at ``now`` and not backing off, oldest expiry first.

        A file whose rotation keeps failing waits for its ``rotation_next_attempt_at``, so it
        never holds the head of the list; a key whose file is not (or no longer) encrypted with
        it is not listed at all.
        """
        # A retired key's expiry is cleared (``retire_claimed``): the column's statistics then describe
        # the keys that can fall due, and the planner reads them from ``file_keys_due`` and each file
        # by its primary key (with retired keys' past expiries counted, it scanned every file).
        sql = (
            "SELECT k.* FROM file_keys k JOIN files f ON f.file_id = k.file_id "
            "AND f.status = 'encrypted' AND f.key_reference = k.key_reference "
            "WHERE k.state = 'active' AND k.expires_at <= $1 "
            "AND (k.rotation_next_attempt_at IS NULL OR k.rotation_next_attempt_at <= $1) "
            "ORDER BY k.expires_at, k.id LIMIT $2"
        )
        return _rows(await self._conn.fetch(sql, now, limit))

    async def rotation_failed(self, file_id: uuid.UUID, reference: str, *, error: str,
                              next_attempt_at: datetime) -> int:
        """Count a failed rotation of the active key and set when to try again; returns the count."""
        sql = (
            "UPDATE file_keys SET rotation_failures = rotation_failures + 1, rotation_next_attempt_at = $4, "
            "rotation_last_error = $3 WHERE file_id = $1 AND key_reference = $2 AND state = 'active' "
            "RETURNING rotation_failures"
        )
        return int(await self._conn.fetchval(sql, file_id, reference, error[:500], next_attempt_at) or 0)

    async def stalled_rotations(self, now: datetime, limit: int) -> list[KeyRow]:
        """Active keys whose rotation was begun and left: a claim whose lease ran out, or a pending key
        with no live claim (a forced rotation that stopped half way)."""
        # Two disjoint branches, each read from its own index (``file_keys_claims``, and the few pending
        # keys of ``file_keys_one_pending``), instead of an OR that walked every active key.
        sql = (
            "SELECT * FROM (SELECT a.* FROM file_keys a WHERE a.state = 'active' "
            "AND (a.rotation_next_attempt_at IS NULL OR a.rotation_next_attempt_at <= $1) "
            "AND a.rotation_claimed_by IS NOT NULL AND a.rotation_lease_until <= $1 "
            "UNION ALL SELECT a.* FROM file_keys p JOIN file_keys a ON a.file_id = p.file_id AND a.state = 'active' "
            "WHERE p.state = 'pending' AND a.rotation_claimed_by IS NULL "
            "AND (a.rotation_next_attempt_at IS NULL OR a.rotation_next_attempt_at <= $1)) s ORDER BY id LIMIT $2"
        )
        return _rows(await self._conn.fetch(sql, now, limit))

    async def references(self, file_id: uuid.UUID) -> set[str]:
        """Every key and vault reference recorded for the file, whatever its state or custody."""
        rows = await self._conn.fetch("SELECT key_reference, vault_reference FROM file_keys WHERE file_id = $1",
                                      file_id)
        return {r["key_reference"] for r in rows} | {r["vault_reference"] for r in rows if r["vault_reference"]}

    async def expire(self, file_id: uuid.UUID, now: datetime) -> KeyRow | None:
        sql = (
            "UPDATE file_keys SET expires_at = $2 WHERE file_id = $1 AND state = 'active' "
            "RETURNING *"
        )
        return _row(await self._conn.fetchrow(sql, file_id, now))

    async def mark_vault_disabled(self, file_id: uuid.UUID, reference: str, now: datetime) -> None:
        await self._conn.execute(
            "UPDATE file_keys SET vault_disabled_at = $3 WHERE file_id = $1 AND key_reference = $2 "
            "AND state = 'retired' AND vault_disabled_at IS NULL",
            file_id,
            reference,
            now,
        )

    async def retired_not_disabled(self, limit: int, file_id: uuid.UUID | None = None) -> list[KeyRow]:
        """Retired keys whose vault version still awaits disabling, oldest first."""
        sql = (
            "SELECT * FROM file_keys WHERE state = 'retired' AND vault_disabled_at IS NULL "
            "AND ($2::uuid IS NULL OR file_id = $2) ORDER BY retired_at, id LIMIT $1"
        )
        return _rows(await self._conn.fetch(sql, limit, file_id))

    async def any_recorded(self) -> bool:
        """Whether any key is recorded at all (a vault must then hold keys)."""
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM file_keys)"))

    async def delete_file(self, file_id: uuid.UUID) -> int:
        return _count(await self._conn.execute("DELETE FROM file_keys WHERE file_id = $1", file_id))


def _columns(placement: Placement) -> tuple[Any, ...]:
    return placement.custody, placement.vault_reference, placement.wrapped_key, placement.intermediate_id


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 1``."""
    return int(status.rsplit(" ", 1)[-1])
