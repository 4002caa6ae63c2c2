"""The README's retry loop (``put``), run by bash and curl against the local host, through a database outage and a
lost commit answer: one file per key, its bytes intact, and a repeat gets the first answer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from localinfra.azurite import Azurite
from localinfra.hostprocess import ROOT, DevHost, host_env
from tests.support.pg_proxy import PgProxy

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]


def readme_put() -> str:
    """The ``put`` function exactly as the README shows it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^    put\(\) \{.*?^    \}$", text, re.S | re.M)
    assert block is not None, "the README's retry loop (put) is gone"
    return "\n".join(line[4:] for line in block.group(0).splitlines())


async def put(host: object, work: Path, path: Path, name: str, key: str) -> tuple[int, dict[str, object]]:
    script = f"{readme_put()}\nput {path} {name} {key}\n"
    process = await asyncio.create_subprocess_exec(
        shutil.which("bash") or "bash", "-c", script, cwd=work, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "KEY": f"x-functions-key: {host.headers['x-functions-key']}",  # type: ignore[attr-defined]
             "API": host.url})  # type: ignore[attr-defined]
    out, _ = await process.communicate()
    return int(process.returncode or 0), json.loads(out)


async def test_the_readme_retry_loop_makes_one_file_through_faults(
        azurite: Azurite, database_url: str, proxy: PgProxy, tmp_path: Path) -> None:
    env = host_env(azurite, proxy.url(database_url), tmp_path / "vault")
    storage = BlobServiceClient.from_connection_string(azurite.connection_string)
    for name in (env["INGEST_CONTAINER"], env["PROTECTED_CONTAINER"]):
        storage.create_container(name)
    host = await asyncio.to_thread(DevHost(env, tmp_path / "devhost.log").start)  # the proxy runs on this loop
    try:
        report = tmp_path / "report.pdf"
        report.write_bytes(data := os.urandom(300_000))

        await proxy.cut()  # the database is down when the client starts
        restore = asyncio.get_running_loop().call_later(3.0, lambda: asyncio.ensure_future(proxy.restore()))
        code, first = await put(host, tmp_path, report, "report.pdf", key := "3b1f6c9e-retry-loop")
        restore.cancel()
        assert code == 0 and first["status"] == "encrypted", first

        rule = proxy.drop_ack("SET status = 'encrypted'")  # a second file whose commit answer is lost
        code, second = await put(host, tmp_path, report, "again.pdf", "7d2c-lost-answer")
        assert code == 0 and rule.dropped == 1 and second["name"] == "again.pdf", second

        code, repeated = await put(host, tmp_path, report, "report.pdf", key)  # the client runs it again
        assert code == 0 and repeated == first
        async with httpx.AsyncClient() as client:
            listed = (await client.get(f"{host.url}/files", headers=host.headers, timeout=20)).json()["files"]
            assert sorted(f["name"] for f in listed) == ["again.pdf", "report.pdf"]  # one file per key
            for view in listed:
                body = await client.get(f"{host.url}/files/{view['file_id']}", headers=host.headers, timeout=20)
                assert body.status_code == 200 and body.content == data
    finally:
        assert await asyncio.to_thread(host.stop) == 0
