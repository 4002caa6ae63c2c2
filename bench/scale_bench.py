"""The scale simulation of issue 10: files/s and Key Vault calls per file, per key mode, at 1, 4 and 8 workers.

Run ``make scale`` (or ``.venv/bin/python -m bench.scale_bench``; PostgreSQL as for ``make test``;
about six minutes on 2 cores). For each key mode and worker count, on a fresh database, fresh
containers and a fresh Key Vault stand-in:

1. ``--files`` small uploads (4 KiB) are dropped into the ingest container (not timed);
2. N worker processes (``bench.scale_worker``: the real ingest code, built by the real bootstrap,
   the Azure vault and KEK adapters on the real SDK) ingest them, ``--concurrency`` at a time
   each, against the stand-in enforcing Key Vault's published limits scaled down by ``--scale``
   (429 + Retry-After past them): secret creates 300 per 10 s, key operations (RSA 3072,
   software) 1,000 per 10 s; they reach Azurite and PostgreSQL through proxies adding
   ``--storage-rtt-ms`` (5) and ``--db-rtt-ms`` (1) round trips, Azure-like (assumed, not measured);
3. as many fresh processes (cold caches) download every file and compare its SHA-256.

Counted: files/s (files over the wall time from "go" to the last worker done), every request the
stand-in served in each phase (429s apart), uploads not encrypted, rows in ``ingest_failures``
(poisoned), downloads not byte-identical, database commits, the machine's CPU busy and the
workers' own CPU. Writes ``bench/results/scale.md`` and the measured
section of ``docs/SCALE.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from azure.storage.blob.aio import BlobServiceClient

from bench import table
from localinfra.azurite import Azurite, running_azurite
from localinfra.postgres import database, scratch_database
from shared.db import migrate
from shared.vault.azure import RetryOptions, TransportOptions
from shared.vault.azure_kek import AzureKeyWrapper
from shared.vault.azure_signer import AzureSigner
from tests.support.keyvault_server import FakeCredential, KeyVaultServer, make_tls_material
from tests.support.pg_proxy import PgProxy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "scale.md"
SCALE_DOC = ROOT / "docs" / "SCALE.md"
BEGIN, END = "<!-- scale-bench:begin -->", "<!-- scale-bench:end -->"

# Key Vault's published limits per vault and region, per 10 s (docs/SCALE.md cites them).
SECRET_CREATES, KEY_OPERATIONS_RSA3072 = 300, 1000
WINDOW = 10.0


@dataclass
class Run:
    mode: str
    workers: int
    concurrency: int
    files: int
    seconds: float
    outcomes: dict[str, int]
    poisoned: int
    ingest_calls: int
    ingest_429: int
    download_calls: int
    downloads_ok: int
    download_seconds: float
    commits: int = 0
    cpu_busy: float = 0.0  # share of the machine's CPU time busy during the ingest phase
    worker_cpu: float = 0.0  # CPU seconds of the worker processes themselves during the ingest phase

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds


def settings_env(azurite: Azurite, database_url: str, mode: str, suffix: str) -> dict[str, str]:
    return {"DataStorage": azurite.connection_string, "DATABASE_URL": database_url, "KEY_MODE": mode,
            "INGEST_CONTAINER": f"scale-ingest-{suffix}", "PROTECTED_CONTAINER": f"scale-protected-{suffix}",
            "DATABASE_POOL_MAX": "4", "INGEST_RETRY_SECONDS": "600", "KEY_VAULT_CACHE_ENABLED": "true"}


async def drop_files(azurite: Azurite, container: str, count: int) -> dict[str, str]:
    """``count`` 4 KiB uploads; file id -> SHA-256."""
    digests: dict[str, str] = {}
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        client = service.get_container_client(container)
        await client.create_container()
        slots = asyncio.Semaphore(16)

        async def one() -> None:
            file_id, data = str(uuid.uuid4()), os.urandom(4096)
            async with slots:
                await client.upload_blob(f"{file_id}.bin", data)
            digests[file_id] = hashlib.sha256(data).hexdigest()

        await asyncio.gather(*(one() for _ in range(count)))
    return digests


async def run_workers(jobs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """Start one process per job, say go when all are ready; wall seconds and their results."""
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.scale_worker", json.dumps(job), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE) for job in jobs]
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"a worker did not start: {line!r}")
    started = time.time()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    results = []
    for proc in procs:
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed with exit code {proc.returncode}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return max(r["finished"] for r in results) - started, results


def split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


@dataclass(frozen=True)
class Network:
    """Round trips added between the workers and storage / the database (Azure's are not loopback's)."""

    storage_rtt_ms: float
    db_rtt_ms: float


@asynccontextmanager
async def network(azurite: Azurite, database_url: str, net: Network) -> AsyncIterator[tuple[Azurite, str]]:
    """Azurite and the database as the workers reach them: through proxies adding half the round trip
    each way (none at 0 ms)."""
    storage = PgProxy("127.0.0.1", azurite.blob_port, delay=net.storage_rtt_ms / 2000)
    db = PgProxy.for_url(database_url, delay=net.db_rtt_ms / 2000)
    for proxy in (storage, db):
        await proxy.start()
    try:
        yield Azurite(storage.port, azurite.queue_port, None), db.url(database_url)
    finally:
        for proxy in (storage, db):
            await proxy.close()


async def one_run(azurite: Azurite, database_url: str, mode: str, workers: int, files: int, concurrency: int,
                  scale: float, workdir: Path, net: Network) -> Run:
    tls = workdir / f"tls-{mode}-{workers}-{concurrency}"
    tls.mkdir()
    server = KeyVaultServer(make_tls_material(tls))
    await server.start()
    try:
        server.limit_creates(max(1, round(SECRET_CREATES * scale)), WINDOW)
        server.limit_key_operations(max(1, round(KEY_OPERATIONS_RSA3072 * scale)), WINDOW)
        suffix = uuid.uuid4().hex[:8]
        async with network(azurite, database_url, net) as (reached, reached_url):
            return await _measure(server, azurite, database_url, settings_env(reached, reached_url, mode, suffix),
                                  mode, workers, files, concurrency)
    finally:
        await server.stop()


async def _measure(server: KeyVaultServer, azurite: Azurite, database_url: str, env: dict[str, str], mode: str,
                   workers: int, files: int, concurrency: int) -> Run:
    """Ingest, then download cold, in worker processes; what the vault, the database and the CPU saw."""
    if mode == "envelope":  # the KEK and the signing key exist before the app runs (infra/ deploys them)
        options: dict[str, Any] = {"retry": RetryOptions(deadline=60), "transport": TransportOptions(
            verify_challenge_resource=False, connection_verify=str(server.tls.ca_file))}
        for key in (AzureKeyWrapper(server.url, FakeCredential(), "blobseal-kek", **options),
                    AzureSigner(server.url, FakeCredential(), "blobseal-signing", **options)):
            await key.create()
            await key.close()
    digests = await drop_files(azurite, env["INGEST_CONTAINER"], files)
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        await service.create_container(env["PROTECTED_CONTAINER"])
    base = {"settings": env, "vault_url": server.url, "ca_file": str(server.tls.ca_file),
            "concurrency": concurrency}
    names = [f"{i}.bin" for i in digests]
    before, throttled_before, commits_before = len(server.requests), server.throttled, await commits(database_url)
    cpu_before = cpu_times()
    seconds, ingested = await run_workers([base | {"phase": "ingest", "names": part}
                                           for part in split(names, workers)])
    cpu_busy = busy_share(cpu_before, cpu_times())
    ingest_calls = answered(server, before)
    ingest_429 = server.throttled - throttled_before
    outcomes: dict[str, int] = {}
    for result in ingested:
        for status, count in result["outcomes"].items():
            outcomes[status] = outcomes.get(status, 0) + count
    poisoned = await count_failures(database_url)
    worker_cpu = sum(r["cpu_seconds"] for r in ingested)
    ingest_commits = await commits(database_url) - commits_before
    before = len(server.requests)
    ids = list(digests)
    download_seconds, downloaded = await run_workers([
        base | {"phase": "download", "files": {i: digests[i] for i in part}} for part in split(ids, workers)])
    download_calls = answered(server, before)
    ok = sum(r["downloaded"] - len(r["mismatched"]) for r in downloaded)
    return Run(mode, workers, concurrency, files, seconds, outcomes, poisoned, ingest_calls, ingest_429,
               download_calls, ok, download_seconds, ingest_commits, cpu_busy, worker_cpu)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def answered(server: KeyVaultServer, since: int) -> int:
    """Requests the vault served since the ``since``-th: 429s (counted apart) and the 401 challenge that
    opens each client's first requests (no operation, not throttled) left out."""
    return sum(1 for r in server.requests[since:] if r.status not in (401, 429))


