"""What Microsoft's Python runtime reports about function_app.py (``python -m devhost.metadata``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from devhost.functions import Function
from localinfra.hostprocess import ROOT


def runtime_metadata(**env: str) -> dict[str, Any]:
    """Capabilities and functions as the runtime reports them, in a process of its own with ``env``
    added to the settings (this process's values of the settings that change indexing left out)."""
    ours = ("DataStorage", "BLOB_TRIGGER_SOURCE", "FUNCTION_KEYS_ENABLED")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    done = subprocess.run([sys.executable, "-m", "devhost.metadata"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def runtime_functions(described: dict[str, Any]) -> dict[str, Function]:
    return {f["name"]: Function(f["name"], f["function_id"], tuple(f["bindings"])) for f in described["functions"]}
