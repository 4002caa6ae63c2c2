"""Benchmark of the function app on Azurite: ingest and download against plain transfers.

Run ``make bench`` (or ``.venv/bin/python -m bench.app_bench``; PostgreSQL must answer at
``DATABASE_URL``). Starts its own Azurite and a scratch database, writes a table to stdout and
to ``bench/results/app.md``:

1. Ingest: ``encrypt_ingest_blob`` (read ingest blob, encrypt, stage, commit, database rows,
   delete plaintext) against a plain block copy of the same blob (read in the same chunks,
   stage and commit unchanged) with the same ``BlobStore``, in the same run. Rounds
   alternate; the best round of each counts.
2. Download: the service's verified download of the whole file against a plain chunked
   download of the protected blob.
3. Peak memory: the local host (a separate process) ingesting and serving over HTTP a small
   file, then a large one (1 GiB by default); ``VmHWM`` of the host process after each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

from bench import table
from localinfra.azurite import Azurite, running_azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from localinfra.postgres import database, scratch_database
from shared.bootstrap import Services, build_services
from shared.config import Settings
from shared.db import migrate
from shared.identity import ALL_ROLES, Caller

MiB = 1024 * 1024
RESULTS = Path(__file__).with_name("results") / "app.md"
BENCH_CALLER = Caller("bench", ALL_ROLES)


def settings_for(azurite: Azurite, database_url: str, vault: Path) -> Settings:
    return Settings.from_env({"DataStorage": azurite.connection_string, "DATABASE_URL": database_url,
                              "KEY_VAULT_LOCAL_PATH": str(vault), "INGEST_CONTAINER": "bench-ingest",
                              "PROTECTED_CONTAINER": "bench-protected"})


def upload(azurite: Azurite, container: str, name: str, size: int) -> None:
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    client.get_blob_client(container, name).upload_blob(_pattern(size), length=size, overwrite=True,
                                                        max_concurrency=2)


def _pattern(size: int) -> Iterator[bytes]:
    piece = os.urandom(4 * MiB)
    for offset in range(0, size, len(piece)):
        yield piece[: min(len(piece), size - offset)]


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


async def plain_copy(s: Services, source: str, target: str) -> None:
    writer = s.protected.writer(target, target=s.settings.chunk_size)
    async for chunk in s.ingest.read(source):
        await writer.stage(chunk)
    await writer.commit()


async def plain_download(s: Services, blob: str) -> int:
    return sum([len(chunk) async for chunk in s.protected.read(blob)])


async def service_download(s: Services, file_id: str) -> int:
    """The download use case as a caller gets it: role check, access row, verified body."""
    got = await s.files.download(BENCH_CALLER, file_id, lambda record: None)
    assert got.body is not None
    return sum([len(piece) async for piece in got.body])


async def one_round(azurite: Azurite, s: Services, size: int) -> dict[str, float]:
    """Seconds for each path, on a freshly uploaded file."""
    name = f"{uuid.uuid4()}.bin"
    await asyncio.to_thread(upload, azurite, s.settings.ingest_container, name, size)
    times = {"copy": await timed(lambda: plain_copy(s, name, f"copy-{name}")),
             "ingest": await timed(lambda: s.files.encrypt_ingest_blob(name))}
    info = await s.files.find_by_name(BENCH_CALLER, name)
    blob = (await s.files.encrypted_file(str(info["file_id"]))).protected_blob
    assert blob is not None
    times["plain get"] = await timed(lambda: plain_download(s, blob))
    times["service get"] = await timed(lambda: service_download(s, str(info["file_id"])))
    return times


async def throughput(azurite: Azurite, settings: Settings, size: int, rounds: int) -> list[list[str]]:
    s = build_services(settings)
    await s.ingest.ensure()
    await s.protected.ensure()
    try:
        runs = [await one_round(azurite, s, size) for _ in range(rounds)]
    finally:
        await s.close()
    rate = {path: size / min(run[path] for run in runs) / MiB for path in runs[0]}
    return [["ingest (encrypt blob to blob)", f"{rate['ingest']:.0f} MiB/s", f"{rate['copy']:.0f} MiB/s",
             f"{rate['ingest'] / rate['copy']:.2f}x"],
            ["download (verified, decrypted)", f"{rate['service get']:.0f} MiB/s", f"{rate['plain get']:.0f} MiB/s",
             f"{rate['service get'] / rate['plain get']:.2f}x"]]


def memory(azurite: Azurite, database_url: str, work: Path, sizes: list[int]) -> list[list[str]]:
    # The vault of the throughput rounds: the database records their keys, and a new, empty vault beside
    # recorded keys is refused (fail closed).
    env = host_env(azurite, database_url, work / "vault")
    storage = BlobServiceClient.from_connection_string(azurite.connection_string)
    for container in (env["INGEST_CONTAINER"], env["PROTECTED_CONTAINER"]):
        storage.create_container(container)
    host = DevHost(env, work / "devhost.log").start()
    rows = []
    try:
        for size in sizes:
            name = f"{uuid.uuid4()}.bin"
            upload(azurite, env["INGEST_CONTAINER"], name, size)
            file_id = _wait_encrypted(host, name)
            with httpx.stream("GET", f"{host.url}/files/{file_id}", headers=host.headers, timeout=600) as response:
                received = sum(len(chunk) for chunk in response.iter_bytes())
            assert received == size
            rows.append([f"{size / MiB:,.0f} MiB", f"{host.peak_rss_mib():.0f} MiB"])
    finally:
        host.stop()
    return rows


def _wait_encrypted(host: DevHost, name: str) -> str:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        response = httpx.get(f"{host.url}/files", params={"name": name}, headers=host.headers)
        if response.status_code == 200 and response.json()["status"] == "encrypted":
            return str(response.json()["file_id"])
        time.sleep(0.5)
    raise TimeoutError(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="file size for the throughput rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-mib", default="1,1024", help="file sizes for the peak-memory run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="blobseal-app-bench-") as scratch, \
            running_azurite(Path(scratch) / "azurite") as azurite, \
            database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test") as server, \
            scratch_database(server, prefix="blobseal_bench") as database_url:
        asyncio.run(migrate(database_url))
        settings = settings_for(azurite, database_url, Path(scratch) / "vault")
        rates = asyncio.run(throughput(azurite, settings, args.size_mib * MiB, args.rounds))
        peaks = memory(azurite, database_url, Path(scratch), [int(m) * MiB for m in args.memory_mib.split(",")])
    report = (f"# App benchmark on Azurite ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"{args.size_mib} MiB file, best of {args.rounds})\n\n"
              + table(["path", "blobseal", "plain reference", "ratio"], rates)
              + "\n\n## Peak RSS of the local host process (ingest, then HTTP download of the file)\n\n"
              + table(["file", "peak RSS after"], peaks))
    print(report)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
