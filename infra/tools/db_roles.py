"""Database roles of a passwordless blobseal deployment (run by infra/deploy.sh as the Entra admin).

PostgreSQL Flexible Server takes Microsoft Entra tokens only (password authentication is off).
Connected as the server's Entra administrator, this script makes sure that

* the function app's managed identity is a database role (``pgaadauth_create_principal_with_oid``,
  type ``service``) that can log in and do nothing but read and write the app's rows: it is a
  member of the NOLOGIN role ``blobseal_app``, which has SELECT/INSERT/UPDATE/DELETE on the tables,
  USAGE/SELECT on the sequences, SELECT only on ``schema_migrations``, SELECT/INSERT only on
  ``access_log`` (purged through the SECURITY DEFINER ``purge_access_log``); no CREATE, no DDL,
  owns nothing, not a member of ``azure_pg_admin``. The migrations run as the administrator
  (``python -m shared.cli migrate``), before this script, so the tables exist;
* optionally, the operators' Entra group (or one user) is a role with the same rights (member of
  ``blobseal_app``), for the CLI (``python -m shared.cli failed|replay|rotate|reconcile ...``), and with
  ``--operator-purge`` also a member of ``blobseal_audit_purger``, the only role that may run
  ``purge_access_log`` (``blobseal audit purge``; never rows younger than 30 days). The app's own
  role can append to the access log and read it, never remove a row.

Everything is idempotent: run it after every migration (deploy.sh does), and the grants cover
new tables too (plus default privileges for the administrator's future tables).

The password is the administrator's Entra token in PGPASSWORD (asyncpg reads it; deploy.sh gets it
with ``az account get-access-token --resource-type oss-rdbms``). ``--print-sql`` prints the
statements and connects nowhere.

Revoke an operator:  REVOKE blobseal_app FROM "<group name>";   (or remove them from the group)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import ssl
import sys
from dataclasses import dataclass

APP_GROUP_ROLE = "blobseal_app"
_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_PRINCIPAL_TYPES = {"Group": "group", "User": "user", "ServicePrincipal": "service"}


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (Entra names hold '@', '.', '-', spaces)."""
    if not name or "\x00" in name:
        raise ValueError("empty identifier or NUL in it")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL in a literal")
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Principal:
    role: str  # the role name the principal logs in with
    object_id: str  # its Entra object id
    kind: str  # pgaadauth type: service, group or user

    def __post_init__(self) -> None:
        if not _UUID.fullmatch(self.object_id):
            raise ValueError(f"not an Entra object id: {self.object_id!r}")
        if self.kind not in _PRINCIPAL_TYPES.values():
            raise ValueError(f"unknown principal type {self.kind!r}")


PURGE_ROLE = "blobseal_audit_purger"  # made by migration 9; EXECUTE on purge_access_log and nothing else


def server_statements(principals: list[Principal], group_role: str = APP_GROUP_ROLE,
                      purgers: list[Principal] | None = None) -> list[str]:
    """Run in the `postgres` database: the Entra roles, created unless they exist (``purgers`` also get the
    purge role, which migration 9 made)."""
    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote_literal(group_role)}) "
        f"THEN CREATE ROLE {quote_ident(group_role)} NOLOGIN; END IF; END $$"
    ]
    for p in principals:
        # is_admin=false, is_mfa=false: an ordinary login role mapped to the Entra object id.
        # Every value is quoted by quote_literal/quote_ident (S608 is about unquoted input).
        role, object_id, kind = quote_literal(p.role), quote_literal(p.object_id), quote_literal(p.kind)
        create = f"SELECT pgaadauth_create_principal_with_oid({role}, {object_id}, {kind}, false, false)"
        statements.append(f"{create} WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role})")
        statements.append(f"GRANT {quote_ident(group_role)} TO {quote_ident(p.role)}")
    statements += [f"GRANT {quote_ident(PURGE_ROLE)} TO {quote_ident(p.role)}" for p in purgers or []]
    return statements


