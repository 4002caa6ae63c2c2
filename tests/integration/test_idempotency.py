"""``POST /api/files`` with ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header), on the real stack.

The same key and request: the first answer again (201, the same file, ``Idempotency-Replayed``), nothing
stored twice. The same key and another request: 422. While the first still runs: 409 with Retry-After;
a first attempt that died is taken over, and can then never make a file. Keys are per caller and expire
after ``IDEMPOTENCY_KEY_HOURS``; the reconciler forgets expired ones. DELETE is idempotent by itself.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from localinfra.azurite import Azurite
from shared.errors import RequestInProgressError
from shared.identity import ALL_ROLES, Caller
from shared.upload import IDEMPOTENCY_KEY_HOURS
from tests.integration.service_fixtures import TEST_FUNCTION_KEY, http_delete, http_download, http_upload
from tests.support.stack import StackFactory, all_blobs

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]


def key_caller(stack: object) -> Caller:
    """The caller ``http_upload`` is (the test function key): keys are per caller."""
    return stack.identity.caller({"x-functions-key": TEST_FUNCTION_KEY}, {}, "127.0.0.1")  # type: ignore[attr-defined]


async def files_named(stack: object, name: str) -> int:
    async with stack.db.connection() as conn:  # type: ignore[attr-defined]
        return int(await conn.fetchval("SELECT count(*) FROM files WHERE source_name = $1", name))


async def test_the_same_request_again_gets_the_first_answer_and_the_same_file(
        make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name, data, key = f"{uuid.uuid4()}/report.pdf", os.urandom(400_000), str(uuid.uuid4())
    status, headers, first = await http_upload(stack, name, data, {"Idempotency-Key": f'"{key}"'})
    assert status == 201 and "idempotency-replayed" not in headers
    blobs = await all_blobs(azurite, stack.settings.protected_container)
    for form in (f'"{key}"', key):  # a structured-field string, or the bare value many clients send
        status, headers, again = await http_upload(stack, name, data, {"Idempotency-Key": form})
        assert status == 201 and headers["idempotency-replayed"] == "true" and again == first
        assert headers["location"] == f"/api/files/{first['file_id']}"
    assert await files_named(stack, name) == 1
    assert await all_blobs(azurite, stack.settings.protected_container) == blobs  # nothing stored twice
    status, _, body = await http_download(stack, first["file_id"])
    assert status == 200 and body == data


async def test_the_same_key_with_another_request_is_refused_with_422(make_stack: StackFactory) -> None:
    stack = await make_stack()
    name, data, key = f"{uuid.uuid4()}.bin", os.urandom(50_000), str(uuid.uuid4())
    assert (await http_upload(stack, name, data, {"Idempotency-Key": key}))[0] == 201
    for other in ((name, data[:-1] + bytes([data[-1] ^ 1])), (name + ".2", data)):  # another body; another name
        status, _, answer = await http_upload(stack, *other, {"Idempotency-Key": key})
        assert status == 422 and answer["error"] == "IdempotencyKeyReusedError", answer
    status, _, answer = await http_upload(stack, name, data, {"Idempotency-Key": key,
                                                              "content-type": "text/plain"})  # another type
    assert status == 422, answer
    assert await files_named(stack, name) == 1 and await files_named(stack, name + ".2") == 0


async def test_keys_belong_to_their_caller_and_a_malformed_key_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack()
    key, data = str(uuid.uuid4()), os.urandom(10_000)

    async def body() -> AsyncIterator[bytes]:
        yield data

    made = []
    for who in ("user:alice", "user:bob"):  # the same key from two callers: two requests, two files
        uploaded = await stack.files.upload(Caller(who, ALL_ROLES), body(), name="shared-name.txt",
                                            idempotency_key=key)
        made.append(uploaded.file_id)
    assert made[0] != made[1]
    for bad in ('""', "a b", "x" * 256, "ünïcode"):
        status, _, answer = await http_upload(stack, f"{uuid.uuid4()}.bin", data, {"Idempotency-Key": bad})
        assert status == 400 and "Idempotency-Key" in answer["message"], bad
    assert (await http_upload(stack, f"{uuid.uuid4()}.bin", data))[0] == 201  # no key: as before


async def test_a_request_still_running_gets_409_and_then_the_first_answer(make_stack: StackFactory) -> None:
    stack = await make_stack()
    name, key, data = f"{uuid.uuid4()}.bin", str(uuid.uuid4()), os.urandom(200_000)
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield data[:100_000]
        await release.wait()  # the client is still sending
        yield data[100_000:]

    first = asyncio.create_task(stack.files.upload(key_caller(stack), slow(), name=name, idempotency_key=key))
    await asyncio.sleep(0.3)
    status, headers, answer = await http_upload(stack, name, data, {"Idempotency-Key": key})
    assert status == 409 and headers["retry-after"] == "5" and answer["error"] == "RequestInProgressError"
    release.set()
    made = await first
    status, headers, again = await http_upload(stack, name, data, {"Idempotency-Key": key})
    assert status == 201 and headers["idempotency-replayed"] == "true" and again["file_id"] == str(made.file_id)
    assert await files_named(stack, name) == 1


async def test_a_dead_first_attempt_is_taken_over_and_can_never_make_a_second_file(
        make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name, key, data = f"{uuid.uuid4()}.bin", str(uuid.uuid4()), os.urandom(200_000)
    release = asyncio.Event()

    async def stuck() -> AsyncIterator[bytes]:
        yield data[:100_000]
        await release.wait()
        yield data[100_000:]

    first = asyncio.create_task(stack.files.upload(key_caller(stack), stuck(), name=name, idempotency_key=key))
    await asyncio.sleep(0.3)
    async with stack.db.connection() as conn:  # its row untouched for ten minutes: its worker is gone
        await conn.execute("UPDATE files SET updated_at = now() - interval '10 minutes' WHERE source_name = $1", name)
    status, headers, taken = await http_upload(stack, name, data, {"Idempotency-Key": key})
    assert status == 201 and "idempotency-replayed" not in headers  # the retry made the file
    release.set()  # the first one comes back to life: it must not make a second file
    with pytest.raises(RequestInProgressError):
        await first
    assert await files_named(stack, name) == 1
    status, _, body = await http_download(stack, taken["file_id"])
    assert status == 200 and body == data
    names = await all_blobs(azurite, stack.settings.protected_container)
    assert [n for n in names if not n.startswith(taken["file_id"])] == []  # the first one's blob is gone


async def test_a_client_gone_mid_body_leaves_nothing_and_its_retry_makes_the_file(make_stack: StackFactory) -> None:
    stack = await make_stack()
    name, key, data = f"{uuid.uuid4()}.bin", str(uuid.uuid4()), os.urandom(300_000)

    async def cut() -> AsyncIterator[bytes]:
        yield data[:100_000]
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await stack.files.upload(key_caller(stack), cut(), name=name, idempotency_key=key)
    assert await files_named(stack, name) == 0
    status, headers, _ = await http_upload(stack, name, data, {"Idempotency-Key": key})
    assert status == 201 and "idempotency-replayed" not in headers and await files_named(stack, name) == 1


async def test_an_expired_key_names_a_new_upload_and_the_reconciler_forgets_it(make_stack: StackFactory) -> None:
    stack = await make_stack()
    name, key, data = f"{uuid.uuid4()}.bin", str(uuid.uuid4()), os.urandom(20_000)
    first = (await http_upload(stack, name, data, {"Idempotency-Key": key}))[2]
    async with stack.db.connection() as conn:
        lifetime = await conn.fetchval("SELECT expires_at - created_at FROM upload_requests WHERE "
                                       "idempotency_key = $1", key)
        assert lifetime.total_seconds() == IDEMPOTENCY_KEY_HOURS * 3600
        await conn.execute("UPDATE upload_requests SET expires_at = now() - interval '1 second' WHERE "
                           "idempotency_key = $1", key)
    status, headers, second = await http_upload(stack, name, data, {"Idempotency-Key": key})
    assert status == 201 and "idempotency-replayed" not in headers and second["file_id"] != first["file_id"]
    async with stack.db.connection() as conn:  # now expire it for good: the reconciler deletes the row
        await conn.execute("UPDATE upload_requests SET expires_at = now() - interval '1 second' WHERE "
                           "idempotency_key = $1", key)
    report = await stack.maintenance.reconcile()
    assert report.repairs.get("expired_idempotency_key", 0) >= 1
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM upload_requests WHERE idempotency_key = $1", key) == 0


async def test_delete_is_idempotent(make_stack: StackFactory) -> None:
    stack = await make_stack()
    view = (await http_upload(stack, f"{uuid.uuid4()}.bin", os.urandom(30_000)))[2]
    first = await http_delete(stack, view["file_id"])
    second = await http_delete(stack, view["file_id"])
    assert first[0] == second[0] == 200 and first[1] == second[1] and first[1]["status"] == "deleted"
