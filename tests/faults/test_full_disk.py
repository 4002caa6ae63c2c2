"""The local vault's disk full: uploads refused with the cause in health, reads go on, a rotation refused after
its claim gives the claim back at once, and everything proceeds on the first run after space returns.

The vault folder is a real tmpfs of 512 KiB (``tests/support/small_disk.py``: mounted in a user and mount
namespace of a helper process, reached through ``/proc/<pid>/root``; it works as root and as an ordinary user
where unprivileged user namespaces are enabled). Writes that do not fit fail in the kernel with ENOSPC.

Observed before (issue 19): the claim was committed and the pending key could not be written; the claim was
taken outside the ``try`` that gives up, so the file's rotation was blocked for ROTATION_LEASE_SECONDS (900 s,
"another worker is rotating this file"); health stayed 200 while every upload failed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import rotation_policy, transfer
from shared.metrics import REGISTRY
from shared.rotation import Rotator
from tests.integration.service_fixtures import TEST_FUNCTION_KEY, http_download, http_upload
from tests.support.small_disk import SmallDisk, free_bytes
from tests.support.stack import OPERATOR, StackFactory, assert_clean, encrypted

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    with SmallDisk(tmp_path_factory.mktemp("small-disk") / "secrets", size="512k") as disk:
        yield disk


@pytest.fixture(scope="module")
def vault_dir(small_disk: SmallDisk) -> Path:
    """This module's local vault lives on the small disk."""
    return small_disk.path


async def status(stack: object) -> tuple[int, dict[str, object]]:
    from shared import http_api
    from tests.security.test_access import call  # the HTTP face's /api/status, as an operator calls it

    answer = await call(stack, http_api.status, "GET", "/api/status",  # type: ignore[arg-type]
                        headers={"x-functions-key": TEST_FUNCTION_KEY})
    return answer.status, answer.json()


async def test_a_full_vault_disk_refuses_uploads_says_why_and_a_refused_rotation_proceeds_once_space_returns(
        make_stack: StackFactory, azurite: Azurite, small_disk: SmallDisk) -> None:
    stack = await make_stack(HEALTH_PROBE_SECONDS="1", ROTATION_LEASE_SECONDS="900")
    files = await encrypted(stack, azurite, 2, 120_000)
    rotating, other = list(files)
    code, healthy = await status(stack)
    assert code == 200 and healthy["status"] == "ok" and healthy["uploads"] == "ok"
    assert (await http_download(stack, str(other)))[0] == 200  # (the access log's chain key is made by now)

    filled = small_disk.fill()
    assert free_bytes(small_disk.path) < 4096, filled
    stack.health._last = None  # type: ignore[attr-defined]  # (the next probe now, not in a second)
    code, full = await status(stack)
    assert code == 503 and full["status"] == "degraded" and full["uploads"] == "VaultUnwritableError"
    assert full["dependencies"] == {"storage": "ok", "database": "ok", "vault": "ok"}  # reads still work
    assert "bytes free" in full["causes"]["uploads"]  # type: ignore[index]
    assert await stack.health.summary()  # anonymous health: up (a load balancer keeps the instance for reads)
    assert REGISTRY.get_sample_value("blobseal_health_check", {"check": "uploads"}) == 0  # what alerts watch

    status_code, _, refused = await http_upload(stack, f"{uuid.uuid4()}.bin", os.urandom(50_000))
    assert status_code == 503 and refused["error"] == "VaultUnwritableError", refused
    for file_id, data in files.items():  # reads go on
        assert (await http_download(stack, str(file_id)))[2] == data

    await stack.keys.expire(rotating)
    report = await stack.maintenance.rotate_due()  # the claim is taken, then the pending key cannot be written
    assert report.failed == [str(rotating)]
    async with stack.db.connection() as conn:
        row = await conn.fetchrow("SELECT rotation_claimed_by, rotation_last_error FROM file_keys "
                                  "WHERE file_id = $1 AND state = 'active'", rotating)
        pending = await conn.fetchval("SELECT count(*) FROM file_keys WHERE file_id = $1 AND state = 'pending'",
                                      rotating)
    assert row["rotation_claimed_by"] is None and pending == 0  # the claim given back at once
    assert "No space left on device" in row["rotation_last_error"]

    small_disk.free()  # space returns
    next_run = Rotator(db=stack.db, keys=stack.keys, protected=stack.protected, transfer=transfer(stack.settings),
                       policy=rotation_policy(stack.settings),
                       clock=lambda: datetime.now(UTC) + timedelta(hours=1))  # the timer's next (hourly) run
    assert (await next_run.rotate_due()).rotated == [str(rotating)]  # not blocked by a 900 s claim
    stack.health._last = None  # type: ignore[attr-defined]
    code, again = await status(stack)
    assert code == 200 and again["status"] == "ok" and again["uploads"] == "ok" and again["causes"] == {}
    assert REGISTRY.get_sample_value("blobseal_health_check", {"check": "uploads"}) == 1
    status_code, _, made = await http_upload(stack, f"{uuid.uuid4()}.bin", data := os.urandom(50_000))
    assert status_code == 201 and (await http_download(stack, made["file_id"]))[2] == data
    await stack.maintenance.reconcile()
    await assert_clean(stack, azurite, files)
    assert (await stack.files.describe(OPERATOR, str(other)))["status"] == "encrypted"
