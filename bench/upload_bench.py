"""Upload over HTTP (``POST /api/files``) against the ingest path, through the running local host.

For one file of ``--size-mib`` (1 GiB by default), in the same run on the same Azurite:

- the ingest path: the file uploaded into ``ingest`` with the Azure SDK, then encrypted by the
  blob trigger, until its metadata says ``encrypted``;
- the upload path: the same bytes streamed to ``POST /api/files`` (chunked), encrypted on the fly.

While the upload runs, a watcher lists every container every 0.2 s: the ingest container must
stay empty and every blob must be a protected blob of the new file (no plaintext at rest).
Peak RSS of the host process is read before and after. The download is checked by SHA-256.
Results: ``bench/results/upload.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

from bench import table
from localinfra.azurite import Azurite, running_azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from localinfra.postgres import database, scratch_database

RESULTS = Path(__file__).with_name("results") / "upload.md"
MiB = 1024 * 1024


def content(size: int, seed: bytes) -> Iterator[bytes]:
    """``size`` bytes, generated as they are sent (no copy of the file in memory)."""
    piece = hashlib.sha256(seed).digest() * (MiB // 32)
    for offset in range(0, size, MiB):
        yield piece[: min(MiB, size - offset)]


def digest(size: int, seed: bytes) -> str:
    h = hashlib.sha256()
    for chunk in content(size, seed):
        h.update(chunk)
    return h.hexdigest()


class Watcher(threading.Thread):
    """Lists every container until stopped; remembers any new blob that is not an encrypted (.bseal) blob in
    the protected container."""

    def __init__(self, azurite: Azurite, protected: str) -> None:
        super().__init__(daemon=True)
        self.storage = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.protected, self.known = protected, set[str]()
        self.stop = threading.Event()
        self.listings, self.offending = 0, set[str]()

    def run(self) -> None:
        while not self.stop.is_set():
            for container in self.storage.list_containers():
                listed = self.storage.get_container_client(container.name).list_blobs(include=["uncommittedblobs"])
                for blob in listed:
                    where = f"{container.name}/{blob.name}"
                    if where not in self.known and not (container.name == self.protected and where.endswith(".bseal")):
                        self.offending.add(where)
            self.listings += 1
            time.sleep(0.2)


def ingest_path(host: DevHost, azurite: Azurite, size: int) -> float:
    storage = BlobServiceClient.from_connection_string(azurite.connection_string)
    name = f"{uuid.uuid4()}.bin"
    started = time.perf_counter()
    storage.get_blob_client(host.env["INGEST_CONTAINER"], name).upload_blob(content(size, b"ingest"), length=size,
                                                                            max_concurrency=4)
    while True:
        found = httpx.get(f"{host.url}/files", params={"name": name}, headers=host.headers, timeout=30)
        if found.status_code == 200 and found.json()["status"] == "encrypted":
            return time.perf_counter() - started
        time.sleep(0.1)


def upload_path(host: DevHost, azurite: Azurite, size: int, watcher: Watcher) -> tuple[float, str]:
    started = time.perf_counter()
    response = httpx.post(f"{host.url}/files", content=content(size, b"upload"), timeout=3600,
                          headers={**host.headers, "X-File-Name": "big.bin"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 201, response.text
    return elapsed, str(response.json()["file_id"])


def downloaded_digest(host: DevHost, file_id: str) -> str:
    h = hashlib.sha256()
    with httpx.stream("GET", f"{host.url}/files/{file_id}", headers=host.headers, timeout=3600) as response:
        for chunk in response.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def run(azurite: Azurite, database_url: str, work: Path, size: int) -> list[list[str]]:
    env = host_env(azurite, database_url, work / "vault", UPLOAD_MAX_MB=str(2 * size // MiB + 1))
    storage = BlobServiceClient.from_connection_string(azurite.connection_string)
    for container in (env["INGEST_CONTAINER"], env["PROTECTED_CONTAINER"]):
        storage.create_container(container)
    host = DevHost(env, work / "devhost.log").start()
    try:
        upload_path(host, azurite, 16 * MiB, Watcher(azurite, env["PROTECTED_CONTAINER"]))  # warm up
        rss_small = host.peak_rss_mib()
        ingest_seconds = ingest_path(host, azurite, size)
        watcher = Watcher(azurite, env["PROTECTED_CONTAINER"])  # sees the blobs there are before the upload
        watcher.known = {f"{c.name}/{b.name}" for c in storage.list_containers()
                         for b in storage.get_container_client(c.name).list_blobs()}
        watcher.start()
        upload_seconds, file_id = upload_path(host, azurite, size, watcher)
        watcher.stop.set()
        watcher.join()
        rss_big = host.peak_rss_mib()
        assert downloaded_digest(host, file_id) == digest(size, b"upload")
    finally:
        host.stop()
    plaintext = "none" if not watcher.offending else ", ".join(sorted(watcher.offending)[:5])
    return [
        ["upload over HTTP (POST /api/files)", f"{size / MiB / upload_seconds:.0f} MiB/s", f"{upload_seconds:.1f} s"],
        ["ingest path (upload to ingest, trigger)", f"{size / MiB / ingest_seconds:.0f} MiB/s",
         f"{ingest_seconds:.1f} s"],
        ["throughput ratio, upload / ingest", f"{ingest_seconds / upload_seconds:.2f}x", ""],
        ["host peak RSS after a 16 MiB upload, after the big one", f"{rss_small:.0f} MiB", f"{rss_big:.0f} MiB"],
        ["blobs other than the new file's ciphertext, seen while uploading",
         plaintext, f"{watcher.listings} listings of every container"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blobseal-upload-bench-") as scratch, \
            running_azurite(Path(scratch) / "azurite") as azurite, \
            database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test") as server, \
            scratch_database(server, prefix="blobseal_bench") as database_url:
        rows = run(azurite, database_url, Path(scratch), args.size_mib * MiB)
    report = (f"# Upload over HTTP vs the ingest path ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"{args.size_mib} MiB, one run each, local host on Azurite)\n\n" + table(["measure", "value", ""], rows))
    print(report)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
