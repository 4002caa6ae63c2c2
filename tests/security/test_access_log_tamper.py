"""The access log against whoever holds the database (docs/THREATS.md, "a database writer"): every row
deleted, edited, reordered or inserted is found by ``blobseal audit verify``, which exits non-zero and
names the first bad row; the digests in their container pin what the log held, so not even the holder
of the chain key can rewrite what a digest covers; a purge is allowed only past the retention, and
leaves a digest after which the log still verifies.

The attacker here is the strongest the database allows: the tables' owner, triggers switched off
(``session_replication_role = replica``), constraints dropped. (What a plain login cannot do at all:
tests/infra/test_db_roles.py.)
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from localinfra.azurite import Azurite
from shared.audit.log import AuditLog
from shared.bootstrap import Services
from shared.cli.main import main as cli_main
from shared.clock import utcnow
from shared.crypto.chain import link
from shared.db.access_log import AccessLogRepository, LoggedRow
from shared.errors import InvalidRequestError
from shared.identity import ALL_ROLES, Caller
from tests.support.stack import OPERATOR, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

ALICE = Caller("entra:alice@contoso.com", ALL_ROLES, "10.0.0.1")
BOB = Caller("key:bob", ALL_ROLES, "10.0.0.2")


@pytest.fixture
async def logged(make_stack: StackFactory, azurite: Azurite, database_url: str, vault_dir: Path,
                 tmp_path: Path) -> AsyncIterator[tuple[Services, dict[str, str]]]:
    """A deployment whose log has two chains, a digest, then more rows after it; and its settings for the CLI."""
    suffix = os.urandom(4).hex()
    env = {"DataStorage": azurite.connection_string, "DATABASE_URL": database_url,
           "KEY_VAULT_LOCAL_PATH": str(vault_dir), "INGEST_CONTAINER": f"ingest-{suffix}",
           "PROTECTED_CONTAINER": f"protected-{suffix}", "AUDIT_DIGEST_CONTAINER": f"digests-{suffix}",
           "AUDIT_RETENTION_DAYS": "60"}
    stack = await make_stack(**env)
    other = AuditLog(stack.db, stack.maintenance._chain_key)  # a second instance: a chain of its own
    for n in range(6):
        await stack.files.guard.audit.record("download", ALICE, file_id=uuid.uuid4(), span=(0, n), bytes_sent=n + 1)
        await other.record("metadata", BOB, file_id=uuid.uuid4())
    assert await stack.maintenance.audit_digest() is not None
    for _ in range(3):
        await stack.files.guard.audit.record("lookup", ALICE)
    yield stack, {**env, "LOCAL_FUNCTION_KEY": "unused"}


async def rows(stack: Services) -> list[LoggedRow]:
    async with stack.db.connection() as conn:
        return await AccessLogRepository(conn).chained(None, 10_000)


@asynccontextmanager
async def owner(stack: Services) -> AsyncIterator[asyncpg.Connection]:
    """The database's owner with its triggers off: the attacker at its strongest."""
    async with stack.db.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        yield conn


def verify_cli(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["audit", "verify"], environ=env)
    return code, json.loads(out.getvalue()), err.getvalue()


