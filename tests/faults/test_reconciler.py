"""The reconciler repairs each kind of leftover, once, counted; a second run finds nothing; two at once
do not collide; a bad row does not starve rotation."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from azure.storage.blob.aio import BlobServiceClient

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.custody import SecretCustody
from shared.db.files import FileRepository
from shared.errors import KeyVaultError, SecretDisabledError, UploadConflictError
from shared.metrics import REGISTRY
from shared.reconcile import LEASE_STATE
from shared.vault.base import parse_key_reference
from shared.vault.cache import CachedKeyVault
from tests.integration.service_fixtures import blob_names, upload
from tests.support.stack import (
    OPERATOR,
    StackFactory,
    all_blobs,
    assert_clean,
    download,
    enabled_unrecorded_versions,
    encrypted,
)

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]


def repairs(kind: str) -> float:
    return REGISTRY.get_sample_value("blobseal_repairs_total", {"kind": kind}) or 0.0


async def test_an_upload_never_delivered_is_encrypted(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name, data = f"{uuid.uuid4()}.bin", os.urandom(200_000)
    await upload(azurite, stack.settings.ingest_container, name, data)  # no trigger ever fires for it
    before = repairs("stranded")
    report = await stack.maintenance.reconcile()
    assert report.repairs == {"stranded": 1} and repairs("stranded") == before + 1
    file_id = uuid.UUID(name.removesuffix(".bin"))
    await assert_clean(stack, azurite, {file_id: data})
    assert (await stack.maintenance.reconcile()).repairs == {}  # idempotent: nothing left to do


async def test_an_upload_that_failed_permanently_is_left_to_the_operator(
        make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    file_id = uuid.uuid4()
    await upload(azurite, stack.settings.ingest_container, f"{file_id}/a", b"a")
    await stack.files.encrypt_ingest_blob(f"{file_id}/a")
    await upload(azurite, stack.settings.ingest_container, f"{file_id}/b", b"b")
    with pytest.raises(Exception, match="already used"):
        await stack.files.encrypt_ingest_blob(f"{file_id}/b")
    assert (await stack.maintenance.reconcile()).repairs == {}  # permanent: not retried, listed by `failed`
    assert await blob_names(azurite, stack.settings.ingest_container) == [f"{file_id}/b"]
    await stack.ingest.delete(f"{file_id}/b")  # the operator removes it: the failure record goes too
    await stack.maintenance.reconcile()
    assert [f for f in await stack.maintenance.failed_uploads(OPERATOR) if f.source_name == f"{file_id}/b"] == []


async def test_a_vanished_upload_leaves_no_row_key_or_blocks(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    file_id = uuid.uuid4()
    async with stack.db.transaction() as conn:  # an attempt that got as far as its key and some blocks
        await FileRepository(conn).register(file_id, source_name=f"{file_id}.bin", source_etag='"0x1"',
                                            name="x", content_type="text/plain")
    key = await stack.keys.create_key(file_id)
    writer = stack.protected.writer(f"{file_id}/{key.key_reference.split('/')[1]}.abc.bseal", target=1)
    await writer.stage(b"staged, never committed")
    report = await stack.maintenance.reconcile()  # the upload itself is gone from ingest
    assert report.repairs.get("stale_pending") == 1
    async with stack.db.connection() as conn:
        assert await FileRepository(conn).get(file_id) is None
        assert await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1", file_id) == 0
    assert await stack.vault.list_versions(f"file-{file_id}") == []
    assert [n for n in await all_blobs(azurite, stack.settings.protected_container) if n.startswith(str(file_id))] \
        == []


async def test_orphan_blobs_and_staged_blocks_are_discarded_and_live_ones_kept(
        make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name, data = f"{uuid.uuid4()}.bin", os.urandom(100_000)
    await upload(azurite, stack.settings.ingest_container, name, data)
    live = (await stack.files.encrypt_ingest_blob(name)).file_id
    assert live is not None
    orphan = stack.protected.writer(f"{uuid.uuid4()}/v.bseal", target=1)
    await orphan.stage(b"x")
    await orphan.commit()
    staged = stack.protected.writer(f"{uuid.uuid4()}/w.bseal", target=1)  # staged at once, never committed
    await staged.stage(b"y")
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("orphan_blob") == 2
    await assert_clean(stack, azurite, {live: data})


async def test_a_vault_version_nobody_recorded_is_disabled(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name, data = f"{uuid.uuid4()}.bin", os.urandom(1000)
    await upload(azurite, stack.settings.ingest_container, name, data)
    file_id = (await stack.files.encrypt_ingest_blob(name)).file_id
    assert file_id is not None
    # a worker placed a key (announced first, as every placement is) and died before recording it
    stray, _ = await SecretCustody(stack.vault, stack.db).place(file_id, os.urandom(32), datetime.now(UTC))
    assert await enabled_unrecorded_versions(stack, [file_id]) == [stray]
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("unrecorded_version") == 1
    await assert_clean(stack, azurite, {file_id: data})


async def test_a_vault_version_placed_for_a_file_with_no_key_left_is_deleted_whole(
        make_stack: StackFactory, azurite: Azurite) -> None:
    """A placement for a file deleted meanwhile (or whose upload was dropped): the secret protects nothing."""
    stack = await make_stack()
    file_id = uuid.uuid4()
    await SecretCustody(stack.vault, stack.db).place(file_id, os.urandom(32), datetime.now(UTC))
    assert [v.enabled for v in await stack.vault.list_versions(f"file-{file_id}")] == [True]
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("unrecorded_version") == 1
    assert await stack.vault.list_versions(f"file-{file_id}") == []
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM secret_intents WHERE file_id = $1", file_id) == 0


def drop_version(secrets_file: Path, name: str, version: str) -> None:
    """Remove one version from the local vault's file, as if it had been written to another vault."""
    entries = json.loads(secrets_file.read_text())
    entry = entries[name]
    older = entry.pop("versions", {})
    if entry.get("version") == version:  # the latest: the newest older version takes the top level
        latest_id, latest = list(older.items())[-1]
        del older[latest_id]
        entry = {**latest, "version": latest_id}
    else:
        del older[version]
    entries[name] = {**entry, **({"versions": older} if older else {})}
    secrets_file.write_text(json.dumps(entries))


async def test_a_stalled_rotation_is_resumed_and_a_lost_pending_key_replaced(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    stack = await make_stack()
    data = await encrypted(stack, azurite, 2, 150_000)
    ids = list(data)
    left = await stack.keys.claim_rotation(ids[0], worker="dead-host", lease_seconds=0.1)  # the worker died
    lost = await stack.keys.claim_rotation(ids[1], worker="other-host", lease_seconds=0.1)
    drop_version(vault_dir / "secrets.json", *parse_key_reference(lost.new.key_reference))  # made in another vault
    assert isinstance(stack.vault, CachedKeyVault)
    stack.vault.clear()  # (by another process: this one's cache never held it)
    await asyncio.sleep(0.2)
    old_key_of_second = lost.old.key_reference

    report = await stack.maintenance.reconcile()
    assert report.repairs.get("stalled_rotation") == 2 and report.failed == 0
    first = await stack.files.describe(OPERATOR, str(ids[0]))
    assert first["key_reference"] == left.new.key_reference  # resumed with the pending key it had
    with pytest.raises(SecretDisabledError):
        await stack.vault.get_secret(*parse_key_reference(left.old.key_reference))
    second = await stack.files.describe(OPERATOR, str(ids[1]))  # its lost pending key dropped, a new one made at once
    assert second["key_reference"] not in (old_key_of_second, lost.new.key_reference)
    async with stack.db.connection() as conn:
        states = [r["state"] for r in await conn.fetch("SELECT state FROM file_keys WHERE file_id = $1 ORDER BY id",
                                                       ids[1])]
    assert states == ["retired", "active"]
    for file_id, content in data.items():
        assert await download(stack, file_id) == content


async def test_two_reconcilers_at_once_one_runs(make_stack: StackFactory, azurite: Azurite) -> None:
    one, two = await make_stack(), await make_stack()
    reports = await asyncio.gather(one.maintenance.reconcile(), two.maintenance.reconcile())
    assert sorted(r.skipped for r in reports) in ([False, True], [False, False])  # never both inside at once


async def test_a_run_leaves_no_lease_behind(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()  # the run's lease row goes with the run: the next one starts at once
    assert not (await stack.maintenance.reconcile()).skipped
    other = await asyncpg.connect(stack.settings.database_url)
    try:
        assert await other.fetchval("SELECT count(*) FROM reconciler_state WHERE name = $1", LEASE_STATE) == 0
    finally:
        await other.close()
    assert not (await stack.maintenance.reconcile()).skipped


async def test_a_crashed_holder_blocks_runs_only_until_its_lease_runs_out(
        make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    lease = """{"holder": "dead-host:1:abc", "until": "%s"}"""
    async with stack.db.connection() as conn:  # a holder that died mid-run: its lease is still valid
        await conn.execute("INSERT INTO reconciler_state (name, value) VALUES ($1, $2)", LEASE_STATE,
                           lease % "2999-01-01T00:00:00+00:00")
    assert (await stack.maintenance.reconcile()).skipped
    async with stack.db.connection() as conn:  # ... and now it ran out: the next run takes over
        await conn.execute("UPDATE reconciler_state SET value = $2 WHERE name = $1", LEASE_STATE,
                           lease % "2000-01-01T00:00:00+00:00")
    assert not (await stack.maintenance.reconcile()).skipped
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM reconciler_state WHERE name = $1", LEASE_STATE) == 0


async def test_a_bad_row_does_not_starve_rotation(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(ROTATION_BATCH_SIZE="1")
    broken_id = uuid.uuid4()  # a pending file whose key expired first: it can never be rotated
    async with stack.db.transaction() as conn:
        await FileRepository(conn).register(broken_id, source_name="gone.bin", source_etag='"0x9"', name="gone.bin",
                                            content_type="text/plain")
    await stack.keys.create_key(broken_id)
    await stack.keys.expire(broken_id)
    healthy = await encrypted(stack, azurite, 2, 80_000)
    failing = list(healthy)
    bad, good = failing
    record = await stack.files.encrypted_file(str(bad))
    assert record.protected_blob is not None
    await stack.protected.delete(record.protected_blob)  # its rotation fails every time
    await stack.keys.expire(bad)
    await asyncio.sleep(0.01)
    await stack.keys.expire(good)

    first = await stack.maintenance.rotate_due()  # batch of 1: the oldest due file, which fails and backs off
    second = await stack.maintenance.rotate_due()
    assert first.failed == [str(bad)] and second.rotated == [str(good)]
    assert await download(stack, good) == healthy[good]
    async with stack.db.connection() as conn:
        row = await conn.fetchrow("SELECT rotation_failures, rotation_next_attempt_at, rotation_last_error "
                                  "FROM file_keys WHERE file_id = $1 AND state = 'active'", bad)
    assert row["rotation_failures"] == 1 and row["rotation_next_attempt_at"] > datetime.now(UTC)
    assert "not found" in row["rotation_last_error"]



async def attempts_of(stack: Services, name: str) -> int | None:
    failure = next((f for f in await stack.maintenance.failed_uploads(OPERATOR) if f.source_name == name), None)
    return None if failure is None else failure.attempts


async def test_failure_records_are_honoured_permanent_until_replay_transient_after_its_hold_attempts_only_grow(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    """Observed before (issue 19): listings' ETags (bare) never matched the recorded ones (quoted), so holds and
    the permanent flag were ignored and every complete listing dropped every record (attempts 5 -> 1)."""
    stack = await make_stack()
    ingest, taken = stack.settings.ingest_container, uuid.uuid4()
    await upload(azurite, ingest, f"{taken}/a.txt", b"first")
    await stack.files.encrypt_ingest_blob(f"{taken}/a.txt")
    await upload(azurite, ingest, f"{taken}/b.txt", b"second name, taken uuid")  # refused for good
    with pytest.raises(UploadConflictError):
        await stack.files.encrypt_ingest_blob(f"{taken}/b.txt")
    secrets_file = vault_dir / "secrets.json"
    good = secrets_file.read_bytes()
    transient, data = f"{uuid.uuid4()}.bin", os.urandom(40_000)
    try:
        secrets_file.write_text("{ not json")  # the vault refuses until restored: a failure worth retrying later
        await upload(azurite, ingest, transient, data)
        with pytest.raises(KeyVaultError):
            await stack.files.encrypt_ingest_blob(transient)
        seen = [(await attempts_of(stack, f"{taken}/b.txt"), await attempts_of(stack, transient))]
        for _ in range(2):  # both blobs are due (RECONCILE_AFTER_SECONDS=0); each listing is complete
            report = await stack.maintenance.reconcile()  # (other repairs fail while the vault is corrupt)
            assert "stranded" not in report.repairs  # neither was even tried: a try counts an attempt
            seen.append((await attempts_of(stack, f"{taken}/b.txt"), await attempts_of(stack, transient)))
        for _ in range(2):  # the hold passes (a minute after each failure): the transient one is retried
            async with stack.db.connection() as conn:
                await conn.execute("UPDATE ingest_failures SET next_attempt_at = now() - interval '1 second' "
                                   "WHERE source_name = $1", transient)
            await stack.maintenance.reconcile()
            seen.append((await attempts_of(stack, f"{taken}/b.txt"), await attempts_of(stack, transient)))
        assert seen == [(1, 1), (1, 1), (1, 1), (1, 2), (1, 3)]  # the permanent one waits; attempts only grow
    finally:
        secrets_file.write_bytes(good)
    with pytest.raises(UploadConflictError):
        await stack.maintenance.replay(OPERATOR, f"{taken}/b.txt")  # only the operator's replay tries it again
    assert await attempts_of(stack, f"{taken}/b.txt") == 2
    async with stack.db.connection() as conn:
        await conn.execute("UPDATE ingest_failures SET next_attempt_at = now() WHERE source_name = $1", transient)
    assert (await stack.maintenance.reconcile()).repairs.get("stranded") == 1  # the vault is back: encrypted
    assert await attempts_of(stack, transient) is None and await download(stack, transient[:-4]) == data


async def test_a_replay_of_an_upload_that_is_gone_stops_listing_its_failure(
        make_stack: StackFactory, azurite: Azurite) -> None:
    """``replay`` answers "gone" for an upload no longer in ``ingest``; ``failed`` stops listing it at once (it used to
    until the next complete reconciler listing)."""
    stack = await make_stack()
    ingest, taken = stack.settings.ingest_container, uuid.uuid4()
    await upload(azurite, ingest, f"{taken}/a.txt", b"first")
    await stack.files.encrypt_ingest_blob(f"{taken}/a.txt")
    await upload(azurite, ingest, f"{taken}/b.txt", b"second name, taken uuid")
    with pytest.raises(UploadConflictError):
        await stack.files.encrypt_ingest_blob(f"{taken}/b.txt")
    assert await attempts_of(stack, f"{taken}/b.txt") == 1
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.get_blob_client(ingest, f"{taken}/b.txt").delete_blob()  # the uploader took it back
    assert (await stack.maintenance.replay(OPERATOR, f"{taken}/b.txt")).status == "gone"
    assert await attempts_of(stack, f"{taken}/b.txt") is None


async def test_one_failing_item_does_not_end_its_repair(make_stack: StackFactory, azurite: Azurite) -> None:
    """Two deletions cut short: one whose upload name storage refuses (403), one ordinary. The bad one is counted
    and left for the next run; the other is finished by the same call as DELETE, retired_blobs rows included."""
    stack = await make_stack()
    good = (await encrypted(stack, azurite, 1, 60_000)).popitem()[0]
    bad = uuid.uuid4()
    async with stack.db.transaction() as conn:
        await FileRepository(conn).register(bad, source_name="a/../b", source_etag='"0x1"', name="b",
                                            content_type="text/plain")
        for file_id in (bad, good):  # deletions whose erasure was cut short, one with a rotated-out blob still listed
            await FileRepository(conn).mark_deleted(file_id, by="test", now=datetime.now(UTC))
        await FileRepository(conn).retire_blob(f"{good}/old.bseal", good, delete_after=datetime.now(UTC))
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("unfinished_deletion") == 1 and report.failed == 1
    async with stack.db.connection() as conn:
        erased = {r["file_id"]: r["erased_at"] for r in await conn.fetch(
            "SELECT file_id, erased_at FROM files WHERE file_id = ANY($1::uuid[])", [bad, good])}
        retired = await conn.fetchval("SELECT count(*) FROM retired_blobs WHERE file_id = $1", good)
        keys = await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1", good)
    assert erased[good] is not None and erased[bad] is None and retired == 0 and keys == 0
    assert [n for n in await all_blobs(azurite, stack.settings.protected_container) if n.startswith(str(good))] == []
