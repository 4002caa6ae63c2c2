"""``python -m bench.runtime_bench``: the local host on Microsoft's runtime against the host it replaced.

Two hosts run side by side in one run, on the same Azurite and PostgreSQL server (each with its own
containers, database and vault), the same Python and packages, the same ``shared/`` and
``function_app.py``:

- new: this tree's ``python -m devhost`` (the functions run inside ``azure-functions-runtime``; HTTP
  goes through the host's front to the runtime's own server);
- old: a copy of this tree whose ``devhost/`` is the one of the last commit before the move (it
  imported ``function_app`` and called the functions under its own uvicorn app), found in git history
  (``--reference`` overrides).

Per round, each measure runs on both hosts, in alternating order:

- host CPU per 64 KiB GET: ``gets`` GETs of 64 KiB files at concurrency 32; the host process's
  utime + stime over the GETs, divided by their number;
- host CPU per small ingested file: ``files`` files of 64 KiB dropped into ingest, until every one is
  encrypted; host CPU over that time (its blob polling included) per file;
- 1 MiB range p50: ``ranges`` random 1 MiB ranges of a 64 MiB file, one at a time.

Writes ``bench/results/runtime.md``: medians (min-max) over the rounds, the per-round ratio new/old and a
verdict against 1.10 (the issue's "within 10%"). ``--profile`` runs one more GET round on the new host
under cProfile and lists where its time goes (the cost the runtime path adds is found there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient
from azure.storage.blob.aio import ContainerClient

from bench.perf_bench import concurrently, small_names
from bench.perf_paths import Blobseal, cpu_seconds, expected
from bench.perf_report import percentile
from bench.runtime_profile import by_package, compare
from localinfra.azurite import Azurite, running_azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from localinfra.postgres import database, scratch_database

KiB, MiB = 1024, 1024 * 1024
RESULTS = ROOT / "bench" / "results" / "runtime.md"
BOUND = 1.10


@dataclass(frozen=True)
class Plan:
    rounds: int = 5
    gets: int = 200
    concurrency: int = 32
    files: int = 100
    ranges: int = 40
    big: int = 64 * MiB


@dataclass
class Side:
    """One host under test and what it was given."""

    name: str
    host: DevHost
    api: Blobseal
    get_ids: list[str] = field(default_factory=list)
    big_id: str = ""
    readings: dict[str, list[float]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.host.process is not None
        return self.host.process.pid

    def record(self, measure: str, value: float) -> None:
        self.readings.setdefault(measure, []).append(value)


def reference_commit(explicit: str | None) -> str:
    """The last commit whose devhost served the functions itself (devhost/http.py, removed by the move)."""
    if explicit:
        return explicit
    removed = _git("rev-list", "-1", "HEAD", "--", "devhost/http.py")
    return _git("rev-parse", f"{removed}^")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def reference_tree(commit: str, target: Path, paths: tuple[str, ...] = ("devhost",)) -> Path:
    """This tree's tracked files, with ``paths`` (folders or files) as they were at ``commit``."""
    for name in _git("ls-files").splitlines():
        source = ROOT / name
        if source.is_file() and not name.startswith((*paths, "tests/", "docs/", "infra/", "bench/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    archive = subprocess.run(["git", "archive", commit, *paths], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@contextmanager
def two_sides(old_root: Callable[[Path], Path], plan: Plan) -> Iterator[tuple[Side, Side, Path]]:
    """This tree ("new") and ``old_root(work)`` ("old") running at once on one Azurite and one PostgreSQL server,
    each with its GET files and big file in place."""
    with tempfile.TemporaryDirectory(prefix="blobseal-bench-") as scratch_dir, ExitStack() as stack:
        work = Path(scratch_dir)
        azurite = stack.enter_context(running_azurite(work / "azurite"))
        server = stack.enter_context(database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test"))
        old_app = old_root(work / "old")
        new = stack.enter_context(started("new", azurite, server, work, ROOT))
        old = stack.enter_context(started("old", azurite, server, work, old_app))
        for side in (new, old):
            prepare(side, plan)
        yield new, old, work


@contextmanager
def started(name: str, azurite: Azurite, server: str, work: Path, app_root: Path) -> Iterator[Side]:
    with scratch_database(server, prefix=f"blobseal_rt_{name}") as database_url:
        env = host_env(azurite, database_url, work / f"vault-{name}")
        storage = BlobServiceClient.from_connection_string(azurite.connection_string)
        for container in (env["INGEST_CONTAINER"], env["PROTECTED_CONTAINER"]):
            storage.create_container(container)
        host = DevHost(env, work / f"{name}.log", app_root=app_root).start()
        side = Side(name, host, Blobseal(host))
        try:
            yield side
        finally:
            side.api.close()
            host.stop()


def prepare(side: Side, plan: Plan) -> None:
    """The GET files (through ingest, as users drop them) and the big file for ranges (POSTed)."""
    names = small_names(f"get-{side.name}", plan.gets)
    asyncio.run(_drop(side, names))
    side.get_ids = side.api.wait_encrypted(names)
    side.big_id = side.api.upload("big.bin", plan.big)


async def _drop(side: Side, names: list[str]) -> None:
    data = bytes(random.Random(len(names)).randbytes(64 * KiB))
    async with ContainerClient.from_connection_string(side.host.env["DataStorage"],
                                                      side.host.env["INGEST_CONTAINER"]) as client:
        await concurrently(names, 32, lambda name: client.upload_blob(name, data, overwrite=True))


def cpu_per_get(side: Side, plan: Plan) -> float:
    async def run() -> None:
        limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
        async with httpx.AsyncClient(headers=side.host.headers, timeout=60, limits=limits) as http:
            async def get(file_id: str) -> None:
                response = await http.get(f"{side.host.url}/files/{file_id}")
                assert response.status_code == 200 and len(response.content) == 64 * KiB

            await concurrently(side.get_ids, plan.concurrency, get)

    before = cpu_seconds(side.pid)
    asyncio.run(run())
    return (cpu_seconds(side.pid) - before) / plan.gets * 1000


def cpu_per_ingest(side: Side, plan: Plan, index: int) -> float:
    names = small_names(f"ingest-{side.name}-{index}", plan.files)
    before = cpu_seconds(side.pid)
    asyncio.run(_drop(side, names))
    side.api.wait_all_encrypted(f"ingest-{side.name}-{index}-", len(names))
    return (cpu_seconds(side.pid) - before) / plan.files * 1000


def range_p50(side: Side, plan: Plan, index: int) -> float:
    rng, latencies = random.Random(index), []
    for _ in range(plan.ranges):
        offset = rng.randrange(0, plan.big - MiB)
        start = time.perf_counter()
        data = side.api.get_range(side.big_id, offset, MiB)
        latencies.append((time.perf_counter() - start) * 1000)
        assert data == expected(offset, MiB)
    return percentile(latencies, 50)


MEASURES: dict[str, tuple[str, Callable[[Side, Plan, int], float]]] = {
    "get_cpu": ("host CPU per 64 KiB GET (ms)", lambda side, plan, _: cpu_per_get(side, plan)),
    "ingest_cpu": ("host CPU per small ingested file (ms)", cpu_per_ingest),
    "range_p50": ("1 MiB range p50 (ms)", range_p50),
}


def measure(sides: list[Side], plan: Plan) -> None:
    for side in sides:  # warm up: connections, key caches, the runtime's first invocations
        cpu_per_get(side, plan)
        range_p50(side, plan, -1)
    for index in range(plan.rounds):
        for key, (_, run) in MEASURES.items():
            for side in (sides if index % 2 == 0 else sides[::-1]):
                side.record(key, run(side, plan, index))
        print(f"round {index + 1}/{plan.rounds} done", file=sys.stderr, flush=True)


def profiles(sides: list[Side], plan: Plan, work: Path) -> str:
    """Each host once more, under cProfile, on the same deployment: one warm-up and one GET round."""
    found = []
    for side in sides:
        dump = work / f"{side.name}.prof"
        host = DevHost(side.host.env, work / f"{side.name}-profiled.log", app_root=side.host.app_root,
                       launcher=(str(ROOT / "bench" / "cpu_profile.py"), str(dump))).start()
        profiled = Side(side.name, host, Blobseal(host), get_ids=side.get_ids)
        try:
            cpu_per_get(profiled, plan)  # warm-up, in the profile too (both hosts alike)
            cpu_per_get(profiled, plan)
        finally:
            profiled.api.close()
            host.stop(timeout=60)
        found.append(by_package(dump, side.host.app_root))
    return "\n".join([
        "## Where the host's time goes (cProfile, own time per package, per GET)", "",
        f"Each host started once more under cProfile timed with CPU time (`bench/cpu_profile.py`) on the same "
        f"deployment and given {2 * plan.gets} GETs (a warm-up round and a measured one, both in the profile). "
        "Own time per package: C built-ins include the socket calls. cProfile's overhead inflates every Python "
        "call alike, so the ranking and the differences are what count.", "",
        compare(found[0], found[1], 2 * plan.gets)])


def report(new: Side, old: Side, plan: Plan, reference: str, profile: str) -> str:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    rows = []
    for key, (label, _) in MEASURES.items():
        ratios = [n / o for n, o in zip(new.readings[key], old.readings[key], strict=True)]
        ratio = statistics.median(ratios)
        verdict = "within 10%" if ratio <= BOUND else f"{(ratio - 1) * 100:.0f}% over the old host"
        rows.append(f"| {label} | {spread(new.readings[key])} | {spread(old.readings[key])} | "
                    f"{spread(ratios)}x | {verdict} |")
    return "\n".join([
        f"# The local host on azure-functions-runtime against the one it replaced ({time.strftime('%Y-%m-%d')})",
        "", "<!-- generated by `python -m bench.runtime_bench` (make bench) -->", "",
        f"One run, both hosts at once on one Azurite and one PostgreSQL server, {plan.rounds} rounds in alternating "
        f"order; medians (min-max) over the rounds; the ratio is taken round by round. Old: `devhost/` of "
        f"`{reference[:10]}`, on this tree's `shared/` and `function_app.py`. {plan.gets} GETs of 64 KiB files "
        f"at concurrency {plan.concurrency}; {plan.files} files of 64 KiB dropped into ingest per round; "
        f"{plan.ranges} random 1 MiB ranges of a {plan.big // MiB} MiB file. Host CPU = the host process's "
        "utime + stime (`/proc/<pid>/stat`).", "",
        "| measure | new (runtime) | old (own host) | new / old | verdict (bound 1.10) |", "|---|---|---|---|---|",
        *rows, "", profile, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=Plan.rounds)
    parser.add_argument("--reference", help="the commit whose devhost/ is the old host (default: found in git)")
    parser.add_argument("--profile", action="store_true", help="also profile the new host over one GET round")
    args = parser.parse_args(argv)
    plan, reference = Plan(rounds=args.rounds), reference_commit(args.reference)
    with two_sides(lambda target: reference_tree(reference, target), plan) as (new, old, work):
        measure([new, old], plan)
        profile = profiles([new, old], plan, work) if args.profile else ""
        text = report(new, old, plan, reference, profile)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
