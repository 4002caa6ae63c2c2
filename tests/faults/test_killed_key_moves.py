"""An operator's ``migrate-keys`` killed with SIGKILL, again and again, between placing keys and recording them.

A fault run of the earlier code left 1 of 200 vault versions enabled that no row recorded: a key
placed in the vault by a process killed before its row moved, in a file the reconciler never looked
at. Every placement is now announced first (``secret_intents``), so once ``migrate-keys`` is run again
to the end and the reconciler has run, each file's secret holds exactly the one enabled version its
row records, and every file downloads byte-identical.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, host_env
from shared.bootstrap import Services
from tests.support.stack import StackFactory, download, enabled_unrecorded_versions, encrypted

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

FILES = 120


async def moved(stack: Services) -> int:
    async with stack.db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM file_keys WHERE custody = 'secret'"))


async def run_killed(env: dict[str, str], stack: Services, after_moves: int) -> bool:
    """``migrate-keys --to secret`` killed once ``after_moves`` more keys moved (False: it finished first)."""
    start = await moved(stack)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.cli", "migrate-keys", "--to", "secret", "--batch", "7", cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(4000):  # up to 20 s
        if process.returncode is not None or await moved(stack) >= start + after_moves:
            break
        await asyncio.sleep(0.005)
    if process.returncode is not None:
        return False
    await asyncio.sleep(random.uniform(0, 0.02))  # somewhere between a placement and its row
    process.send_signal(signal.SIGKILL)
    await process.wait()
    return True


async def test_a_migrate_keys_killed_three_times_leaves_no_unrecorded_version_enabled(
        make_stack: StackFactory, azurite: Azurite, database_url: str, vault_dir: Path) -> None:
    stack = await make_stack(KEY_MODE="envelope")
    contents = await encrypted(stack, azurite, FILES, 2000)
    env = host_env(azurite, database_url, vault_dir, KEY_MODE="secret", KEY_CUSTODIES="secret,envelope",
                   INGEST_CONTAINER=stack.settings.ingest_container,
                   PROTECTED_CONTAINER=stack.settings.protected_container)
    kills = [await run_killed(env, stack, after) for after in (15, 25, 25)]
    assert kills == [True, True, True] and await moved(stack) < FILES  # each run was cut short
    finished = await asyncio.create_subprocess_exec(sys.executable, "-m", "shared.cli", "migrate-keys", "--to",
                                                    "secret", cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    assert await finished.wait() == 0 and await moved(stack) == FILES
    report = await stack.maintenance.reconcile()
    assert report.failed == 0
    ids: list[uuid.UUID] = list(contents)
    assert await enabled_unrecorded_versions(stack, ids) == []
    for file_id in ids:
        enabled = [v for v in await stack.vault.list_versions(f"file-{file_id}") if v.enabled]
        row = await stack.keys.active_key(file_id)
        assert len(enabled) == 1 and row.custody == "secret", file_id
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM secret_intents") == 0
    for file_id in random.sample(ids, 20):
        assert await download(stack, file_id) == contents[file_id]
