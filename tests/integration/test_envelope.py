"""The envelope key mode against real Azurite, PostgreSQL and the local vault (the KEK its secret).

What it must show: file keys stay unique and bound to their rows, the KEK is called per
intermediate key and not per file, KEK rotation rewraps only intermediate keys, deleting a file
destroys its wrapped key, and keys move between the modes (both ways, on a deployment that
keeps ingesting in the other mode) without a blob being rewritten.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.crypto.keywrap import wrap_file_key
from shared.db.file_keys import FileKeyRepository, Placement
from shared.db.files import FileRepository
from shared.db.migrations import migrate
from shared.errors import KeyIntegrityError, KeyRetiredError, SecretDisabledError, SecretNotFoundError, WrappedKeyError
from shared.identity import SYSTEM
from shared.vault.kek import KekMissingError, LocalKeyWrapper, Wrapped
from shared.vault.local import LocalJsonVault
from tests.integration.service_fixtures import (
    blob_names,
    collect,
    http_download,
    new_name,
    random_bytes,
    read_blob,
    upload,
)
from tests.support.stack import OPERATOR
from tests.unit.test_format_vectors import KAT, frozen_ciphertext

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

StackFactory = Callable[..., Awaitable[Services]]


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    """A vault of this test's own (a KEK of its own), with a database of its own (below)."""
    return tmp_path / "vault"


@pytest.fixture
def database_url(pg_empty_database_url: str) -> str:
    asyncio.run(migrate(pg_empty_database_url))
    return pg_empty_database_url


class CountingKek:
    """The real local KEK, counting what reaches it (the calls Key Vault would bill and throttle)."""

    def __init__(self, inner: LocalKeyWrapper) -> None:
        self.inner = inner
        self.wraps = self.unwraps = 0

    async def wrap(self, key: bytes) -> Wrapped:
        self.wraps += 1
        return await self.inner.wrap(key)

    async def unwrap(self, wrapped: Wrapped) -> bytes:
        self.unwraps += 1
        await asyncio.sleep(0.01)  # a round trip: concurrent readers of one intermediate key overlap here
        return await self.inner.unwrap(wrapped)

    async def current(self) -> str:
        return await self.inner.current()

    async def create(self) -> str:
        return await self.inner.create()

    async def close(self) -> None:
        await self.inner.close()


def counting(vault_dir: Path) -> CountingKek:
    return CountingKek(LocalKeyWrapper(LocalJsonVault(vault_dir)))


async def sibling(make_stack: StackFactory, stack: Services, **overrides: object) -> Services:
    """Another instance of the same deployment (same containers, database and vault), in its own process state."""
    return await make_stack(**{"KEY_MODE": stack.settings.key_mode, "INGEST_CONTAINER": stack.settings.ingest_container,
                               "PROTECTED_CONTAINER": stack.settings.protected_container, **overrides})


async def ingest(stack: Services, azurite: Azurite, data: bytes) -> uuid.UUID:
    name = new_name()
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert outcome.status == "encrypted" and outcome.file_id is not None
    return outcome.file_id


async def download(stack: Services, file_id: uuid.UUID) -> bytes:
    return await collect(await stack.files.open(await stack.files.encrypted_file(str(file_id)), None))


async def key_row(stack: Services, file_id: uuid.UUID) -> dict[str, object]:
    async with stack.db.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM file_keys WHERE file_id = $1 AND state = 'active'", file_id)
    assert row is not None
    return dict(row)


