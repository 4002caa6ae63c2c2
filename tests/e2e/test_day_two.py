"""Day two, over HTTP through the local host, with the operator's CLI beside it: who accessed what
(two callers), uploads without plaintext at rest, listing, deletion that leaves no key."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost, host_env

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

ALICE, BOB = "alice-" + os.urandom(8).hex(), "bob-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def host(azurite: Azurite, module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    work = tmp_path_factory.mktemp("day-two")
    env = host_env(azurite, module_database_url, work / "vault", LOCAL_FUNCTION_KEYS=f"alice={ALICE},bob={BOB}",
                   FUNCTION_KEY_ROLES="alice=read+write+erase,bob=read", UPLOAD_MAX_MB="2")
    process = DevHost(env, work / "devhost.log").start()
    yield process
    process.stop()


def as_(key: str) -> dict[str, str]:
    return {"x-functions-key": key}


def cli(host: DevHost, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=host.env, capture_output=True,
                          text=True, timeout=120, check=False)


def post(host: DevHost, name: str, data: bytes, key: str = ALICE, **headers: str) -> httpx.Response:
    return httpx.post(f"{host.url}/files", content=data, timeout=60,
                      headers={**as_(key), "X-File-Name": quote(name), **headers})


def test_every_access_is_in_the_audit_with_its_caller_range_and_outcome(host: DevHost, azurite: Azurite) -> None:
    data = os.urandom(300_000)
    uploaded = post(host, "q3 report.pdf", data)
    assert uploaded.status_code == 201 and uploaded.json()["content_type"] == "application/pdf"  # guessed
    file_id = uploaded.json()["file_id"]
    url = f"{host.url}/files/{file_id}"

    whole = httpx.get(url, headers=as_(ALICE), timeout=30)
    part = httpx.get(url, headers={**as_(BOB), "Range": "bytes=100-199"}, timeout=30)
    assert whole.content == data and part.status_code == 206 and part.content == data[100:200]
    assert httpx.get(f"{url}/metadata", headers=as_(BOB), timeout=30).status_code == 200
    missing = httpx.get(f"{host.url}/files/{uuid.uuid4()}", headers=as_(BOB), timeout=30)
    assert missing.status_code == 404  # a failed access
    assert cli(host, "rotate", "--file-id", file_id).returncode == 0
    deleted = httpx.request("DELETE", url, headers=as_(ALICE), timeout=30)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert deleted.json()["deleted_by"] == "key:alice"

    audit = cli(host, "audit", "--file-id", file_id, "--json")
    rows = [(r["operation"], r["caller"], r["range"], r["bytes_sent"], r["outcome"]) for r in json.loads(audit.stdout)]
    assert ("upload", "key:alice", None, 300_000, "ok") in rows
    assert ("download", "key:alice", "0-299999", 300_000, "ok") in rows
    assert ("download", "key:bob", "100-199", 100, "ok") in rows
    assert ("metadata", "key:bob", None, None, "ok") in rows
    assert any(op == "rotate" and caller.startswith("cli:") and outcome == "ok" for op, caller, _, _, outcome in rows)
    assert ("delete", "key:alice", None, None, "ok") in rows
    by_bob = json.loads(cli(host, "audit", "--caller", "key:bob", "--json").stdout)
    assert {"UnknownFileError"} <= {r["outcome"] for r in by_bob}  # the failed access, by its caller

    gone = httpx.get(url, headers=as_(ALICE), timeout=30)
    assert gone.status_code == 404
    secrets_file = Path(host.env["KEY_VAULT_LOCAL_PATH"]) / "secrets.json"
    assert f"file-{file_id}" not in json.loads(secrets_file.read_text())  # no version left to open any copy
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    protected = service.get_container_client(host.env["PROTECTED_CONTAINER"])
    assert [b.name for b in protected.list_blobs(name_starts_with=file_id, include=["uncommittedblobs"])] == []


def test_an_upload_over_http_never_puts_plaintext_in_storage(host: DevHost, azurite: Azurite) -> None:
    marker = os.urandom(32)
    data = marker * 40_000  # 1.25 MiB, recognisable wherever it would land
    response = post(host, "plain.bin", data)
    assert response.status_code == 201
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    for container in service.list_containers():
        for blob in service.get_container_client(container.name).list_blobs():
            content = service.get_blob_client(container.name, blob.name).download_blob().readall()
            assert marker not in content, f"{container.name}/{blob.name}"
    back = httpx.get(f"{host.url}/files/{response.json()['file_id']}", headers=as_(BOB), timeout=30)
    assert back.content == data


def test_a_refused_or_interrupted_upload_leaves_nothing(host: DevHost, azurite: Azurite) -> None:
    assert post(host, "", b"x").status_code == 400  # no name
    name = f"big-{uuid.uuid4().hex}.bin"
    too_big = post(host, name, os.urandom(3 * 1024 * 1024))  # UPLOAD_MAX_MB=2
    assert too_big.status_code == 413 and too_big.json()["error"] == "UploadTooLargeError"
    cut = f"cut-{uuid.uuid4().hex}.bin"
    with socket.create_connection(("127.0.0.1", host.port)) as raw:  # a client that goes away mid-body
        raw.sendall(f"POST /api/files HTTP/1.1\r\nHost: x\r\nx-functions-key: {ALICE}\r\nX-File-Name: {cut}\r\n"
                    f"Content-Length: 1500000\r\n\r\n".encode() + os.urandom(700_000))
    time.sleep(2)
    for prefix in (name, cut):
        listed = json.loads(cli(host, "list", "--prefix", prefix, "--json").stdout)
        assert listed["files"] == [], prefix  # no row, pending or otherwise
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    protected = service.get_container_client(host.env["PROTECTED_CONTAINER"])
    committed = {b.name for b in protected.list_blobs()}
    every = {b.name for b in protected.list_blobs(include=["uncommittedblobs"])}
    assert every == committed  # no staged blocks left behind


def test_files_are_listed_by_prefix_a_page_at_a_time(host: DevHost) -> None:
    prefix = f"batch-{uuid.uuid4().hex[:8]}/"
    made = sorted(post(host, f"{prefix}{i}.txt", b"%d" % i).json()["file_id"] for i in range(5))
    seen, cursor = [], None
    for _ in range(5):
        params = {"prefix": prefix, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{host.url}/files", params=params, headers=as_(BOB), timeout=30).json()
        seen += [f["file_id"] for f in page["files"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == made and len(seen) == 5
    listed = cli(host, "list", "--prefix", prefix, "--json")
    assert len(json.loads(listed.stdout)["files"]) == 5


def test_the_plain_upload_path_still_works_with_named_keys(host: DevHost, azurite: Azurite) -> None:
    name = f"{uuid.uuid4()}.csv"
    BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        host.env["INGEST_CONTAINER"], name).upload_blob(b"a,b\n1,2\n")  # no content type given
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = httpx.get(f"{host.url}/files", params={"name": name}, headers=as_(BOB), timeout=10)
        if found.status_code == 200 and found.json()["status"] == "encrypted":
            assert found.json()["content_type"] == "text/csv"  # guessed from the name
            return
        time.sleep(0.2)
    raise AssertionError("not encrypted")
