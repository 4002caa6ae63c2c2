"""The local host around Microsoft's Python runtime: timers fired through it, and how HTTP reaches it.

The host (``python -m devhost``) runs with both timers every two seconds. A key made due in the
database is rotated by the rotation timer; the reconciler timer's runs show in ``/api/status``'s
``reconciled_at``; both ran inside ``azure-functions-runtime`` (the only way the host invokes
anything). HTTP answers come from the runtime's own server (its ``server`` header; the host's port
adds none), and a caller cannot pick the invocation id the host pairs the request with.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from localinfra.azurite import Azurite
from localinfra.hostprocess import DevHost
from tests.support.host import running_host

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

EVERY_TWO_SECONDS = {"ROTATION_SCHEDULE": "*/2 * * * * *", "RECONCILE_SCHEDULE": "*/2 * * * * *"}


@pytest.fixture(scope="module")
def host(azurite: Azurite, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    with running_host(azurite, database_url, tmp_path_factory.mktemp("host"), **EVERY_TWO_SECONDS) as process:
        yield process


def until(predicate: object, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


async def _make_due(database_url: str, file_id: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE file_keys SET expires_at = now() - interval '1 day' "
                           "WHERE file_id = $1 AND state = 'active'", uuid.UUID(file_id))
    finally:
        await conn.close()


def test_the_rotation_timer_rotates_a_due_key_through_the_runtime(host: DevHost) -> None:
    uploaded = httpx.post(f"{host.url}/files", headers={**host.headers, "X-File-Name": "due.bin"},
                          content=b"rotate me" * 1000, timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    file_id, before = uploaded.json()["file_id"], uploaded.json()["key_reference"]
    asyncio.run(_make_due(host.env["DATABASE_URL"], file_id))

    def rotated() -> bool:
        view = httpx.get(f"{host.url}/files/{file_id}/metadata", headers=host.headers, timeout=10).json()
        return bool(view["key_reference"] != before)

    until(rotated)
    assert httpx.get(f"{host.url}/files/{file_id}", headers=host.headers, timeout=30).content == b"rotate me" * 1000
    assert "rotation run (past due: False)" in host.log_path.read_text()  # rotate_keys' own log line


def test_the_reconciler_timer_runs_through_the_runtime(host: DevHost) -> None:
    def reconciled() -> bool:
        status = httpx.get(f"{host.url}/status", headers=host.headers, timeout=10).json()
        return status["reconciled_at"] is not None

    until(reconciled)
    assert "reconcile run (past due: False)" in host.log_path.read_text()


def test_http_answers_come_from_the_runtimes_server(host: DevHost) -> None:
    response = httpx.get(f"{host.url}/health", headers={"x-ms-invocation-id": "chosen-by-the-caller"}, timeout=10)
    assert response.status_code == 200  # the host's own id wins: the request is paired and answered
    assert response.headers["server"] == "uvicorn"  # the runtime's FastAPI server; the host's port sends none
    version = importlib.metadata.version("azure-functions-runtime")
    log = host.log_path.read_text()
    assert f"runtime:       azure-functions-runtime {version} on Python 3.13" in log  # the banner
    assert f"azure-functions-runtime {version} serves 14 functions" in log


def test_the_callers_own_forwarded_for_is_replaced_by_its_address(host: DevHost) -> None:
    spoofed = httpx.get(f"{host.url}/files?name=nothing-{uuid.uuid4()}", timeout=10,
                        headers={**host.headers, "X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 404
    audit = httpx.get(f"{host.url}/audit", headers=host.headers, params={"limit": "1000"}, timeout=10)
    assert audit.status_code == 200, audit.text
    addresses = {row.get("client_address") for row in audit.json()["rows"]}
    assert "127.0.0.1" in addresses and "203.0.113.9" not in addresses


def test_a_route_without_a_function_is_404_and_keys_are_checked_before_the_runtime(host: DevHost) -> None:
    assert httpx.get(f"{host.url}/nothing-here", headers=host.headers, timeout=10).status_code == 404
    # a method no function of the path takes: the catch-all function's JSON 405 (tests/e2e/test_contract.py)
    assert httpx.put(f"{host.url}/files", headers=host.headers, timeout=10).status_code == 405
    refused = httpx.get(f"{host.url}/metrics", timeout=10)
    assert refused.status_code == 401 and "server" not in refused.headers  # answered by the host itself