async def test_new_keys_are_wrapped_in_their_rows_and_never_vault_secrets(make_stack: StackFactory,
                                                                          azurite: Azurite) -> None:
    stack = await make_stack(KEY_MODE="envelope")
    data = [random_bytes(n) for n in (0, 1, 70_000, 300_000)]
    ids = [await ingest(stack, azurite, d) for d in data]
    rows = [await key_row(stack, i) for i in ids]
    for file_id, row in zip(ids, rows, strict=True):
        assert row["custody"] == "envelope" and row["vault_reference"] is None
        assert str(row["key_reference"]).startswith(f"file-{file_id}/env-")
        assert isinstance(row["wrapped_key"], bytes) and len(row["wrapped_key"]) == 60
        with pytest.raises(SecretNotFoundError):
            await stack.vault.get_secret(f"file-{file_id}")
    assert len({r["intermediate_id"] for r in rows}) == 1  # one intermediate key for the instance's files
    keys = {await stack.keys.key_of(str(r["key_reference"])) for r in rows}
    assert len(keys) == len(ids)  # every file its own key
    assert [await download(stack, i) for i in ids] == data
    async with stack.db.connection() as conn:
        intermediate = await conn.fetchrow("SELECT * FROM intermediate_keys")
    assert str(intermediate["kek_reference"]).startswith("blobseal-kek/")
    assert intermediate["wrapped_key"] not in keys and len(intermediate["wrapped_key"]) == 40  # AES-KW of 32 bytes


async def test_the_kek_is_called_per_intermediate_key_not_per_file(make_stack: StackFactory, azurite: Azurite,
                                                                   vault_dir: Path) -> None:
    writer_kek = counting(vault_dir)
    writer = await make_stack(KEY_MODE="envelope", ENVELOPE_INTERMEDIATE_MAX_FILES="4", kek=writer_kek)
    data = {await ingest(writer, azurite, d): d for d in [random_bytes(5000) for _ in range(10)]}
    # 4 + 4 + 2 files: three intermediate keys (the first wrap found no KEK yet, made it, and wrapped again)
    assert writer_kek.wraps == 3 + 1 and writer_kek.unwraps == 0
    reader_kek = counting(vault_dir)
    reader = await sibling(make_stack, writer, kek=reader_kek)  # another instance: a cold cache
    results = await asyncio.gather(*(download(reader, i) for i in data))
    assert results == list(data.values())
    assert reader_kek.unwraps == 3 and reader_kek.wraps == 0  # once per intermediate key, however concurrent
    assert [await download(reader, i) for i in data] == list(data.values())
    assert reader_kek.unwraps == 3  # warm: no KEK call at all


