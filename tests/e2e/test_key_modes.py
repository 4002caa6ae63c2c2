"""Switching key modes on a running deployment, end to end: real local hosts (separate processes),
uploads arriving the whole time, the operator's `migrate-keys` run beside them.

1. A host in `secret` mode ingests; a second host in `envelope` mode joins it (a rolling
   deployment: both versions run at once, on the same containers, database and vault).
2. The old host stops; `migrate-keys --to envelope` runs while uploads still arrive.
3. Every file downloads byte-identical over HTTP; every key is now wrapped; no blob was rewritten.
4. The way back: `migrate-keys --to secret`, a host in `secret` mode serves every file again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost, host_env

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]


class Uploads:
    """Drops a small file into ingest every few hundred milliseconds until stopped."""

    def __init__(self, azurite: Azurite, container: str) -> None:
        self.client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
            container)
        self.sent: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Uploads:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            file_id, data = str(uuid.uuid4()), os.urandom(20_000 + len(self.sent))
            self.client.upload_blob(f"{file_id}.bin", data)
            self.sent[file_id] = data
            self._stop.wait(0.15)


def cli(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def wait_all_encrypted(host: DevHost, ids: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(ids)
    while waiting and time.monotonic() < deadline:
        reply = httpx.get(f"{host.url}/files/{waiting[0]}/metadata", headers=host.headers, timeout=10)
        if reply.status_code == 200 and reply.json()["status"] == "encrypted":
            waiting.pop(0)
        else:
            time.sleep(0.2)
    assert not waiting, f"{len(waiting)} files not encrypted in time"


def custody_of(host: DevHost, file_id: str) -> str:
    reply = httpx.get(f"{host.url}/files/{file_id}/metadata", headers=host.headers, timeout=10)
    return str(reply.json()["key_custody"])


def protected_blobs(azurite: Azurite, container: str) -> dict[str, str]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return {b.name: str(b.etag) for b in client.list_blobs()}


@pytest.fixture
def env(azurite: Azurite, pg_empty_database_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    yield host_env(azurite, pg_empty_database_url, tmp_path / "vault")


def test_a_rolling_switch_to_envelope_mode_and_back_loses_nothing(env: dict[str, str], azurite: Azurite,
                                                                   tmp_path: Path) -> None:
    old = DevHost({**env, "KEY_MODE": "secret"}, tmp_path / "old.log").start()
    new: DevHost | None = None
    try:
        with Uploads(azurite, env["INGEST_CONTAINER"]) as uploads:
            time.sleep(2)  # the old version alone
            new = DevHost({**env, "KEY_MODE": "envelope"}, tmp_path / "new.log").start()
            time.sleep(3)  # both versions ingest
            old.stop()
            moved = cli(new.env, "migrate-keys", "--to", "envelope", "--batch", "7")
            time.sleep(2)  # uploads keep arriving after the migration
        sent = dict(uploads.sent)
        wait_all_encrypted(new, list(sent))
        leftovers = cli(new.env, "migrate-keys", "--to", "envelope")  # keys the old host made after the pass
        assert int(moved["moved"]) + int(leftovers["moved"]) > 0
        before = protected_blobs(azurite, env["PROTECTED_CONTAINER"])
        for file_id, data in sent.items():
            reply = httpx.get(f"{new.url}/files/{file_id}", headers=new.headers, timeout=30)
            assert reply.status_code == 200 and reply.content == data, file_id
            assert custody_of(new, file_id) == "envelope"
        new.stop()
        new = None

        back = cli({**env, "KEY_MODE": "secret"}, "migrate-keys", "--to", "secret")
        assert int(back["moved"]) == len(sent)
        restored = DevHost({**env, "KEY_MODE": "secret"}, tmp_path / "restored.log").start()
        try:
            for file_id, data in sent.items():
                reply = httpx.get(f"{restored.url}/files/{file_id}", headers=restored.headers, timeout=30)
                assert reply.status_code == 200 and reply.content == data, file_id
                assert custody_of(restored, file_id) == "secret"
        finally:
            restored.stop()
        assert protected_blobs(azurite, env["PROTECTED_CONTAINER"]) == before  # no blob rewritten either way
        assert len(sent) >= 20
    finally:
        old.stop()
        if new is not None:
            new.stop()
