"""Shared by the infra tests: paths, and infra/tools/check_infra.py loaded as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECK_INFRA = INFRA / "tools" / "check_infra.py"
# checkov lives in a virtualenv of its own (its pins conflict with pytest's): see the Makefile.
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


def load_check_infra() -> ModuleType:
    """infra/tools/check_infra.py as a module (it is a script, not a package)."""
    return load_tool("check_infra")


def load_tool(tool: str) -> ModuleType:
    """infra/tools/<tool>.py as a module."""
    name = f"blobseal_infra_{tool}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, INFRA / "tools" / f"{tool}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
