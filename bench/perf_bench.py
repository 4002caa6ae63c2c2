"""Per-request speed of blobseal against the plain Azure SDK and SDK client-side encryption v2 (issue 9).

Run ``make bench`` (or ``.venv/bin/python -m bench.perf_bench``; PostgreSQL as for ``make test``; about
three minutes on 2 cores). One run starts a real Azurite, a scratch PostgreSQL database and the local
host (``python -m devhost``, a process of its own, as ``make dev`` runs it without Core Tools) and
measures, in ``--rounds`` rounds each (5), the paths taking turns to go first:

1. 1 MiB ranges at random offsets of a 256 MiB file: ``GET /api/files/{id}`` with ``Range`` against
   ``download_blob(offset, length)`` of a plain blob and of a CSE v2 blob of the same size: p50, p95.
2. The whole 256 MiB file: MiB/s and CPU seconds per GB. blobseal streamed over HTTP (CPU: the host
   process plus the benchmark process); the plain SDK with ``max_concurrency`` 1 and 4, and CSE v2
   (CPU: the benchmark process); plain in pieces of the host's transfer chunk (``ENCRYPTION_CHUNK_SIZE_MB``),
   CSE v2 in pieces of its 4 MiB encryption region.
3. 16 parallel HTTP downloads of distinct 32 MiB files: the host's peak RSS (``VmHWM``, reset before
   each round) above its RSS at rest, per download.
4. 300 files of 64 KiB through ingest: dropped into the ingest container with the SDK, until
   ``GET /api/files?prefix=&status=encrypted`` lists every one; against the same drop into a plain
   container followed by a read + write copy of each at the blob trigger's parallelism
   (``maxDegreeOfParallelism`` in host.json): both sides pay for the files landing.
5. 200 GETs of 64 KiB files at concurrency 32 (files from step 4): requests/s and p95 latency,
   httpx ``AsyncClient`` against the async SDK on plain blobs.
6. After the host stopped: the format CLI encrypting a 256 MiB file to a file (``python -m shared.cli
   encrypt``, a subprocess) against a bare AES-GCM loop in a subprocess (64 KiB blocks, ``encrypt_into``
   into a reused buffer, written to a file, fsync at the end): MiB/s of wall time.

The product is touched only through its HTTP API and CLI (``bench.perf_paths``). Each result is the
median of the rounds, with their min-max as the noise; ratios are taken round by round. Writes
``bench/results/perf.md``, ``bench/results/perf.png`` and ``docs/PERFORMANCE.md`` (``bench.perf_report``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TypeVar, cast

import asyncpg
import httpx
from azure.storage.blob import BlobClient, BlobServiceClient
from azure.storage.blob.aio import ContainerClient

from bench import perf_report
from bench.perf_paths import (
    Blobseal,
    CountingSink,
    LocalKek,
    blob_client,
    content,
    cpu_seconds,
    cse_client,
    expected,
    reset_peak_rss,
)
from bench.perf_report import Row, percentile, series
from localinfra.azurite import running_azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from localinfra.postgres import database, scratch_database

KiB, MiB = 1024, 1024 * 1024
PLAIN, CSE = "perf-plain", "perf-cse"  # containers of the references, beside the host's own
BIG = "big.bin"
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What is measured, and how much of it."""

    rounds: int = 5
    big: int = 256 * MiB
    ranges: int = 40  # 1 MiB ranges per path and round
    small_files: int = 300
    small: int = 64 * KiB
    gets: int = 200
    get_concurrency: int = 32
    drop_concurrency: int = 32  # how fast files land in the ingest container
    parallel: int = 16
    parallel_size: int = 32 * MiB
    block: int = 64 * KiB  # format block of the CLI and the bare loop


