"""Faults against the running local host (``python -m devhost``), as an operator would see them.

Long cases (``make faults``): twenty 12 MiB uploads through three 1 s database outages; the host
killed with SIGKILL in the middle of an encryption; an operator's ``rotate`` killed with SIGKILL
in the middle of a re-encryption. After each, with no operator action, the reconciler timer of
the restarted host leaves every file encrypted once and byte-identical, and nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from shared.bootstrap import Services
from tests.integration.service_fixtures import blob_names, upload
from tests.support.pg_proxy import PgProxy
from tests.support.stack import OPERATOR, StackFactory, all_blobs, assert_clean, unreferenced_blobs

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow, pytest.mark.long]

MiB = 1024 * 1024
FAST_RECONCILE = {"RECONCILE_SCHEDULE": "*/2 * * * * *", "RECONCILE_AFTER_SECONDS": "3"}


async def started(env: dict[str, str], log: Path) -> DevHost:
    return await asyncio.to_thread(DevHost(env, log).start)


async def observer(make_stack: StackFactory, env: dict[str, str]) -> Services:
    """The same deployment, seen from the test: its containers, database and vault."""
    return await make_stack(INGEST_CONTAINER=env["INGEST_CONTAINER"], PROTECTED_CONTAINER=env["PROTECTED_CONTAINER"])


async def until(predicate: object, within: float = 120, every: float = 0.25) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not reached in time")


async def encrypted(stack: Services, file_ids: list[uuid.UUID]) -> bool:
    async with stack.db.connection() as conn:
        done = await conn.fetchval("SELECT count(*) FROM files WHERE file_id = ANY($1) AND status = 'encrypted' "
                                   "AND pending_etag IS NULL", file_ids)
    return int(done) == len(file_ids)


async def test_twenty_large_uploads_through_three_database_outages(
        make_stack: StackFactory, azurite: Azurite, proxy: PgProxy, database_url: str, vault_dir: Path,
        tmp_path: Path) -> None:
    env = host_env(azurite, proxy.url(database_url), vault_dir, **FAST_RECONCILE)
    host = await started(env, tmp_path / "host.log")
    try:
        stack = await observer(make_stack, env)
        contents = {f"{uuid.uuid4()}.bin": os.urandom(12 * MiB) for _ in range(20)}
        for name, data in contents.items():
            await upload(azurite, env["INGEST_CONTAINER"], name, data)
        for _ in range(3):
            await asyncio.sleep(1.0)
            await proxy.cut()
            await asyncio.sleep(1.0)
            await proxy.restore()
        ids = {uuid.UUID(n.removesuffix(".bin")): d for n, d in contents.items()}
        await until(lambda: encrypted(stack, list(ids)), within=180)
        await until(lambda: _empty(azurite, env["INGEST_CONTAINER"]))
        await assert_clean(stack, azurite, ids)
    finally:
        await asyncio.to_thread(host.stop)


async def test_the_host_killed_mid_encryption_is_completed_after_restart(
        make_stack: StackFactory, azurite: Azurite, database_url: str, vault_dir: Path, tmp_path: Path) -> None:
    env = host_env(azurite, database_url, vault_dir, **FAST_RECONCILE)
    host = await started(env, tmp_path / "host.log")
    stack = await observer(make_stack, env)
    name, data = f"{uuid.uuid4()}.bin", os.urandom(96 * MiB)
    await upload(azurite, env["INGEST_CONTAINER"], name, data)
    await until(lambda: _staged(azurite, env["PROTECTED_CONTAINER"]), every=0.02)
    assert host.process is not None
    host.process.send_signal(signal.SIGKILL)  # mid-encryption: blocks staged, nothing committed
    await asyncio.to_thread(host.process.wait)
    restarted = await started(env, tmp_path / "host-2.log")
    try:
        file_id = uuid.UUID(name.removesuffix(".bin"))
        await until(lambda: encrypted(stack, [file_id]))
        await until(lambda: _empty(azurite, env["INGEST_CONTAINER"]))
        # the killed attempt's staged blocks go with the reconciler's next run: the killed host's run
        # lease (30 s) runs out first
        await until(lambda: _no_orphans(stack, azurite), within=90)
        await assert_clean(stack, azurite, {file_id: data})
    finally:
        await asyncio.to_thread(restarted.stop)


async def _no_orphans(stack: Services, azurite: Azurite) -> bool:
    return await unreferenced_blobs(stack, azurite) == []


async def test_a_rotation_killed_mid_reencryption_is_resumed_by_the_reconciler(
        make_stack: StackFactory, azurite: Azurite, database_url: str, vault_dir: Path, tmp_path: Path) -> None:
    env = host_env(azurite, database_url, vault_dir, ROTATION_LEASE_SECONDS="5", **FAST_RECONCILE)
    host = await started(env, tmp_path / "host.log")
    try:
        stack = await observer(make_stack, env)
        name, data = f"{uuid.uuid4()}.bin", os.urandom(96 * MiB)
        await upload(azurite, env["INGEST_CONTAINER"], name, data)
        file_id = uuid.UUID(name.removesuffix(".bin"))
        await until(lambda: encrypted(stack, [file_id]))
        old_reference = (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"]
        before = set(await all_blobs(azurite, env["PROTECTED_CONTAINER"]))
        rotate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.cli", "rotate", "--file-id", str(file_id), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await until(lambda: _new_blob(azurite, env["PROTECTED_CONTAINER"], before), every=0.02)
        rotate.send_signal(signal.SIGKILL)  # the operator's rotate dies holding the claim, blocks staged
        await rotate.wait()

        async def rotated() -> bool:
            return (await stack.files.describe(OPERATOR, str(file_id)))["key_reference"] != old_reference

        await until(rotated, within=120)  # after the 5 s lease, the reconciler resumes it
        await assert_clean(stack, azurite, {file_id: data})
        async with stack.db.connection() as conn:
            states = [r["state"] for r in await conn.fetch("SELECT state FROM file_keys WHERE file_id = $1 "
                                                            "ORDER BY id", file_id)]
        assert states == ["retired", "active"]
    finally:
        await asyncio.to_thread(host.stop)


async def _empty(azurite: Azurite, container: str) -> bool:
    return await blob_names(azurite, container) == []


async def _staged(azurite: Azurite, container: str) -> bool:
    return bool(await all_blobs(azurite, container)) and await blob_names(azurite, container) == []


async def _new_blob(azurite: Azurite, container: str, before: set[str]) -> bool:
    return bool(set(await all_blobs(azurite, container)) - before)