def database_statements(database: str, group_role: str = APP_GROUP_ROLE) -> list[str]:
    """Run in the app's database as the administrator (the owner of its tables)."""
    group = quote_ident(group_role)
    return [
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {group}",
        f"GRANT USAGE ON SCHEMA public TO {group}",
        f"REVOKE CREATE ON SCHEMA public FROM {group}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {group}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {group}",
        # The ledger is the migrations' business: the app only reads it (to see it is up to date).
        f"DO $$ BEGIN IF to_regclass('public.schema_migrations') IS NOT NULL THEN "
        f"REVOKE INSERT, UPDATE, DELETE ON public.schema_migrations FROM {group}; END IF; END $$",
        # The access log is append-only for the app: rows go only through purge_access_log()
        # (SECURITY DEFINER, owned by the administrator), on top of the table's own trigger.
        f"DO $$ BEGIN IF to_regclass('public.access_log') IS NOT NULL THEN "
        f"REVOKE UPDATE, DELETE ON public.access_log FROM {group}; END IF; END $$",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {group}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {group}",
    ]


def principals_from(args: argparse.Namespace) -> list[Principal]:
    principals = [Principal(args.app_role, args.app_object_id, "service")]
    if args.operator_role:
        if not args.operator_object_id:
            raise SystemExit("--operator-role needs --operator-object-id")
        principals.append(Principal(args.operator_role, args.operator_object_id, _PRINCIPAL_TYPES[args.operator_type]))
    return principals


async def _run(host: str, user: str, database: str, statements: list[str], sslmode: str) -> None:
    import asyncpg  # the app's own driver (requirements.txt)

    context = ssl.create_default_context() if sslmode == "verify-full" else "require"
    conn = await asyncpg.connect(host=host, port=5432, user=user, database=database, ssl=context, timeout=15,
                                 command_timeout=60)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="server FQDN (<server>.postgres.database.azure.com)")
    parser.add_argument("--database", default="blobseal")
    parser.add_argument("--admin", help="the Entra administrator's name (the user name it connects with)")
    parser.add_argument("--app-role", required=True, help="the app's role name (the function app's name)")
    parser.add_argument("--app-object-id", required=True, help="object id of the app's managed identity")
    parser.add_argument("--operator-role", help="the operators' group display name (or a user's UPN)")
    parser.add_argument("--operator-object-id")
    parser.add_argument("--operator-type", choices=sorted(_PRINCIPAL_TYPES), default="Group")
    parser.add_argument("--operator-purge", action="store_true",
                        help="the operators may also purge the access log (past its 30-day minimum)")
    parser.add_argument("--sslmode", choices=("require", "verify-full"), default="require")
    parser.add_argument("--print-sql", action="store_true", help="print the statements, connect nowhere")
    args = parser.parse_args(argv)
    try:
        principals = principals_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    purgers = principals[1:] if args.operator_purge else []
    server_sql, database_sql = server_statements(principals, purgers=purgers), database_statements(args.database)
    if args.print_sql:
        print("-- database postgres\n" + ";\n".join(server_sql) + ";")
        print(f"-- database {args.database}\n" + ";\n".join(database_sql) + ";")
        return 0
    if not args.host or not args.admin:
        parser.error("--host and --admin are required (or --print-sql)")
    if not os.environ.get("PGPASSWORD"):
        print("error: PGPASSWORD must hold the administrator's Entra token "
              "(az account get-access-token --resource-type oss-rdbms)", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args.host, args.admin, "postgres", server_sql, args.sslmode))
        asyncio.run(_run(args.host, args.admin, args.database, database_sql, args.sslmode))
    except Exception as exc:  # one line, no token: asyncpg errors carry no password
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    roles = ", ".join(p.role for p in principals)
    print(f"database roles ready: {roles} -> {APP_GROUP_ROLE} (DML only) on {args.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
