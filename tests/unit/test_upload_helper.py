"""``python -m devhost.upload``: every error is one line on stderr and a non-zero exit, before any storage call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,needle", [
    (None, "cannot read"),  # the file is missing
    ("../evil.pdf", "'.' or '..' segment"),
    ("esc\x1b[2J.pdf", "U+001B"),
    ("a" * 1025, "at most 1024"),
])
def test_upload_errors_are_one_line(tmp_path: Path, name: str | None, needle: str) -> None:
    source = tmp_path / "report.pdf"
    if name is not None:
        source.write_bytes(b"x")
    run = subprocess.run([sys.executable, "-m", "devhost.upload", str(source), *([name] if name else [])],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": "/usr/bin:/bin", "DataStorage": "UseDevelopmentStorage=true"})
    lines = run.stderr.splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("upload: error: "), run.stderr
    assert needle in lines[0] and "\x1b" not in run.stderr
