"""azure-functions-doctor (PyPI, a third-party diagnostic tool for the Python v2 model) on this app.

Run with the deploy profile for Flex Consumption on the committed files (a copy of what ``git ls-files``
lists, in a git repository of its own, so a developer's ``local.settings.json`` or environment cannot
change the verdict): no check
fails, and every warning and every skipped check is one the README explains ("azure-functions-doctor"
in README.md names each by its rule id). A new warning fails this test until it is fixed or explained.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.infra_helpers import ROOT

DOCTOR = Path(os.environ.get("VIRTUAL_ENV", str(ROOT / ".venv"))) / "bin" / "azure-functions-doctor"


def committed_copy(target: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):  # tracked as in the repository (its checks ask git)
        subprocess.run(command, cwd=target, capture_output=True, check=True)
    return target


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = committed_copy(tmp_path_factory.mktemp("app"))
    out = app.parent / "doctor.json"
    binary = DOCTOR if DOCTOR.exists() else ROOT / ".venv" / "bin" / "azure-functions-doctor"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLICATIONINSIGHTS")}
    done = subprocess.run([str(binary), "doctor", "--path", str(app), "--profile", "deploy", "--hosting-plan",
                           "flex-consumption", "--format", "json", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    return dict(json.loads(out.read_text()))


def items(report: dict[str, Any], status: str) -> set[str]:
    return {i["rule_id"] for r in report["results"] for i in r["items"] if i["status"] == status}


def explained_in_readme() -> dict[str, set[str]]:
    section = (ROOT / "README.md").read_text().split("### azure-functions-doctor", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(check_\w+)` \| (warning|skipped) \|", section, re.MULTILINE)
    return {kind: {rule for rule, k in rows if k == kind} for kind in ("warning", "skipped")}


def test_the_doctor_finds_no_failure(report: dict[str, Any]) -> None:
    assert report["metadata"]["hosting_plan"] == "flex-consumption"
    assert report["metadata"]["programming_model"] == "v2"
    assert items(report, "fail") == set(), json.dumps(report["results"], indent=1)[:4000]
    assert len(items(report, "pass")) >= 15  # it ran its checks


def test_every_warning_and_skip_is_explained_in_the_readme(report: dict[str, Any]) -> None:
    explained = explained_in_readme()
    assert items(report, "warn") == explained["warning"]
    assert items(report, "skip") == explained["skipped"]