@dataclass
class Bench:
    """The running host and what was uploaded before the rounds."""

    plan: Plan
    host: DevHost
    api: Blobseal
    connection: str
    chunk: int  # the host's transfer chunk
    parallelism: int  # the blob trigger's maxDegreeOfParallelism
    kek: LocalKek
    big_id: str = ""
    parallel_ids: tuple[str, ...] = ()

    @property
    def host_pid(self) -> int:
        assert self.host.process is not None
        return self.host.process.pid


def in_turn(index: int, names: Sequence[str]) -> list[str]:
    """The paths in the order of round ``index``: each goes first in turn."""
    shift = index % len(names)
    return [*names[shift:], *names[:shift]]


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


async def concurrently(items: Sequence[T], concurrency: int,
                       work: Callable[[T], Awaitable[object]]) -> tuple[float, list[float]]:
    """``work`` on every item, ``concurrency`` at a time: wall seconds, and each item's seconds."""
    pending, latencies = iter(items), []

    async def worker() -> None:
        for item in pending:
            start = time.perf_counter()
            await work(item)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


# --- setup ------------------------------------------------------------------------------------------------


def prepare(bench: Bench, big_file: Path) -> None:
    """The files every measure reads: the big file three ways, the parallel files, the small plain blobs."""
    plan = bench.plan
    storage = BlobServiceClient.from_connection_string(bench.connection)
    for container in (PLAIN, CSE):
        storage.create_container(container)
    with big_file.open("wb") as handle:
        for piece in content(plan.big):
            handle.write(piece)
    bench.big_id = bench.api.upload("perf-big.bin", plan.big)
    for client in (blob_client(bench.connection, PLAIN, BIG, bench.chunk),
                   cse_client(bench.connection, CSE, BIG, bench.kek)):
        with big_file.open("rb") as handle:
            client.upload_blob(handle, max_concurrency=2)
    bench.parallel_ids = tuple(bench.api.upload(f"perf-parallel-{i}.bin", plan.parallel_size)
                               for i in range(plan.parallel))
    asyncio.run(upload_small(bench.connection, PLAIN, small_names("small", plan.small_files), plan))


def small_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:04d}.bin" for i in range(count)]


async def upload_small(connection: str, container: str, names: list[str], plan: Plan) -> None:
    data = os.urandom(plan.small)
    async with ContainerClient.from_connection_string(connection, container) as client:
        await concurrently(names, plan.drop_concurrency,
                           lambda name: client.upload_blob(name, data, overwrite=True))


# --- 1. ranges --------------------------------------------------------------------------------------------


def range_rows(bench: Bench) -> list[Row]:
    plan = bench.plan
    fetch: dict[str, Callable[[int], bytes]] = {
        "blobseal": lambda offset: bench.api.get_range(bench.big_id, offset, MiB),
        "plain": sdk_range(blob_client(bench.connection, PLAIN, BIG, bench.chunk)),
        "cse": sdk_range(cse_client(bench.connection, CSE, BIG, bench.kek)),
    }
    for read in fetch.values():
        read(0)  # warm up: connections, key caches
    p50: dict[str, list[float]] = {path: [] for path in fetch}
    p95: dict[str, list[float]] = {path: [] for path in fetch}
    for index in range(plan.rounds):
        rng = random.Random(index)
        offsets = [rng.randrange(0, plan.big - MiB) for _ in range(plan.ranges)]
        for path in in_turn(index, list(fetch)):
            latencies = [_timed_range(fetch[path], offset) * 1000 for offset in offsets]
            p50[path].append(percentile(latencies, 50))
            p95[path].append(percentile(latencies, 95))
    return [_row3(f"range_{q}", f"1 MiB random range, {q}", "ms", False, values)
            for q, values in (("p50", p50), ("p95", p95))]


def sdk_range(client: BlobClient) -> Callable[[int], bytes]:
    return lambda offset: client.download_blob(offset=offset, length=MiB).readall()


def _timed_range(read: Callable[[int], bytes], offset: int) -> float:
    start = time.perf_counter()
    data = read(offset)
    elapsed = time.perf_counter() - start
    assert data == expected(offset, MiB), "a range came back wrong"
    return elapsed


