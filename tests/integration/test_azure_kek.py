"""The envelope KEK adapter with the real ``azure-keyvault-keys`` SDK against the loopback server.

The server (``tests/support/keyvault_server.py``) holds real RSA keys and wraps/unwraps with
RSA-OAEP-256, so a wrong algorithm, version or key shows up as a failed unwrap. Request counts
are what the SDK really sends: wrapping happens in this process with the public key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.exceptions import AzureError, HttpResponseError
from azure.keyvault.keys import ApiVersion
from azure.keyvault.keys._shared import http_challenge_cache as keys_challenge_cache

from shared.config import Settings
from shared.errors import BlobsealError, ConfigError, KeyVaultError, VaultUnavailableError
from shared.metrics import REGISTRY
from shared.vault.azure import TransportOptions
from shared.vault.azure_kek import KEY_SIZE, AzureKeyWrapper
from shared.vault.base import parse_key_reference
from shared.vault.kek import KekMissingError, Wrapped
from tests.support import FakeCredential, KeyVaultServer
from tests.support.keyvault_server import FAST_RETRY as FAST

KEK = "blobseal-kek"


@pytest.fixture
def server(keyvault_server: KeyVaultServer) -> KeyVaultServer:
    return keyvault_server


def make_wrapper(server: KeyVaultServer, credential: Any = None, name: str = KEK, **options: Any) -> AzureKeyWrapper:
    transport = TransportOptions(
        verify_challenge_resource=False,
        connection_verify=str(server.tls.ca_file),
        connection_timeout=1.0,
        read_timeout=2.0,
    )
    settings: dict[str, Any] = {"retry": FAST, "transport": transport}
    settings.update(options)
    return AzureKeyWrapper(server.url, credential or FakeCredential(), name, **settings)


@pytest.fixture
async def wrapper(server: KeyVaultServer) -> AsyncIterator[AzureKeyWrapper]:
    adapter = make_wrapper(server)
    yield adapter
    await adapter.close()


def since(server: KeyVaultServer, start: int) -> list[tuple[str, str, int | None]]:
    return [(r.method, r.path, r.status) for r in server.requests[start:]]


# --- wrap, unwrap, versions ---


async def test_wrap_then_unwrap_round_trips_with_rsa_oaep_256_under_the_recorded_version(
    wrapper: AzureKeyWrapper, server: KeyVaultServer
) -> None:
    reference = await wrapper.create()
    name, version = parse_key_reference(reference)
    key = os.urandom(32)

    first, second = await wrapper.wrap(key), await wrapper.wrap(key)

    assert (name, len(version)) == (KEK, 32) and server.key_versions(KEK) == [version]
    assert first.kek_reference == second.kek_reference == reference
    assert len(first.wrapped) == KEY_SIZE // 8 and key not in first.wrapped
    assert first.wrapped != second.wrapped  # OAEP is randomized
    assert server.unwrap_with(KEK, version, first.wrapped) == key  # RSA-OAEP-256, that exact version
    assert await wrapper.unwrap(first) == key and await wrapper.unwrap(second) == key
    stored = server.keys[KEK][0]
    assert stored.key_ops == ["wrapKey", "unwrapKey"] and stored.private.key_size == KEY_SIZE
    assert {r.api_version for r in server.requests} <= {v.value for v in ApiVersion}
    assert first.wrapped.hex() not in repr(first)


async def test_no_kek_is_kek_missing(wrapper: AzureKeyWrapper, server: KeyVaultServer) -> None:
    with pytest.raises(KekMissingError) as caught:
        await wrapper.current()
    assert caught.value.details["status"] == 404 and caught.value.details["error_code"] == "KeyNotFound"
    with pytest.raises(KekMissingError):
        await wrapper.wrap(os.urandom(32))
    await wrapper.create()
    with pytest.raises(KekMissingError):  # a version the vault does not have
        await wrapper.unwrap(Wrapped(f"{KEK}/{'0' * 32}", os.urandom(KEY_SIZE // 8)))


async def test_rotation_keeps_old_wrappings_readable_and_new_wraps_name_the_new_version(
    wrapper: AzureKeyWrapper, server: KeyVaultServer
) -> None:
    v1 = await wrapper.create()
    old_key = os.urandom(32)
    old = await wrapper.wrap(old_key)
    v2 = await wrapper.create()
    start = len(server.requests)

    new = await wrapper.wrap(os.urandom(32))

    assert v1 != v2 and server.key_versions(KEK) == [parse_key_reference(v)[1] for v in (v1, v2)]
    assert (old.kek_reference, new.kek_reference) == (v1, v2)
    assert await wrapper.current() == v2
    assert since(server, start) == []  # create() refreshed the current version: no GET
    assert await wrapper.unwrap(old) == old_key
    assert since(server, start) == [("POST", f"/keys/{KEK}/{parse_key_reference(v1)[1]}/unwrapkey", 200)]


async def test_a_rotation_elsewhere_is_used_here_within_the_cache_ttl(server: KeyVaultServer) -> None:
    now = [0.0]
    here, elsewhere = make_wrapper(server, current_ttl=300, clock=lambda: now[0]), make_wrapper(server)
    try:
        v1 = await here.create()
        v2 = await elsewhere.create()
        now[0] += 299
        assert (await here.wrap(os.urandom(32))).kek_reference == v1  # cached: no GET
        now[0] += 2  # the cache time ran out
        start = len(server.requests)
        assert (await here.wrap(os.urandom(32))).kek_reference == v2
        assert since(server, start) == [("GET", f"/keys/{KEK}/", 200)]
    finally:
        await here.close()
        await elsewhere.close()


async def test_concurrent_cold_wraps_share_one_get(server: KeyVaultServer) -> None:
    creator = make_wrapper(server)
    await creator.create()
    await creator.close()
    cold = make_wrapper(server)
    try:
        start = len(server.requests)
        wrapped = await asyncio.gather(*(cold.wrap(os.urandom(32)) for _ in range(10)))
        assert len({w.kek_reference for w in wrapped}) == 1
        assert since(server, start) == [("GET", f"/keys/{KEK}/", 200)]
    finally:
        await cold.close()


# --- what calls cost ---


async def test_request_costs_of_wrap_and_unwrap(server: KeyVaultServer) -> None:
    creator = make_wrapper(server)
    await creator.create()
    await creator.close()
    keys_challenge_cache.clear()  # a fresh process: the first request meets the challenge
    adapter = make_wrapper(server)
    other = make_wrapper(server)
    try:
        keys = [os.urandom(32) for _ in range(20)]
        start = len(server.requests)
        wrapped = [await adapter.wrap(k) for k in keys]
        # Cold: the challenge round trip and one GET of the current version; then nothing at all.
        assert since(server, start) == [("GET", f"/keys/{KEK}/", 401), ("GET", f"/keys/{KEK}/", 200)]

        start = len(server.requests)
        wrapped += [await adapter.wrap(k) for k in keys]  # warm
        assert since(server, start) == []

        start = len(server.requests)
        assert [await adapter.unwrap(w) for w in wrapped[:20]] == keys
        version = parse_key_reference(wrapped[0].kek_reference)[1]
        assert since(server, start) == [("POST", f"/keys/{KEK}/{version}/unwrapkey", 200)] * 20

        start = len(server.requests)  # a version this process has not seen yet: one GET, the first time
        assert [await other.unwrap(w) for w in wrapped[:3]] == keys[:3]
        assert since(server, start) == [("GET", f"/keys/{KEK}/{version}", 200)] + [
            ("POST", f"/keys/{KEK}/{version}/unwrapkey", 200)
        ] * 3
    finally:
        await adapter.close()
        await other.close()


# --- refusals ---


async def test_tampered_wrapped_key_is_a_vault_error(wrapper: AzureKeyWrapper, server: KeyVaultServer) -> None:
    await wrapper.create()
    wrapped = await wrapper.wrap(os.urandom(32))
    flipped = bytes([wrapped.wrapped[0] ^ 1]) + wrapped.wrapped[1:]
    for bad in (flipped, wrapped.wrapped[:-1], b""):
        with pytest.raises(KeyVaultError) as caught:
            await wrapper.unwrap(Wrapped(wrapped.kek_reference, bad))
        assert type(caught.value) is KeyVaultError and caught.value.operation == "unwrap_key"
        assert isinstance(caught.value.__cause__, AzureError | ValueError)
    assert caught.value.details["kek"] == wrapped.kek_reference
    assert [r.status for r in server.requests if r.path.endswith("/unwrapkey")] == [400, 400, 400]


async def test_unwrap_refuses_another_kek_before_any_request(
    wrapper: AzureKeyWrapper, server: KeyVaultServer
) -> None:
    await wrapper.create()
    wrapped = await wrapper.wrap(os.urandom(32))
    version = parse_key_reference(wrapped.kek_reference)[1]
    start = len(server.requests)
    for reference in (f"other-kek/{version}", f"{KEK}", f"{KEK}/{version}/x", f"{KEK}/{version}\n"):
        with pytest.raises(KeyVaultError) as caught:
            await wrapper.unwrap(Wrapped(reference, wrapped.wrapped))
        assert type(caught.value) is KeyVaultError
    assert since(server, start) == []


async def test_a_disabled_version_is_refused_not_missing(wrapper: AzureKeyWrapper, server: KeyVaultServer) -> None:
    await wrapper.create()
    wrapped = await wrapper.wrap(os.urandom(32))
    server.keys[KEK][0].enabled = False
    with pytest.raises(KeyVaultError) as caught:
        await wrapper.unwrap(wrapped)
    assert type(caught.value) is KeyVaultError and caught.value.details["inner_code"] == "KeyDisabled"
    fresh = make_wrapper(server)
    try:
        with pytest.raises(KeyVaultError) as current:
            await fresh.current()
        assert type(current.value) is KeyVaultError and current.value.details["status"] == 403
    finally:
        await fresh.close()


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        AzureKeyWrapper("http://vault.example", FakeCredential(), KEK)
    for name in ("", "kek_1", "kek/1", "k" * 128, "kek\n"):
        with pytest.raises(ConfigError):
            AzureKeyWrapper("https://vault.example", FakeCredential(), name)


# --- throttling and unavailability ---


async def test_429_waits_for_retry_after_then_succeeds(wrapper: AzureKeyWrapper, server: KeyVaultServer) -> None:
    await wrapper.create()
    key = os.urandom(32)
    wrapped = await wrapper.wrap(key)
    server.throttle_next(1, retry_after="1")
    start = len(server.requests)

    assert await wrapper.unwrap(wrapped) == key

    throttled, retried = server.requests[start:]
    assert (throttled.status, retried.status) == (429, 200)
    assert 0.95 <= retried.arrived - throttled.arrived < 2.5  # FAST backs off ~0 s: only the header explains 1 s


async def test_key_operations_limit_is_shared_and_waited_out(
    wrapper: AzureKeyWrapper, server: KeyVaultServer
) -> None:
    await wrapper.create()
    keys = [os.urandom(32) for _ in range(5)]
    wrapped = [await wrapper.wrap(k) for k in keys]
    server.limit_key_operations(3, 1.0)
    start, began = len(server.requests), time.monotonic()

    assert [await wrapper.unwrap(w) for w in wrapped] == keys

    statuses = [s for _, _, s in since(server, start)]
    assert statuses.count(200) == 5 and statuses.count(429) == server.throttled >= 1
    assert time.monotonic() - began >= 0.9  # five requests at three per second

    server.limit_key_operations(2, 1.0)
    await wrapper.unwrap(wrapped[0])
    await wrapper.unwrap(wrapped[1])
    start = len(server.requests)
    await wrapper.create()  # create shares the window with unwrap: throttled, retried after 1 s
    assert since(server, start) == [("POST", f"/keys/{KEK}/create", 429), ("POST", f"/keys/{KEK}/create", 200)]


async def test_persistent_503_is_unavailable_within_bounded_time(
    wrapper: AzureKeyWrapper, server: KeyVaultServer
) -> None:
    await wrapper.create()
    wrapped = await wrapper.wrap(os.urandom(32))
    server.fail_next(FAST.status + 1, status=503)
    began = time.monotonic()
    with pytest.raises(VaultUnavailableError) as caught:
        await wrapper.unwrap(wrapped)
    assert time.monotonic() - began < 3
    assert caught.value.details["status"] == 503 and caught.value.operation == "unwrap_key"
    fresh = make_wrapper(server)
    try:
        server.fail_next(FAST.status + 1, status=503)
        with pytest.raises(VaultUnavailableError):
            await fresh.current()
        await server.stop()
        began = time.monotonic()
        with pytest.raises(VaultUnavailableError) as down:
            await wrapper.unwrap(wrapped)
        assert time.monotonic() - began < 3 and down.value.details["cause"] == "ServiceRequestError"
    finally:
        await fresh.close()


# --- what errors and logs may say ---


async def test_no_key_bytes_tokens_or_service_text_in_errors_or_logs(
    wrapper: AzureKeyWrapper, server: KeyVaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.error_marker = " <service text 7c1d>"
    errors: list[BlobsealError] = []
    with pytest.raises(KekMissingError) as missing:
        await wrapper.wrap(os.urandom(32))
    errors.append(missing.value)
    await wrapper.create()
    key = os.urandom(32)
    wrapped = await wrapper.wrap(key)
    assert await wrapper.unwrap(wrapped) == key
    tampered = Wrapped(wrapped.kek_reference, wrapped.wrapped[::-1])
    for refused in (tampered, Wrapped("other-kek/" + "0" * 32, wrapped.wrapped)):
        with pytest.raises(KeyVaultError) as caught:
            await wrapper.unwrap(refused)
        errors.append(caught.value)
    server.throttle_next(FAST.status + 1, retry_after=None)
    with pytest.raises(VaultUnavailableError) as throttled:
        await wrapper.unwrap(wrapped)
    errors.append(throttled.value)

    forbidden = [FakeCredential.token, "<service text"]
    for secret in (key, wrapped.wrapped, tampered.wrapped):
        forbidden += [secret.hex(), repr(secret), base64.b64encode(secret).decode(),
                      base64.urlsafe_b64encode(secret).decode().rstrip("=")]
    for error in errors:
        text = str(error) + repr(error) + json.dumps(error.to_dict(), default=str)
        assert not [f for f in forbidden if f in text], text
        assert "KEK" in str(error)
    logged = caplog.text + "".join(str(r.args) + r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING and "unavailable" in r.getMessage() for r in caplog.records)
    assert not [f for f in forbidden if f in logged]


# --- lifecycle, metrics, settings ---


async def test_lazy_clients_and_close_releases_credential(server: KeyVaultServer) -> None:
    credential = FakeCredential()
    adapter = make_wrapper(server, credential)
    assert server.requests == [] and credential.calls == []
    await adapter.create()
    wrapped = await adapter.wrap(os.urandom(32))
    await adapter.unwrap(wrapped)
    await adapter.close()
    await adapter.close()
    assert credential.closed
    start = len(server.requests)
    for attempt in (adapter.current, lambda: adapter.wrap(os.urandom(32)), lambda: adapter.unwrap(wrapped)):
        with pytest.raises(KeyVaultError, match="closed"):
            await attempt()
    assert since(server, start) == []


async def test_metrics_count_each_call_by_outcome(wrapper: AzureKeyWrapper) -> None:
    def count(operation: str, outcome: str) -> float:
        labels = {"operation": operation, "backend": "azure", "outcome": outcome}
        return REGISTRY.get_sample_value("blobseal_key_operations_total", labels) or 0.0

    before = {(op, out): count(op, out) for op, out in
              [("get_kek", "KekMissingError"), ("create_kek", "ok"), ("wrap_key", "ok"), ("unwrap_key", "ok"),
               ("unwrap_key", "KeyVaultError")]}
    with pytest.raises(KekMissingError):
        await wrapper.current()
    await wrapper.create()
    wrapped = [await wrapper.wrap(os.urandom(32)) for _ in range(3)]
    await wrapper.unwrap(wrapped[0])
    with pytest.raises(KeyVaultError):
        await wrapper.unwrap(Wrapped(wrapped[0].kek_reference, b"x" * 384))
    with pytest.raises(KeyVaultError):
        await wrapper.unwrap(Wrapped("other-kek/" + "0" * 32, b"x"))
    added = {k: count(*k) - v for k, v in before.items()}
    assert added == {("get_kek", "KekMissingError"): 1, ("create_kek", "ok"): 1, ("wrap_key", "ok"): 3,
                     ("unwrap_key", "ok"): 1, ("unwrap_key", "KeyVaultError"): 2}


async def test_from_settings_builds_nothing_that_talks_to_the_network() -> None:
    settings = Settings(key_vault_mode="azure", key_vault_url="https://blobseal-test.vault.azure.net",
                        key_vault_client_id="00000000-0000-0000-0000-000000000001", key_vault_kek_name="kek-test-1")
    adapter = AzureKeyWrapper.from_settings(settings)
    assert (adapter.name, adapter.vault_url) == ("kek-test-1", "https://blobseal-test.vault.azure.net")
    await adapter.close()


async def test_sdk_errors_never_escape_untranslated(wrapper: AzureKeyWrapper, server: KeyVaultServer) -> None:
    await wrapper.create()
    wrapped = await wrapper.wrap(os.urandom(32))
    for status in (400, 401, 403, 409, 500):
        server.fail_next(FAST.status + 1, status=status)
        with pytest.raises(KeyVaultError) as caught:
            await wrapper.unwrap(wrapped)
        assert not isinstance(caught.value, HttpResponseError)
        assert isinstance(caught.value, VaultUnavailableError) is (status == 500)
        server.clear_faults()
