"""Starts the local host (``python -m devhost``) as a separate process: for tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from localinfra.azurite import Azurite, free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "e2e-" + secrets.token_hex(8)


def host_env(azurite: Azurite, database_url: str, vault_dir: Path, **overrides: str) -> dict[str, str]:
    suffix = secrets.token_hex(4)
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DataStorage": azurite.connection_string,
        "AzureWebJobsStorage": azurite.connection_string,
        "DATABASE_URL": database_url,
        "KEY_VAULT_MODE": "local",
        "KEY_VAULT_LOCAL_PATH": str(vault_dir),
        "INGEST_CONTAINER": f"ingest-{suffix}",
        "PROTECTED_CONTAINER": f"protected-{suffix}",
        "AUDIT_DIGEST_CONTAINER": f"digests-{suffix}",
        "KEEP_PLAINTEXT": "false",
        "HEALTH_PROBE_SECONDS": "1",
        "ENCRYPTION_CHUNK_SIZE_MB": "5",
        "LOCAL_FUNCTION_KEY": KEY,
        "ROTATION_SCHEDULE": "0 0 0 1 1 *",
        "RECONCILE_SCHEDULE": "0 0 0 1 1 *",
        "ROTATION_GRACE_MINUTES": "60",
        **overrides,
    }


@dataclass
class DevHost:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    app_root: Path = ROOT  # the folder it runs from (bench.runtime_bench: a copy holding an earlier devhost)
    launcher: tuple[str, ...] = ()  # interpreter options before ``-m devhost`` (e.g. ``-m cProfile -o FILE``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def headers(self) -> dict[str, str]:
        return {"x-functions-key": KEY}

    def start(self) -> DevHost:
        log = self.log_path.open("ab")
        # A .dev folder of its own (its lock: one make dev per folder), so hosts run side by side and beside a
        # user's make dev.
        own = {"BLOBSEAL_DEV_DIR": str(self.log_path.parent / f"dev-{self.port}"), **self.env}
        self.process = subprocess.Popen(
            [sys.executable, *self.launcher, "-m", "devhost", "--no-azurite", "--no-func", "--port", str(self.port),
             "--poll-seconds", "0.3"], cwd=self.app_root, env={**own, "PYTHONPATH": str(self.app_root)},
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"devhost exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("devhost did not answer within 60 s")

    def peak_rss_mib(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(entry for entry in status.splitlines() if entry.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self, timeout: float = 15) -> int:
        """Ctrl-C, as a user stops it; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode
