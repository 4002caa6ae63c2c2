"""``make dev``'s first hour on a machine with no PostgreSQL server: the local host with its embedded
PostgreSQL, the CLI beside it with no setting, one ``make dev`` per folder, ``make reset`` refused while it
runs, a killed one recovered from, and every way of stopping it (SIGINT, SIGTERM, SIGHUP) stopping the
server it started.

``--embedded-postgres`` makes the host start its own server even where one answers on 127.0.0.1:5432 (as
here); ``BLOBSEAL_DEV_DIR`` puts its ``.dev`` folder in the test's temporary folder. Storage is the suite's
Azurite (``--no-azurite``): the host leaves Azurite through the same ``with`` block as the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from shared.cli import devstate

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


def dev_env(azurite: Azurite, work: Path) -> dict[str, str]:
    env = host_env(azurite, "", work / "vault", BLOBSEAL_DEV_DIR=str(work / "dev"))
    env["DATABASE_URL"] = ""  # as on a machine where nothing is set (over a local.settings.json that may)
    return env


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[DevHost]]:
    """The hosts a test starts (in sessions of their own): whatever a failing test left running is stopped."""
    hosts: list[DevHost] = []
    yield hosts
    for host in hosts:
        if host.process is not None and host.process.poll() is None:
            os.killpg(host.process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        postmaster(tmp_path).terminate()


def start(env: dict[str, str], work: Path, hosts: list[DevHost], idle_seconds: float = 0) -> DevHost:
    """A host, ready; with ``idle_seconds``, first checked to print nothing while idle for that long before the first
    request (ten blob polls in 3 s: each was a page of Azure SDK request/response logs; the runtime's first
    invocation used to be what silenced them)."""
    log = work / "devhost.log"
    host = DevHost(env, log)
    hosts.append(host)
    banners = log.read_text().count("serves 14 functions") if log.exists() else 0
    host.process = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--no-azurite", "--no-func", "--embedded-postgres", "--port",
         str(host.port), "--poll-seconds", "0.3"], cwd=ROOT, env=env, stdout=(work / "devhost.log").open("ab"),
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # its own group, as a terminal's
    if idle_seconds:
        deadline = time.monotonic() + 60
        while log.read_text().count("serves 14 functions") == banners and time.monotonic() < deadline:
            time.sleep(0.1)
        quiet_from = len(log.read_text().splitlines())
        time.sleep(idle_seconds)
        assert log.read_text().splitlines()[quiet_from:] == []
    host.wait_ready()
    return host


def postmaster(work: Path) -> psutil.Process:
    pid = int((work / "dev" / "pgdata" / "postmaster.pid").read_text().split()[0])
    return psutil.Process(pid)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def stopped_by(host: DevHost, signum: signal.Signals, work: Path) -> None:
    """The signal to the host's process group (a terminal's Ctrl-C or hang-up; SIGTERM as `kill` sends it, to the
    process alone): the host exits, the server it started is gone, the lock is free and the state file removed."""
    assert host.process is not None
    server = postmaster(work)
    if signum == signal.SIGTERM:
        host.process.send_signal(signum)
    else:
        os.killpg(host.process.pid, signum)
    host.process.wait(timeout=60)
    server.wait(timeout=30)  # raises if the server outlives the host
    assert devstate.running(work / "dev") is None and not (work / "dev" / "devhost.json").exists()


def test_make_dev_with_its_own_postgres_the_cli_beside_it_and_every_way_to_stop_it(
        azurite: Azurite, tmp_path: Path, started: list[DevHost]) -> None:
    env = dev_env(azurite, tmp_path)
    first = start(env, tmp_path, started, idle_seconds=3)
    uploaded = httpx.post(f"{first.url}/files", content=b"first hour", headers={**first.headers,
                          "X-File-Name": quote("report.pdf")}, timeout=60)
    assert uploaded.status_code == 201
    listed = cli(env, "list")
    assert listed.returncode == 0 and "report.pdf" in listed.stdout, listed.stderr
    assert "using the database of `make dev`" in listed.stderr and "embedded" in listed.stderr

    second = subprocess.run([sys.executable, "-m", "devhost", "--no-azurite", "--no-func", "--embedded-postgres",
                             "--port", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 1 and "already runs from this folder" in second.stderr
    reset = subprocess.run(["python3", "scripts/reset.py"], cwd=ROOT, env=env, input="y\n", capture_output=True,
                           text=True, timeout=30, check=False)
    assert reset.returncode == 1 and "is running" in reset.stderr and (tmp_path / "dev" / "pgdata").is_dir()

    server = postmaster(tmp_path)
    assert first.process is not None
    first.process.kill()  # no clean-up at all: the server stays, its handle list names a dead process
    first.process.wait()
    assert server.is_running() and first.process.pid in json.loads(
        (tmp_path / "dev" / "pgdata" / ".handle_pids.json").read_text())
    recovered = start(env, tmp_path, started)  # takes the server over
    listed = cli(env, "list")
    assert listed.returncode == 0 and "report.pdf" in listed.stdout, listed.stderr
    stopped_by(recovered, signal.SIGHUP, tmp_path)
    assert not server.is_running()

    for signum in (signal.SIGINT, signal.SIGTERM):
        stopped_by(start(env, tmp_path, started), signum, tmp_path)
    nothing = cli(env, "list")  # no make dev: the default address, which is not make dev's database
    assert "using the database of `make dev`" not in nothing.stderr

