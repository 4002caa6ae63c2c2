"""infra/smoke.sh against the real local host (devhost on Azurite and PostgreSQL), the way an
operator runs it after `make dev`: every step passes, Azure-only steps are skipped, and a broken
target fails naming the step."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localinfra.azurite import Azurite, free_port
from localinfra.hostprocess import KEY, DevHost
from tests.infra.infra_helpers import INFRA, ROOT
from tests.support.host import running_host

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

SMOKE = INFRA / "smoke.sh"


@pytest.fixture(scope="module")
def host(azurite: Azurite, module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    with running_host(azurite, module_database_url, tmp_path_factory.mktemp("smoke-host")) as process:
        yield process


def smoke(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SMOKE), *args], cwd=ROOT, env={**env, "BLOBSEAL_PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def test_smoke_passes_against_the_local_host(host: DevHost) -> None:
    # The host's environment is what `make dev` would have: the upload goes to its ingest container.
    result = smoke(host.env, "--base-url", host.url, "--key", KEY, "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("health", "auth", "upload", "wait", "download", "range", "metadata", "cleanup"):
        assert f"smoke: ok {step}" in result.stdout, f"{step}:\n{result.stdout}"
    assert "smoke: skip cleanup-ingest" in result.stdout  # Azure only
    assert "smoke: passed" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_smoke_names_the_step_that_fails(host: DevHost) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    result = smoke(host.env, "--base-url", dead, "--key", KEY)
    assert result.returncode != 0
    assert "smoke: FAIL health:" in result.stderr, result.stderr
    # A live host with the wrong key: health and the upload pass, the lookups are refused.
    result = smoke(host.env, "--base-url", host.url, "--key", "not-the-key", "--timeout", "3")
    assert result.returncode != 0
    assert "smoke: ok upload" in result.stdout and "smoke: FAIL wait:" in result.stderr, result.stdout + result.stderr


def test_smoke_refuses_azure_mode_without_a_resource_group(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    (tmp_path / "az").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "az").chmod(0o755)
    result = smoke(env, "--azure")
    assert result.returncode != 0 and "smoke: FAIL setup: --azure needs -g" in result.stderr