async def count_failures(database_url: str) -> int:
    return await _scalar(database_url, "SELECT count(*) FROM ingest_failures")


async def commits(database_url: str) -> int:
    """Transactions committed in the database so far (the workers' statistics are flushed when they exit)."""
    return await _scalar(database_url, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")


async def _scalar(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def report(runs: list[Run], args: argparse.Namespace) -> str:
    secret = {r.workers: r.files_per_second for r in runs if r.mode == "secret"}
    rows = [[r.mode, str(r.workers), str(r.concurrency), str(r.files), f"{r.seconds:.1f}",
             f"{r.files_per_second:.1f}",
             f"{r.files_per_second / secret[r.workers]:.1f}x" if r.workers in secret else "-",
             f"{r.ingest_calls * 1000 / r.files:.0f}", str(r.ingest_429),
             str(r.files - r.outcomes.get("encrypted", 0)), str(r.poisoned),
             f"{r.downloads_ok}/{r.files}", f"{r.download_calls * 1000 / r.files:.0f}",
             f"{r.commits / r.files:.1f}", f"{r.cpu_busy:.0%}", f"{r.worker_cpu * 1000 / r.files:.1f}"]
            for r in runs]
    limit = (f"secret creates {round(SECRET_CREATES * args.scale)} and key operations "
             f"{round(KEY_OPERATIONS_RSA3072 * args.scale)} per {WINDOW:.0f} s (Key Vault's {SECRET_CREATES} and "
             f"{KEY_OPERATIONS_RSA3072} scaled by {args.scale:g})")
    return "\n".join([
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `make scale` "
        f"(`python -m bench.scale_bench --files-secret {args.files_secret} --files-envelope {args.files_envelope} "
        f"--scale {args.scale:g} --storage-rtt-ms {args.storage_rtt_ms:g} --db-rtt-ms {args.db_rtt_ms:g}`), "
        f"{os.cpu_count()} cores. Vault limits enforced: {limit}. Round trips added by proxies (Azure's are not "
        f"loopback's): storage {args.storage_rtt_ms:g} ms, database {args.db_rtt_ms:g} ms. Each worker is one "
        f"process with uploads in flight as the table says ({args.concurrency}: host.json's "
        f"maxDegreeOfParallelism; envelope mode also at {args.envelope_serial}, one upload at a time); 4 KiB files.",
        "",
        table(["mode", "workers", "in flight per worker", "files", "seconds", "files/s", "vs secret",
               "KV calls per 1,000 ingests", "429s", "not encrypted", "poisoned", "downloads byte-identical",
               "KV calls per 1,000 cold downloads", "DB commits per ingest", "CPU busy (ingest)",
               "worker CPU ms per ingest"], rows),
    ])


def write(text: str) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text + "\n")
    doc = SCALE_DOC.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        SCALE_DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(mode, uploads in flight per worker) series to run, each at every worker count."""
    series = [(mode, args.concurrency) for mode in args.modes.split(",")]
    if args.envelope_serial and "envelope" in args.modes.split(","):
        series.append(("envelope", args.envelope_serial))
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--modes", default="secret,envelope")
    parser.add_argument("--files-secret", type=int, default=90, help="uploads per secret-mode run")
    parser.add_argument("--files-envelope", type=int, default=600, help="uploads per envelope-mode run")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="uploads in flight per worker (host.json's blobs maxDegreeOfParallelism)")
    parser.add_argument("--envelope-serial", type=int, default=1,
                        help="envelope mode again with this many uploads in flight per worker (0: not)")
    parser.add_argument("--scale", type=float, default=0.05, help="Key Vault's limits times this")
    parser.add_argument("--storage-rtt-ms", type=float, default=5.0,
                        help="round trip added between the workers and Azurite (0: loopback)")
    parser.add_argument("--db-rtt-ms", type=float, default=1.0,
                        help="round trip added between the workers and PostgreSQL (0: loopback)")
    args = parser.parse_args()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp, running_azurite(Path(tmp) / "azurite") as azurite, \
            database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test") as server_url:
        for mode, concurrency in plan(args):
            for workers in map(int, args.workers.split(",")):
                with scratch_database(server_url, "blobseal_scale") as url:
                    asyncio.run(migrate(url))
                    files = args.files_secret if mode == "secret" else args.files_envelope
                    run = asyncio.run(one_run(azurite, url, mode, workers, files, concurrency, args.scale, Path(tmp),
                                              Network(args.storage_rtt_ms, args.db_rtt_ms)))
                runs.append(run)
                print(json.dumps(run.__dict__ | {"files_per_second": round(run.files_per_second, 2)}), flush=True)
    text = report(runs, args)
    print(text)
    write(text)


if __name__ == "__main__":
    main()
