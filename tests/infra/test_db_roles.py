"""The app's database role has exactly the rights it needs (infra/tools/db_roles.py), on a real
PostgreSQL: the migrations run as the administrator, then the app's role can read and write rows and
see that the schema is current, but cannot change the schema or the migration ledger.

Azure's ``pgaadauth_create_principal_with_oid`` is replaced by a stand-in that creates a login role
of that name (what it does, minus the Entra mapping); everything else is the statements deploy.sh
runs, as the administrator (``SET ROLE``)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import ModuleType
from urllib.parse import urlsplit

import asyncpg
import pytest

from shared.db.migrations import MIGRATIONS, apply_migrations
from tests.infra.infra_helpers import load_tool

pytestmark = [pytest.mark.postgres]


STAND_IN = """
CREATE FUNCTION pgaadauth_create_principal_with_oid(role_name text, object_id text, principal_type text,
                                                    is_admin boolean, is_mfa boolean) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE ROLE %I LOGIN', role_name);
    RETURN 'Created role for ' || role_name;
END $$
"""


def load_db_roles() -> ModuleType:
    return load_tool("db_roles")


@pytest.fixture
async def roles(pg_empty_database_url: str) -> AsyncIterator[tuple[asyncpg.Connection, dict[str, str]]]:
    """A superuser connection to an empty scratch database and fresh role names (dropped after)."""
    tag = secrets.token_hex(4)
    names = {"admin": f"bs_admin_{tag}", "app": f"bs-func-{tag}", "operators": f"bs operators {tag}",
             "group": f"bs_app_{tag}"}
    conn = await asyncpg.connect(pg_empty_database_url)
    assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"), \
        "this test creates roles: DATABASE_URL must name a superuser"
    database = urlsplit(pg_empty_database_url).path.lstrip("/")
    await conn.execute(f'CREATE ROLE "{names["admin"]}" NOLOGIN CREATEROLE')
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'blobseal_audit_purger'"):
        # Roles are the cluster's: another scratch database's migrations (run by the superuser) made this one.
        # On PostgreSQL 16+ CREATEROLE alone no longer lets the administrator grant it; the administrator who
        # ran migration 9 in Azure made it and so holds ADMIN OPTION on it, as granted here.
        await conn.execute(f'GRANT blobseal_audit_purger TO "{names["admin"]}" WITH ADMIN OPTION')
    await conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{names["admin"]}"')
    await conn.execute(STAND_IN)
    try:
        yield conn, {**names, "database": database}
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
        for role in (names["app"], names["operators"], names["group"], names["admin"]):
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                await conn.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
                await conn.execute(f'DROP OWNED BY "{role}"')
                await conn.execute(f'DROP ROLE "{role}"')
        await conn.close()


async def test_the_app_role_reads_and_writes_rows_and_changes_no_schema(
        roles: tuple[asyncpg.Connection, dict[str, str]]) -> None:
    conn, names = roles
    module = load_db_roles()
    principals = [module.Principal(names["app"], str(uuid.uuid4()), "service"),
                  module.Principal(names["operators"], str(uuid.uuid4()), "group")]
    purgers = principals[1:]  # the operators may purge (--operator-purge); the app never

    await conn.execute(f'SET ROLE "{names["admin"]}"')
    assert await apply_migrations(conn) == [m.version for m in MIGRATIONS]  # as the administrator
    for _ in range(2):  # idempotent: deploy.sh runs it after every migration
        for statement in module.server_statements(principals, group_role=names["group"], purgers=purgers):
            await conn.execute(statement)
        for statement in module.database_statements(names["database"], group_role=names["group"]):
            await conn.execute(statement)
    await conn.execute("RESET ROLE")

    for role in (names["app"], names["operators"]):
        await conn.execute(f'SET ROLE "{role}"')
        # The app opens its pool with a migration check: up to date, so no DDL is attempted.
        assert await apply_migrations(conn) == []
        file_id = uuid.uuid4()
        now = datetime.now(UTC)
        row_id = await conn.fetchval(
            "INSERT INTO file_keys (file_id, key_reference, created_at, expires_at) VALUES ($1, $2, $3, $4) "
            "RETURNING id", file_id, f"file-{file_id}/v1", now, now + timedelta(days=30))  # SERIAL: sequence usage
        await conn.execute("UPDATE file_keys SET expires_at = $2 WHERE id = $1", row_id, now)
        assert await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1", file_id) == 1
        await conn.execute("DELETE FROM file_keys WHERE id = $1", row_id)
        # The access log: appended to; removed from by nobody directly, and purged only by the purge role, only
        # past 30 days; a session flag opens nothing (it did: `blobseal.access_log_purge=on` let a DELETE through).
        await conn.execute("INSERT INTO access_log (operation, caller, outcome, at, chain, seq, mac) "
                           "VALUES ('read', $1, 'ok', $2, gen_random_uuid(), 1, '\\x00')", role,
                           now - timedelta(days=400))
        with pytest.raises(asyncpg.CheckViolationError):  # every new row is chained (migration 9)
            await conn.execute("INSERT INTO access_log (operation, caller, outcome) VALUES ('read', $1, 'ok')", role)
        async with conn.transaction():
            await conn.execute("SELECT set_config('blobseal.access_log_purge', 'on', true)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM access_log")
        if role == names["operators"]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="30 days"):
                await conn.fetchval("SELECT purge_access_log($1)", now - timedelta(days=10))
            assert await conn.fetchval("SELECT purge_access_log($1)", now - timedelta(days=365)) == 2
        else:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for function"):
                await conn.fetchval("SELECT purge_access_log($1)", now - timedelta(days=365))
        for forbidden in ("CREATE TABLE intruder (x int)", "DROP TABLE files", "TRUNCATE files",
                          "ALTER TABLE files ADD COLUMN x int", "DELETE FROM schema_migrations",
                          "INSERT INTO schema_migrations (version, name) VALUES (999, 'x')",
                          "UPDATE access_log SET outcome = 'forged'", "DELETE FROM access_log",
                          f'CREATE ROLE "x_{secrets.token_hex(3)}"'):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(forbidden)
        await conn.execute("RESET ROLE")

    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    for row in tables:
        can_write = await conn.fetchval("SELECT has_table_privilege($1, $2, 'INSERT')", names["app"],
                                        f"public.{row['tablename']}")
        can_change = await conn.fetchval("SELECT has_table_privilege($1, $2, 'UPDATE')", names["app"],
                                         f"public.{row['tablename']}")
        assert can_write == (row["tablename"] != "schema_migrations"), row["tablename"]
        assert can_change == (row["tablename"] not in ("schema_migrations", "access_log")), row["tablename"]
    member_of_admin = await conn.fetchval(
        "SELECT pg_has_role($1, $2, 'MEMBER')", names["app"], names["admin"])
    assert not member_of_admin
    may_purge = await conn.fetchval("SELECT has_function_privilege($1, 'purge_access_log(timestamptz)', 'EXECUTE')",
                                    names["app"])
    assert not may_purge  # not even through PUBLIC: the function's EXECUTE was revoked from it


def test_the_statements_quote_entra_names() -> None:
    module = load_db_roles()
    app = module.Principal('odd"name@contoso.com', str(uuid.uuid4()), "user")
    sql = "\n".join(module.server_statements([app]))
    assert '"odd""name@contoso.com"' in sql and "'odd\"name@contoso.com'" in sql
    with pytest.raises(ValueError, match="object id"):
        module.Principal("x", "not-a-uuid", "service")