def _row3(key: str, measure: str, unit: str, higher: bool, values: dict[str, list[float]]) -> Row:
    return Row(key, measure, unit, higher, series(values["blobseal"]), series(values["plain"]),
               series(values["cse"]))


# --- 2. whole file ----------------------------------------------------------------------------------------


def whole_file_rows(bench: Bench) -> list[Row]:
    plan = bench.plan
    plain = blob_client(bench.connection, PLAIN, BIG, bench.chunk)
    cse = cse_client(bench.connection, CSE, BIG, bench.kek)

    runs: dict[str, Callable[[], int]] = {
        "blobseal": lambda: bench.api.download(bench.big_id), "plain c1": lambda: sdk_download(plain, 1),
        "plain c4": lambda: sdk_download(plain, 4), "cse": lambda: sdk_download(cse, 1)}
    rate: dict[str, list[float]] = {path: [] for path in runs}
    cpu: dict[str, list[float]] = {path: [] for path in runs}
    for index in range(plan.rounds):
        for path in in_turn(index, list(runs)):
            seconds, own, host = _cpu_timed(runs[path], bench.host_pid, plan.big)
            rate[path].append(plan.big / MiB / seconds)
            cpu[path].append((own + (host if path == "blobseal" else 0.0)) / (plan.big / 1e9))
    size = f"whole file {plan.big // MiB} MiB"
    return [
        _row_whole("whole_c1", f"{size} (plain: max_concurrency=1)", "MiB/s", True, rate, "plain c1"),
        _row_whole("whole_c4", f"{size} (plain: max_concurrency=4)", "MiB/s", True, rate, "plain c4"),
        _row_whole("cpu_c1", f"{size}, CPU (plain: max_concurrency=1)", "CPU s/GB", False, cpu, "plain c1"),
        _row_whole("cpu_c4", f"{size}, CPU (plain: max_concurrency=4)", "CPU s/GB", False, cpu, "plain c4"),
    ]


def sdk_download(client: BlobClient, concurrency: int) -> int:
    """The whole blob, counted and dropped; the bytes received."""
    sink = CountingSink()
    client.download_blob(max_concurrency=concurrency).readinto(cast(IO[bytes], sink))
    return sink.count


