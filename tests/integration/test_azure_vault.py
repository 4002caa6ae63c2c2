"""The Azure adapter with the real ``azure-keyvault-secrets`` SDK against a loopback HTTPS server.

The server (``tests/support/keyvault_server.py``) speaks the Key Vault secrets REST API: challenge
auth, versions, disabled = 403, soft delete, 404, 429 with Retry-After, and injected faults.
Retry waits are shrunk (``FAST``) except where a test measures that Retry-After is honoured.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential
from azure.keyvault.secrets import ApiVersion

from shared.config import Settings
from shared.errors import (
    BlobsealError,
    ConfigError,
    KeyVaultError,
    SecretDisabledError,
    SecretNotFoundError,
    VaultUnavailableError,
)
from shared.metrics import REGISTRY
from shared.vault.azure import CONTENT_TYPE, AzureKeyVault, RetryOptions, build_credential
from tests.support import FakeCredential, KeyVaultServer, TlsMaterial
from tests.support.keyvault_server import FAST_RETRY as FAST

NAME = "file-3f0c2a4e-8d1b-4c55-9a43-1f2e3d4c5b6a"


@pytest.fixture
def server(keyvault_server: KeyVaultServer) -> KeyVaultServer:
    return keyvault_server


def make_vault(server: KeyVaultServer, credential: Any = None, **options: Any) -> AzureKeyVault:
    settings: dict[str, Any] = {
        "retry": FAST,
        "verify_challenge_resource": False,
        "connection_verify": str(server.tls.ca_file),
        "connection_timeout": 1.0,
        "read_timeout": 2.0,
        "delete_poll_interval": 0.02,
    }
    settings.update(options)
    return AzureKeyVault(server.url, credential or FakeCredential(), **settings)


@pytest.fixture
async def vault(server: KeyVaultServer) -> AsyncIterator[AzureKeyVault]:
    adapter = make_vault(server)
    yield adapter
    await adapter.close()


def since(server: KeyVaultServer, start: int) -> list[tuple[str, str, int | None]]:
    return [(r.method, r.path, r.status) for r in server.requests[start:]]


# --- store, read, versions ---


async def test_store_and_get_latest_and_by_version(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    first, second = os.urandom(32), os.urandom(32)
    expires = datetime(2031, 1, 1, tzinfo=UTC)
    old = await vault.set_secret(NAME, first, expires_on=expires)
    new = await vault.set_secret(NAME, second)

    assert old.version != new.version and len(new.version) == 32
    assert (old.name, old.enabled, old.expires_on, old.content_type) == (NAME, True, expires, CONTENT_TYPE)
    assert server.value_of(NAME, old.version) == base64.b64encode(first).decode()
    assert server.content_type_of(NAME, old.version) == "application/octet-stream"

    latest = await vault.get_secret(NAME)
    assert (latest.value, latest.properties.version) == (second, new.version)
    exact = await vault.get_secret(NAME, old.version)
    assert (exact.value, exact.properties.expires_on) == (first, expires)
    assert old.key_reference == f"{NAME}/{old.version}"


async def test_list_versions_oldest_first_across_pages(keyvault_tls: TlsMaterial) -> None:
    # Descending ids: the server lists by id (as Key Vault does), the reverse of creation order.
    ids = (f"{n:032x}" for n in range(10**6, 0, -1))
    ticks = itertools.count(1_700_000_000, 60)
    server = KeyVaultServer(keyvault_tls, version_ids=ids, clock=lambda: next(ticks))
    await server.start()
    vault = make_vault(server)
    try:
        created = [await vault.set_secret(NAME, os.urandom(32)) for _ in range(27)]
        await vault.disable_version(NAME, created[1].version)
        start = len(server.requests)

        listed = await vault.list_versions(NAME)

        assert [p.version for p in listed] == [p.version for p in created]
        assert [p.enabled for p in listed[:3]] == [True, False, True]
        pages = [r for r in server.requests[start:] if r.path.endswith("/versions")]
        assert len(pages) == 2  # 25 per page: the SDK followed nextLink
    finally:
        await vault.close()
        await server.stop()


async def test_unknown_names_and_versions(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret(NAME)
    assert await vault.list_versions(NAME) == []
    await vault.set_secret(NAME, b"k" * 32)
    missing = "0" * 32
    with pytest.raises(SecretNotFoundError) as caught:
        await vault.get_secret(NAME, missing)
    assert caught.value.details["status"] == 404 and caught.value.operation == "get_secret"
    with pytest.raises(SecretNotFoundError):
        await vault.disable_version(NAME, missing)


async def test_invalid_arguments_refused_before_any_request(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    with pytest.raises(KeyVaultError):
        await vault.get_secret("file/../../deletedsecrets")
    with pytest.raises(KeyVaultError):
        await vault.get_secret(NAME, "")
    for name in (f"{NAME}\n", "file_a", "x" * 128):  # the same rule as the local vault and key references
        with pytest.raises(KeyVaultError, match="invalid secret name or version"):
            await vault.get_secret(name)
    with pytest.raises(KeyVaultError, match="invalid secret name or version"):
        await vault.get_secret(NAME, "v1\n")
    with pytest.raises(KeyVaultError):
        await vault.set_secret(NAME, b"k", expires_on=datetime(2031, 1, 1))  # naive
    assert server.requests == []


# --- rotation, disable, delete ---


async def test_rotation_adds_a_version_and_disables_the_old_one(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    old = await vault.set_secret(NAME, old_key)
    new = await vault.set_secret(NAME, new_key)
    await vault.disable_version(NAME, old.version)

    with pytest.raises(SecretDisabledError) as caught:
        await vault.get_secret(NAME, old.version)
    assert caught.value.details["inner_code"] == "SecretDisabled"
    assert (await vault.get_secret(NAME)).value == new_key
    listed = await vault.list_versions(NAME)  # same second: created_on cannot order these two
    assert {p.version: p.enabled for p in listed} == {old.version: False, new.version: True}
    assert not any(r.method == "DELETE" for r in server.requests)


async def test_disabled_latest_version_is_refused(vault: AzureKeyVault) -> None:
    only = await vault.set_secret(NAME, os.urandom(32))
    await vault.disable_version(NAME, only.version)
    with pytest.raises(SecretDisabledError):
        await vault.get_secret(NAME)


async def test_other_forbidden_is_not_reported_as_disabled(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    await vault.set_secret(NAME, os.urandom(32))
    server.fail_next(1, status=403)  # e.g. an access policy or firewall refusal, no SecretDisabled
    with pytest.raises(KeyVaultError) as caught:
        await vault.get_secret(NAME)
    assert type(caught.value) is KeyVaultError and caught.value.details["status"] == 403


async def test_delete_waits_for_completion_then_purges_where_the_vault_allows(
    vault: AzureKeyVault, server: KeyVaultServer
) -> None:
    await vault.set_secret(NAME, os.urandom(32))
    start = len(server.requests)
    await vault.delete_secret(NAME)
    assert ("DELETE", f"/deletedsecrets/{NAME}", 204) in since(server, start)  # purged: nothing to recover
    assert NAME not in server.deleted
    await vault.set_secret(NAME, os.urandom(32))  # the name is free again


async def test_with_purge_protection_a_delete_stays_soft_and_blocks_the_name(
    vault: AzureKeyVault, server: KeyVaultServer
) -> None:
    server.purge_protection = True
    await vault.set_secret(NAME, os.urandom(32))
    server.delete_lag_polls = 2
    start = len(server.requests)

    await vault.delete_secret(NAME)

    polls = [(m, s) for m, p, s in since(server, start) if p == f"/deletedsecrets/{NAME}"]
    assert polls == [("GET", 404), ("GET", 404), ("GET", 200), ("DELETE", 403)]  # the purge refused, and said so
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret(NAME)
    with pytest.raises(KeyVaultError) as caught:
        await vault.set_secret(NAME, os.urandom(32))
    assert type(caught.value) is KeyVaultError
    assert caught.value.details["inner_code"] == "ObjectIsDeletedButRecoverable"
    with pytest.raises(SecretNotFoundError):
        await vault.delete_secret("file-never-existed")


async def test_delete_that_never_completes_is_bounded(server: KeyVaultServer) -> None:
    vault = make_vault(server, delete_timeout=0.3)
    try:
        await vault.set_secret(NAME, os.urandom(32))
        server.delete_lag_polls = 10**6
        began = time.monotonic()
        with pytest.raises(VaultUnavailableError):
            await vault.delete_secret(NAME)
        assert time.monotonic() - began < 2
    finally:
        await vault.close()


# --- auth ---


async def test_challenge_auth_then_bearer_token_reused(server: KeyVaultServer) -> None:
    credential = FakeCredential()
    vault = make_vault(server, credential)
    try:
        stored = await vault.set_secret(NAME, os.urandom(32))
        await vault.get_secret(NAME, stored.version)
    finally:
        await vault.close()

    first, second, third = server.requests
    assert (first.method, first.bearer, first.status) == ("PUT", False, 401)
    assert (second.method, second.bearer, second.status) == ("PUT", True, 200)
    assert (third.method, third.bearer, third.status) == ("GET", True, 200)
    assert credential.calls == [(("https://vault.azure.net/.default",), server.tenant_id)]
    versions = {r.api_version for r in server.requests}
    assert len(versions) == 1 and versions <= {v.value for v in ApiVersion}
    assert credential.closed


async def test_challenge_for_another_resource_is_refused_by_default(server: KeyVaultServer) -> None:
    credential = FakeCredential()
    vault = make_vault(server, credential, verify_challenge_resource=True)
    try:
        with pytest.raises(KeyVaultError) as caught:
            await vault.get_secret(NAME)
    finally:
        await vault.close()
    assert caught.value.details["cause"] == "ValueError"
    assert credential.calls == [] and not any(r.bearer for r in server.requests)


async def test_credential_failure_is_a_vault_error_not_unavailable(server: KeyVaultServer) -> None:
    credential = FakeCredential(error=ClientAuthenticationError("no managed identity endpoint"))
    vault = make_vault(server, credential)
    try:
        with pytest.raises(KeyVaultError) as caught:
            await vault.get_secret(NAME)
    finally:
        await vault.close()
    assert type(caught.value) is KeyVaultError


async def test_rejected_token_is_a_vault_error_without_the_token(server: KeyVaultServer) -> None:
    credential = FakeCredential(token="rejected-token-5f1e9a")
    vault = make_vault(server, credential)
    try:
        with pytest.raises(KeyVaultError) as caught:
            await vault.ping()
    finally:
        await vault.close()
    assert type(caught.value) is KeyVaultError and caught.value.details["status"] == 401
    assert "rejected-token-5f1e9a" not in repr(caught.value) + str(caught.value)


# --- retries and unavailability ---


async def test_429_waits_for_retry_after_then_succeeds(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    key = os.urandom(32)
    await vault.set_secret(NAME, key)
    server.throttle_next(1, retry_after="1")
    start = len(server.requests)

    assert (await vault.get_secret(NAME)).value == key

    throttled, retried = server.requests[start:]
    assert (throttled.status, retried.status) == (429, 200)
    # FAST backs off ~0 s, so only the header explains a 1 s wait.
    assert 0.95 <= retried.arrived - throttled.arrived < 2.5


async def test_429_that_persists_becomes_unavailable(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    await vault.set_secret(NAME, os.urandom(32))
    server.throttle_next(FAST.status + 1, retry_after=None)
    start = len(server.requests)
    with pytest.raises(VaultUnavailableError) as caught:
        await vault.get_secret(NAME)
    assert caught.value.details["status"] == 429 and caught.value.details["error_code"] == "Throttled"
    assert [s for _, _, s in since(server, start)] == [429] * (FAST.status + 1)


async def test_503_is_retried(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    stored = await vault.set_secret(NAME, os.urandom(32))
    server.fail_next(2, status=503)
    start = len(server.requests)
    await vault.disable_version(NAME, stored.version)
    assert since(server, start) == [("PATCH", f"/secrets/{NAME}/{stored.version}", s) for s in (503, 503, 200)]


async def test_dropped_connections_are_retried_for_get_and_disable(
    vault: AzureKeyVault, server: KeyVaultServer
) -> None:
    key = os.urandom(32)
    stored = await vault.set_secret(NAME, key)
    server.drop_next(1)
    assert (await vault.get_secret(NAME)).value == key
    server.drop_next(1)
    start = len(server.requests)
    await vault.disable_version(NAME, stored.version)  # PATCH: retried only because the adapter allows it
    assert [s for _, _, s in since(server, start)] == [None, 200]


async def test_server_down_is_unavailable_within_bounded_time(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    await server.stop()
    began = time.monotonic()
    with pytest.raises(VaultUnavailableError) as caught:
        await vault.get_secret(NAME)
    assert time.monotonic() - began < 3
    assert caught.value.details["cause"] == "ServiceRequestError"
    with pytest.raises(VaultUnavailableError):
        await vault.ping()


async def test_hanging_server_times_out(server: KeyVaultServer) -> None:
    vault = make_vault(server, read_timeout=0.3)
    try:
        await vault.set_secret(NAME, os.urandom(32))
        server.hang_next(FAST.read + 1, seconds=3)
        began = time.monotonic()
        with pytest.raises(VaultUnavailableError):
            await vault.get_secret(NAME)
        assert time.monotonic() - began < 2
    finally:
        await vault.close()


def test_backoff_is_jittered_and_capped() -> None:
    policy = RetryOptions(backoff_factor=1.0, backoff_max=3.0).policy()
    settings = {"history": [None, None, None], "backoff": 1.0, "max_backoff": 3.0}
    waits = {policy.get_backoff_time(settings) for _ in range(50)}
    assert all(1.5 <= w <= 3.0 for w in waits) and len(waits) > 1
    with pytest.raises(ConfigError):
        RetryOptions(total=-1)


# --- what errors may say ---


async def test_errors_never_carry_values_tokens_or_service_messages(
    vault: AzureKeyVault, server: KeyVaultServer
) -> None:
    server.error_marker = " <service text 7c1d>"
    key = os.urandom(32)
    stored = await vault.set_secret(NAME, key)
    await vault.disable_version(NAME, stored.version)
    server.secrets[NAME][0].enabled = True
    server.secrets[NAME][0].value = "not base64 \u00e9 sEcReTvAlUe"
    errors: list[BlobsealError] = []
    for attempt in (
        lambda: vault.get_secret(NAME),  # not base64
        lambda: vault.get_secret("file-missing"),  # 404
    ):
        with pytest.raises(KeyVaultError) as caught:
            await attempt()
        errors.append(caught.value)
    await vault.disable_version(NAME, stored.version)
    with pytest.raises(SecretDisabledError) as disabled:
        await vault.get_secret(NAME)
    errors.append(disabled.value)
    server.throttle_next(FAST.status + 1, retry_after=None)
    with pytest.raises(VaultUnavailableError) as throttled:
        await vault.get_secret(NAME)
    errors.append(throttled.value)

    forbidden = [base64.b64encode(key).decode(), repr(key), "sEcReTvAlUe", "<service text", FakeCredential.token]
    for error in errors:
        text = str(error) + repr(error) + json.dumps(error.to_dict(), default=str)
        assert NAME in str(error) or "file-missing" in str(error)
        assert not [f for f in forbidden if f in text], text


# --- health, lifecycle, metrics, settings ---


async def test_ping_proves_reachability_and_auth(vault: AzureKeyVault, server: KeyVaultServer) -> None:
    await vault.ping()
    assert [(m, p) for m, p, s in since(server, 0) if s == 404] == [("GET", "/secrets/blobseal-ping/")]


async def test_client_is_lazy_and_close_releases_credential(server: KeyVaultServer) -> None:
    credential = FakeCredential()
    vault = make_vault(server, credential)
    assert server.requests == [] and credential.calls == []
    await vault.close()
    assert credential.closed
    with pytest.raises(KeyVaultError):
        await vault.get_secret(NAME)
    assert server.requests == []


async def test_metrics_count_outcomes_by_error_type(vault: AzureKeyVault) -> None:
    labels = {"operation": "get_secret", "backend": "azure", "outcome": "SecretNotFoundError"}
    before = REGISTRY.get_sample_value("blobseal_key_operations_total", labels) or 0.0
    with pytest.raises(SecretNotFoundError):
        await vault.get_secret(NAME)
    assert REGISTRY.get_sample_value("blobseal_key_operations_total", labels) == before + 1


async def test_credentials_from_settings() -> None:
    base = {"key_vault_mode": "azure", "key_vault_url": "https://blobseal-test.vault.azure.net"}
    secret = Settings(**base, key_vault_tenant_id="t", key_vault_client_id="c", key_vault_client_secret="s")
    managed = Settings(**base, key_vault_client_id="00000000-0000-0000-0000-000000000001")
    principal, identity = build_credential(secret), build_credential(managed)
    try:
        assert isinstance(principal, ClientSecretCredential)
        assert isinstance(identity, DefaultAzureCredential)
    finally:
        await principal.close()
        await identity.close()
    vault = AzureKeyVault.from_settings(managed)  # builds nothing that talks to the network
    await vault.close()
