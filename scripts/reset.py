"""``make reset``: forget the local deployment's data, after asking; never under a running ``make dev``.

Standard library only (it runs with the system's python3, before or without ``make install``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
STATE = (".azurite", "secrets", "secrets.master-key")  # and make dev's folder (.dev/ unless BLOBSEAL_DEV_DIR)


def _devstate() -> ModuleType:
    """shared/cli/devstate.py by path: importing the ``shared`` package would need its dependencies."""
    spec = importlib.util.spec_from_file_location("devstate", ROOT / "shared" / "cli" / "devstate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devstate"] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    devstate = _devstate()
    dev = devstate.running(devstate.dev_dir())
    if dev is not None:
        who = f" (pid {dev.pid})" if dev.pid else ""
        print(f"make reset: `make dev` is running{who}: stop it first (Ctrl-C), nothing deleted", file=sys.stderr)
        return 1
    answer = input("delete .azurite/ (blobs), .dev/ (embedded database), secrets/ and secrets.master-key "
                   "(local keys)? [y/N] ")
    if answer.strip() != "y":
        print("kept")
        return 0
    for path in [*(ROOT / name for name in STATE), devstate.dev_dir()]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    print("local state deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
