"""Erasure that leaves nothing, and a local vault that reveals nothing without its master key (docs/THREATS.md).

After DELETE, no byte of the file is in any container (ingest included: the kept plaintext, an upload
still being ingested), no key of it is enabled or restorable in the vault or its backups, no wrapped
row is left, and no bookkeeping row names a blob that is gone: also when the DELETE races an ingest or
``migrate-keys``, and when it is cut half way (the reconciler finishes it).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.custody import EnvelopeCustody, SecretCustody
from shared.db.files import FileRepository
from shared.errors import StorageUnavailableError, VaultMissingError
from shared.identity import ALL_ROLES, Caller
from shared.vault.local import LocalJsonVault
from tests.integration.service_fixtures import blob_names, upload
from tests.support.stack import OPERATOR, StackFactory, all_blobs, download

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

ALICE = Caller("key:alice", ALL_ROLES, "127.0.0.1")
CUSTODIES = ["secret", "envelope"]


async def ingest(stack: Services, azurite: Azurite, data: bytes) -> tuple[uuid.UUID, str]:
    name = f"{uuid.uuid4()}.bin"
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert outcome.file_id is not None
    return outcome.file_id, name


async def assert_erased(stack: Services, azurite: Azurite, file_id: uuid.UUID, vault_dir: Path) -> None:
    """Everything DELETE must leave: nothing of the file anywhere, and a complete tombstone."""
    ingest = await all_blobs(azurite, stack.settings.ingest_container)
    assert [n for n in ingest if n.startswith(str(file_id))] == [], "plaintext left in ingest"
    assert [n for n in await all_blobs(azurite, stack.settings.protected_container)
            if n.startswith(f"{file_id}/")] == [], "ciphertext (or staged blocks) left"
    async with stack.db.connection() as conn:
        for table in ("file_keys", "retired_blobs", "secret_intents"):
            count = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE file_id = $1", file_id)  # noqa: S608
            assert count == 0, f"{table} still names the file"
        status, erased_at = await conn.fetchrow("SELECT status, erased_at FROM files WHERE file_id = $1", file_id)
    assert status == "deleted" and erased_at is not None
    assert await stack.vault.list_versions(f"file-{file_id}") == []
    assert vault_files_naming(vault_dir, f"file-{file_id}") == []  # the file and every backup: not even disabled


def vault_files_naming(vault_dir: Path, name: str) -> list[str]:
    return [path.name for path in vault_dir.iterdir() if name in path.read_text(errors="replace")]


@pytest.mark.parametrize("custody", CUSTODIES)
@pytest.mark.parametrize("keep_plaintext", [False, True], ids=["plaintext deleted", "KEEP_PLAINTEXT"])
async def test_delete_leaves_no_byte_and_no_key(make_stack: StackFactory, azurite: Azurite, vault_dir: Path,
                                                custody: str, keep_plaintext: bool) -> None:
    stack = await make_stack(KEY_MODE=custody, KEEP_PLAINTEXT=str(keep_plaintext).lower())
    file_id, name = await ingest(stack, azurite, os.urandom(150_000))
    other, _ = await ingest(stack, azurite, b"another file")
    await stack.maintenance.rotate_file(OPERATOR, str(file_id))  # a retired key, a blob waiting out its grace
    assert (name in await blob_names(azurite, stack.settings.ingest_container)) is keep_plaintext
    await stack.files.delete(ALICE, str(file_id))
    await assert_erased(stack, azurite, file_id, vault_dir)
    assert await download(stack, other) == b"another file"
    await stack.maintenance.reconcile()  # and nothing comes back
    await assert_erased(stack, azurite, file_id, vault_dir)


class Gate:
    """Holds one step of an operation until the test lets it go."""

    def __init__(self) -> None:
        self.reached, self.opened = asyncio.Event(), asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.opened.wait()

    def wrap(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def held(*args: Any, **kwargs: Any) -> Any:
            await self.hold()
            return await call(*args, **kwargs)

        return held


@pytest.mark.parametrize("custody", CUSTODIES)
@pytest.mark.parametrize("step", ["before its key", "before it is marked encrypted"])
async def test_delete_racing_an_ingest_leaves_the_same(make_stack: StackFactory, azurite: Azurite, vault_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch, custody: str,
                                                       step: str) -> None:
    stack = await make_stack(KEY_MODE=custody)
    first, _ = await ingest(stack, azurite, b"a first file: the vault exists")
    gate = Gate()
    if step == "before its key":
        monkeypatch.setattr(stack.keys, "create_key", gate.wrap(stack.keys.create_key))
    else:
        monkeypatch.setattr(FileRepository, "mark_encrypted", gate.wrap(FileRepository.mark_encrypted))
    name = f"{uuid.uuid4()}.bin"
    file_id = uuid.UUID(name.removesuffix(".bin"))
    await upload(azurite, stack.settings.ingest_container, name, os.urandom(200_000))
    ingesting = asyncio.create_task(stack.files.encrypt_ingest_blob(name))
    await asyncio.wait_for(gate.reached.wait(), 10)
    await stack.files.delete(ALICE, str(file_id))  # while the upload is half encrypted
    gate.opened.set()
    outcome = await asyncio.wait_for(ingesting, 30)
    assert outcome.status in ("erased", "gone")
    monkeypatch.undo()
    await stack.maintenance.reconcile()
    await assert_erased(stack, azurite, file_id, vault_dir)
    assert await download(stack, first) == b"a first file: the vault exists"


@pytest.mark.parametrize("direction", [("envelope", "secret"), ("secret", "envelope")], ids=lambda d: "to " + d[1])
async def test_delete_racing_migrate_keys_leaves_the_same(make_stack: StackFactory, azurite: Azurite,
                                                          vault_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          direction: tuple[str, str]) -> None:
    source, target = direction
    stack = await make_stack(KEY_MODE=source)
    files = {(await ingest(stack, azurite, data))[0]: data for data in (os.urandom(5000) for _ in range(3))}
    victim = next(iter(files))
    gate = Gate()
    custody_type = {"secret": SecretCustody, "envelope": EnvelopeCustody}[target]
    place = custody_type.place

    async def placed_then_held(custody: Any, file_id: uuid.UUID, *args: Any, **kwargs: Any) -> Any:
        result = await place(custody, file_id, *args, **kwargs)
        if file_id == victim:
            await gate.hold()  # the key is placed in the target custody, the move not yet committed
        return result

    monkeypatch.setattr(custody_type, "place", placed_then_held)
    migrating = asyncio.create_task(stack.maintenance.migrate_keys(OPERATOR, target))  # type: ignore[arg-type]
    await asyncio.wait_for(gate.reached.wait(), 10)
    deleting = asyncio.create_task(stack.files.delete(ALICE, str(victim)))
    await asyncio.sleep(0.2)  # the DELETE runs as far as it can while the move is held
    gate.opened.set()
    await asyncio.wait_for(asyncio.gather(migrating, deleting), 30)
    monkeypatch.undo()
    await stack.maintenance.reconcile()
    await assert_erased(stack, azurite, victim, vault_dir)
    for file_id, data in list(files.items())[1:]:
        assert await download(stack, file_id) == data


async def test_a_delete_cut_half_way_leaves_no_row_naming_a_gone_blob(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await make_stack()
    file_id, _ = await ingest(stack, azurite, os.urandom(50_000))
    await stack.maintenance.rotate_file(OPERATOR, str(file_id))  # the old blob waits in retired_blobs
    real = stack.protected.discard
    discarded: list[str] = []

    async def cut_after_one(name: str) -> None:
        if discarded:
            raise StorageUnavailableError("storage went away", operation="discard")
        await real(name)
        discarded.append(name)

    monkeypatch.setattr(stack.protected, "discard", cut_after_one)
    with pytest.raises(StorageUnavailableError):
        await stack.files.delete(ALICE, str(file_id))
    async with stack.db.connection() as conn:
        named = [r["blob_name"] for r in await conn.fetch("SELECT blob_name FROM retired_blobs WHERE file_id = $1",
                                                          file_id)]
    assert discarded and named == []  # one blob gone, and no row names it (or the other)
    monkeypatch.undo()
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("unfinished_deletion") == 1
    await assert_erased(stack, azurite, file_id, vault_dir)


async def test_a_copied_vault_folder_reveals_no_key(make_stack: StackFactory, azurite: Azurite, vault_dir: Path,
                                                    tmp_path: Path) -> None:
    stack = await make_stack()
    ids = [(await ingest(stack, azurite, os.urandom(1000)))[0] for _ in range(5)]
    await stack.maintenance.rotate_file(OPERATOR, str(ids[0]))
    keys = [await stack.keys.key_of((await stack.keys.active_key(i)).key_reference) for i in ids]
    copy = tmp_path / "stolen" / "secrets"
    shutil.copytree(vault_dir, copy)  # the folder, backups included; the master key is kept apart
    for path in copy.iterdir():
        data = path.read_bytes()
        for key in keys:
            for form in (key, base64.b64encode(key), key.hex().encode()):
                assert form not in data, path.name
    with pytest.raises(VaultMissingError, match="master key"):
        await LocalJsonVault(copy).get_secret(f"file-{ids[1]}")
