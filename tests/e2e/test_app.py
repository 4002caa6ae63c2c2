"""End to end: the functions of function_app.py run by the local host, over HTTP, on real Azurite
and PostgreSQL. Files are dropped into the ingest container with the Azure SDK, as a client would."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings
from azure.storage.queue import QueueClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost
from tests.support.host import running_host

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def host(azurite: Azurite, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    with running_host(azurite, database_url, tmp_path_factory.mktemp("host")) as process:
        yield process


def storage(azurite: Azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


def drop(host: DevHost, azurite: Azurite, name: str, data: bytes, content_type: str = "application/pdf") -> None:
    storage(azurite).get_blob_client(host.env["INGEST_CONTAINER"], name).upload_blob(
        data, overwrite=True, content_settings=ContentSettings(content_type=content_type))


def wait_encrypted(host: DevHost, name: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{host.url}/files", params={"name": name}, headers=host.headers, timeout=10)
        if response.status_code == 200 and response.json()["status"] == "encrypted":
            return dict(response.json())
        time.sleep(0.2)
    raise AssertionError(f"{name} was not encrypted within {timeout} s")


def blobs(azurite: Azurite, container: str) -> list[str]:
    return [b.name for b in storage(azurite).get_container_client(container).list_blobs()]


def wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_upload_comes_back_byte_identical(host: DevHost, azurite: Azurite) -> None:
    data = os.urandom(12 * MiB + 321)
    name = f"reports/q3 résumé {uuid.uuid4().hex[:6]}.pdf"
    drop(host, azurite, name, data)
    info = wait_encrypted(host, name)
    file_id = str(info["file_id"])
    response = httpx.get(f"{host.url}/files/{file_id}", headers=host.headers, timeout=60)
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-length"] == str(len(data)) and response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"]
    assert "filename*=UTF-8''q3%20r%C3%A9sum%C3%A9" in response.headers["content-disposition"]
    wait_for(lambda: name not in blobs(azurite, host.env["INGEST_CONTAINER"]))
    protected = [b for b in blobs(azurite, host.env["PROTECTED_CONTAINER"]) if b.startswith(file_id)]
    assert len(protected) == 1
    stored = storage(azurite).get_blob_client(host.env["PROTECTED_CONTAINER"], protected[0])
    head = stored.download_blob(offset=0, length=1 * MiB).read()
    assert data[:1024] not in head and name.encode() not in head  # neither plaintext nor the name
    assert "résumé" not in json.dumps(stored.get_blob_properties().metadata)


def test_ranges_head_and_metadata(host: DevHost, azurite: Azurite) -> None:
    data = os.urandom(300_000)
    name = f"{uuid.uuid4()}/data.bin"
    drop(host, azurite, name, data, "application/octet-stream")
    file_id = str(wait_encrypted(host, name)["file_id"])
    url = f"{host.url}/files/{file_id}"
    for header, expected, content_range in [
        ("bytes=0-99", data[:100], "bytes 0-99/300000"),
        ("bytes=65530-65545", data[65530:65546], "bytes 65530-65545/300000"),
        ("bytes=299000-", data[299000:], "bytes 299000-299999/300000"),
        ("bytes=-5", data[-5:], "bytes 299995-299999/300000"),
    ]:
        response = httpx.get(url, headers={**host.headers, "Range": header}, timeout=30)
        assert (response.status_code, response.content, response.headers["content-range"]) == (
            206, expected, content_range)
    head = httpx.head(url, headers=host.headers, timeout=30)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "300000"
    meta = httpx.get(f"{url}/metadata", headers=host.headers, timeout=30).json()
    assert meta["file_id"] == file_id and meta["name"] == "data.bin" and meta["size"] == 300_000
    assert meta["status"] == "encrypted" and meta["key_reference"].startswith(f"file-{file_id}/")
    assert meta["key_expires_at"] and meta["created_at"]
    vault = json.loads((Path(host.env["KEY_VAULT_LOCAL_PATH"]) / "secrets.json").read_text())
    key_b64 = vault[f"file-{file_id}"]["value"]
    assert key_b64 not in json.dumps(meta) and base64.b64decode(key_b64).hex() not in json.dumps(meta)


@pytest.mark.parametrize("path,headers,status,error", [
    ("/files/not-a-uuid", {}, 400, "InvalidRequestError"),
    ("/files/{missing}", {}, 404, "UnknownFileError"),
    ("/files/{missing}/metadata", {}, 404, "UnknownFileError"),
    ("/files?name=", {}, 400, "InvalidRequestError"),
    ("/files?limit=lots", {}, 400, "InvalidRequestError"),
    ("/files?status=gone", {}, 400, "InvalidRequestError"),
    ("/files?cursor=not-ours", {}, 400, "InvalidRequestError"),
    ("/files?name=never-uploaded", {}, 404, "UnknownFileError"),
    ("/files/{known}", {"Range": "bytes=5-1"}, 400, "InvalidRequestError"),
    ("/files/{known}", {"Range": "bytes=999999-"}, 416, "RangeNotSatisfiableError"),
])
def test_http_errors(host: DevHost, azurite: Azurite, path: str, headers: dict[str, str], status: int,
                     error: str) -> None:
    name = f"{uuid.uuid4()}.txt"
    drop(host, azurite, name, b"0123456789", "text/plain")
    known = str(wait_encrypted(host, name)["file_id"])
    url = host.url + path.format(missing=uuid.uuid4(), known=known)
    response = httpx.get(url, headers={**host.headers, **headers}, timeout=30)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["message"] and "Traceback" not in response.text
    if status == 416:
        assert response.headers["content-range"] == "bytes */10"


def test_file_not_encrypted_yet_is_409(host: DevHost, database_url: str) -> None:
    file_id = uuid.uuid4()

    async def register() -> None:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        await conn.execute("INSERT INTO files (file_id, source_name, source_etag, name, content_type) "
                           "VALUES ($1, 'x', 'e', 'x', 'text/plain')", file_id)
        await conn.close()

    asyncio.run(register())
    response = httpx.get(f"{host.url}/files/{file_id}", headers=host.headers, timeout=30)
    assert response.status_code == 409 and response.json()["error"] == "FileNotReadyError"


def test_function_key_is_required_but_health_is_anonymous(host: DevHost) -> None:
    file_url = f"{host.url}/files/{uuid.uuid4()}"
    assert httpx.get(file_url, timeout=10).status_code == 401
    assert httpx.get(file_url, headers={"x-functions-key": "wrong"}, timeout=10).status_code == 401
    assert httpx.get(file_url, params={"code": host.headers["x-functions-key"]}, timeout=10).status_code == 404
    health = httpx.get(f"{host.url}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "up"}  # one word, nothing about what is behind
    assert httpx.get(f"{host.url}/status", timeout=10).status_code == 401  # the details need a key (and operate)
    status = httpx.get(f"{host.url}/status", headers=host.headers, timeout=10)
    assert status.status_code == 200 and status.json()["dependencies"] == {
        "storage": "ok", "database": "ok", "vault": "ok"}


def test_failing_blob_lands_in_the_poison_queue(host: DevHost, azurite: Azurite) -> None:
    file_id = uuid.uuid4()
    drop(host, azurite, f"{file_id}/first.bin", b"first")
    wait_encrypted(host, f"{file_id}/first.bin")
    name = f"{file_id}/second.bin"
    drop(host, azurite, name, b"another upload claiming the same file id")  # refused on every attempt
    queue = QueueClient.from_connection_string(azurite.connection_string, "webjobs-blobtrigger-poison")

    def poisoned() -> bool:
        try:
            return any(json.loads(m.content)["BlobName"] == name for m in queue.peek_messages(max_messages=32))
        except Exception:
            return False

    wait_for(poisoned, timeout=60)
    assert name in blobs(azurite, host.env["INGEST_CONTAINER"])  # the upload is kept, nothing lost
    metrics = httpx.get(f"{host.url}/metrics", headers=host.headers, timeout=10).text
    assert 'blobseal_operations_total{operation="encrypt",outcome="UploadConflictError"}' in metrics  # by the app
    assert "first" not in metrics


def test_download_in_flight_completes_across_rotation(host: DevHost, azurite: Azurite) -> None:
    data = os.urandom(24 * MiB)
    name = f"{uuid.uuid4()}.bin"
    drop(host, azurite, name, data)
    info = wait_encrypted(host, name)
    file_id = str(info["file_id"])
    received = bytearray()
    with httpx.stream("GET", f"{host.url}/files/{file_id}", headers=host.headers, timeout=60) as response:
        chunks = response.iter_bytes()
        received += next(chunks)
        rotated = subprocess.run([sys.executable, "-m", "shared.cli", "rotate", "--file-id", file_id], cwd=ROOT,
                                 env=host.env, capture_output=True, text=True, timeout=120, check=False)
        assert rotated.returncode == 0, rotated.stderr
        for chunk in chunks:
            received += chunk
    assert bytes(received) == data
    after = httpx.get(f"{host.url}/files/{file_id}/metadata", headers=host.headers, timeout=10).json()
    assert after["key_reference"] != info["key_reference"]
    assert httpx.get(f"{host.url}/files/{file_id}", headers=host.headers, timeout=60).content == data


def test_memory_stays_bounded_for_a_large_file(host: DevHost, azurite: Azurite) -> None:
    small = f"{uuid.uuid4()}.bin"
    drop(host, azurite, small, b"x" * MiB)
    wait_encrypted(host, small)
    baseline = host.peak_rss_mib()
    big = f"{uuid.uuid4()}.bin"
    size = 256 * MiB
    client = storage(azurite).get_blob_client(host.env["INGEST_CONTAINER"], big)
    client.upload_blob(_stream_of(size), length=size, max_concurrency=2)
    file_id = str(wait_encrypted(host, big, timeout=240)["file_id"])
    total = 0
    with httpx.stream("GET", f"{host.url}/files/{file_id}", headers=host.headers, timeout=240) as response:
        for chunk in response.iter_bytes():
            total += len(chunk)
    assert total == size
    growth = host.peak_rss_mib() - baseline
    # A few 5 MiB transfer chunks in flight (read, prefetched, sealed, staged, per-thread malloc
    # arenas) and never the file: holding it would take 256 MiB or more.
    assert growth < 96, f"peak RSS grew {growth:.0f} MiB for a {size // MiB} MiB file"


def _stream_of(size: int) -> Iterator[bytes]:
    piece = os.urandom(4 * MiB)
    for offset in range(0, size, len(piece)):
        yield piece[: min(len(piece), size - offset)]


def cli(host: DevHost, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=host.env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_operator_commands_beside_the_running_app(host: DevHost, azurite: Azurite, tmp_path: Path) -> None:
    data = os.urandom(700_000)
    name = f"{uuid.uuid4()}/ledger.csv"
    drop(host, azurite, name, data, "text/csv")
    file_id = str(wait_encrypted(host, name)["file_id"])
    shown = cli(host, "show", file_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "ledger.csv"
    assert cli(host, "decrypt-file", file_id, str(tmp_path / "out.csv")).returncode == 0
    assert (tmp_path / "out.csv").read_bytes() == data
    before = json.loads(shown.stdout)["key_reference"]
    expired = cli(host, "expire", file_id)
    assert expired.returncode == 0 and json.loads(expired.stdout)["file_id"] == file_id
    due = cli(host, "rotate", "--due")
    report = json.loads(due.stdout)
    assert due.returncode == 0 and report["failed"] == [] and file_id in report["rotated"]
    assert json.loads(cli(host, "show", file_id).stdout)["key_reference"] != before
    assert cli(host, "migrate").returncode == 0
    for args, needle in [(("show", str(uuid.uuid4())), "no such file"), (("show", "nope"), "UUID"),
                         (("decrypt-file", str(uuid.uuid4()), str(tmp_path / "x")), "no such file"),
                         (("rotate", "--file-id", str(uuid.uuid4())), "no encrypted file")]:
        failed = cli(host, *args)
        assert failed.returncode == 1 and needle in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_decrypt_file_says_how_to_enable_a_disabled_key_version(host: DevHost, azurite: Azurite,
                                                                 tmp_path: Path) -> None:
    name = f"{uuid.uuid4()}/restored.bin"
    drop(host, azurite, name, os.urandom(1000), "application/octet-stream")
    file_id = str(wait_encrypted(host, name)["file_id"])
    secret, version = json.loads(cli(host, "show", file_id).stdout)["key_reference"].split("/")
    vault = Path(host.env["KEY_VAULT_LOCAL_PATH"]) / "secrets.json"  # as a row restored from before a rotation
    document = json.loads(vault.read_text())
    assert document[secret]["version"] == version  # the latest version: its fields are the entry's own
    document[secret]["enabled"] = False
    vault.write_text(json.dumps(document))
    failed = cli(host, "decrypt-file", file_id, str(tmp_path / "out"))
    assert failed.returncode == 1 and len(failed.stderr.strip().splitlines()) == 1
    assert f'set "enabled": true for version {version} of {secret}' in failed.stderr
    document[secret]["enabled"] = True
    vault.write_text(json.dumps(document))
    assert cli(host, "decrypt-file", file_id, str(tmp_path / "out")).returncode == 0
