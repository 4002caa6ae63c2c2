"""The access log: who read, looked up, uploaded, rotated or deleted which file, and how it ended.

One row per access, in PostgreSQL (``access_log``, append-only: a trigger refuses updates and
deletes; only ``purge_access_log`` removes rows older than the retention). A row holds the time,
the operation, the file id, the caller, the client address, the byte range, the bytes sent and
the outcome (``ok``, ``aborted`` for a download cut short, or the error's type).

Callers: the Entra principal the platform passes when App Service authentication is on
(``entra:<name>``), else the function key, by its name when ``FUNCTION_KEY_NAMES`` (or, locally,
``LOCAL_FUNCTION_KEYS``) names it, else by its fingerprint (``key:<12 hex of SHA-256>``: the key
itself is never stored); ``cli:<user>@<host>`` and ``timer`` for what the app does itself.

Recording never fails silently: a failed write is counted (``blobseal_audit_failures_total``)
and logged; with ``AUDIT_FAIL_OPEN=false`` (the default) the access it would record is refused
(503 ``AuditUnavailableError``) rather than served unrecorded.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.clock import Clock, utcnow
from shared.config import key_fingerprint
from shared.db.pool import Database
from shared.errors import AuditUnavailableError, DatabaseError
from shared.metrics import AUDIT_FAILURES

__all__ = ["SYSTEM", "Access", "AuditLog", "AuditRecord", "cli_access"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    """Who is asking, and from where."""

    caller: str
    address: str | None = None


SYSTEM = Access("system")  # what the app does by itself (timers, the reconciler)


def cli_access() -> Access:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Access(f"cli:{user}@{socket.gethostname()}")


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    operation: str
    file_id: uuid.UUID | None
    caller: str
    client_address: str | None
    range_start: int | None
    range_end: int | None
    bytes_sent: int | None
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "operation": self.operation,
                "file_id": str(self.file_id) if self.file_id else None, "caller": self.caller,
                "client_address": self.client_address, "range": _range(self.range_start, self.range_end),
                "bytes_sent": self.bytes_sent, "outcome": self.outcome}


def _range(start: int | None, end: int | None) -> str | None:
    return None if start is None or end is None else f"{start}-{end}"


MAX_BATCH = 500  # rows per INSERT when many accesses wait at once
_INSERT_ROWS = (
    "INSERT INTO access_log (at, operation, file_id, caller, client_address, range_start, range_end, bytes_sent, "
    "outcome) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::text[], "
    "$6::bigint[], $7::bigint[], $8::bigint[], $9::text[])")


class AuditLog:
    def __init__(self, db: Database, *, fail_open: bool = False, key_names: Mapping[str, str] | None = None,
                 clock: Clock = utcnow) -> None:
        self._db, self._fail_open, self._clock = db, fail_open, clock
        self._key_names = dict(key_names or {})  # fingerprint -> name
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def caller(self, *, principal: str | None, key: str | None) -> str:
        """The caller's name for the log (see the module docstring)."""
        if principal:
            return f"entra:{principal}"
        if key:
            fingerprint = key_fingerprint(key)
            return f"key:{self._key_names.get(fingerprint, fingerprint)}"
        return "anonymous"

    async def record(self, operation: str, access: Access, *, file_id: uuid.UUID | None = None,
                     span: tuple[int, int] | None = None, bytes_sent: int | None = None, outcome: str = "ok",
                     required: bool = True) -> None:
        """Append one row. A failure is counted and logged; it is raised (503) when ``required``
        (the access must not happen unrecorded) unless the log is fail-open."""
        start, end = span if span else (None, None)
        row = (self._clock(), operation, file_id, access.caller[:200], access.address, start, end, bytes_sent,
               outcome[:100])
        try:
            await self._append(row)
        except DatabaseError as exc:
            AUDIT_FAILURES.inc()
            log.error("access log write failed (%s on file %s by %s): %s", operation, file_id, access.caller, exc)
            if required and not self._fail_open:
                raise AuditUnavailableError("the access log cannot be written; access refused (AUDIT_FAIL_OPEN=false)",
                                            operation="audit") from exc

    async def _append(self, row: tuple[Any, ...]) -> None:
        """Write ``row`` durably. Rows that arrive while a write is in flight go together in the next
        one: one statement and one commit (one WAL flush) for many accesses, each caller still
        waiting until its own row is committed."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._waiting = [entry for entry in self._waiting if entry[1].get_loop() is loop]  # not a dead loop's
            self._writer = loop.create_task(self._write_waiting())
        self._waiting.append((row, written))
        await written

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                async with self._db.connection("audit") as conn:
                    await conn.execute(_INSERT_ROWS, *map(list, zip(*(row for row, _ in batch), strict=True)))
            except Exception as exc:  # each waiter handles it (counted, logged, refused or not)
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)

    async def query(self, *, file_id: uuid.UUID | None = None, since: datetime | None = None,
                    caller: str | None = None, limit: int = 1000) -> list[AuditRecord]:
        sql = ("SELECT at, operation, file_id, caller, client_address, range_start, range_end, bytes_sent, outcome "
               "FROM access_log WHERE ($1::uuid IS NULL OR file_id = $1) AND ($2::timestamptz IS NULL OR at >= $2) "
               "AND ($3::text IS NULL OR caller = $3) ORDER BY at, id LIMIT $4")
        async with self._db.connection("audit_query") as conn:
            rows = await conn.fetch(sql, file_id, since, caller, limit)
        return [AuditRecord(**dict(row)) for row in rows]

    async def purge(self, older_than: datetime) -> int:
        """Remove rows older than the retention (the only way rows leave the log)."""
        async with self._db.connection("audit_purge") as conn:
            return int(await conn.fetchval("SELECT purge_access_log($1)", older_than))
