"""The access log (append-only, fail-closed by default) and file deletion, against the real stack."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.errors import AuditUnavailableError, DatabaseError, UnknownFileError, UploadConflictError
from shared.identity import ALL_ROLES, Caller
from shared.keys import FileKeyService
from shared.metrics import REGISTRY
from tests.integration.service_fixtures import blob_names, http_download, upload
from tests.support.stack import OPERATOR, StackFactory, all_blobs

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

ALICE = Caller("key:alice", ALL_ROLES, "10.0.0.1")


async def body(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def uploaded(stack: Services, data: bytes, name: str = "a.txt") -> str:
    view = await stack.files.upload(ALICE, body(data), name=name, content_type="text/plain")
    return str(view.file_id)


async def test_the_access_log_is_append_only_and_purged_only_past_the_minimum(make_stack: StackFactory) -> None:
    """Even as the tables' owner: no UPDATE, no DELETE outside purge_access_log, which keeps 30 days whatever it is
    asked (who may call it at all: tests/infra/test_db_roles.py)."""
    stack = await make_stack()
    await stack.files.guard.audit.record("metadata", ALICE, file_id=uuid.uuid4())
    async with stack.db.connection() as conn:
        for statement in ("UPDATE access_log SET caller = 'someone else'", "DELETE FROM access_log",
                          "TRUNCATE access_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"append-only|permission denied"):  # flag alone
            async with conn.transaction():
                await conn.execute("SELECT set_config('blobseal.access_log_purge', 'on', true)")
                await conn.execute("SET LOCAL ROLE blobseal_audit_purger")
                await conn.execute("DELETE FROM access_log")
        total = await conn.fetchval("SELECT count(*) FROM access_log")
        assert total >= 1
        for younger in ("now() - interval '29 days'", "'infinity'", "NULL"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="at least 30 days"):
                await conn.fetchval(f"SELECT purge_access_log({younger})")
        assert await conn.fetchval("SELECT purge_access_log(now() - interval '31 days')") == 0  # nothing that old
    assert len(await stack.files.guard.audit.query()) == total


async def test_accesses_at_once_share_commits_and_each_waits_for_its_own_row(
        make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await make_stack()
    statements = 0
    real_connection = stack.db.connection

    def counted(operation: str = "database") -> Any:
        nonlocal statements
        statements += operation == "audit"
        return real_connection(operation)

    monkeypatch.setattr(stack.db, "connection", counted)
    ids = [uuid.uuid4() for _ in range(60)]
    await asyncio.gather(*(stack.files.guard.audit.record("metadata", ALICE, file_id=i, span=(n, n + 1))
                           for n, i in enumerate(ids)))
    assert 1 <= statements < 10  # one write in flight at a time; the rest wait and go together
    records = {r.file_id: r for r in await stack.files.guard.audit.query(limit=100)}
    assert all(records[i].range_start == n and records[i].caller == "key:alice" for n, i in enumerate(ids))
    async with stack.db.connection() as conn:
        await conn.execute("ALTER TABLE access_log RENAME TO access_log_unavailable")
    try:  # a failed write reaches every waiter of its batch: each access is refused (fail-closed)
        outcomes = await asyncio.gather(*(stack.files.guard.audit.record("metadata", ALICE) for _ in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(o, AuditUnavailableError) for o in outcomes)
    finally:
        async with stack.db.connection() as conn:
            await conn.execute("ALTER TABLE access_log_unavailable RENAME TO access_log")


async def test_a_download_logs_the_bytes_it_sent_and_an_empty_file_names_no_range(make_stack: StackFactory) -> None:
    """A whole download logs its first and last byte; an empty file has none, so its range is null (the contract's
    pattern; Schemathesis once found "0--1")."""
    stack = await make_stack()
    empty, full = await uploaded(stack, b"", "empty.txt"), await uploaded(stack, b"twelve bytes", "full.txt")
    rows = {}
    for file_id in (empty, full):
        assert (await http_download(stack, file_id))[0] == 200
        logged = await stack.files.guard.audit.query(file_id=uuid.UUID(file_id))
        rows[file_id] = next(r.as_dict() for r in logged if r.operation == "download")
    assert (rows[empty]["range"], rows[empty]["bytes_sent"]) == (None, 0)
    assert (rows[full]["range"], rows[full]["bytes_sent"]) == ("0-11", 12)


async def test_an_access_that_cannot_be_logged_is_refused_unless_fail_open(
        make_stack: StackFactory, azurite: Azurite) -> None:
    closed = await make_stack()
    open_ = await make_stack(AUDIT_FAIL_OPEN="true", INGEST_CONTAINER=closed.settings.ingest_container,
                             PROTECTED_CONTAINER=closed.settings.protected_container)
    file_id = await uploaded(closed, b"secret report")
    async with closed.db.connection() as conn:
        await conn.execute("ALTER TABLE access_log RENAME TO access_log_unavailable")
    try:
        before = REGISTRY.get_sample_value("blobseal_audit_failures_total") or 0.0
        status, _, content = await http_download(closed, file_id)
        assert status == 503 and json.loads(content)["error"] == "AuditUnavailableError"
        status, _, content = await http_download(open_, file_id)
        assert status == 200 and content == b"secret report"  # served, and the failure counted
        assert (REGISTRY.get_sample_value("blobseal_audit_failures_total") or 0.0) >= before + 2
    finally:
        async with closed.db.connection() as conn:
            await conn.execute("ALTER TABLE access_log_unavailable RENAME TO access_log")


async def test_a_deletion_erases_blobs_and_keys_and_keeps_a_tombstone(
        make_stack: StackFactory, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await make_stack()
    file_id = await uploaded(stack, b"x" * 200_000)
    await stack.maintenance.rotate_file(OPERATOR, file_id)  # two key versions, a retired blob
    real = FileKeyService.delete_file_keys

    async def crash(self: FileKeyService, file_id: uuid.UUID) -> int:
        raise DatabaseError("connection lost", operation="delete_file_keys")

    monkeypatch.setattr(FileKeyService, "delete_file_keys", crash)
    with pytest.raises(DatabaseError):
        await stack.files.delete(ALICE, file_id)  # cut short after the tombstone
    monkeypatch.setattr(FileKeyService, "delete_file_keys", real)
    with pytest.raises(UnknownFileError):
        await stack.files.encrypted_file(file_id)  # already unreadable
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("unfinished_deletion") == 1
    tombstone = await stack.files.describe(OPERATOR, file_id)
    assert (tombstone["status"], tombstone["deleted_by"], tombstone["key_reference"]) == ("deleted", "key:alice", None)
    assert await stack.vault.list_versions(f"file-{file_id}") == []
    assert [n for n in await all_blobs(azurite, stack.settings.protected_container) if n.startswith(file_id)] == []
    again = await stack.files.delete(ALICE, file_id)  # idempotent
    assert again["status"] == "deleted"


async def test_a_deleted_file_id_is_never_filled_again(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name = f"{uuid.uuid4()}.txt"
    await upload(azurite, stack.settings.ingest_container, name, b"first")
    file_id = str((await stack.files.encrypt_ingest_blob(name)).file_id)
    await stack.files.delete(ALICE, file_id)
    await upload(azurite, stack.settings.ingest_container, name, b"second")  # the same name (so the same id) again
    outcome = await stack.files.encrypt_ingest_blob(name)
    assert (outcome.status, str(outcome.file_id)) == ("erased", file_id)  # erased on arrival, never encrypted
    assert await blob_names(azurite, stack.settings.ingest_container) == []
    assert (await stack.files.describe(OPERATOR, file_id))["status"] == "deleted"
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1", uuid.UUID(file_id)) == 0
    other = f"{file_id}/another-name.txt"  # another upload name carrying the deleted id: refused, kept, listed
    await upload(azurite, stack.settings.ingest_container, other, b"third")
    with pytest.raises(UploadConflictError, match="already used by another upload"):
        await stack.files.encrypt_ingest_blob(other)


async def test_a_failed_upload_leaves_nothing(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack(UPLOAD_MAX_MB="1")

    async def stream() -> AsyncIterator[bytes]:
        yield b"x" * 600_000
        yield b"y" * 600_000  # over the 1 MiB limit part way

    with pytest.raises(Exception, match="UPLOAD_MAX_MB"):
        await stack.files.upload(ALICE, stream(), name="big.bin", content_type="application/octet-stream")
    async with stack.db.connection() as conn:
        rows = await conn.fetchval("SELECT count(*) FROM files WHERE source_name = 'big.bin'")
    assert rows == 0 and await all_blobs(azurite, stack.settings.protected_container) == []


