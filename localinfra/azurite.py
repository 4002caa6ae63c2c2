"""Runs the real Azurite from node_modules (installed by `npm ci`): for `make dev` and the tests.

``--skipApiVersionCheck``: azure-storage-blob 12.31 speaks a newer REST version than
Azurite 3.35 knows; the calls blobseal makes are unchanged between them.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "AZURITE", "Azurite", "free_port", "listening", "running_azurite"]

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    blob_port: int
    queue_port: int
    process: subprocess.Popen[bytes] | None

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
                f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _wait_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with code {process.returncode}")
        if listening(port):
            return
        time.sleep(0.1)
    raise RuntimeError("Azurite did not start within 30 s")


@contextlib.contextmanager
def running_azurite(location: Path, *, ports: tuple[int, int, int] | None = None,
                    log: Path | None = None) -> Iterator[Azurite]:
    """Azurite on loopback (free ports unless given), data under ``location``; stopped on exit."""
    if not AZURITE.exists():
        raise RuntimeError(f"{AZURITE} is missing: run `make install` (npm ci) first")
    blob_port, queue_port, table_port = ports or (free_port(), free_port(), free_port())
    location.mkdir(parents=True, exist_ok=True)
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(AZURITE), "--silent", "--skipApiVersionCheck", "--location", str(location),
         "--blobHost", "127.0.0.1", "--blobPort", str(blob_port), "--queueHost", "127.0.0.1",
         "--queuePort", str(queue_port), "--tableHost", "127.0.0.1", "--tablePort", str(table_port)],
        stdout=output, stderr=output)
    azurite = Azurite(blob_port, queue_port, process)
    try:
        _wait_listening(blob_port, process, time.monotonic() + 30)
        _wait_listening(queue_port, process, time.monotonic() + 30)
        yield azurite
    finally:
        azurite.stop()
        if log:
            output.close()  # type: ignore[union-attr]
