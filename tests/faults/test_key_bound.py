"""Caches that fail closed in time: a KEK removed or disabled, or a file's secret disabled, stops new uploads and
reads of what is not in memory within ``KEY_CACHE_SECONDS``; health says why.

The bound is 2 s here (60 s by default, and at most 60 s). Each test removes or disables a key *behind the
service's back* (another process's vault handle, or the Key Vault stand-in's own state, as an operator's
``az`` call would), waits out the bound, and checks what is refused. Nothing asserts how fast: only what holds
once the bound has passed.

Observed before (issue 19): with the default cache an envelope host whose KEK was removed kept health 200,
served files it had never read before and accepted uploads; locally the KEK secret itself sat in the
60-minute vault cache.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from localinfra.azurite import Azurite
from shared.bootstrap import Services
from shared.vault.base import parse_key_reference
from shared.vault.local import LocalJsonVault
from tests.integration.service_fixtures import http_download, http_upload
from tests.support import KeyVaultServer
from tests.support.keyvault_server import key_adapters
from tests.support.stack import OPERATOR, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

BOUND = 2.0  # KEY_CACHE_SECONDS in these tests


async def past_the_bound() -> None:
    await asyncio.sleep(BOUND + 0.5)


async def uploaded(stack: Services, count: int) -> dict[str, bytes]:
    contents = {}
    for _ in range(count):
        data = os.urandom(90_000)
        status, _, view = await http_upload(stack, f"{uuid.uuid4()}.bin", data)
        assert status == 201, view
        contents[view["file_id"]] = data
    return contents


async def refused_everything(reader: Services, contents: dict[str, bytes], error: str) -> None:
    """Past the bound: a new upload and every read of ``contents`` refused (503), health naming ``error``."""
    status, _, answer = await http_upload(reader, f"{uuid.uuid4()}.bin", os.urandom(10_000))
    assert status == 503 and answer["error"] == error, answer
    for file_id in contents:
        status, _, body = await http_download(reader, file_id)
        assert status == 503 and error.encode() in body, body[:200]
    reader.health._last = None  # type: ignore[attr-defined]  # a probe now (health itself: HEALTH_PROBE_SECONDS)
    details = await reader.health.details(OPERATOR)
    assert details["status"] == "unavailable" and details["dependencies"]["vault"] == error
    assert details["uploads"] == error and details["causes"]["uploads"], details
    assert not await reader.health.summary()  # anonymous: down (reads of keys not in memory need the KEK)


async def test_a_removed_local_kek_stops_uploads_and_uncached_reads_within_the_bound(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    settings = {"KEY_MODE": "envelope", "KEY_CACHE_SECONDS": str(int(BOUND))}
    writer = await make_stack(**settings)
    reader = await make_stack(**settings, INGEST_CONTAINER=writer.settings.ingest_container,
                              PROTECTED_CONTAINER=writer.settings.protected_container)
    written = await uploaded(writer, 3)  # under the writer's intermediate key
    own = await uploaded(reader, 1)  # the reader holds an intermediate key for new files, and these keys
    seen = next(iter(written))
    assert (await http_download(reader, seen))[2] == written[seen]  # the writer's intermediate key now in memory

    secrets_file = vault_dir / "secrets.json"
    saved = secrets_file.read_bytes()
    await LocalJsonVault(vault_dir).delete_secret("blobseal-kek")  # removed by another process
    try:
        await past_the_bound()
        await refused_everything(reader, {**written, **own}, "KekMissingError")
    finally:
        secrets_file.write_bytes(saved)  # restored from a backup
    await past_the_bound()
    for file_id, data in {**written, **own}.items():
        assert (await http_download(reader, file_id))[2] == data
    assert (await uploaded(reader, 1))


async def test_a_disabled_azure_kek_stops_uploads_and_uncached_reads_within_the_bound(
        make_stack: StackFactory, azurite: Azurite, keyvault_server: KeyVaultServer) -> None:
    """The real SDK against the Key Vault stand-in: the KEK's current version disabled, as
    ``az keyvault key set-attributes --enabled false`` does."""
    kek, signer = await key_adapters(keyvault_server)
    kek._current_ttl = BOUND  # what AzureKeyWrapper.from_settings gives it from KEY_CACHE_SECONDS
    settings = {"KEY_MODE": "envelope", "KEY_CACHE_SECONDS": str(int(BOUND))}
    writer = await make_stack(kek=kek, signer=signer, **settings)
    reader_kek, reader_signer = await key_adapters(keyvault_server)  # another instance: its own adapters
    reader_kek._current_ttl = BOUND
    reader = await make_stack(kek=reader_kek, signer=reader_signer, INGEST_CONTAINER=writer.settings.ingest_container,
                              PROTECTED_CONTAINER=writer.settings.protected_container, **settings)
    written = await uploaded(writer, 3)
    own = await uploaded(reader, 1)
    seen = next(iter(written))
    assert (await http_download(reader, seen))[2] == written[seen]

    for version in keyvault_server.keys["blobseal-kek"]:
        version.enabled = False
    await past_the_bound()
    await refused_everything(reader, {**written, **own}, "KeyVaultError")
    for version in keyvault_server.keys["blobseal-kek"]:
        version.enabled = True
    await past_the_bound()
    for file_id, data in {**written, **own}.items():
        assert (await http_download(reader, file_id))[2] == data


async def test_a_disabled_file_secret_stops_its_reads_within_the_bound(
        make_stack: StackFactory, azurite: Azurite, vault_dir: Path) -> None:
    stack = await make_stack(KEY_MODE="secret", KEY_CUSTODIES="secret", KEY_CACHE_SECONDS=str(int(BOUND)))
    contents = await uploaded(stack, 2)
    disabled, kept = list(contents)
    for file_id, data in contents.items():
        assert (await http_download(stack, file_id))[2] == data  # both keys in memory now
    reference = (await stack.files.describe(OPERATOR, disabled))["key_reference"]
    await LocalJsonVault(vault_dir).disable_version(*parse_key_reference(reference))  # by another process
    await past_the_bound()
    status, _, body = await http_download(stack, disabled)
    assert status == 503 and b"SecretDisabledError" in body, body[:200]
    assert (await http_download(stack, kept))[2] == contents[kept]  # the other file is not affected
