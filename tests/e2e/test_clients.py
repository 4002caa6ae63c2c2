"""Real HTTP clients against the local host (Microsoft's runtime): curl, wget and aria2c (8 parallel ranges)
download byte-identical files, resume byte-identical, never splice two versions of a file, and every name the
name rule accepts can be fetched by curl, wget and Python's requests.

The clients are the machine's own (curl, wget), else Debian's packages unpacked by ``make install`` into
``.venv/clients`` (aria2c always: few machines have it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import requests
from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost
from tests.support.host import running_host

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

MiB = 1024 * 1024
UNPACKED = ROOT / ".venv" / "clients" / "root"


def client(name: str) -> tuple[str, dict[str, str]]:
    """The client's executable and the environment it runs in (its unpacked libraries first, if unpacked)."""
    unpacked = UNPACKED / "usr" / "bin" / name
    if unpacked.exists():
        libraries = ":".join(str(p) for p in (UNPACKED / "usr" / "lib").glob("*-linux-gnu"))
        return str(unpacked), {**os.environ, "LD_LIBRARY_PATH": libraries}
    found = shutil.which(name)
    assert found, f"{name} is neither installed nor unpacked into {UNPACKED} (make install)"
    return found, dict(os.environ)


def run(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    executable, env = client(name)
    done = subprocess.run([executable, *args], env=env, capture_output=True, timeout=120, check=False)
    if check:
        assert done.returncode == 0, f"{name} {args}: {done.stderr.decode(errors='replace')[-2000:]}"
    return done


@pytest.fixture(scope="module")
def host(azurite: Azurite, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    with running_host(azurite, database_url, tmp_path_factory.mktemp("clients")) as process:
        yield process


def post(host: DevHost, name: str, data: bytes) -> str:
    response = httpx.post(f"{host.url}/files", content=data, timeout=120,
                          headers={**host.headers, "X-File-Name": quote(name, safe="")})
    assert response.status_code == 201, response.text
    return str(response.json()["file_id"])


def drop_version(host: DevHost, azurite: Azurite, name: str, data: bytes) -> str:
    """A file dropped into ingest under a UUID name: the same name again is a new version of the same file."""
    BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        host.env["INGEST_CONTAINER"], name).upload_blob(data, overwrite=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(f"{host.url}/files", params={"name": name}, headers=host.headers, timeout=10)
        if response.status_code == 200 and response.json()["status"] == "encrypted" \
                and response.json()["size"] == len(data):
            return str(response.json()["file_id"])
        time.sleep(0.2)
    raise AssertionError(f"{name} was not encrypted")


def key_args(host: DevHost, flag: str) -> list[str]:
    return [flag, f"x-functions-key: {host.headers['x-functions-key']}"]


def test_curl_wget_and_aria2c_download_the_same_bytes(host: DevHost, tmp_path: Path) -> None:
    data = os.urandom(20 * MiB + 12345)
    url = f"{host.url}/files/{post(host, 'big.bin', data)}"
    run("curl", "-sSf", *key_args(host, "-H"), "-o", str(tmp_path / "curl.bin"), url)
    run("wget", "-q", *key_args(host, "--header"), "-O", str(tmp_path / "wget.bin"), url)
    run("aria2c", "-q", "-x", "8", "-s", "8", "-k", "1M", "--file-allocation=none", *key_args(host, "--header"),
        "-d", str(tmp_path), "-o", "aria2c.bin", url)  # 8 connections, 1 MiB ranges
    for name in ("curl.bin", "wget.bin", "aria2c.bin"):
        assert (tmp_path / name).read_bytes() == data, name


def test_curl_and_wget_resume_a_cut_download(host: DevHost, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB + 7)
    url = f"{host.url}/files/{post(host, 'resumed.bin', data)}"
    for name, args in (("curl", ["-sSf", *key_args(host, "-H"), "-C", "-", "-o"]),
                       ("wget", ["-q", *key_args(host, "--header"), "-c", "-O"])):
        partial = tmp_path / f"{name}.part"
        partial.write_bytes(data[: 2 * MiB + 3])  # what a cut download left
        run(name, *args, str(partial), url)
        assert partial.read_bytes() == data, name


def test_a_resume_across_a_new_version_never_splices(host: DevHost, azurite: Azurite, tmp_path: Path) -> None:
    """curl resuming with If-Range (the validator RFC 9110 gives a resume): the current version resumes; after a
    new version the server answers 200 with all of it, which curl refuses to append (exit 33), so the partial file
    is never spliced; fetched again it is the new version whole. (wget -c sends no validator at all: no server
    can tell its resume from a fresh range request; README, "Resuming downloads".)"""
    name = f"{uuid.uuid4()}.bin"
    first, second = os.urandom(3 * MiB), os.urandom(3 * MiB + 999)
    url = f"{host.url}/files/{drop_version(host, azurite, name, first)}"
    old_etag = httpx.head(url, headers=host.headers, timeout=30).headers["etag"]
    partial = tmp_path / "download.bin"
    partial.write_bytes(first[:MiB])
    resume = ["-sS", *key_args(host, "-H"), "-H", f"If-Range: {old_etag}", "-C", "-", "-o", str(partial), url]
    run("curl", *resume)
    assert partial.read_bytes() == first  # the same version: resumed

    partial.write_bytes(first[:MiB])
    drop_version(host, azurite, name, second)
    refused = run("curl", *resume, check=False)
    assert refused.returncode == 33 and partial.read_bytes() == first[:MiB]  # a 200: curl appends nothing
    answer = httpx.get(url, headers={**host.headers, "Range": f"bytes={MiB}-", "If-Range": old_etag}, timeout=60)
    assert answer.status_code == 200 and answer.content == second  # what the server sent: the whole new version
    run("curl", "-sSf", *key_args(host, "-H"), "-o", str(partial), url)
    assert partial.read_bytes() == second


LONGEST = "名" * 1020 + ".pdf"  # 1024 characters, 3 bytes each in UTF-8: the longest name the rule accepts


@pytest.mark.parametrize("name", [LONGEST, "q3 report; final \"v2\".pdf", "ümlaut/€/📄 file.txt", "%41 not encoded"])
def test_every_accepted_name_downloads_with_curl_wget_and_requests(host: DevHost, tmp_path: Path,
                                                                  name: str) -> None:
    data = os.urandom(1000)
    url = f"{host.url}/files/{post(host, name, data)}"
    run("curl", "-sSf", *key_args(host, "-H"), "-o", str(tmp_path / "curl.bin"), url)
    run("wget", "-q", *key_args(host, "--header"), "-O", str(tmp_path / "wget.bin"), url)
    response = requests.get(url, headers=host.headers, timeout=30)
    assert response.status_code == 200 and response.content == data
    assert (tmp_path / "curl.bin").read_bytes() == data and (tmp_path / "wget.bin").read_bytes() == data
    assert f"filename*=UTF-8''{quote(name.rsplit('/', 1)[-1], safe='')}" in response.headers["content-disposition"]
