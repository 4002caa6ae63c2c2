"""The local host as a separate process with its containers made: the fixture of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import DevHost, host_env


@contextmanager
def running_host(azurite: Azurite, database_url: str, work: Path, **overrides: str) -> Iterator[DevHost]:
    """A started host on ``azurite`` and ``database_url`` (its vault in ``work``); stopped cleanly after."""
    env = host_env(azurite, database_url, work / "vault", **overrides)
    storage = BlobServiceClient.from_connection_string(azurite.connection_string)
    for name in (env["INGEST_CONTAINER"], env["PROTECTED_CONTAINER"]):
        storage.create_container(name)
    process = DevHost(env, work / "devhost.log").start()
    yield process
    assert process.stop() == 0, "the host should stop cleanly when asked (SIGINT, as Ctrl-C)"
