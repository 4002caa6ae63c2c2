"""Numbers to results for ``bench.perf_bench``: rounds, ratios, goals and their verdicts, the table,
the chart (``bench/results/perf.png``) and the two documents (``bench/results/perf.md``,
``docs/PERFORMANCE.md``, both regenerated whole on every run)."""

from __future__ import annotations

import operator
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from bench import table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "PERFORMANCE.md"
FINDINGS = ROOT / "bench" / "perf_findings.md"  # hand-written from profiles; included in DOC as it is
# The results of the last run before the local host moved to Microsoft's runtime (Python 3.11, the host's own
# HTTP dispatch; commit 810e310), kept as they were; and bench.runtime_bench's side-by-side comparison.
BEFORE = RESULTS / "perf-before-runtime.md"
RUNTIME = RESULTS / "runtime.md"
ACCESS = RESULTS / "access.md"
COMMAND = ".venv/bin/python -m bench.perf_bench"


def percentile(samples: list[float], q: int) -> float:
    """The q-th percentile (inclusive method) of ``samples``."""
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def number(value: float) -> str:
    """About three significant digits, never in exponent form."""
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.1 else 3
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Series:
    """One value per round."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def cell(self, suffix: str = "") -> str:
        """The median, then the min-max over the rounds (the noise)."""
        return f"{number(self.median)}{suffix} ({number(self.low)}-{number(self.high)})"

    def over(self, reference: Series) -> Series:
        """Round by round ratio: each round's value over the reference's value in the same round."""
        return Series(tuple(a / b for a, b in zip(self.values, reference.values, strict=True)))


def series(values: list[float]) -> Series:
    return Series(tuple(values))


@dataclass(frozen=True)
class Row:
    """One measure: blobseal's rounds and, where there is one, each reference's rounds."""

    key: str
    measure: str
    unit: str
    higher_is_better: bool
    blobseal: Series
    plain: Series | None = None
    cse: Series | None = None

    def versus(self, reference: str) -> Series | None:
        """blobseal over the reference (``plain`` or ``cse``), round by round."""
        other = self.plain if reference == "plain" else self.cse
        return None if other is None else self.blobseal.over(other)


@dataclass(frozen=True)
class Goal:
    """A goal of issue 9: ``row``'s ratio against ``against`` (or its own value when empty) ``op`` ``bound``."""

    text: str
    row: str
    against: str
    op: str
    bound: float
    unit: str = "x"


GOALS = [
    Goal("1 MiB range p50 <= 1.5x plain", "range_p50", "plain", "<=", 1.5),
    Goal("1 MiB range p50 below CSE v2", "range_p50", "cse", "<", 1.0),
    Goal("64 KiB GETs >= 0.5x plain requests/s", "gets_rps", "plain", ">=", 0.5),
    Goal("64 KiB GETs p95 <= 2x plain", "gets_p95", "plain", "<=", 2.0),
    Goal("small-file ingest >= 0.5x plain copy", "ingest", "plain", ">=", 0.5),
    Goal("peak memory per concurrent download <= 8 MiB above idle", "memory", "", "<=", 8.0, " MiB"),
    Goal("whole file >= 0.95x plain, same piece size, max_concurrency=1", "whole_c1", "plain", ">=", 0.95),
    Goal("whole file >= 0.95x plain, same piece size, max_concurrency=4", "whole_c4", "plain", ">=", 0.95),
    Goal("whole file >= 1.15x CSE v2", "whole_c1", "cse", ">=", 1.15),
    Goal("whole file CPU per GB <= 0.5x CSE v2's", "cpu_c1", "cse", "<=", 0.5),
    Goal("format CLI encrypt >= 0.8x the bare AES-GCM loop", "cli", "plain", ">=", 0.8),
]
COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def measured(goal: Goal, rows: dict[str, Row]) -> Series:
    row = rows[goal.row]
    ratio = row.versus(goal.against) if goal.against else row.blobseal
    assert ratio is not None, f"{goal.row} has no {goal.against} reference"
    return ratio


def verdict(goal: Goal, value: Series) -> str:
    """``met`` or ``not met`` with the gap, and a warning when the rounds fall on both sides of the bound."""
    check = COMPARE[goal.op]
    if check(value.median, goal.bound):
        text = "met"
    elif goal.op == ">=":
        text = f"not met: {1 - value.median / goal.bound:.0%} short of {number(goal.bound)}{goal.unit}"
    else:
        text = f"not met: {value.median / goal.bound - 1:.0%} over {number(goal.bound)}{goal.unit}"
    if check(value.low, goal.bound) != check(value.high, goal.bound):
        text += " (the rounds fall on both sides of the bound: within noise)"
    return text


def results_table(rows: list[Row]) -> str:
    def cell(value: Series | None, suffix: str = "") -> str:
        return "-" if value is None else value.cell(suffix)

    return table(
        ["measure", "unit", "better", "blobseal", "plain", "CSE v2", "blobseal / plain", "blobseal / CSE v2"],
        [[row.measure, row.unit, "higher" if row.higher_is_better else "lower", cell(row.blobseal), cell(row.plain),
          cell(row.cse), cell(row.versus("plain"), "x"), cell(row.versus("cse"), "x")] for row in rows])


def goals_table(rows: list[Row]) -> str:
    lines = []
    for goal in GOALS:
        value = measured(goal, rows_by_key(rows))
        lines.append([goal.text, f"{goal.op} {number(goal.bound)}{goal.unit}", value.cell(goal.unit),
                      verdict(goal, value)])
    return table(["goal", "bound", "measured (rounds)", "verdict"], lines)


def rows_by_key(rows: list[Row]) -> dict[str, Row]:
    return {row.key: row for row in rows}


