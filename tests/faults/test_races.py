"""Races between uploads: same UUID under two names, overwrites during encryption, quick re-uploads.

Observed before (issue 8): both same-UUID uploads reported ``encrypted`` and one content was lost
(13 of 30 trials); an overwritten upload left a pending row and staged blocks forever; one of
ten quick re-uploads stayed in ingest, poisoned. Here: no content is ever lost, the newest
content wins, and nothing is left behind.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from localinfra.azurite import Azurite
from shared.blobs import BlockWriter
from shared.errors import UploadConflictError
from tests.integration.service_fixtures import blob_names, upload
from tests.support.stack import OPERATOR, StackFactory, all_blobs, assert_clean, download, pending_rows

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

TRIALS = int(os.environ.get("BLOBSEAL_FAULT_TRIALS", "20"))  # make faults: 100


async def same_uuid_two_names(make_stack: StackFactory, azurite: Azurite, trials: int) -> None:
    stack = await make_stack()
    ingest = stack.settings.ingest_container
    for _ in range(trials):
        file_id = uuid.uuid4()
        contents = {f"{file_id}/a.txt": os.urandom(70_000), f"{file_id}/b.txt": os.urandom(130_000)}
        for name, data in contents.items():
            await upload(azurite, ingest, name, data)
        outcomes = await asyncio.gather(*(stack.files.encrypt_ingest_blob(n) for n in contents),
                                        return_exceptions=True)
        won = [n for n, o in zip(contents, outcomes, strict=True) if not isinstance(o, BaseException)]
        refused = [n for n, o in zip(contents, outcomes, strict=True) if isinstance(o, UploadConflictError)]
        assert len(won) == 1 and len(refused) == 1, outcomes
        info = await stack.files.describe(OPERATOR, str(file_id))
        assert info["source_name"] == won[0] and info["size"] == len(contents[won[0]])  # never a mix
        assert await download(stack, file_id) == contents[won[0]]
        assert await blob_names(azurite, ingest) == refused  # the other content is kept, not lost
        failure = next(f for f in await stack.maintenance.failed_uploads(OPERATOR) if f.source_name == refused[0])
        assert failure.permanent and "already used by another upload" in failure.reason
        await stack.ingest.delete(refused[0])
    assert await pending_rows(stack) == []


async def test_same_uuid_under_two_names_at_once_loses_no_content(make_stack: StackFactory, azurite: Azurite) -> None:
    await same_uuid_two_names(make_stack, azurite, TRIALS)


@pytest.mark.long
async def test_same_uuid_under_two_names_100_trials(make_stack: StackFactory, azurite: Azurite) -> None:
    await same_uuid_two_names(make_stack, azurite, 100)


async def test_an_upload_overwritten_while_it_is_encrypted(
        make_stack: StackFactory, azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await make_stack()
    name, older, newer = f"{uuid.uuid4()}.bin", os.urandom(6 * 1024 * 1024), os.urandom(1024 * 1024)
    await upload(azurite, stack.settings.ingest_container, name, older)
    real_stage, overwritten = BlockWriter.stage, asyncio.Event()

    async def stage_then_overwrite(self: BlockWriter, data: Any) -> None:
        await real_stage(self, data)
        if not overwritten.is_set():  # the first block is staged: the user uploads again
            overwritten.set()
            await upload(azurite, stack.settings.ingest_container, name, newer)

    monkeypatch.setattr(BlockWriter, "stage", stage_then_overwrite)
    first = await stack.files.encrypt_ingest_blob(name)
    monkeypatch.undo()
    assert first.status == "superseded"  # its content is gone: it removed its own staged blocks
    second = await stack.files.encrypt_ingest_blob(name)  # the newer content's own delivery
    assert second.status == "encrypted" and second.file_id == first.file_id
    assert await all_blobs(azurite, stack.settings.protected_container) == [
        (await stack.files.encrypted_file(str(second.file_id))).protected_blob]
    await assert_clean(stack, azurite, {second.file_id: newer})

    await stack.keys.expire(second.file_id)  # and its rotation is not blocked by anything left over
    report = await stack.maintenance.rotate_due(limit=1)
    assert report.rotated == [str(second.file_id)] and report.failed == []
    assert await download(stack, second.file_id) == newer


async def test_ten_quick_uploads_of_one_name_end_with_the_last(make_stack: StackFactory, azurite: Azurite) -> None:
    stack = await make_stack()
    name = f"{uuid.uuid4()}/report.pdf"
    versions = [os.urandom(300_000 + i) for i in range(10)]
    deliveries = []
    for data in versions:  # each upload triggers a delivery at once, while earlier ones still run
        await upload(azurite, stack.settings.ingest_container, name, data)
        deliveries.append(asyncio.create_task(stack.files.encrypt_ingest_blob(name)))
        await asyncio.sleep(0.01)
    outcomes = await asyncio.gather(*deliveries)
    assert {o.status for o in outcomes} <= {"encrypted", "superseded", "duplicate", "gone"}
    file_id = uuid.UUID(name.split("/")[0])
    await assert_clean(stack, azurite, {file_id: versions[-1]})
    assert (await stack.files.describe(OPERATOR, str(file_id)))["size"] == len(versions[-1])