async def test_an_intermediate_key_is_used_for_a_bounded_period(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(KEY_MODE="envelope", ENVELOPE_INTERMEDIATE_MINUTES="1")
    first = await ingest(stack, azurite, b"one")
    intermediates = stack.intermediates
    intermediates._clock = lambda: datetime.now(UTC) + timedelta(minutes=2)  # the period ran out
    second = await ingest(stack, azurite, b"two")
    assert (await key_row(stack, first))["intermediate_id"] != (await key_row(stack, second))["intermediate_id"]


@pytest.mark.parametrize("target", ["another file", "another version of the same file", "another intermediate key"])
async def test_a_wrapped_key_moved_to_another_row_is_refused(make_stack: StackFactory, azurite: Azurite,
                                                             target: str) -> None:
    stack = await make_stack(KEY_MODE="envelope", ENVELOPE_INTERMEDIATE_MAX_FILES="1")  # a key each
    victim = await ingest(stack, azurite, random_bytes(10_000))
    donor = await ingest(stack, azurite, random_bytes(10_000))
    if target == "another version of the same file":
        donor = victim
        await stack.maintenance.rotate_file(OPERATOR, str(victim))  # the old row (retired) holds the donor wrapping
    fresh = await sibling(make_stack, stack)  # nothing cached: the row is all it has
    async with stack.db.connection() as conn:
        wrapped, intermediate = await conn.fetchrow(
            "SELECT wrapped_key, intermediate_id FROM file_keys WHERE file_id = $1 ORDER BY id LIMIT 1", donor)
        if target == "another intermediate key":  # the victim's own wrapping, pointed at the donor's key
            wrapped = await conn.fetchval("SELECT wrapped_key FROM file_keys WHERE file_id = $1", victim)
        await conn.execute("UPDATE file_keys SET wrapped_key = $2, intermediate_id = $3 "
                           "WHERE file_id = $1 AND state = 'active'", victim, wrapped, intermediate)
    with pytest.raises(WrappedKeyError):
        await download(fresh, victim)
    status, _, body = await http_download(fresh, str(victim))
    assert status == 500 and json.loads(body) == {
        "error": "WrappedKeyError",
        "message": "the file's key record failed its integrity check; nothing of it was served"}


async def test_rows_from_before_signatures_are_refused_until_attested_once(make_stack: StackFactory, azurite: Azurite,
                                                                         vault_dir: Path) -> None:
    """The upgrade: an older version left unsigned intermediate rows and no signing key in its vault."""
    stack = await make_stack(KEY_MODE="envelope")
    data = {await ingest(stack, azurite, d): d for d in [random_bytes(3000) for _ in range(3)]}
    async with stack.db.connection() as conn:
        await conn.execute("UPDATE intermediate_keys SET signing_key = NULL, signature = NULL")
    await LocalJsonVault(vault_dir).delete_secret("blobseal-signing")
    upgraded = await sibling(make_stack, stack)
    first = next(iter(data))
    with pytest.raises(KeyIntegrityError, match="not signed"):
        await download(upgraded, first)
    # the signing key made on the way
    assert await upgraded.maintenance.attest_intermediates(OPERATOR) == {"attested": 1}
    assert [await download(upgraded, i) for i in data] == list(data.values())
    assert await download(upgraded, await ingest(upgraded, azurite, b"after the upgrade")) == b"after the upgrade"
    assert await upgraded.maintenance.attest_intermediates(OPERATOR) == {"attested": 0}  # nothing left unsigned


async def test_kek_rotation_rewraps_intermediate_keys_only(make_stack: StackFactory, azurite: Azurite,
                                                           vault_dir: Path) -> None:
    stack = await make_stack(KEY_MODE="envelope", ENVELOPE_INTERMEDIATE_MAX_FILES="2")
    data = {await ingest(stack, azurite, d): d for d in [random_bytes(3000) for _ in range(5)]}
    blobs = {n: await read_blob(azurite, stack.settings.protected_container, n)
             for n in await blob_names(azurite, stack.settings.protected_container)}
    rows_before = {i: await key_row(stack, i) for i in data}
    old_kek = await stack.intermediates.kek.current()
    report = await stack.maintenance.rotate_kek(OPERATOR)
    assert report["rewrapped"] == 3 and report["kek_reference"] != old_kek
    assert report["kek_versions_in_use"] == {report["kek_reference"]: 3}
    assert {i: await key_row(stack, i) for i in data} == rows_before  # file keys untouched
    assert {n: await read_blob(azurite, stack.settings.protected_container, n) for n in blobs} == blobs
    await LocalJsonVault(vault_dir).disable_version(*old_kek.split("/"))  # the old KEK version can go
    fresh = await sibling(make_stack, stack)
    assert [await download(fresh, i) for i in data] == list(data.values())
    assert (await fresh.maintenance.rotate_kek(OPERATOR, rewrap_only=True))["rewrapped"] == 0


async def test_rotation_and_deletion_in_envelope_mode(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(KEY_MODE="envelope")
    data = random_bytes(150_000)
    file_id = await ingest(stack, azurite, data)
    old = str((await key_row(stack, file_id))["key_reference"])
    new = await stack.maintenance.rotate_file(OPERATOR, str(file_id))
    assert new != old and await download(stack, file_id) == data
    with pytest.raises(KeyRetiredError):
        await stack.keys.get_key(old)
    await stack.files.delete(SYSTEM, str(file_id))
    async with stack.db.connection() as conn:
        left = await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1", file_id)
    assert left == 0  # the wrapped keys are gone: nothing can recover the file key (crypto-shredding)


async def test_a_missing_kek_is_never_replaced_while_intermediate_keys_are_recorded(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    stack = await make_stack(KEY_MODE="envelope")
    kept = await ingest(stack, azurite, b"before")
    await LocalJsonVault(vault_dir).delete_secret("blobseal-kek")
    fresh = await sibling(make_stack, stack)
    name = new_name()
    await upload(azurite, fresh.settings.ingest_container, name, b"after")
    with pytest.raises(KekMissingError):
        await fresh.files.encrypt_ingest_blob(name)
    assert name in await blob_names(azurite, fresh.settings.ingest_container)  # nothing lost: it waits
    with pytest.raises(KekMissingError):
        await fresh.intermediates.kek.current()
    with pytest.raises(SecretNotFoundError):  # fail closed: no new KEK was made
        await LocalJsonVault(vault_dir).get_secret("blobseal-kek")
    assert kept


async def test_switching_modes_on_a_running_deployment_loses_nothing(make_stack: StackFactory,
                                                                     azurite: Azurite) -> None:
    old = await make_stack(KEY_MODE="secret")
    new = await sibling(make_stack, old, KEY_MODE="envelope")
    data: dict[uuid.UUID, bytes] = {}

    async def keep_ingesting(stack: Services, count: int) -> None:
        for _ in range(count):
            payload = random_bytes(20_000)
            data[await ingest(stack, azurite, payload)] = payload

    await keep_ingesting(old, 4)  # before the switch: secret mode only
    # the rolling switch: old instances still ingest while new ones do, and the keys are migrated meanwhile
    moved = await asyncio.gather(keep_ingesting(old, 6), keep_ingesting(new, 6),
                                 new.maintenance.migrate_keys(OPERATOR, "envelope", batch=3))
    rotated = next(iter(data))
    await new.maintenance.rotate_file(OPERATOR, str(rotated))  # a rotation after the switch gets an envelope key
    final = await new.maintenance.migrate_keys(OPERATOR, "envelope")
    assert moved[2]["moved"] + final["moved"] >= 4
    for file_id, payload in data.items():
        assert await download(new, file_id) == payload and await download(old, file_id) == payload
        assert (await key_row(new, file_id))["custody"] == "envelope"
    blobs = {n: await read_blob(azurite, new.settings.protected_container, n)
             for n in await blob_names(azurite, new.settings.protected_container)}
    migrated = next(i for i in data if i != rotated)
    secret_ref = str((await key_row(new, migrated))["vault_reference"])
    with pytest.raises(SecretDisabledError):  # the vault no longer holds a usable copy
        await LocalJsonVault(Path(new.settings.key_vault_local_path)).get_secret(*secret_ref.split("/"))

    back = await old.maintenance.migrate_keys(OPERATOR, "secret")  # and back again, still without re-encryption
    assert back["moved"] == len(data)
    fresh = await sibling(make_stack, old)
    for file_id, payload in data.items():
        assert await download(fresh, file_id) == payload
        row = await key_row(fresh, file_id)
        assert row["custody"] == "secret" and row["wrapped_key"] is None
    after = {n: await read_blob(azurite, new.settings.protected_container, n) for n in blobs}
    assert after == blobs  # not one blob rewritten by either migration
    await fresh.files.delete(SYSTEM, str(migrated))
    with pytest.raises(SecretNotFoundError):
        await LocalJsonVault(Path(new.settings.key_vault_local_path)).get_secret(f"file-{migrated}")


async def test_the_reconciler_lists_no_vault_versions_for_envelope_files(make_stack: StackFactory, azurite: Azurite,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[str] = []
    real = LocalJsonVault.list_versions

    async def counted(self: LocalJsonVault, name: str) -> object:
        listed.append(name)
        return await real(self, name)

    monkeypatch.setattr(LocalJsonVault, "list_versions", counted)
    secret_stack = await make_stack(KEY_MODE="secret")
    kept_in_vault = await ingest(secret_stack, azurite, b"a secret-mode file")
    stack = await sibling(make_stack, secret_stack, KEY_MODE="envelope")
    contents = [random_bytes(1000) for _ in range(5)]
    wrapped = [await ingest(stack, azurite, data) for data in contents]
    report = await stack.maintenance.reconcile()
    assert report.failed == 0
    assert listed == []  # every placement was recorded: no file's versions are listed, in either custody
    assert [await download(stack, i) for i in wrapped] == contents
    assert await download(stack, kept_in_vault) == b"a secret-mode file"


@pytest.mark.parametrize("custody", ["secret", "envelope"])
@pytest.mark.parametrize("name", ["partial last block", "block plus one, default block"])
async def test_the_frozen_vectors_download_unchanged_in_both_custodies(make_stack: StackFactory, azurite: Azurite,
                                                                      custody: str, name: str) -> None:
    """A published ciphertext, stored as it is, served through either custody of its key."""
    vector = next(v for v in KAT["vectors"] if v["name"] == name)
    key, file_id, reference = bytes.fromhex(KAT["key"]), uuid.UUID(KAT["file_id"]), KAT["key_reference"]
    plaintext = bytes(i % 251 for i in range(int(vector["plaintext_size"])))
    stack = await make_stack(KEY_MODE=custody)
    blob = f"{file_id}/vector.bseal"
    etag = await upload(azurite, stack.settings.protected_container, blob, frozen_ciphertext(vector))
    if custody == "secret":  # the vault picks the version: the row says where the key is
        await stack.vault.initialize()  # a new deployment's vault
        props = await stack.vault.set_secret(f"file-{file_id}", key)
        placement = Placement("secret", vault_reference=props.key_reference)
    else:
        intermediate_id, intermediate = await stack.intermediates.for_new_key()
        placement = Placement("envelope", wrapped_key=wrap_file_key(
            intermediate, key, file_id=file_id, intermediate_id=intermediate_id, key_reference=reference),
            intermediate_id=intermediate_id)
    now = datetime.now(UTC)
    async with stack.db.transaction() as conn:
        await FileRepository(conn).register(file_id, source_name="vector.bin", source_etag="v", name="vector.bin",
                                            content_type="application/octet-stream")
        await FileRepository(conn).mark_encrypted(
            file_id, source_name="vector.bin", source_etag="v", name="vector.bin",
            content_type="application/octet-stream", size=len(plaintext), key_reference=reference,
            protected_blob=blob, protected_etag=etag, block_size=int(vector["block_size"]), now=now)
        await FileKeyRepository(conn).insert(file_id, reference, placement, state="active", created_at=now,
                                             expires_at=now + timedelta(days=30))
    cold = await sibling(make_stack, stack)
    assert await download(cold, file_id) == plaintext
    status, _, body = await http_download(cold, str(file_id), {"Range": "bytes=65-130"})
    assert (status, body) == (206, plaintext[65:131])


async def test_health_reports_a_missing_kek_once_keys_depend_on_it(make_stack: StackFactory, azurite: Azurite,
                                                                  vault_dir: Path) -> None:
    stack = await make_stack(KEY_MODE="envelope")
    # a new deployment: the KEK comes with use
    assert (await stack.health.details(OPERATOR))["dependencies"]["vault"] == "ok"
    await ingest(stack, azurite, b"wrapped")
    assert (await stack.health.details(OPERATOR))["dependencies"]["vault"] == "ok"
    await LocalJsonVault(vault_dir).set_secret("file-00000000-0000-0000-0000-000000000001", b"k" * 32)
    await LocalJsonVault(vault_dir).delete_secret("blobseal-kek")  # the vault is there, its KEK is not
    fresh = await sibling(make_stack, stack)
    assert (await fresh.health.details(OPERATOR))["dependencies"]["vault"] == "KekMissingError"


async def test_a_key_from_before_the_envelope_mode_moved_and_deleted_leaves_no_secret(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    old = await make_stack(KEY_MODE="secret")
    data = random_bytes(5000)
    file_id = await ingest(old, azurite, data)
    async with old.db.connection() as conn:  # a row from before migration 6: the spec's columns only
        await conn.execute("UPDATE file_keys SET vault_reference = NULL WHERE file_id = $1", file_id)
    new = await sibling(make_stack, old, KEY_MODE="envelope")
    assert (await new.maintenance.migrate_keys(OPERATOR, "envelope"))["moved"] == 1
    assert await download(await sibling(make_stack, new), file_id) == data
    await new.files.delete(SYSTEM, str(file_id))
    with pytest.raises(SecretNotFoundError):  # the moved key's old secret went with the file
        await LocalJsonVault(vault_dir).get_secret(f"file-{file_id}")