def chart(rows: list[Row], path: Path) -> None:
    """Left: every ratio (log scale, goal bounds marked); right: memory per download against its bound."""
    bars = _ratio_bars(rows)
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 0.45 * len(bars) + 2),
                                         gridspec_kw={"width_ratios": [5, 1]})
    for y, (_, ratio, bound, colour) in enumerate(bars):
        left.barh(y, ratio.median - 1, left=1, color=colour, capsize=3,
                  xerr=[[ratio.median - ratio.low], [ratio.high - ratio.median]])
        if bound is not None:
            left.plot(bound, y, "kD", markersize=6)
    left.set_yticks(range(len(bars)), [label for label, *_ in bars], fontsize=8)
    left.invert_yaxis()
    left.set_xscale("log")
    left.xaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20]))
    left.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    left.xaxis.set_minor_formatter(NullFormatter())
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_xlabel("blobseal / reference, log scale (median of the rounds; whiskers: min-max; diamond: goal bound)")
    left.set_title("blobseal against plain (blue) and CSE v2 (orange)")
    memory = rows_by_key(rows)["memory"].blobseal
    right.bar([0], [memory.median], yerr=[[memory.median - memory.low], [memory.high - memory.median]], capsize=3,
              color="tab:green")
    right.axhline(8.0, color="black", linestyle="--", label="goal: 8 MiB")
    right.set_xticks([0], ["per concurrent\ndownload"])
    right.set_ylabel("host peak RSS above idle, MiB")
    right.set_title("memory")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


REFERENCES = (("plain", "plain", "tab:blue"), ("cse", "CSE v2", "tab:orange"))


def _ratio_bars(rows: list[Row]) -> list[tuple[str, Series, float | None, str]]:
    """(label, ratio, goal bound, colour) for every ratio of every row."""
    return [(f"{row.measure}, vs {name} ({'higher' if row.higher_is_better else 'lower'} is better)", ratio,
             _bound(row.key, reference), colour)
            for row in rows for reference, name, colour in REFERENCES
            if (ratio := row.versus(reference)) is not None]


def _bound(row: str, reference: str) -> float | None:
    return next((goal.bound for goal in GOALS if goal.row == row and goal.against == reference), None)


def results_markdown(rows: list[Row], setup: list[str], machine: list[list[str]]) -> str:
    return "\n\n".join([
        "# Per-request speed against plain and client-side encrypted blobs",
        f"Command: `{COMMAND}` (part of `make bench`). " + " ".join(setup),
        results_table(rows),
        "## Goals (issue 9)\n\n" + goals_table(rows),
        "## Machine\n\n" + table(["what", "value"], machine),
    ]) + "\n"


def performance_doc(rows: list[Row], setup: list[str], machine: list[list[str]], method: list[str]) -> str:
    return "\n\n".join([
        "# Performance",
        "<!-- generated by `make bench` (bench/perf_bench.py, bench/perf_report.py): edit those, not this file -->",
        "How fast blobseal serves and ingests files, measured against what a client does without it: plain "
        "blob transfers with the Azure SDK, and the SDK's own client-side encryption v2 (CSE v2: AES-256-GCM in "
        "4 MiB regions, content keys wrapped under a key-encryption-key). Every number below comes from one "
        f"run of `make bench` (the step `{COMMAND}`), and every ratio is against a reference measured in "
        "the same run, on the same Azurite. " + " ".join(setup),
        "## Results\n\n" + results_table(rows),
        "![blobseal against plain and CSE v2, per measure, as ratios](../bench/results/perf.png)",
        "## Goals (issue 9)\n\nVerdicts are computed by the benchmark from the medians above; the bound "
        "applies to blobseal's value over the reference's (or, for memory, to blobseal's own value).\n\n"
        + goals_table(rows),
        FINDINGS.read_text().strip(),
        runtime_sections(),
        "## How it is measured\n\n" + "\n".join(f"- {item}" for item in method),
        "## Machine\n\n" + table(["what", "value"], machine),
    ]) + "\n"


def side_by_side(path: Path, title: str) -> str:
    """A side-by-side run's results file as a section of this document (its own heading replaced)."""
    body = path.read_text().split("\n", 1)[1]
    body = re.sub(r"<!-- generated by .*? -->", "", body).strip()
    return f"## {title}\n\n" + body.replace("\n## ", "\n### ")


def runtime_sections() -> str:
    """The side-by-side runs (the runtime against the old host; roles and the chained access log against the app
    before them), and the results before the move."""
    parts = []
    if RUNTIME.exists():
        parts.append(side_by_side(RUNTIME, "Microsoft's runtime against the host it replaced"))
    if ACCESS.exists():
        parts.append(side_by_side(ACCESS, "Roles and the tamper-evident access log against the app before them"))
    if BEFORE.exists():
        table_lines = [line for line in BEFORE.read_text().splitlines() if line.startswith("|")]
        results = "\n".join(table_lines[:table_lines.index("| goal | bound | measured (rounds) | verdict |")])
        parts.append("## Before the move (old numbers beside the new)\n\nThe results table of the last run before "
                     "the local host drove Microsoft's runtime (2026-12-01, Python 3.11.7, the host's own HTTP "
                     "dispatch under uvicorn; `bench/results/perf-before-runtime.md`, kept as it was). Same "
                     "measures and method as above.\n\n" + results)
    return "\n\n".join(parts)


def write(rows: list[Row], setup: list[str], machine: list[list[str]], method: list[str]) -> str:
    """Write the chart and both documents; the results document's text."""
    RESULTS.mkdir(exist_ok=True)
    chart(rows, RESULTS / "perf.png")
    report = results_markdown(rows, setup, machine)
    (RESULTS / "perf.md").write_text(report)
    DOC.write_text(performance_doc(rows, setup, machine, method))
    return report
