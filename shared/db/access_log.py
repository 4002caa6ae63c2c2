"""The ``access_log`` repository: every statement on the log, on a caller's connection.

Rows are appended in batches (one statement for many accesses: group commit), each with its chain,
its number in the chain and its MAC (``shared.crypto.chain``); they are read back for ``audit`` and,
chain by chain in order, for verification; digests read each chain's newest row. Rows leave only
through ``purge_access_log`` (a SECURITY DEFINER function only the purge role may run, refusing any
cutoff newer than the minimum retention, migration 9). Nothing here computes or checks a MAC.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.crypto.chain import row_fields

__all__ = ["AccessLogRepository", "ChainHead", "LoggedRow", "NewRow"]


@dataclass(frozen=True)
class NewRow:
    at: datetime
    operation: str
    file_id: uuid.UUID | None
    caller: str
    client_address: str | None
    range_start: int | None
    range_end: int | None
    bytes_sent: int | None
    outcome: str

    def fields(self) -> list[bytes]:
        """What the row's MAC covers (``shared.crypto.chain.row_fields``)."""
        return row_fields(self.at, self.operation, self.file_id, self.caller, self.client_address, self.range_start,
                          self.range_end, self.bytes_sent, self.outcome)

    def as_dict(self) -> dict[str, Any]:
        span = None if self.range_start is None or self.range_end is None else f"{self.range_start}-{self.range_end}"
        return {"at": self.at.isoformat(), "operation": self.operation,
                "file_id": str(self.file_id) if self.file_id else None, "caller": self.caller,
                "client_address": self.client_address, "range": span, "bytes_sent": self.bytes_sent,
                "outcome": self.outcome}


@dataclass(frozen=True)
class LoggedRow(NewRow):
    id: int = 0
    chain: uuid.UUID | None = None
    seq: int | None = None
    mac: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ChainHead:
    """A chain's newest row (for a digest), and how many rows it holds after ``after_seq``."""

    chain: uuid.UUID
    last_seq: int
    last_mac: bytes = field(repr=False)
    rows: int
    first_at: datetime
    last_at: datetime


_NEW_FIELDS = ("at", "operation", "file_id", "caller", "client_address", "range_start", "range_end", "bytes_sent",
               "outcome")
_INSERT = (
    "INSERT INTO access_log (at, operation, file_id, caller, client_address, range_start, range_end, bytes_sent, "
    "outcome, chain, seq, mac) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], "
    "$5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::uuid[], $11::bigint[], $12::bytea[])")
_COLUMNS = ("id, at, operation, file_id, caller, client_address, range_start, range_end, bytes_sent, outcome, "
            "chain, seq, mac")


def _logged(record: Any) -> LoggedRow:
    return LoggedRow(**dict(record))


class AccessLogRepository:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def any_chained(self) -> bool:
        """Whether any row is chained (the chain key is then depended on)."""
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM access_log WHERE chain IS NOT NULL)"))

    async def append(self, rows: Sequence[NewRow], chain: uuid.UUID, seqs: Sequence[int],
                     macs: Sequence[bytes]) -> None:
        columns = [[getattr(row, name) for row in rows] for name in _NEW_FIELDS]
        await self._conn.execute(_INSERT, *columns, [chain] * len(rows), list(seqs), list(macs))

    async def query(self, *, file_id: uuid.UUID | None, since: datetime | None, caller: str | None,
                    limit: int) -> list[LoggedRow]:
        sql = (f"SELECT {_COLUMNS} FROM access_log WHERE ($1::uuid IS NULL OR file_id = $1) "  # noqa: S608 - constant
               "AND ($2::timestamptz IS NULL OR at >= $2) AND ($3::text IS NULL OR caller = $3) "
               "ORDER BY at, id LIMIT $4")
        return [_logged(r) for r in await self._conn.fetch(sql, file_id, since, caller, limit)]

    async def chained(self, after: tuple[uuid.UUID, int] | None, limit: int) -> list[LoggedRow]:
        """Chained rows in chain order (by chain, then number), after ``(chain, seq)``: the verifier reads them
        in pages (rows from before chains: ``unchained``)."""
        start = after or (uuid.UUID(int=0), -1)
        sql = (f"SELECT {_COLUMNS} FROM access_log WHERE chain IS NOT NULL AND (chain, seq) > ($1, $2) "  # noqa: S608
               "ORDER BY chain, seq LIMIT $3")
        return [_logged(r) for r in await self._conn.fetch(sql, start[0], start[1], limit)]

    async def heads(self, after: dict[uuid.UUID, int], since: datetime | None) -> list[ChainHead]:
        """Each chain with rows written since ``since`` (None: ever) numbered past what ``after`` gives for it
        (0 for a chain not seen yet): its newest row. Pinning that row pins every row before it."""
        sql = """
            SELECT chain, max(seq) AS last_seq, count(*) AS rows, min(at) AS first_at, max(at) AS last_at
              FROM access_log l
             WHERE chain IS NOT NULL AND ($3::timestamptz IS NULL OR at >= $3)
               AND seq > COALESCE((SELECT s.seq FROM unnest($1::uuid[], $2::bigint[]) AS s(chain, seq)
                                    WHERE s.chain = l.chain), 0)
             GROUP BY chain ORDER BY chain"""
        found = await self._conn.fetch(sql, list(after), list(after.values()), since)
        macs = await self._macs([(r["chain"], r["last_seq"]) for r in found])
        return [ChainHead(r["chain"], r["last_seq"], macs[(r["chain"], r["last_seq"])], r["rows"], r["first_at"],
                          r["last_at"]) for r in found]

    async def unchained(self, after_id: int, limit: int, *, since: datetime | None = None) -> list[LoggedRow]:
        """Rows from before chains existed (migration 9), by id after ``after_id`` (at or after ``since``)."""
        sql = (f"SELECT {_COLUMNS} FROM access_log WHERE chain IS NULL AND id > $1 "  # noqa: S608 - constant
               "AND ($2::timestamptz IS NULL OR at >= $2) ORDER BY id LIMIT $3")
        return [_logged(r) for r in await self._conn.fetch(sql, after_id, since, limit)]

    async def row_at(self, chain: uuid.UUID, seq: int) -> LoggedRow | None:
        record = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM access_log WHERE chain = $1 AND seq = $2", chain, seq)  # noqa: S608 - constant
        return None if record is None else _logged(record)

    async def purge_plan(self, before: datetime) -> dict[uuid.UUID, tuple[int, bytes]]:
        """Per chain, its last row older than ``before``: what a purge to ``before`` removes up to."""
        sql = """
            SELECT DISTINCT ON (chain) chain, seq, mac FROM access_log
             WHERE chain IS NOT NULL AND at < $1 ORDER BY chain, seq DESC"""
        return {r["chain"]: (r["seq"], bytes(r["mac"])) for r in await self._conn.fetch(sql, before)}

    async def purge(self, before: datetime) -> int:
        return int(await self._conn.fetchval("SELECT purge_access_log($1)", before))

    async def _macs(self, keys: list[tuple[uuid.UUID, int]]) -> dict[tuple[uuid.UUID, int], bytes]:
        if not keys:
            return {}
        rows = await self._conn.fetch(
            "SELECT chain, seq, mac FROM access_log "
            "WHERE (chain, seq) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))",
            [k[0] for k in keys], [k[1] for k in keys])
        return {(r["chain"], r["seq"]): bytes(r["mac"]) for r in rows}