def _cpu_timed(run: Callable[[], int], host_pid: int, size: int) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds of this process, CPU seconds of the host process."""
    own, host, start = time.process_time(), cpu_seconds(host_pid), time.perf_counter()
    received = run()
    wall = time.perf_counter() - start
    assert received == size, f"{received} bytes of {size}"
    return wall, time.process_time() - own, cpu_seconds(host_pid) - host


def _row_whole(key: str, measure: str, unit: str, higher: bool, values: dict[str, list[float]], plain: str) -> Row:
    cse = series(values["cse"]) if plain == "plain c1" else None  # CSE v2 once, beside max_concurrency=1
    return Row(key, measure, unit, higher, series(values["blobseal"]), series(values[plain]), cse)


# --- 3. memory --------------------------------------------------------------------------------------------


def memory_row(bench: Bench) -> Row:
    plan = bench.plan
    per_download = []
    for _ in range(plan.rounds):
        reset_peak_rss(bench.host_pid)
        idle = bench.host.peak_rss_mib()
        asyncio.run(parallel_downloads(bench))
        per_download.append((bench.host.peak_rss_mib() - idle) / plan.parallel)
    return Row("memory", f"{plan.parallel} parallel {plan.parallel_size // MiB} MiB downloads: host peak RSS "
               "above idle, per download", "MiB", False, series(per_download))


async def parallel_downloads(bench: Bench) -> None:
    limits = httpx.Limits(max_connections=bench.plan.parallel)
    async with httpx.AsyncClient(headers=bench.host.headers, timeout=600, limits=limits) as http:
        async def download(file_id: str) -> None:
            received = 0
            async with http.stream("GET", f"{bench.host.url}/files/{file_id}") as response:
                assert response.status_code == 200
                async for piece in response.aiter_bytes():
                    received += len(piece)
            assert received == bench.plan.parallel_size

        await asyncio.gather(*(download(file_id) for file_id in bench.parallel_ids))


# --- 4. ingest --------------------------------------------------------------------------------------------


def ingest_row(bench: Bench) -> Row:
    plan = bench.plan
    runs = {"blobseal": lambda index: timed(lambda: ingest(bench, index)),
            "plain": lambda index: timed(lambda: asyncio.run(plain_copy(bench, index)))}
    rates: dict[str, list[float]] = {path: [] for path in runs}
    for index in range(plan.rounds):
        for path in in_turn(index, list(runs)):
            rates[path].append(plan.small_files / runs[path](index))
    return Row("ingest", f"{plan.small_files} files of {plan.small // KiB} KiB through ingest (plain: the same drop, "
               f"then a read + write copy, {bench.parallelism} at a time)", "files/s", True, series(rates["blobseal"]),
               series(rates["plain"]))


def ingest_names(index: int, count: int) -> list[str]:
    return small_names(f"perf-ingest-{index}", count)


def ingest(bench: Bench, index: int) -> None:
    """Drop the round's files into the ingest container; return when every one is encrypted."""
    names = ingest_names(index, bench.plan.small_files)
    asyncio.run(upload_small(bench.connection, bench.host.env["INGEST_CONTAINER"], names, bench.plan))
    bench.api.wait_all_encrypted(f"perf-ingest-{index}-", len(names))  # one listing per poll, not one per file


async def plain_copy(bench: Bench, index: int) -> None:
    """The same drop as ``ingest`` (the files land first: both sides pay for it), then a plain read + write
    copy of each at the trigger's parallelism."""
    names = small_names(f"perf-drop-{index}", bench.plan.small_files)
    await upload_small(bench.connection, PLAIN, names, bench.plan)
    async with ContainerClient.from_connection_string(bench.connection, PLAIN) as client:
        async def copy(name: str) -> None:
            data = await (await client.download_blob(name)).readall()
            await client.upload_blob(f"copy-{index}-{name}", data, overwrite=True)

        await concurrently(names, bench.parallelism, copy)


# --- 5. small GETs ----------------------------------------------------------------------------------------


def gets_rows(bench: Bench) -> list[Row]:
    plan = bench.plan
    ids = bench.api.wait_encrypted(ingest_names(0, plan.gets))
    rps, p95 = asyncio.run(gets_rounds(bench, ids, small_names("small", plan.gets)))
    measure = f"{plan.gets} GETs of {plan.small // KiB} KiB files at concurrency {plan.get_concurrency}"
    return [Row("gets_rps", measure, "requests/s", True, series(rps["blobseal"]), series(rps["plain"])),
            Row("gets_p95", f"{measure}, p95 latency", "ms", False, series(p95["blobseal"]), series(p95["plain"]))]


