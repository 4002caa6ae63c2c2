"""The file key service against the real PostgreSQL and the local JSON vault.

Races are made real (two ``Database`` objects, a barrier in the vault), time comes from a
fake clock, and a TCP proxy stands in for a database restart (the shared server is never
touched).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import shared.keys
from shared.custody import SecretCustody
from shared.db import Database
from shared.errors import (
    DatabaseUnavailableError,
    FileKeyNotFoundError,
    KeyMissingError,
    KeyRetiredError,
    KeyVaultError,
    RotationConflictError,
    SecretDisabledError,
    VaultMissingError,
    VaultUnavailableError,
)
from shared.keys import FileKey, FileKeyService, RotationTicket
from shared.metrics import REGISTRY
from shared.vault.base import SecretProperties, SecretVersion, parse_key_reference, secret_name
from shared.vault.local import LocalJsonVault
from tests.support.pg_proxy import PgProxy

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class DelegatingVault:
    """The real vault, with hooks a test overrides to misbehave on purpose."""

    def __init__(self, inner: LocalJsonVault) -> None:
        self.inner = inner

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        return await self.inner.set_secret(name, value, expires_on=expires_on)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        return await self.inner.get_secret(name, version)

    async def disable_version(self, name: str, version: str) -> None:
        await self.inner.disable_version(name, version)

    async def delete_secret(self, name: str) -> None:
        await self.inner.delete_secret(name)

    async def list_versions(self, name: str) -> list[SecretProperties]:
        return await self.inner.list_versions(name)

    async def ping(self) -> None:
        await self.inner.ping()

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def check_writable(self) -> None:
        await self.inner.check_writable()

    async def close(self) -> None:
        await self.inner.close()


def key_service(db: Database, vault: Any, **options: Any) -> FileKeyService:
    """The key service with the secret custody alone (the spec's model) on ``vault``."""
    return FileKeyService(db, {"secret": SecretCustody(vault, db)}, rotation_days=DAYS, **options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def vault(tmp_path: Path) -> LocalJsonVault:
    return LocalJsonVault(tmp_path / "secrets")


@pytest.fixture
def service(pg_db: Database, vault: LocalJsonVault, clock: FakeClock) -> FileKeyService:
    return key_service(pg_db, vault, clock=clock)


@pytest.fixture
async def second_db(pg_database_url: str) -> AsyncIterator[Database]:
    """Another pool on the same database: a second worker process."""
    database = Database(pg_database_url, pool_max=2)
    yield database
    await database.close()


async def rows(db: Database, file_id: uuid.UUID) -> list[dict[str, Any]]:
    async with db.connection() as conn:
        found = await conn.fetch("SELECT * FROM file_keys WHERE file_id = $1 ORDER BY id", file_id)
    return [dict(r) for r in found]


async def versions(vault: Any, file_id: uuid.UUID) -> dict[str, bool]:
    """``{key_reference: enabled}`` of every vault version of the file."""
    return {p.key_reference: p.enabled for p in await vault.list_versions(secret_name(file_id))}


async def complete(service: FileKeyService, db: Database, ticket: RotationTicket) -> FileKey:
    """The key steps that end a rotation (``shared.rotation.Rotator`` runs them around its blob switch)."""
    async with db.transaction() as conn:
        active = await service.switch_keys(conn, ticket)
    await service.disable_old_key(ticket)
    return active


async def encrypted_row(db: Database, file_id: uuid.UUID, key_reference: str) -> None:
    """A ``files`` row encrypted under ``key_reference`` (rotation lists only keys of encrypted files)."""
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO files (file_id, source_name, source_etag, name, content_type, size, status, "
            "protected_blob, key_reference) VALUES ($1, $2, 'e', 'n', 'text/plain', 0, 'encrypted', 'b', $3)",
            file_id, str(file_id), key_reference)


def rotations(outcome: str) -> float:
    return REGISTRY.get_sample_value("blobseal_key_rotations_total", {"outcome": outcome}) or 0.0


# --- create and read -----------------------------------------------------------------------


async def test_create_key_puts_a_fresh_256_bit_key_in_the_vault_and_only_its_reference_in_the_database(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[bytes] = []
    real = shared.keys.secrets.token_bytes

    def recording(n: int) -> bytes:
        drawn.append(real(n))
        return drawn[-1]

    monkeypatch.setattr(shared.keys.secrets, "token_bytes", recording)
    file_id = uuid.uuid4()
    key = await service.create_key(file_id)

    assert key == FileKey(file_id, key.key_reference, T0, T0 + timedelta(days=DAYS), "active")
    name, version = parse_key_reference(key.key_reference)
    assert name == f"file-{file_id}"
    assert [len(d) for d in drawn] == [32]  # drawn from the CSPRNG, 256 bits
    secret = await vault.get_secret(name, version)
    assert secret.value == drawn[0] == await service.get_key(key.key_reference)
    assert secret.properties.expires_on == T0 + timedelta(days=DAYS)
    [row] = await rows(pg_db, file_id)
    assert (row["key_reference"], row["state"], row["created_at"]) == (key.key_reference, "active", T0)
    assert await service.active_key(file_id) == key
    other = await service.create_key(uuid.uuid4())
    assert await service.get_key(other.key_reference) != drawn[0]


async def test_create_key_is_idempotent_for_duplicate_deliveries(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault
) -> None:
    file_id = uuid.uuid4()
    first = await service.create_key(file_id)
    assert await service.create_key(file_id) == first
    assert len(await rows(pg_db, file_id)) == 1
    assert await versions(vault, file_id) == {first.key_reference: True}


async def test_racing_creators_agree_on_one_key_and_the_loser_disables_its_version(
    pg_db: Database, second_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    class BothWriteFirst(DelegatingVault):
        """Both creators store a version before either records it: a real race."""

        barrier = asyncio.Barrier(2)

        async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
            props = await super().set_secret(name, value, expires_on=expires_on)
            await asyncio.wait_for(self.barrier.wait(), 5)
            return props

    racing = BothWriteFirst(vault)
    workers = [key_service(db, racing, clock=clock) for db in (pg_db, second_db)]
    file_id = uuid.uuid4()
    a, b = await asyncio.gather(*(w.create_key(file_id) for w in workers))

    assert a == b
    assert [r["key_reference"] for r in await rows(pg_db, file_id)] == [a.key_reference]
    stored = await versions(vault, file_id)
    assert len(stored) == 2
    assert {ref for ref, enabled in stored.items() if enabled} == {a.key_reference}


async def test_get_key_serves_only_recorded_references(service: FileKeyService, vault: LocalJsonVault) -> None:
    file_id = uuid.uuid4()
    recorded = await service.create_key(file_id)
    orphan = await vault.set_secret(secret_name(file_id), b"\x01" * 32)  # in the vault, not in file_keys

    assert len(await service.get_key(recorded.key_reference)) == 32
    with pytest.raises(FileKeyNotFoundError):
        await service.get_key(orphan.key_reference)
    with pytest.raises(FileKeyNotFoundError):
        await service.get_key(f"file-{uuid.uuid4()}/{orphan.version}")
    with pytest.raises(FileKeyNotFoundError):
        await service.get_key(f"file-123/{orphan.version}")  # a name that is not a file id
    with pytest.raises(KeyVaultError):
        await service.get_key("not a reference")
    with pytest.raises(FileKeyNotFoundError):
        await service.active_key(uuid.uuid4())


async def test_vault_failures_surface_as_key_vault_errors_and_record_nothing(
    pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    class Down(DelegatingVault):
        async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
            raise VaultUnavailableError("vault down", operation="set_secret")

    file_id = uuid.uuid4()
    with pytest.raises(VaultUnavailableError):
        await key_service(pg_db, Down(vault), clock=clock).create_key(file_id)
    assert await rows(pg_db, file_id) == []


async def test_a_new_deployment_starts_its_vault_but_a_lost_one_is_never_replaced(
    service: FileKeyService, pg_db: Database, tmp_path: Path
) -> None:
    await service.check_vault()  # nothing recorded, no vault yet: a new deployment, healthy
    first = await service.create_key(uuid.uuid4())  # the first key starts the vault
    secrets_file = tmp_path / "secrets" / "secrets.json"
    saved = secrets_file.read_bytes()
    secrets_file.unlink()  # the vault file is lost (deleted, or looked for in the wrong folder)

    with pytest.raises(VaultMissingError):
        await service.check_vault()  # health: 503 for the vault
    other = uuid.uuid4()
    with pytest.raises(VaultMissingError, match="database records keys"):
        await service.create_key(other)
    assert not secrets_file.exists() and await rows(pg_db, other) == []  # no key, no new vault
    with pytest.raises(VaultMissingError):
        await service.get_key(first.key_reference)

    secrets_file.write_bytes(saved)  # restored: nothing was lost
    await service.check_vault()
    assert len(await service.get_key(first.key_reference)) == 32
    assert (await service.create_key(other)).file_id == other


async def test_a_recorded_key_missing_from_the_vault_is_its_own_error(
    service: FileKeyService, vault: LocalJsonVault
) -> None:
    key = await service.create_key(uuid.uuid4())
    await vault.delete_secret(parse_key_reference(key.key_reference)[0])
    before = REGISTRY.get_sample_value("blobseal_keys_missing_total") or 0.0
    with pytest.raises(KeyMissingError):
        await service.get_key(key.key_reference)
    assert REGISTRY.get_sample_value("blobseal_keys_missing_total") == before + 1


# --- due for rotation, expire, delete ------------------------------------------------------


async def test_due_for_rotation_lists_expired_active_keys_oldest_first(
    service: FileKeyService, pg_db: Database, clock: FakeClock
) -> None:
    files = [uuid.uuid4() for _ in range(4)]
    keys = []
    for file_id in files:  # created a day apart: expire at T0+30d, +31d, +32d, +33d
        keys.append(await service.create_key(file_id))
        await encrypted_row(pg_db, file_id, keys[-1].key_reference)
        clock.advance(days=1)
    pending_file = uuid.uuid4()  # a key whose file never got encrypted is never due (it cannot be rotated)
    await service.create_key(pending_file)

    at = T0 + timedelta(days=32)
    assert await service.due_for_rotation(T0 + timedelta(days=29)) == []
    assert await service.due_for_rotation(at) == keys[:3]
    assert await service.due_for_rotation(at, limit=2) == keys[:2]

    forced = await service.expire(files[3])  # expires now (T0+4d): the oldest expiry of all
    assert forced.expires_at == clock.now
    assert await service.due_for_rotation(at, limit=2) == [forced, keys[0]]
    assert await service.due_for_rotation() == [forced]  # "now" defaults to the clock

    ticket = await service.claim_rotation(files[0], worker="w1")
    await complete(service, pg_db, ticket)  # retired keys and fresh ones are not due
    assert await service.due_for_rotation(at) == [forced, keys[1], keys[2]]
    with pytest.raises(FileKeyNotFoundError):
        await service.expire(uuid.uuid4())

    clock.now = at
    failures = await service.rotation_failed(files[3], forced.key_reference, error="storage down")
    assert failures == 1  # the failing file backs off: the next ones are not starved behind it
    assert await service.due_for_rotation(limit=2) == [keys[1], keys[2]]
    clock.advance(minutes=2)  # the first backoff is about a minute (jittered 0.8-1.2)
    assert await service.due_for_rotation(limit=1) == [forced]
    assert await service.rotation_failed(files[3], forced.key_reference, error="still down") == 2
    clock.advance(minutes=1.5)  # the second waits about two minutes (at least 1.6)
    assert await service.due_for_rotation(limit=1) == [keys[1]]


async def test_delete_file_keys_removes_every_version_and_row_idempotently(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault
) -> None:
    file_id, kept = uuid.uuid4(), uuid.uuid4()
    key = await service.create_key(file_id)
    await complete(service, pg_db, await service.claim_rotation(file_id, worker="w1"))
    await service.create_key(kept)

    assert await service.delete_file_keys(file_id) == 2
    assert await rows(pg_db, file_id) == []
    assert await versions(vault, file_id) == {}
    with pytest.raises(FileKeyNotFoundError):
        await service.get_key(key.key_reference)
    assert await service.delete_file_keys(file_id) == 0
    assert len(await rows(pg_db, kept)) == 1


async def test_no_key_material_reaches_the_database(service: FileKeyService, pg_db: Database) -> None:
    keys: list[bytes] = []
    for _ in range(3):
        file_id = uuid.uuid4()
        keys.append(await service.get_key((await service.create_key(file_id)).key_reference))
        ticket = await service.claim_rotation(file_id, worker="w1")
        keys.append(await service.get_key(ticket.new.key_reference))
        await complete(service, pg_db, ticket)

    dumped: list[str] = []
    async with pg_db.connection() as conn:
        for table in await conn.fetch("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'"):
            dumped += [r[0] for r in await conn.fetch(f"SELECT row_to_json(x)::text FROM {table[0]} x")]  # noqa: S608
    dump = "\n".join(dumped)
    assert dump.count('"key_reference":"file-') == 6  # every row was searched
    for key in keys:
        for form in (key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(),
                     base64.b64encode(key).decode().rstrip("="), key.hex()[:16]):
            assert form not in dump


# --- rotation --------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_key_until_it_completes(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    file_id = uuid.uuid4()
    old = await service.create_key(file_id)
    old_key = await service.get_key(old.key_reference)
    clock.advance(days=DAYS + 1)
    completed = rotations("completed")

    ticket = await service.claim_rotation(file_id, worker="w1")
    assert ticket.old == old
    assert ticket.new.state == "pending" and ticket.new.key_reference != old.key_reference
    assert ticket.new.expires_at == clock.now + timedelta(days=DAYS)
    new_key = await service.get_key(ticket.new.key_reference)
    assert new_key != old_key
    assert await service.get_key(old.key_reference) == old_key  # still readable mid-rotation
    assert await service.active_key(file_id) == old
    assert await versions(vault, file_id) == {old.key_reference: True, ticket.new.key_reference: True}

    clock.advance(minutes=5)
    active = await complete(service, pg_db, ticket)
    assert active == FileKey(file_id, ticket.new.key_reference, ticket.new.created_at, ticket.new.expires_at,
                             "active")
    assert await service.active_key(file_id) == active
    assert await service.get_key(active.key_reference) == new_key
    with pytest.raises(KeyRetiredError):
        await service.get_key(old.key_reference)
    assert await versions(vault, file_id) == {old.key_reference: False, active.key_reference: True}
    retired = (await rows(pg_db, file_id))[0]
    assert (retired["state"], retired["retired_at"], retired["vault_disabled_at"]) == ("retired", clock.now, clock.now)
    assert retired["rotation_claimed_by"] is None
    assert rotations("completed") == completed + 1

    assert await complete(service, pg_db, ticket) == active  # a rerun changes nothing
    assert rotations("completed") == completed + 1
    assert [r["state"] for r in await rows(pg_db, file_id)] == ["retired", "active"]


async def test_two_workers_rotating_one_file_one_wins_and_nothing_is_lost(
    pg_db: Database, second_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    one, two = (key_service(db, vault, clock=clock) for db in (pg_db, second_db))
    file_id = uuid.uuid4()
    old = await one.create_key(file_id)
    old_key = await one.get_key(old.key_reference)

    outcomes = await asyncio.gather(one.claim_rotation(file_id, worker="w1"),
                                    two.claim_rotation(file_id, worker="w2"), return_exceptions=True)
    [ticket] = [o for o in outcomes if not isinstance(o, BaseException)]
    [refusal] = [o for o in outcomes if isinstance(o, BaseException)]
    assert isinstance(refusal, RotationConflictError)
    assert refusal.details["claimed_by"] == ticket.worker
    loser = two if ticket.worker == "w1" else one
    with pytest.raises(RotationConflictError):
        await loser.claim_rotation(file_id, worker="w3")
    assert await loser.get_key(old.key_reference) == old_key  # the loser can still read the file

    winner = one if loser is two else two
    active = await complete(winner, pg_db, ticket)
    assert [(r["key_reference"], r["state"]) for r in await rows(pg_db, file_id)] == [
        (old.key_reference, "retired"), (active.key_reference, "active")]
    assert await versions(vault, file_id) == {old.key_reference: False, active.key_reference: True}


async def test_an_expired_lease_passes_the_rotation_on_and_the_stale_worker_cannot_complete(
    service: FileKeyService, second_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    other = key_service(second_db, vault, clock=clock)
    file_id = uuid.uuid4()
    await service.create_key(file_id)
    stale = await service.claim_rotation(file_id, worker="w1", lease_seconds=60)
    clock.advance(seconds=59)
    with pytest.raises(RotationConflictError):
        await other.claim_rotation(file_id, worker="w2")
    clock.advance(seconds=2)

    fresh = await other.claim_rotation(file_id, worker="w2")
    assert fresh.new == stale.new  # the pending key is reused, not duplicated
    with pytest.raises(RotationConflictError):
        await complete(service, second_db, stale)
    assert (await service.active_key(file_id)) == stale.old
    assert (await complete(other, second_db, fresh)).key_reference == stale.new.key_reference
    assert len(await versions(vault, file_id)) == 2


async def test_a_crash_between_claim_and_switch_resumes_with_the_pending_key(
    pg_database_url: str, vault: LocalJsonVault, clock: FakeClock, pg_db: Database
) -> None:
    file_id = uuid.uuid4()
    crashed_db = Database(pg_database_url, pool_max=2)
    crashed = key_service(crashed_db, vault, clock=clock)
    old = await crashed.create_key(file_id)
    lost_ticket = await crashed.claim_rotation(file_id, worker="host-a", lease_seconds=300)
    await crashed_db.close()  # the worker dies; its claim and pending key stay behind

    restarted = key_service(pg_db, vault, clock=clock)
    same_worker = await restarted.claim_rotation(file_id, worker="host-a", lease_seconds=300)  # its own: no wait
    assert same_worker.new == lost_ticket.new
    clock.advance(seconds=301)
    ticket = await restarted.claim_rotation(file_id, worker="host-b")
    assert (ticket.old, ticket.new) == (old, lost_ticket.new)
    active = await complete(restarted, pg_db, ticket)
    assert active.key_reference == lost_ticket.new.key_reference
    assert await versions(vault, file_id) == {old.key_reference: False, active.key_reference: True}


async def test_switch_keys_joins_the_callers_transaction(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault
) -> None:
    file_id = uuid.uuid4()
    old = await service.create_key(file_id)
    ticket = await service.claim_rotation(file_id, worker="w1")

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with pg_db.transaction() as conn:
            await service.switch_keys(conn, ticket)
            raise Abort  # e.g. the caller's pointer update failed: everything rolls back
    assert [r["state"] for r in await rows(pg_db, file_id)] == ["active", "pending"]
    with pytest.raises(RotationConflictError):
        await service.disable_old_key(ticket)  # never disables a key that is still active
    assert (await versions(vault, file_id))[old.key_reference] is True

    async with pg_db.transaction() as conn:
        await service.switch_keys(conn, ticket)
    assert await service.get_key(old.key_reference)  # committed, not yet disabled: downloads in flight finish
    await service.disable_old_key(ticket)
    await service.disable_old_key(ticket)
    with pytest.raises(KeyRetiredError):
        await service.get_key(old.key_reference)
    assert (await versions(vault, file_id))[old.key_reference] is False


async def test_a_failed_disable_leaves_the_rotation_done_and_the_sweep_finishes_it(
    pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    class FlakyDisable(DelegatingVault):
        failures = 1

        async def disable_version(self, name: str, version: str) -> None:
            if self.failures:
                self.failures -= 1
                raise VaultUnavailableError("vault busy", operation="disable_version")
            await super().disable_version(name, version)

    service = key_service(pg_db, FlakyDisable(vault), clock=clock)
    file_id = uuid.uuid4()
    old = await service.create_key(file_id)
    ticket = await service.claim_rotation(file_id, worker="w1")
    async with pg_db.transaction() as conn:
        active = await service.switch_keys(conn, ticket)
    with pytest.raises(VaultUnavailableError):
        await service.disable_old_key(ticket)  # the Rotator logs this and leaves it for the sweep

    assert await service.active_key(file_id) == active
    assert (await versions(vault, file_id))[old.key_reference] is True
    assert [r["vault_disabled_at"] for r in await rows(pg_db, file_id)] == [None, None]
    assert await service.retire_pending_disables() == 1
    assert (await versions(vault, file_id))[old.key_reference] is False
    with pytest.raises(KeyRetiredError):
        await service.get_key(old.key_reference)
    assert await service.retire_pending_disables() == 0


async def test_abandon_releases_the_claim_and_can_discard_the_pending_key(
    service: FileKeyService, pg_db: Database, vault: LocalJsonVault
) -> None:
    file_id = uuid.uuid4()
    old = await service.create_key(file_id)
    ticket = await service.claim_rotation(file_id, worker="w1")
    assert await service.release_claim(ticket, discard_pending=True) is True
    assert [r["key_reference"] for r in await rows(pg_db, file_id)] == [old.key_reference]
    assert await versions(vault, file_id) == {old.key_reference: True, ticket.new.key_reference: False}
    with pytest.raises(SecretDisabledError):
        await vault.get_secret(*parse_key_reference(ticket.new.key_reference))

    retry = await service.claim_rotation(file_id, worker="w2")  # free at once
    assert retry.new.key_reference != ticket.new.key_reference
    assert await service.release_claim(ticket) is False  # not w1's any more
    assert await service.release_claim(retry) is True
    again = await service.claim_rotation(file_id, worker="w3")
    assert again.new == retry.new  # kept: the next attempt reuses it


# --- the database going away ----------------------------------------------------------------


@pytest.fixture
async def proxied_db(proxy: PgProxy, pg_database_url: str, pg_db: Database) -> AsyncIterator[Database]:
    database = Database(proxy.url(pg_database_url), pool_max=2, connect_timeout=2, command_timeout=5)
    yield database
    await database.close()


async def test_a_database_restart_during_create_key_fails_fast_leaves_nothing_and_heals(
    proxied_db: Database, proxy: PgProxy, pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    class CutAfterStore(DelegatingVault):
        cut = True

        async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
            props = await super().set_secret(name, value, expires_on=expires_on)
            if self.cut:
                self.cut = False
                await proxy.cut()  # the server "restarts" between the vault write and the insert
                await asyncio.sleep(0.05)
            return props

    service = key_service(proxied_db, CutAfterStore(vault), clock=clock)
    await proxied_db.ping()
    pool = proxied_db._pool  # the same pool must survive the restart
    file_id = uuid.uuid4()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as failure:
        await service.create_key(file_id)
    assert time.monotonic() - started < 3
    assert failure.value.details["stage"] == "connect"
    assert await rows(pg_db, file_id) == []
    assert list((await versions(vault, file_id)).values()) == [False]  # the orphan version was disabled

    await proxy.restore()
    key = await service.create_key(file_id)
    assert proxied_db._pool is pool
    assert [r["key_reference"] for r in await rows(pg_db, file_id)] == [key.key_reference]
    assert [ref for ref, on in (await versions(vault, file_id)).items() if on] == [key.key_reference]


async def test_a_connection_lost_before_commit_rolls_the_switch_back(
    proxied_db: Database, proxy: PgProxy, pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    service = key_service(proxied_db, vault, clock=clock)
    file_id = uuid.uuid4()
    old = await service.create_key(file_id)
    ticket = await service.claim_rotation(file_id, worker="w1")

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as failure:
        async with proxied_db.transaction() as conn:
            await service.switch_keys(conn, ticket)
            await proxy.cut()
    assert time.monotonic() - started < 3
    assert failure.value.details["stage"] == "commit"  # outcome unknown to the client: it must re-check
    await asyncio.sleep(0.2)  # let the server notice the lost session and roll it back
    assert [r["state"] for r in await rows(pg_db, file_id)] == ["active", "pending"]
    assert (await versions(vault, file_id))[old.key_reference] is True

    await proxy.restore()
    active = await complete(service, pg_db, ticket)
    assert active.key_reference == ticket.new.key_reference
    assert [r["state"] for r in await rows(pg_db, file_id)] == ["retired", "active"]


async def test_a_statement_in_flight_when_the_database_goes_away_fails_promptly(
    proxied_db: Database, proxy: PgProxy, pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    service = key_service(proxied_db, vault, clock=clock)
    file_id = uuid.uuid4()
    await service.create_key(file_id)
    async with pg_db.transaction() as blocker:  # holds the row lock: claim_rotation's UPDATE waits
        await blocker.execute("SELECT 1 FROM file_keys WHERE file_id = $1 FOR UPDATE", file_id)
        attempt = asyncio.create_task(service.claim_rotation(file_id, worker="w1"))
        await asyncio.sleep(0.3)
        assert not attempt.done()
        started = time.monotonic()
        await proxy.cut()
        with pytest.raises(DatabaseUnavailableError):
            await attempt
        assert time.monotonic() - started < 2
    assert all(r["rotation_claimed_by"] is None for r in await rows(pg_db, file_id))

    await proxy.restore()
    ticket = await service.claim_rotation(file_id, worker="w1")
    assert [r["state"] for r in await rows(pg_db, file_id)] == ["active", "pending"]
    assert ticket.worker == "w1"


async def test_a_silent_server_is_bounded_by_the_connect_timeout(pg_database_url: str, proxy: PgProxy) -> None:
    await proxy.stall()
    database = Database(proxy.url(pg_database_url), connect_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailableError, match="timed out"):
            await database.ping()
    finally:
        await database.close()
    assert time.monotonic() - started < 2


async def test_a_stuck_statement_is_bounded_by_the_command_timeout(
    pg_database_url: str, pg_db: Database, vault: LocalJsonVault, clock: FakeClock
) -> None:
    impatient = Database(pg_database_url, command_timeout=0.5)
    service = key_service(impatient, vault, clock=clock)
    file_id = uuid.uuid4()
    try:
        await service.create_key(file_id)
        async with pg_db.transaction() as blocker:
            await blocker.execute("SELECT 1 FROM file_keys WHERE file_id = $1 FOR UPDATE", file_id)
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await service.claim_rotation(file_id, worker="w1")
            assert time.monotonic() - started < 2
    finally:
        await impatient.close()


async def test_an_unreachable_database_fails_fast_without_revealing_the_password() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = Database(f"postgresql://blobseal:hunter2-secret@127.0.0.1:{port}/blobseal")
    assert "hunter2" not in repr(database)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as failure:
        await database.ping()
    assert time.monotonic() - started < 2
    error = failure.value
    assert f"postgresql://blobseal:***@127.0.0.1:{port}/blobseal" in str(error)
    for text in (str(error), repr(error), str(error.to_dict())):
        assert "hunter2" not in text
    assert isinstance(error.__cause__, OSError | asyncpg.PostgresError)
    await database.close()
