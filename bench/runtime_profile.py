"""Where a local host's CPU goes per request, by package: a cProfile dump grouped and compared.

``by_package`` sums the time spent in each function's own body (cProfile's ``tottime``) per package:
site-packages by distribution folder (``azure/storage``, ``aiohttp``, ``uvicorn``,
``azure_functions_runtime`` ...), this project's folders (``shared``, ``devhost``), the standard library
by module (``asyncio`` ...), and C built-ins together. ``compare`` renders two such profiles side by side,
per request, largest difference first: where one host spends what the other does not.
cProfile slows Python code down (both hosts alike): the table says where, not how much in absolute terms.
"""

from __future__ import annotations

import pstats
import sysconfig
from collections import defaultdict
from pathlib import Path

__all__ = ["by_package", "compare"]

ROOT = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
TWO_LEVELS = ("azure", "azurefunctions", "google")  # namespace packages: name the sub-package


def package_of(filename: str, app_root: Path) -> str:
    if filename.startswith(("~", "<")):
        return "built-ins (C)"
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1:]
        depth = 2 if rest and rest[0] in TWO_LEVELS and len(rest) > 2 else 1
        return "/".join(rest[:depth]).removesuffix(".py")
    for root in (app_root.resolve(), ROOT):
        if path.is_relative_to(root):
            return "app: " + path.relative_to(root).parts[0].removesuffix(".py")
    if path.is_relative_to(STDLIB):
        return "stdlib: " + path.relative_to(STDLIB).parts[0].removesuffix(".py")
    return "other"


def by_package(dump: Path, app_root: Path) -> dict[str, float]:
    """Seconds of own time per package in the cProfile dump ``dump``."""
    totals: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(str(dump))
    for (filename, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        totals[package_of(filename, app_root)] += own
    return dict(totals)


def compare(new: dict[str, float], old: dict[str, float], requests: int, rows: int = 14) -> str:
    """A markdown table: ms per request by package for both hosts, largest difference first."""
    names = sorted(set(new) | set(old), key=lambda n: -abs(new.get(n, 0.0) - old.get(n, 0.0)))
    lines = ["| package | new, ms per GET | old, ms per GET | difference |", "|---|---|---|---|"]
    for name in names[:rows]:
        a, b = new.get(name, 0.0) * 1000 / requests, old.get(name, 0.0) * 1000 / requests
        lines.append(f"| `{name}` | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    total_new, total_old = sum(new.values()) * 1000 / requests, sum(old.values()) * 1000 / requests
    lines.append(f"| all (under cProfile) | {total_new:.3f} | {total_old:.3f} | {total_new - total_old:+.3f} |")
    return "\n".join(lines)
