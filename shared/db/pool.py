"""The PostgreSQL connection pool: created lazily, migrated once, errors translated.

``Database`` does no I/O when built: the asyncpg pool is created (and the schema migrated)
on first use, inside the worker's event loop, and reused after. Every way in (``connection``,
``transaction``, ``ping``) translates asyncpg and socket errors into ``DatabaseError``
(``DatabaseUnavailableError`` for a server that is down or a lost connection) and
bounds the time it can take: connect timeout, per-statement timeout, acquire timeout. A pool
survives a database restart: dead connections are replaced on the next acquire.

A commit can succeed on the server and its answer still be lost (the connection drops after the
``COMMIT`` went out): ``resolved`` runs a transaction whose outcome the caller must know, and when the
answer is lost it asks the database whether it happened, and acts on that: committed is success,
not committed is the error; when the database cannot be asked for ``RESOLVE_SECONDS`` either,
``CommitUnknownError`` (the caller must then clean up nothing). The question is asked once the
transaction's server process is gone (ended with ``pg_terminate_backend`` when it lingers: a COMMIT
still on its way could otherwise land after the re-read), so the answer is final.

Behind PgBouncer in transaction pooling (``DATABASE_PGBOUNCER=true``, Azure's built-in PgBouncer
on port 6432) consecutive transactions of one client connection run on different server
connections, so nothing may outlive a transaction on the server: the pool keeps no prepared
statements (asyncpg's statement cache off: each statement goes as an unnamed statement, parsed
again with its bind), and the app keeps no session state (docs/DATABASE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg

from shared.config import Settings, redact_url
from shared.db.entra import EntraPassword, managed_identity
from shared.db.errors import DATABASE_ERRORS, Attempt, database_errors
from shared.db.migrations import apply_migrations
from shared.db.tls import server_verification
from shared.errors import CommitUnknownError, DatabaseError, DatabaseUnavailableError
from shared.metrics import COMMITS_UNCERTAIN

__all__ = ["RESOLVE_SECONDS", "Database"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a lost commit answer is asked about (re-reads on new connections, backing off) before the
# outcome is reported unknown.
RESOLVE_SECONDS = 10.0
_RESOLVE_DELAYS = (0.0, 0.2, 0.5, 1.0, 2.0, 3.0, 3.0)


class Database:
    """A lazily created asyncpg pool for one database URL."""

    def __init__(
        self,
        url: str,
        *,
        pool_max: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 15.0,
        acquire_timeout: float = 10.0,
        migrate: bool = True,
        password: EntraPassword | None = None,
        pgbouncer: bool = False,
    ) -> None:
        if pool_max < 1:
            raise ValueError("pool_max must be at least 1")
        self._url = url
        self._pool_max = pool_max
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._acquire_timeout = acquire_timeout
        self._migrate = migrate
        self._password = password  # Entra tokens (passwordless); None: whatever the URL says
        self._pgbouncer = pgbouncer  # transaction pooling in front: no server-side state across transactions
        self._pool: Any = None
        self._opening = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        password = None
        if settings.database_auth == "entra":
            password = EntraPassword(managed_identity(settings.database_entra_client_id))
        return cls(settings.database_url, pool_max=settings.database_pool_max, password=password,
                   pgbouncer=settings.database_pgbouncer)

    @property
    def url_redacted(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        via = ", pgbouncer=True" if self._pgbouncer else ""
        return f"Database({self.url_redacted!r}, pool_max={self._pool_max}{via})"

    @asynccontextmanager
    async def connection(self, operation: str = "database") -> AsyncIterator[Any]:
        """A pooled connection outside any transaction (statements autocommit)."""
        with database_errors(operation, self._url) as attempt:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                attempt.stage = "query"
                with attempt.on(conn):
                    yield conn

    @asynccontextmanager
    async def transaction(self, operation: str = "database") -> AsyncIterator[Any]:
        """A pooled connection inside a transaction: committed on success, rolled back on error.

        Other repositories can run their statements on the same connection, so that several
        tables change together.
        """
        with database_errors(operation, self._url) as attempt:
            pool = await self._get_pool()
            async with pool.acquire(timeout=self._acquire_timeout) as conn, _within(conn, attempt):
                yield conn

    async def resolved(self, operation: str, work: Callable[[Any], Awaitable[T]], *,
                       committed: Callable[[Any], Awaitable[bool]]) -> T:
        """``work(conn)`` in one transaction, its outcome known even when the commit's answer is lost.

        ``committed(conn)`` re-reads, on another connection, what ``work`` wrote by the attempt's own
        identity (an attempt tag, a blob name, a key reference), and says whether it is there. It is asked
        only when the commit was sent and its answer lost: committed, ``work``'s result is returned as if
        the answer had come; not committed, the error is raised (nothing was written). If the database
        cannot be asked within ``RESOLVE_SECONDS``: ``CommitUnknownError`` (transient; clean up nothing).
        """
        finished, result, server = False, None, None
        try:
            async with self.transaction(operation) as conn:
                server = None if self._pgbouncer else _server_pid(conn)  # behind PgBouncer: its pid, not a backend's
                result = await work(conn)
                finished = True
        except DatabaseError as exc:
            if not finished or exc.details.get("stage") != "commit":
                raise
            if not await self._ask(operation, committed, exc, server):
                COMMITS_UNCERTAIN.labels(operation, "rolled_back").inc()
                log.warning("%s: the commit's answer was lost; it did not commit (re-read): %s", operation, exc)
                raise
            COMMITS_UNCERTAIN.labels(operation, "committed").inc()
            log.warning("%s: the commit's answer was lost; it did commit (re-read)", operation)
        return result  # type: ignore[return-value]  # set whenever ``finished``

    async def _ask(self, operation: str, committed: Callable[[Any], Awaitable[bool]], lost: DatabaseError,
                   server: int | None) -> bool:
        """Whether the lost commit happened: asked once the transaction's server process is gone."""
        deadline = time.monotonic() + RESOLVE_SECONDS
        for delay in _RESOLVE_DELAYS:
            left = deadline - time.monotonic() - delay
            if left <= 0:
                break
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(left), self.connection(f"{operation}_resolve") as conn:
                    if server is not None and await _end_backend(conn, server):
                        continue  # still there (now told to end): its COMMIT may still land; ask again shortly
                    return bool(await committed(conn))
            except (DatabaseUnavailableError, TimeoutError):
                continue
        COMMITS_UNCERTAIN.labels(operation, "unknown").inc()
        log.error("%s: the commit's answer was lost and the database did not answer for %.0f s: its outcome is "
                  "unknown (nothing is cleaned up; the reconciler settles it)", operation, RESOLVE_SECONDS)
        raise CommitUnknownError("the database lost the answer to a commit and cannot say yet whether it happened; "
                                 "retry later", operation=operation,
                                 details={**lost.details, "outcome": "unknown"}) from lost

    @contextmanager
    def translating(self, operation: str, conn: Any) -> Iterator[None]:
        """Translate errors of statements run on a caller's connection (see ``transaction``)."""
        attempt = Attempt(stage="query")
        with database_errors(operation, self._url, attempt), attempt.on(conn):
            yield

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailableError`` unless the database answers a query."""
        async with self.connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        """Close the pool (waiting briefly for connections in use). A later use reopens it."""
        pool, self._pool = self._pool, None
        if self._password is not None:
            await self._password.close()
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._connect_timeout)
        except DATABASE_ERRORS:
            pool.terminate()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await self._open()
        return self._pool

    async def _open(self) -> Any:
        url, tls = server_verification(self._url)
        pool = await asyncpg.create_pool(
            url,
            min_size=0,
            max_size=self._pool_max,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings={"application_name": "blobseal"},
            reset=_keep_session,
            **_statement_options(self._pgbouncer),
            **({"password": self._password} if self._password is not None else {}),
            **({"ssl": tls} if tls is not None else {}),
        )
        try:
            if self._migrate:
                async with pool.acquire(timeout=self._acquire_timeout) as conn:
                    applied = await apply_migrations(conn)
                if applied:
                    log.info("database %s migrated to version %d", self.url_redacted, applied[-1])
        except BaseException:
            pool.terminate()
            raise
        return pool


@asynccontextmanager
async def _within(conn: Any, attempt: Attempt) -> AsyncIterator[None]:
    """A transaction on ``conn`` that advances ``attempt`` (query, then commit)."""
    attempt.stage = "query"
    with attempt.on(conn):
        tx = conn.transaction()
        await tx.start()
        try:
            yield
        except BaseException:
            await _rollback_quietly(tx)
            raise
        attempt.stage = "commit"
        await tx.commit()


def _server_pid(conn: Any) -> int | None:
    try:
        return int(conn.get_server_pid())
    except (AttributeError, TypeError, ValueError):
        return None


async def _end_backend(conn: Any, pid: int) -> bool:
    """Whether the server process ``pid`` is still there; if so it is told to end (a transaction it runs
    then either committed already or never will). Not asked behind PgBouncer (the pid a client sees is
    PgBouncer's own): the re-read decides alone there."""
    sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND pid <> pg_backend_pid()"
    try:
        return await conn.fetchval(sql, pid) is not None
    except asyncpg.PostgresError:  # not allowed to end it: wait until the server notices the lost connection
        return await conn.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid) is not None


