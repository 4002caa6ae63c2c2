"""``python -m bench.access_bench``: what roles and the tamper-evident access log cost the read path.

Two apps run side by side in one run, on the same local host (this tree's ``devhost/``, Microsoft's
runtime), the same Azurite and PostgreSQL server (each with its own containers, database and vault):

- new: this tree (every request's caller and role checked; the access log chained per writer, HMAC per
  row, group-committed; signed digests by the reconciler);
- old: the same tree with ``shared/``, ``function_app.py`` and ``host.json`` of the last commit before
  roles and the chained log (found in git history; ``--reference`` overrides): one plain row per access.

Per round, in alternating order:

- 64 KiB GETs per second: ``gets`` GETs of distinct 64 KiB files at concurrency 32 (every one a logged
  access), wall time;
- 1 MiB range p50: ``ranges`` random 1 MiB ranges of a 64 MiB file, one at a time.

Writes ``bench/results/access.md``: medians (min-max) over the rounds, the ratio round by round, and a
verdict against the issue's bound (within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.perf_bench import concurrently
from bench.runtime_bench import Plan, Side, prepare, range_p50, started
from localinfra.azurite import running_azurite
from localinfra.hostprocess import ROOT
from localinfra.postgres import database

RESULTS = ROOT / "bench" / "results" / "access.md"
BOUND = 0.10
APP_PATHS = ("shared", "function_app.py", "host.json")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def reference_commit(explicit: str | None) -> str:
    """The last commit before the access boundary (``shared/access.py``) came in."""
    if explicit:
        return explicit
    added = _git("log", "--diff-filter=A", "--format=%H", "-1", "--", "shared/access.py")
    return _git("rev-parse", f"{added}^")


def reference_tree(commit: str, target: Path) -> Path:
    """This tree's tracked files, with the app (``shared/``, ``function_app.py``, ``host.json``) of ``commit``."""
    for name in _git("ls-files").splitlines():
        source = ROOT / name
        if source.is_file() and not name.startswith((*APP_PATHS, "tests/", "docs/", "infra/", "bench/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    archive = subprocess.run(["git", "archive", commit, *APP_PATHS], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def gets_per_second(side: Side, plan: Plan, index: int = 0) -> float:
    async def run() -> float:
        limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
        async with httpx.AsyncClient(headers=side.host.headers, timeout=60, limits=limits) as http:
            async def get(file_id: str) -> None:
                response = await http.get(f"{side.host.url}/files/{file_id}")
                assert response.status_code == 200 and len(response.content) == 64 * 1024

            started_at = time.perf_counter()
            await concurrently(side.get_ids, plan.concurrency, get)
            return len(side.get_ids) / (time.perf_counter() - started_at)

    return asyncio.run(run())


MEASURES = {"gets": ("64 KiB GETs per second", gets_per_second, True),
            "range_p50": ("1 MiB range p50 (ms)", range_p50, False)}


def measure(sides: list[Side], plan: Plan) -> None:
    for side in sides:  # warm up: connections, key caches, the runtime's first invocations
        gets_per_second(side, plan)
        range_p50(side, plan, -1)
    for index in range(plan.rounds):
        for key, (_, run, _) in MEASURES.items():
            for side in (sides if index % 2 == 0 else sides[::-1]):
                side.record(key, run(side, plan, index))
        print(f"round {index + 1}/{plan.rounds} done", file=sys.stderr, flush=True)


def report(new: Side, old: Side, plan: Plan, reference: str) -> str:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    rows = []
    for key, (label, _, higher_is_better) in MEASURES.items():
        ratios = [n / o for n, o in zip(new.readings[key], old.readings[key], strict=True)]
        ratio = statistics.median(ratios)
        worse = (1 - ratio) if higher_is_better else (ratio - 1)
        verdict = "within 10%" if worse <= BOUND else f"{worse * 100:.0f}% worse than before"
        rows.append(f"| {label} | {spread(new.readings[key])} | {spread(old.readings[key])} | {spread(ratios)}x | "
                    f"{verdict} |")
    return "\n".join([
        f"# Roles and the tamper-evident access log against the app before them ({time.strftime('%Y-%m-%d')})", "",
        "<!-- generated by `python -m bench.access_bench` (make bench) -->", "",
        f"One run, both apps at once under this tree's local host (Microsoft's runtime), on one Azurite and one "
        f"PostgreSQL server; {plan.rounds} rounds in alternating order; medians (min-max) over the rounds; the ratio "
        f"is taken round by round. Old: `shared/`, `function_app.py` and `host.json` of `{reference[:10]}`. "
        f"{plan.gets} GETs of distinct 64 KiB files at concurrency {plan.concurrency} (each one an access log row); "
        f"{plan.ranges} random 1 MiB ranges of a {plan.big // (1024 * 1024)} MiB file, one at a time. "
        f"{os.cpu_count()} cores, shared with nothing else the benchmark starts.", "",
        "| measure | new (roles, chained log) | old (one plain row) | new / old | verdict (bound 10%) |",
        "|---|---|---|---|---|", *rows, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=Plan.rounds)
    parser.add_argument("--reference", help="the commit whose app is the old one (default: found in git)")
    args = parser.parse_args(argv)
    plan, reference = Plan(rounds=args.rounds), reference_commit(args.reference)
    with tempfile.TemporaryDirectory(prefix="blobseal-access-") as scratch_dir, ExitStack() as stack:
        work = Path(scratch_dir)
        azurite = stack.enter_context(running_azurite(work / "azurite"))
        server = stack.enter_context(database(os.environ.get("DATABASE_URL"), ROOT / ".dev" / "pgdata-test"))
        old_root = reference_tree(reference, work / "old")
        new = stack.enter_context(started("new", azurite, server, work, ROOT))
        old = stack.enter_context(started("old", azurite, server, work, old_root))
        for side in (new, old):
            prepare(side, plan)
        measure([new, old], plan)
        text = report(new, old, plan, reference)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
