"""Benchmark of the local key vault and the key cache at 1,000 and 100,000 entries.

Run ``.venv/bin/python -m bench.vault_bench`` (``--sizes 1000,100000``, ``--dir`` for the
scratch folder, default a fresh temp folder removed afterwards). Prints one row per size:

- ``load``: first ``get_secret`` of a fresh vault over an existing file (parse included);
- ``get``: a ``get_secret`` of the local vault, uncached, file unchanged since the last read;
- ``cached get``: the same through ``CachedKeyVault`` once warm;
- ``set``: a new name; ``update``: a new version of an existing name;
- ``set after foreign write``: a set right after another vault instance (as another process
  would) changed the file, so it must re-read it first.

Times are medians over repeated runs (each measured for a bounded time budget).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench import table
from shared.vault.cache import CachedKeyVault
from shared.vault.local import LocalJsonVault

BUDGET_SECONDS = 1.5
RESULTS = Path(__file__).with_name("results") / "vault.md"


@dataclass(frozen=True)
class Row:
    entries: int
    file_mb: float
    load_ms: float
    get_us: float
    cached_get_us: float
    set_ms: float
    update_ms: float
    foreign_set_ms: float


def make_file(folder: Path, entries: int) -> list[str]:
    """A spec-shaped file (as ``json.dumps(indent=2)``, like the spec's example)."""
    folder.mkdir(mode=0o700, parents=True)
    names = [f"file-{uuid.uuid4()}" for _ in range(entries)]
    data = {
        name: {
            "value": base64.b64encode(os.urandom(32)).decode(),
            "content_type": "application/octet-stream",
            "enabled": True,
            "created_on": "2025-02-27T00:00:00Z",
            "expires_on": "2025-03-27T00:00:00Z",
            "version": uuid.uuid4().hex,
        }
        for name in names
    }
    (folder / "secrets.json").write_text(json.dumps(data, indent=2))
    return names


async def median_seconds(operation: Callable[[int], Awaitable[object]], *, at_least: int = 3,
                         at_most: int = 2000) -> float:
    """Median duration of ``operation(i)``, run until the budget is spent (within bounds)."""
    samples: list[float] = []
    deadline = time.perf_counter() + BUDGET_SECONDS
    while len(samples) < at_most and (len(samples) < at_least or time.perf_counter() < deadline):
        start = time.perf_counter()
        await operation(len(samples))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def measure(folder: Path, entries: int) -> Row:
    names = make_file(folder, entries)
    file_mb = (folder / "secrets.json").stat().st_size / 1e6

    async def load(i: int) -> object:
        return await LocalJsonVault(folder).get_secret(names[i % entries])

    vault = LocalJsonVault(folder)
    cached = CachedKeyVault(vault, ttl_seconds=3600, max_entries=10_000)
    other = LocalJsonVault(folder)
    load_s = await median_seconds(load, at_most=5)
    get_s = await median_seconds(lambda i: vault.get_secret(names[(i * 7919) % entries]))
    await cached.get_secret(names[0])
    cached_s = await median_seconds(lambda i: cached.get_secret(names[0]), at_least=1000)
    set_s = await median_seconds(lambda i: vault.set_secret(f"file-new-{i}", os.urandom(32)), at_most=50)
    update_s = await median_seconds(lambda i: vault.set_secret(names[i], os.urandom(32)), at_most=50)

    foreign_s = await set_after_foreign_write(vault, other)
    return Row(entries, file_mb, load_s * 1e3, get_s * 1e6, cached_s * 1e6, set_s * 1e3, update_s * 1e3,
               foreign_s * 1e3)


async def set_after_foreign_write(vault: LocalJsonVault, other: LocalJsonVault, rounds: int = 5) -> float:
    """Median time of a set on ``vault`` right after ``other`` changed the file (untimed)."""
    samples = []
    for i in range(rounds):
        await other.set_secret(f"file-other-{i}", os.urandom(32))
        start = time.perf_counter()
        await vault.set_secret(f"file-mine-{i}", os.urandom(32))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(rows: list[Row]) -> str:
    header = ["entries", "file MB", "load ms", "get µs", "cached get µs", "set ms", "update ms",
              "set after foreign write ms"]
    cells = [[f"{row.entries:,}", f"{row.file_mb:.1f}", f"{row.load_ms:.1f}", f"{row.get_us:.1f}",
              f"{row.cached_get_us:.2f}", f"{row.set_ms:.1f}", f"{row.update_ms:.1f}", f"{row.foreign_set_ms:.1f}"]
             for row in rows]
    return f"# Local vault benchmark ({time.strftime('%Y-%m-%d')})\n\n" + table(header, cells)


async def run(sizes: list[int], scratch: Path) -> list[Row]:
    rows = []
    for entries in sizes:
        folder = scratch / f"vault-{entries}"
        rows.append(await measure(folder, entries))
        shutil.rmtree(folder)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="comma-separated entry counts")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a new temp folder)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="vault-bench-"))
    try:
        text = report(asyncio.run(run(sizes, scratch)))
        print(text)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text + "\n")
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
