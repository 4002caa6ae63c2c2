"""What a running ``make dev`` tells the other local commands (standard library only).

``make dev`` holds an exclusive lock on ``.dev/devhost.lock`` for as long as it runs (released by the
kernel however it ends, SIGKILL included) and writes ``.dev/devhost.json`` beside it: its PID and the
database it serves from. The CLI reads that when no ``DATABASE_URL`` is set (so ``blobseal list`` finds
``make dev``'s embedded PostgreSQL with no setting), a second ``make dev`` and ``make reset`` refuse
while the lock is held. A state file whose lock nobody holds is stale and ignored.

``BLOBSEAL_DEV_DIR`` moves the folder (tests run their own ``make dev`` beside a user's).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DevRunning", "RunningDev", "dev_dir", "holding", "publish", "running"]

ROOT = Path(__file__).resolve().parents[2]


class DevRunning(RuntimeError):
    """``make dev`` runs from this folder (the message says which process)."""


@dataclass(frozen=True)
class RunningDev:
    pid: int
    database_url: str
    database: str  # how make dev found it: "embedded", "default" or "configured"


def dev_dir(environ: Mapping[str, str] | None = None) -> Path:
    configured = (os.environ if environ is None else environ).get("BLOBSEAL_DEV_DIR")
    return Path(configured) if configured else ROOT / ".dev"


def _is_locked(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except PermissionError:  # another user's make dev: say running (make reset then refuses, which is safe)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running(folder: Path) -> RunningDev | None:
    """The ``make dev`` running from ``folder``, or None (not running, or its state file is stale)."""
    if not _is_locked(folder / "devhost.lock"):
        return None
    try:
        state = json.loads((folder / "devhost.json").read_text())
        return RunningDev(int(state["pid"]), str(state["database_url"]), str(state["database"]))
    except (OSError, ValueError, KeyError, TypeError):
        return RunningDev(0, "", "")  # running, still starting: no database yet


@contextlib.contextmanager
def holding(folder: Path) -> Iterator[None]:
    """The lock of the one ``make dev`` for ``folder``; ``DevRunning`` if another holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "devhost.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = running(folder)
            who = f" (pid {other.pid})" if other and other.pid else ""
            raise DevRunning(f"`make dev` already runs from this folder{who}: stop it first") from None
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                (folder / "devhost.json").unlink()
    finally:
        os.close(fd)


def publish(folder: Path, database_url: str, database: str) -> None:
    """Tell the CLI which database this ``make dev`` serves from (call while ``holding``)."""
    state = folder / "devhost.json"
    partial = state.with_suffix(".json.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": os.getpid(), "database_url": database_url, "database": database}, out)
    os.replace(partial, state)
