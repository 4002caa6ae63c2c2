"""One worker process of the scale simulation (``bench.scale_bench``): the real ingest or download code.

Started by the simulation with one JSON argument (the job); builds the services exactly as a
Functions worker does (``bootstrap.build_services``), with the Azure vault, KEK and signing key adapters
pointed at the loopback Key Vault stand-in. It prints ``ready``, waits for ``go`` on stdin (so
the clock starts when every worker is up), does its share, and prints one JSON line of results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from typing import Any

from shared.bootstrap import build_services
from shared.config import Settings
from shared.vault.azure import AzureKeyVault, RetryOptions, TransportOptions
from shared.vault.azure_kek import AzureKeyWrapper
from shared.vault.azure_signer import AzureSigner
from tests.support.keyvault_server import FakeCredential


def services_for(job: dict[str, Any]):  # type: ignore[no-untyped-def]
    settings = Settings.from_env(job["settings"])
    transport = TransportOptions(verify_challenge_resource=False, connection_verify=job["ca_file"])
    retry = RetryOptions(deadline=300)
    vault = AzureKeyVault(job["vault_url"], FakeCredential(), verify_challenge_resource=False,
                          connection_verify=job["ca_file"], retry=retry)
    kek = AzureKeyWrapper(job["vault_url"], FakeCredential(), settings.key_vault_kek_name, retry=retry,
                          transport=transport)
    signer = AzureSigner(job["vault_url"], FakeCredential(), settings.key_vault_signing_key_name, retry=retry,
                         transport=transport)
    return build_services(settings, vault=vault, kek=kek, signer=signer)


async def ingest(job: dict[str, Any]) -> dict[str, Any]:
    services = services_for(job)
    slots = asyncio.Semaphore(job["concurrency"])
    outcomes: dict[str, int] = {}

    async def one(name: str) -> None:
        async with slots:
            try:
                status = (await services.files.encrypt_ingest_blob(name)).status
            except Exception as exc:  # counted and reported: the simulation's table shows them
                status = f"error:{type(exc).__name__}"
            outcomes[status] = outcomes.get(status, 0) + 1

    try:
        started = await _wait_for_go()
        cpu = time.process_time()
        await asyncio.gather(*(one(n) for n in job["names"]))
        return {"outcomes": outcomes, "started": started, "finished": time.time(),
                "cpu_seconds": time.process_time() - cpu}
    finally:
        await services.close()


async def download(job: dict[str, Any]) -> dict[str, Any]:
    services = services_for(job)
    slots = asyncio.Semaphore(job["concurrency"])
    mismatched: list[str] = []

    async def one(file_id: str, digest: str) -> None:
        async with slots:
            record = await services.files.encrypted_file(file_id)
            hasher = hashlib.sha256()
            async for piece in await services.files.open(record, None):
                hasher.update(piece)
            if hasher.hexdigest() != digest:
                mismatched.append(file_id)

    try:
        started = await _wait_for_go()
        await asyncio.gather(*(one(i, d) for i, d in job["files"].items()))
        return {"downloaded": len(job["files"]), "mismatched": mismatched, "started": started,
                "finished": time.time()}
    finally:
        await services.close()


async def _wait_for_go() -> float:
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit("the simulation did not say go")
    return time.time()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    job = json.loads(sys.argv[1])
    result = asyncio.run(ingest(job) if job["phase"] == "ingest" else download(job))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
