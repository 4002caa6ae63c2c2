"""Appending to the access log: one row per access, chained, group-committed, fail-closed.

A row holds the time, the operation, the file id, the caller, the client address, the byte range,
the bytes sent and the outcome (``ok``, ``intent`` before a state change, ``aborted`` for a download
or upload cut short, ``forbidden: needs <role>``, or the error's type), and its place in this
writer's chain with its MAC (``shared.crypto.chain``; the key: ``ChainKey``). Rows that arrive while
a write is in flight go together in the next one: one statement for many accesses, each caller
still waiting for its own row. A write that fails (or whose commit is uncertain) ends the chain: the
next batch starts a new one, so a chain never has a gap the writer made itself.

Recording never fails silently: a failed write is counted (``blobseal_audit_failures_total``) and
logged; with ``AUDIT_FAIL_OPEN=false`` (the default) the access it would record is refused (503
``AuditUnavailableError``) rather than served unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from shared.clock import Clock, utcnow
from shared.crypto.chain import GENESIS, link
from shared.db.access_log import AccessLogRepository, LoggedRow, NewRow
from shared.db.file_keys import FileKeyRepository
from shared.db.pool import Database
from shared.errors import AuditUnavailableError, BlobsealError, KeyVaultError, SecretNotFoundError, VaultMissingError
from shared.identity import Caller
from shared.metrics import AUDIT_FAILURES
from shared.vault.base import KeyVault, set_in_new_vault

__all__ = ["DEFAULT_CHAIN_KEY_NAME", "AuditLog", "ChainKey"]

log = logging.getLogger(__name__)

DEFAULT_CHAIN_KEY_NAME = "blobseal-audit-chain"
MAX_BATCH = 500  # rows per INSERT when many accesses wait at once


class ChainKey:
    """The key of the access log's chains: a vault secret, made only while nothing depends on it (fail closed)."""

    def __init__(self, vault: KeyVault, db: Database, name: str = DEFAULT_CHAIN_KEY_NAME) -> None:
        self._vault, self._db, self.name = vault, db, name
        self._key: bytes | None = None

    async def get(self) -> bytes:
        """The key, read from the vault once per process (it never changes: a new one would orphan every chain),
        so a vault outage does not stop the access log of a running worker."""
        if self._key is None:
            self._key = await self._load()
        return self._key

    async def _load(self) -> bytes:
        try:
            return (await self._vault.get_secret(self.name)).value
        except (SecretNotFoundError, VaultMissingError) as exc:
            await self._refuse_if_depended_on(vault_missing=isinstance(exc, VaultMissingError))
        await set_in_new_vault(self._vault, self.name, secrets.token_bytes(32))
        log.warning("made the access log's chain key (vault secret %s)", self.name)
        return (await self._vault.get_secret(self.name)).value

    async def _refuse_if_depended_on(self, *, vault_missing: bool) -> None:
        async with self._db.connection("audit_chain_key") as conn:
            chained = await AccessLogRepository(conn).any_chained()
            keys = vault_missing and await FileKeyRepository(conn).any_recorded()
        if chained or keys:
            raise KeyVaultError("the access log's chain key (or its vault) is missing while chained rows or keys are "
                                "recorded: restore it (a new one would make every row look forged)",
                                operation="audit_chain_key", details={"secret_name": self.name})


@dataclass
class _Chain:
    id: uuid.UUID
    seq: int = 0
    mac: bytes = field(default=GENESIS, repr=False)


class AuditLog:
    def __init__(self, db: Database, key: ChainKey, *, fail_open: bool = False, clock: Clock = utcnow) -> None:
        self._db, self._key, self._fail_open, self._clock = db, key, fail_open, clock
        self._waiting: list[tuple[NewRow, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._chain: _Chain | None = None

    async def record(self, operation: str, caller: Caller, *, file_id: uuid.UUID | None = None,
                     span: tuple[int, int] | None = None, bytes_sent: int | None = None, outcome: str = "ok",
                     required: bool = True) -> None:
        """Append one row. A failure is counted and logged; it is raised (503) when ``required``
        (the access must not happen unrecorded) unless the log is fail-open."""
        start, end = span if span else (None, None)
        row = NewRow(self._clock(), operation, file_id, caller.name[:200], caller.address, start, end, bytes_sent,
                     outcome[:100])
        try:
            await self._append(row)
        except BlobsealError as exc:
            AUDIT_FAILURES.inc()
            log.error("access log write failed (%s on file %s by %s): %s", operation, file_id, caller.name, exc)
            if required and not self._fail_open:
                raise AuditUnavailableError("the access log cannot be written; access refused (AUDIT_FAIL_OPEN=false)",
                                            operation="audit") from exc

    async def query(self, *, file_id: uuid.UUID | None = None, since: datetime | None = None,
                    caller: str | None = None, limit: int = 1000) -> list[LoggedRow]:
        async with self._db.connection("audit_query") as conn:
            return await AccessLogRepository(conn).query(file_id=file_id, since=since, caller=caller, limit=limit)

    async def _append(self, row: NewRow) -> None:
        """Write ``row`` durably, in the next batch (see the module docstring)."""
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
                await self._write([row for row, _ in batch])
            except Exception as exc:  # each waiter handles it (counted, logged, refused or not)
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)

    async def _write(self, rows: list[NewRow]) -> None:
        key = await self._key.get()
        chain, self._chain = self._chain or _Chain(uuid.uuid4()), None  # until written: a failure starts anew
        seqs, macs = [], []
        seq, mac = chain.seq, chain.mac
        for row in rows:
            seq += 1
            mac = link(key, chain.id, seq, mac, row.fields())
            seqs.append(seq)
            macs.append(mac)
        async with self._db.connection("audit") as conn:
            await AccessLogRepository(conn).append(rows, chain.id, seqs, macs)
        self._chain = _Chain(chain.id, seq, mac)