async def gets_rounds(bench: Bench, ids: list[str],
                      names: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    plan = bench.plan
    limits = httpx.Limits(max_connections=plan.get_concurrency, max_keepalive_connections=plan.get_concurrency)
    async with httpx.AsyncClient(headers=bench.host.headers, timeout=60, limits=limits) as http, \
            ContainerClient.from_connection_string(bench.connection, PLAIN) as plain:
        async def blobseal_get(file_id: str) -> None:
            response = await http.get(f"{bench.host.url}/files/{file_id}")
            assert response.status_code == 200 and len(response.content) == plan.small

        async def plain_get(name: str) -> None:
            assert len(await (await plain.download_blob(name)).readall()) == plan.small

        runs: dict[str, Callable[[], Awaitable[tuple[float, list[float]]]]] = {
            "blobseal": lambda: concurrently(ids, plan.get_concurrency, blobseal_get),
            "plain": lambda: concurrently(names, plan.get_concurrency, plain_get)}
        for run in runs.values():
            await run()  # warm up: connections, key caches
        rps: dict[str, list[float]] = {path: [] for path in runs}
        p95: dict[str, list[float]] = {path: [] for path in runs}
        for index in range(plan.rounds):
            for path in in_turn(index, list(runs)):
                wall, latencies = await runs[path]()
                rps[path].append(len(latencies) / wall)
                p95[path].append(percentile([s * 1000 for s in latencies], 95))
    return rps, p95


# --- 6. format CLI ----------------------------------------------------------------------------------------

BARE_LOOP = """
import base64, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

key_file, source, target, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(key_file, "rb") as handle:
    aead = AESGCM(base64.b64decode(handle.read()))
chunk = bytearray(1024 * 1024)
sealed = memoryview(bytearray(len(chunk) // block * (block + 16)))
index = 0
with open(source, "rb") as src, open(target, "wb") as dst:
    while size := src.readinto(chunk):
        filled = 0
        for offset in range(0, size, block):
            piece = memoryview(chunk)[offset : min(offset + block, size)]
            end = filled + len(piece) + 16
            aead.encrypt_into(index.to_bytes(12, "big"), piece, None, sealed[filled:end])
            filled, index = end, index + 1
        dst.write(sealed[:filled])
    dst.flush()
    os.fsync(dst.fileno())
"""


def cli_row(plan: Plan, big_file: Path, scratch: Path) -> Row:
    key_file, output = scratch / "key", scratch / "sealed.bin"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    commands = {
        "blobseal": [sys.executable, "-m", "shared.cli", "encrypt", "--key-file", str(key_file), "--file-id",
                     str(uuid.uuid4()), "--block-size", str(plan.block), str(big_file), str(output)],
        "plain": [sys.executable, "-c", BARE_LOOP, str(key_file), str(big_file), str(output), str(plan.block)],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rates: dict[str, list[float]] = {path: [] for path in commands}
    for index in range(plan.rounds):
        for path in in_turn(index, list(commands)):
            seconds = timed(partial(subprocess.run, commands[path], cwd=ROOT, env=env, check=True,
                                    capture_output=True))
            assert output.stat().st_size > plan.big
            output.unlink()
            rates[path].append(plan.big / MiB / seconds)
    return Row("cli", f"format CLI: encrypt a {plan.big // MiB} MiB file to a file, whole process (plain: "
               "bare AES-GCM loop)", "MiB/s", True, series(rates["blobseal"]), series(rates["plain"]))


# --- the run ----------------------------------------------------------------------------------------------


def trigger_parallelism() -> int:
    """The blob trigger's concurrency, as host.json sets it for the Functions host and the local host."""
    blobs = json.loads((ROOT / "host.json").read_text()).get("extensions", {}).get("blobs", {})
    return int(blobs.get("maxDegreeOfParallelism", 4))


def measure_host(plan: Plan, azurite_connection: str, host: DevHost, big_file: Path) -> list[Row]:
    bench = Bench(plan, host, Blobseal(host), azurite_connection,
                  chunk=int(host.env.get("ENCRYPTION_CHUNK_SIZE_MB", "5")) * MiB,
                  parallelism=trigger_parallelism(), kek=LocalKek())
    try:
        _step("setup", lambda: prepare(bench, big_file))
        return [*_step("1 MiB ranges", lambda: range_rows(bench)),
                *_step("whole file", lambda: whole_file_rows(bench)),
                _step("memory", lambda: memory_row(bench)),
                _step("ingest", lambda: ingest_row(bench)),
                *_step("64 KiB GETs", lambda: gets_rows(bench))]
    finally:
        bench.api.close()


def _step(name: str, step: Callable[[], T]) -> T:
    start = time.monotonic()
    result = step()
    print(f"{name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return result


def run(plan: Plan) -> tuple[list[Row], list[list[str]]]:
    with tempfile.TemporaryDirectory(prefix="blobseal-perf-") as scratch_dir, \
            running_azurite(Path(scratch_dir) / "azurite") as azurite, \
            database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test") as server, \
            scratch_database(server, prefix="blobseal_perf") as database_url:
        scratch = Path(scratch_dir)
        host = DevHost(host_env(azurite, database_url, scratch / "vault"), scratch / "devhost.log").start()
        try:
            rows = measure_host(plan, azurite.connection_string, host, scratch / "big.bin")
            facts = machine(host, database_url)
        finally:
            host.stop()
        rows.append(_step("format CLI", lambda: cli_row(plan, scratch / "big.bin", scratch)))
    return rows, facts


def machine(host: DevHost, database_url: str) -> list[list[str]]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    azurite = json.loads((ROOT / "node_modules" / "azurite" / "package.json").read_text())["version"]
    packages = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("azure-functions-runtime", "azure-functions", "azure-storage-blob",
                                      "cryptography", "httpx", "aiohttp", "uvicorn"))
    return [
        ["date", time.strftime("%Y-%m-%d %H:%M %Z")],
        ["cores (`nproc`)", str(len(os.sched_getaffinity(0)))],
        ["CPU", cpu],
        ["memory", f"{int(memory) / 1024 / 1024:.1f} GiB"],
        ["kernel", f"{platform.system()} {platform.release()}"],
        ["Python", platform.python_version()],
        ["packages", packages],
        ["Azurite, Node", f"{azurite}, {_output(['node', '--version'])}"],
        ["PostgreSQL", asyncio.run(_server_version(database_url))],
        ["blobseal", _output(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])],
        ["host settings", f"ENCRYPTION_CHUNK_SIZE_MB={host.env.get('ENCRYPTION_CHUNK_SIZE_MB', '5')}, "
                          f"blob trigger maxDegreeOfParallelism={trigger_parallelism()} (host.json)"],
    ]


def _output(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


async def _server_version(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def method(plan: Plan) -> list[str]:
    """How each number is taken, for docs/PERFORMANCE.md."""
    return [
        "**Setup.** One real Azurite (from `node_modules`), a scratch PostgreSQL database, and the local host "
        "(`python -m devhost`: the functions of `function_app.py` run by Microsoft's `azure-functions-runtime`, HTTP "
        "forwarded to the runtime's own server, the blob trigger by polling, "
        "the local JSON vault) as a process of its own, started by `localinfra.hostprocess`. The references' "
        "blobs live in the same Azurite.",
        "**Placement.** blobseal runs in the host process and is read over HTTP on loopback by a client (httpx) "
        "in the benchmark process: two hops (client -> host -> Azurite), as for a real client of the API. The "
        "plain SDK and CSE v2 references run in the benchmark process and talk to Azurite directly. The 2 cores "
        "are shared by Azurite, the host and the benchmark; Azurite's own CPU is counted for no path.",
        f"**Rounds.** {plan.rounds} rounds per measure; inside a round the paths take turns to go first. A value "
        "is the median over the rounds, (min-max) the noise; a ratio is blobseal's value over the reference's "
        "in the same round, median over the rounds.",
        f"**1 MiB ranges.** {plan.ranges} ranges per path and round at random offsets (the same offsets for the "
        f"three paths) of a {plan.big // MiB} MiB file: blobseal `GET /api/files/{{id}}` with `Range` (206), the "
        "plain SDK's `download_blob(offset, length)` of a plain blob, the same call with CSE v2 "
        "(`require_encryption`, `encryption_version='2.0'`, a local key-encryption-key with AES key wrap). "
        "Every range is checked against the bytes uploaded.",
        f"**Whole file.** The {plan.big // MiB} MiB file, streamed and counted, nothing kept. The plain SDK "
        "downloads in pieces of the host's transfer chunk (`max_single_get_size` = `max_chunk_get_size` = "
        "`ENCRYPTION_CHUNK_SIZE_MB`; blobseal reads the body as one streamed request); CSE v2 in pieces of "
        "its 4 MiB encryption region (the SDK's default "
        "chunk: a piece that cuts regions would fetch and decrypt them twice), `max_concurrency=1`. "
        "CPU seconds per GB "
        "(10^9 bytes): blobseal = the host process's utime + stime (`/proc/<pid>/stat`) plus the benchmark "
        "process's CPU time; plain and CSE v2 = the benchmark process's CPU time.",
        f"**Memory.** {plan.parallel} downloads of distinct {plan.parallel_size // MiB} MiB files at once over "
        "HTTP, read as fast as the client can. Before each round the host's peak RSS is reset (`clear_refs`), "
        "so the peak (`VmHWM`) after the round minus the RSS at rest before it is that round's cost; divided by "
        f"{plan.parallel}.",
        f"**Ingest.** {plan.small_files} files of {plan.small // KiB} KiB dropped into the ingest container with "
        f"the async SDK ({plan.drop_concurrency} at a time); the clock runs from the first drop until "
        "`GET /api/files?prefix=&status=encrypted` (polled every 0.2 s) lists them all (the drop, polling "
        "delay and the blob trigger's "
        "work included). Reference: the same drop into a plain container, then a read + write copy of each "
        "with the async SDK at the blob trigger's parallelism (`maxDegreeOfParallelism` in host.json); both "
        "sides pay for the files landing (until this run the reference left the drop out: 0.31x then).",
        f"**64 KiB GETs.** {plan.gets} GETs of distinct files at concurrency {plan.get_concurrency}, after one "
        "warm-up pass: blobseal's files from the ingest measure over httpx `AsyncClient` (one connection per "
        "worker, kept alive), plain blobs with the async SDK. Requests/s = requests / wall time; p95 of the "
        "per-request latencies.",
        f"**Format CLI.** After the host stopped: `python -m shared.cli encrypt` of the {plan.big // MiB} MiB "
        "file to a file (page-cached input, fsync of the output), a whole process, against a bare loop in a "
        f"subprocess: AES-GCM `encrypt_into` of {plan.block // KiB} KiB blocks into a reused buffer, 1 MiB reads, "
        "written to a file, fsync at the end. MiB/s of wall time, process start included in both.",
        "**Limits.** Azurite on loopback is not Azure Storage: there is no network latency, so what a real "
        "network adds per request (blobseal's second hop and its extra storage reads per request) is not in "
        "these numbers. The ratios show where blobseal spends time and CPU against the same storage, not what a "
        "client in another region sees.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=Plan.rounds)
    parser.add_argument("--big-mib", type=int, default=Plan.big // MiB, help="size of the range/whole-file file")
    parser.add_argument("--small-files", type=int, default=Plan.small_files, help="files per ingest round")
    args = parser.parse_args()
    plan = Plan(rounds=args.rounds, big=args.big_mib * MiB, small_files=args.small_files,
                gets=min(Plan.gets, args.small_files))
    started, load_before = time.monotonic(), os.getloadavg()[0]
    rows, facts = run(plan)
    facts += [["benchmark run time", f"{(time.monotonic() - started) / 60:.1f} min"],
              ["load average (1 min) before / after the run", f"{load_before:.2f} / {os.getloadavg()[0]:.2f} "
               "(the benchmark itself keeps about 2 busy: other load disturbs the numbers)"]]
    setup = [f"Each value is the median of {plan.rounds} rounds, in brackets the min-max over the rounds "
             "(the noise); each ratio is taken round by round, then the median. blobseal is measured over "
             "HTTP through the local host; the references use the Azure SDK from the benchmark process."]
    print(perf_report.write(rows, setup, facts, method(plan)))


if __name__ == "__main__":
    main()
