"""Fail fast, with instructions, when PostgreSQL does not answer at DATABASE_URL (never hang)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.config import redact_url

__all__ = ["HELP", "postgres_problem", "scratch_database"]

HELP = """PostgreSQL does not answer at {url} ({reason}).
Start it, or point DATABASE_URL at one that runs, e.g.:
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   # Debian/Ubuntu
  docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16   # anywhere with Docker
  DATABASE_URL=postgresql://user:pass@host:5432/db make test"""


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    await conn.close()


def postgres_problem(url: str) -> str | None:
    """None when the server answers, else the message to print."""
    try:
        asyncio.run(asyncio.wait_for(_probe(url), timeout=8))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return HELP.format(url=redact_url(url), reason=type(exc).__name__)
    return None


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def scratch_database(server_url: str, prefix: str = "blobseal_test") -> Iterator[str]:
    """Create a throwaway database on the server at ``server_url``; yield its URL; drop it."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