async def verify(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    return await asyncio.to_thread(verify_cli, env)


async def test_an_untouched_log_verifies(logged: tuple[Services, dict[str, str]]) -> None:
    _, env = logged
    code, report, _ = await verify(env)
    assert code == 0 and report["ok"] and report["problems"] == 0
    assert report["chains"] >= 2 and report["digests"] == 1 and report["undigested"] >= 3


def middle(all_rows: list[LoggedRow]) -> LoggedRow:
    """A digested row in the middle of the first chain (rows before it and after it)."""
    return next(r for r in all_rows if r.seq == 3)


async def edit(stack: Services, target: LoggedRow) -> int:
    async with owner(stack) as conn:
        await conn.execute("UPDATE access_log SET caller = 'entra:someone-else' WHERE id = $1", target.id)
    return target.id


async def edit_time(stack: Services, target: LoggedRow) -> int:
    async with owner(stack) as conn:
        await conn.execute("UPDATE access_log SET at = at - interval '1 hour' WHERE id = $1", target.id)
    return target.id


async def delete(stack: Services, target: LoggedRow) -> int:
    async with owner(stack) as conn:
        await conn.execute("DELETE FROM access_log WHERE id = $1", target.id)
        return int(await conn.fetchval("SELECT id FROM access_log WHERE chain = $1 AND seq = $2",
                                       target.chain, (target.seq or 0) + 1))


async def reorder(stack: Services, target: LoggedRow) -> int:
    """Two neighbours swap places (their numbers), each keeping its own MAC."""
    async with owner(stack) as conn:
        await conn.execute("UPDATE access_log SET seq = -seq WHERE chain = $1 AND seq IN ($2, $3)",
                           target.chain, target.seq, (target.seq or 0) + 1)
        await conn.execute("UPDATE access_log SET seq = CASE WHEN seq = -$2::bigint THEN $3::bigint ELSE $2::bigint "
                           "END WHERE chain = $1 AND seq < 0", target.chain, target.seq, (target.seq or 0) + 1)
    return target.id


async def insert_into_chain(stack: Services, target: LoggedRow) -> int:
    """A row slipped in after the target: the rows after it renumbered to make room."""
    async with owner(stack) as conn:
        await conn.execute("UPDATE access_log SET seq = -(seq + 1) WHERE chain = $1 AND seq > $2",
                           target.chain, target.seq)
        await conn.execute("UPDATE access_log SET seq = -seq WHERE chain = $1 AND seq < 0", target.chain)
        return int(await conn.fetchval(
            "INSERT INTO access_log (at, operation, caller, outcome, chain, seq, mac) "
            "VALUES ($1, 'download', 'entra:alibi@contoso.com', 'ok', $2, $3, $4) RETURNING id",
            target.at + timedelta(microseconds=1), target.chain, (target.seq or 0) + 1, os.urandom(32)))


async def insert_new_chain(stack: Services, target: LoggedRow) -> int:
    async with owner(stack) as conn:
        return int(await conn.fetchval(
            "INSERT INTO access_log (at, operation, caller, outcome, chain, seq, mac) "
            "VALUES ($1, 'download', 'entra:alibi@contoso.com', 'ok', $2, 1, $3) RETURNING id",
            target.at, uuid.uuid4(), os.urandom(32)))


async def insert_unchained(stack: Services, target: LoggedRow) -> int:
    """A row without a chain, as if written before chains existed (the schema refuses it: dropped first)."""
    async with owner(stack) as conn:
        await conn.execute("ALTER TABLE access_log DROP CONSTRAINT access_log_chained_now")
        await conn.execute("INSERT INTO access_log (at, operation, caller, outcome) "
                           "VALUES (now() - interval '400 days', 'download', 'entra:alibi@contoso.com', 'ok')")
    return 0


async def cut_the_tail_behind_a_digest(stack: Services, target: LoggedRow) -> int:
    """Every row the digest pinned of this chain removed from its end: the chain looks whole, the digest says not."""
    async with owner(stack) as conn:
        await conn.execute("DELETE FROM access_log WHERE chain = $1 AND seq >= $2", target.chain, target.seq)
    return 0


TAMPERING = {"edit a field": edit, "edit a time": edit_time, "delete a row": delete, "reorder two rows": reorder,
             "insert into a chain": insert_into_chain, "insert a chain of its own": insert_new_chain,
             "insert a row without a chain": insert_unchained, "cut a chain's end": cut_the_tail_behind_a_digest}


@pytest.mark.parametrize("how", sorted(TAMPERING))
async def test_tampering_is_found_and_the_first_bad_row_named(logged: tuple[Services, dict[str, str]],
                                                              how: str) -> None:
    stack, env = logged
    bad = await TAMPERING[how](stack, middle(await rows(stack)))
    code, report, stderr = await verify(env)
    assert code == 1 and not report["ok"], report
    first = report["first_problem"]
    if bad:
        assert first["where"].startswith(f"row id {bad} "), first
    assert "verification FAILED" in stderr and first["where"] in stderr


async def test_the_chain_key_holder_cannot_rewrite_what_a_digest_pinned(
        logged: tuple[Services, dict[str, str]]) -> None:
    """With the vault's chain key too, a digested row edited and every later MAC recomputed: the chain is
    consistent again, but the digest in its container pinned the old MAC."""
    stack, env = logged
    key = await stack.maintenance._chain_key.get()
    target = middle(await rows(stack))
    chain = [r for r in await rows(stack) if r.chain == target.chain]
    async with owner(stack) as conn:
        previous = next(r.mac for r in chain if r.seq == (target.seq or 0) - 1)
        for row in chain[(target.seq or 0) - 1:]:
            caller = "entra:someone-else" if row.id == target.id else row.caller
            fields = LoggedRow(**{**row.__dict__, "caller": caller}).fields()
            mac = link(key, row.chain, row.seq, previous, fields)  # type: ignore[arg-type]
            await conn.execute("UPDATE access_log SET caller = $2, mac = $3 WHERE id = $1", row.id, caller, mac)
            previous = mac
    code, report, _ = await verify(env)
    assert code == 1
    assert "pinned it with another MAC" in report["first_problem"]["what"]


async def test_a_digest_changed_or_removed_is_found(logged: tuple[Services, dict[str, str]],
                                                    azurite: Azurite) -> None:
    stack, env = logged
    second = await stack.maintenance.audit_digest()  # the rows after the first digest
    assert second is not None
    store = stack.maintenance._digests.store
    first = (await store.names())[0]
    forged = json.loads((await store.get(first)).raw)
    forged["created_by"] = "someone"
    await store.container.delete(first)
    await store.container.create(first, json.dumps(forged).encode(), content_type="application/json")
    code, report, _ = await verify(env)
    assert code == 1 and report["first_problem"]["where"] == f"digest {first}"
    assert "signature" in report["first_problem"]["what"]
    await store.container.delete(first)  # (Azure's WORM policy forbids both; Azurite enforces neither)
    code, report, _ = await verify(env)
    assert code == 1 and report["first_problem"]["where"] == f"digest {second}"
    assert "does not link" in report["first_problem"]["what"]


async def test_a_purge_goes_only_past_the_retention_and_leaves_a_log_that_verifies(
        logged: tuple[Services, dict[str, str]]) -> None:
    stack, env = logged
    old = AuditLog(stack.db, stack.maintenance._chain_key, clock=lambda: utcnow() - timedelta(days=90))
    for _ in range(4):
        await old.record("download", BOB, file_id=uuid.uuid4())  # a chain of rows 90 days old
    await stack.maintenance.audit_digest()
    with pytest.raises(InvalidRequestError, match="keeps 60 days"):
        await stack.maintenance.audit_purge(OPERATOR, utcnow() - timedelta(days=59))
    result = await stack.maintenance.audit_purge(OPERATOR)  # AUDIT_RETENTION_DAYS ago
    assert result["purged"] == 4 and result["digest"]
    note = (await stack.maintenance._digests.store.get(result["digest"])).document["purge"]
    assert len(note["chains"]) == 1 and next(iter(note["chains"].values()))["through_seq"] == 4
    code, report, _ = await verify(env)
    assert code == 0, report
    async with stack.db.connection() as conn:
        outcomes = [r["outcome"] for r in await conn.fetch(
            "SELECT outcome FROM access_log WHERE operation = 'audit_purge' ORDER BY id")]
    assert outcomes == ["intent", "InvalidRequestError", "intent", "ok: 4 purged"]