async def _rollback_quietly(tx: Any) -> None:
    # A lost connection cannot roll back, and needs not: the server discards the transaction.
    with contextlib.suppress(*DATABASE_ERRORS):
        await tx.rollback()


def _statement_options(pgbouncer: bool) -> dict[str, Any]:
    """asyncpg's prepared statement options: its defaults directly, none kept behind PgBouncer.

    asyncpg's statement cache names each statement (``__asyncpg_stmt_N__``) and prepares it once
    per connection; in transaction pooling the next transaction may run on a server connection that
    never saw it ("prepared statement ... does not exist") or that another client already prepared
    the same name on ("... already exists"). With ``statement_cache_size=0`` asyncpg uses the
    unnamed statement only: each execution describes it (Parse, Describe, Flush) and then parses it
    again with its Bind, Execute and Sync, all on the server connection PgBouncer assigned until that
    Sync; the price is a second round trip and a plan per execution. ``max_cached_statement_lifetime``
    and ``max_cacheable_statement_size`` concern that cache only, so they need nothing here.
    """
    return {"statement_cache_size": 0} if pgbouncer else {}


async def _keep_session(_conn: Any) -> None:
    """What a released connection needs beyond asyncpg's own rollback of an open transaction: nothing.

    The default reset (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a round trip per
    release, two per download. The app sets no session state: settings are transaction-local
    (``set_config(..., true)``), locks are transaction-scoped (migrations) or a lease row (the
    reconciler), nothing LISTENs and no temporary table is made. That is also what PgBouncer's
    transaction pooling requires, where a "session" is one transaction long.
    """
