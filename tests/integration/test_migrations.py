"""Migrations against the real PostgreSQL: idempotent, concurrent-safe, the spec's schema exactly."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from shared.cli.main import main as cli_main
from shared.db import MIGRATIONS, Database, Migration, apply_migrations, migrate
from shared.errors import DatabaseError

pytestmark = pytest.mark.postgres


async def _ledger(url: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert all(r["applied_at"] is not None for r in rows)
    return [(r["version"], r["name"]) for r in rows]


ALL = [(m.version, m.name) for m in MIGRATIONS]
VERSIONS = [m.version for m in MIGRATIONS]
NEXT = VERSIONS[-1] + 1


async def test_migrate_applies_each_version_once(pg_empty_database_url: str) -> None:
    assert await migrate(pg_empty_database_url) == VERSIONS
    assert await migrate(pg_empty_database_url) == []
    assert await _ledger(pg_empty_database_url) == ALL


async def test_concurrent_migrators_do_not_collide(pg_empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(pg_empty_database_url) for _ in range(4)))
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert await _ledger(pg_empty_database_url) == ALL


async def test_first_use_of_a_database_migrates_it(pg_empty_database_url: str) -> None:
    databases = [Database(pg_empty_database_url, pool_max=2) for _ in range(3)]
    try:
        await asyncio.gather(*(db.ping() for db in databases))
        async with databases[0].connection() as conn:
            assert await conn.fetchval("SELECT to_regclass('file_keys')::text") == "file_keys"
    finally:
        await asyncio.gather(*(db.close() for db in databases))
    assert await _ledger(pg_empty_database_url) == ALL


async def test_a_failing_migration_rolls_back_entirely(pg_empty_database_url: str) -> None:
    broken = (*MIGRATIONS, Migration(NEXT, "broken", "CREATE TABLE half_done (id int); SELECT 1 / 0;"))
    conn = await asyncpg.connect(pg_empty_database_url)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, broken)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        fixed = (*MIGRATIONS, Migration(NEXT, "broken", "CREATE TABLE half_done (id int)"))
        assert await apply_migrations(conn, fixed) == [NEXT]
    finally:
        await conn.close()
    assert await _ledger(pg_empty_database_url) == [*ALL, (NEXT, "broken")]


async def test_a_ledger_that_disagrees_with_the_code_is_refused(pg_empty_database_url: str) -> None:
    await migrate(pg_empty_database_url)
    conn = await asyncpg.connect(pg_empty_database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET name = 'something_else' WHERE version = 1")
        with pytest.raises(DatabaseError, match="disagrees"):
            await apply_migrations(conn)
    finally:
        await conn.close()


async def test_file_keys_has_the_spec_columns_and_constraints(pg_db: Database) -> None:
    async with pg_db.connection() as conn:
        columns = {
            r["column_name"]: (r["data_type"], r["is_nullable"], r["column_default"])
            for r in await conn.fetch(
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'file_keys'"
            )
        }
        constraints = {
            (r["contype"], tuple(r["columns"]))
            for r in await conn.fetch(
                "SELECT c.contype::text AS contype, array_agg(a.attname::text ORDER BY k.ord) AS columns "
                "FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                "WHERE c.conrelid = 'file_keys'::regclass AND c.contype IN ('p', 'u') GROUP BY c.oid, c.contype"
            )
        }
        bytea = {
            (r["table_name"], r["column_name"])
            for r in await conn.fetch(
                "SELECT table_name::text, column_name::text FROM information_schema.columns "
                "WHERE table_schema = 'public' AND data_type = 'bytea'")
        }
    assert columns["id"][:2] == ("integer", "NO")
    assert columns["id"][2] == "nextval('file_keys_id_seq'::regclass)"  # SERIAL
    assert columns["file_id"] == ("uuid", "NO", None)
    assert columns["key_reference"] == ("text", "NO", None)
    assert columns["created_at"] == ("timestamp with time zone", "NO", None)
    assert columns["expires_at"] == ("timestamp with time zone", "YES", None)
    assert constraints == {("p", ("id",)), ("u", ("file_id", "key_reference"))}
    # nowhere to put raw key bytes: only wrapped ones (envelope mode), useless without the KEK, signatures and MACs
    assert bytea == {("file_keys", "wrapped_key"), ("intermediate_keys", "wrapped_key"),
                     ("intermediate_keys", "signature"), ("access_log", "mac")}


async def test_file_keys_allows_one_active_and_one_pending_key_per_file(pg_db: Database) -> None:
    file_id = uuid.uuid4()
    insert = (
        "INSERT INTO file_keys (file_id, key_reference, created_at, state, retired_at) "
        "VALUES ($1, $2, now(), $3, CASE WHEN $3 = 'retired' THEN now() END)"
    )

    async def refused(error: type[Exception], reference: str, state: str, fid: uuid.UUID = file_id) -> None:
        with pytest.raises(DatabaseError) as refusal:
            async with pg_db.connection() as conn:
                await conn.execute(insert, fid, reference, state)
        assert isinstance(refusal.value.__cause__, error)
        assert refusal.value.details["sqlstate"] == refusal.value.__cause__.sqlstate

    async with pg_db.connection() as conn:
        for suffix, state in (("a", "active"), ("b", "pending"), ("c", "retired"), ("d", "retired")):
            await conn.execute(insert, file_id, f"file-{file_id}/{suffix}", state)
    await refused(asyncpg.UniqueViolationError, f"file-{file_id}/e", "active")
    await refused(asyncpg.UniqueViolationError, f"file-{file_id}/f", "pending")
    await refused(asyncpg.UniqueViolationError, f"file-{file_id}/c", "retired")  # UNIQUE(file_id, key_reference)
    await refused(asyncpg.CheckViolationError, f"file-{file_id}/g", "bogus")
    await refused(asyncpg.CheckViolationError, f"file-{uuid.uuid4()}/h", "active", uuid.uuid4())
    async with pg_db.connection() as conn:
        with pytest.raises(asyncpg.CheckViolationError):  # retired needs retired_at, and only retired has it
            await conn.execute(
                "INSERT INTO file_keys (file_id, key_reference, created_at, state) VALUES ($1, $2, now(), 'retired')",
                file_id, f"file-{file_id}/i",
            )


async def test_due_query_is_served_by_its_partial_index(pg_db: Database) -> None:
    async with pg_db.connection() as conn:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in await conn.fetch(
                "EXPLAIN SELECT * FROM file_keys WHERE state = 'active' AND expires_at <= now() "
                "ORDER BY expires_at, id LIMIT 10"
            )
        )
        await conn.execute("RESET enable_seqscan")
    assert "file_keys_due" in plan
    assert "Sort" not in plan  # the index order is the query order


def test_cli_migrate_reports_and_is_idempotent(pg_empty_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"DATABASE_URL": pg_empty_database_url}
    assert cli_main(["migrate"], env) == 0
    assert "applied 1" in capsys.readouterr().out
    assert cli_main(["migrate"], env) == 0
    assert f"already at version {MIGRATIONS[-1].version}" in capsys.readouterr().out


def test_cli_migrate_fails_cleanly_without_leaking_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"DATABASE_URL": "postgresql://blobseal:hunter2-secret@127.0.0.1:1/blobseal"}
    assert cli_main(["migrate"], env) == 1
    captured = capsys.readouterr()
    assert "database unavailable at postgresql://blobseal:***@127.0.0.1:1/blobseal" in captured.err
    assert "hunter2" not in captured.err + captured.out
