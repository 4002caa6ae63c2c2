"""The TTL/LRU cache wrapper, over the real local vault (counting what reaches it)."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import pytest

from shared.errors import SecretDisabledError, SecretNotFoundError
from shared.metrics import REGISTRY
from shared.vault.base import SecretProperties, SecretVersion
from shared.vault.cache import CachedKeyVault
from shared.vault.local import LocalJsonVault


class CountingVault(LocalJsonVault):
    """The real local vault, counting ``get_secret`` calls that reach it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets = 0

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        self.gets += 1
        return await super().get_secret(name, version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def inner(tmp_path: Path) -> CountingVault:
    vault = CountingVault(tmp_path / "secrets")
    await vault.initialize()  # a new vault, as the key service starts one
    return vault


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(inner: CountingVault, clock: Clock) -> CachedKeyVault:
    return CachedKeyVault(inner, ttl_seconds=60, max_entries=3, clock=clock)


async def test_repeated_gets_are_served_from_memory(cache: CachedKeyVault, inner: CountingVault) -> None:
    stored = await cache.set_secret("file-a", b"k" * 32)

    latest = [await cache.get_secret("file-a") for _ in range(3)]
    exact = await cache.get_secret("file-a", stored.version)

    assert {secret.value for secret in latest} == {b"k" * 32}
    assert exact == latest[0]
    assert inner.gets == 1  # the latest lookup also filled the exact version's entry


async def test_entries_expire_after_the_ttl(cache: CachedKeyVault, inner: CountingVault, clock: Clock) -> None:
    await cache.set_secret("file-a", b"k" * 32)
    await cache.get_secret("file-a")

    clock.now += 59.9
    await cache.get_secret("file-a")
    assert inner.gets == 1
    clock.now += 0.1
    await cache.get_secret("file-a")
    assert inner.gets == 2


async def test_set_secret_replaces_the_cached_latest(cache: CachedKeyVault) -> None:
    first = await cache.set_secret("file-a", b"1" * 32)
    await cache.get_secret("file-a")

    second = await cache.set_secret("file-a", b"2" * 32)

    assert (await cache.get_secret("file-a")).properties.version == second.version
    assert (await cache.get_secret("file-a", first.version)).value == b"1" * 32


async def test_a_new_version_is_served_from_memory_right_after_it_is_stored(
        cache: CachedKeyVault, inner: CountingVault) -> None:
    stored = await cache.set_secret("file-a", b"k" * 32)
    assert (await cache.get_secret("file-a", stored.version)).value == b"k" * 32
    assert inner.gets == 0  # a new file's key costs one vault round trip (the create), not two
    await cache.disable_version("file-a", stored.version)
    with pytest.raises(SecretDisabledError):
        await cache.get_secret("file-a", stored.version)


async def test_a_disabled_version_is_never_served(cache: CachedKeyVault) -> None:
    first = await cache.set_secret("file-a", b"1" * 32)
    await cache.set_secret("file-a", b"2" * 32)
    await cache.get_secret("file-a", first.version)
    await cache.get_secret("file-a")

    await cache.disable_version("file-a", first.version)

    with pytest.raises(SecretDisabledError):
        await cache.get_secret("file-a", first.version)
    with pytest.raises(SecretDisabledError):  # errors are not cached either
        await cache.get_secret("file-a", first.version)
    assert (await cache.get_secret("file-a")).value == b"2" * 32


async def test_a_deleted_secret_is_never_served(cache: CachedKeyVault) -> None:
    stored = await cache.set_secret("file-a", b"k" * 32)
    await cache.get_secret("file-a")

    await cache.delete_secret("file-a")

    with pytest.raises(SecretNotFoundError):
        await cache.get_secret("file-a")
    with pytest.raises(SecretNotFoundError):
        await cache.get_secret("file-a", stored.version)


async def test_invalidation_only_touches_that_name(cache: CachedKeyVault, inner: CountingVault) -> None:
    await cache.set_secret("file-a", b"a" * 32)
    await cache.set_secret("file-b", b"b" * 32)
    await cache.get_secret("file-a")

    await cache.set_secret("file-b", b"c" * 32)
    await cache.get_secret("file-a")

    assert inner.gets == 1


async def test_size_is_bounded_least_recently_used_first(cache: CachedKeyVault, inner: CountingVault) -> None:
    versions = {name: (await cache.set_secret(name, name.encode() * 8)).version for name in ("file-a", "file-b")}
    await cache.set_secret("file-c", b"c" * 32)
    cache.clear()  # (the sets primed their exact versions; start from nothing)
    await cache.get_secret("file-a", versions["file-a"])
    await cache.get_secret("file-b", versions["file-b"])
    await cache.get_secret("file-a", versions["file-a"])  # a is now more recent than b
    assert inner.gets == 2

    await cache.get_secret("file-c")  # two entries (latest and exact): evicts b, keeps a
    await cache.get_secret("file-c")
    await cache.get_secret("file-a", versions["file-a"])
    assert (len(cache), inner.gets) == (3, 3)
    await cache.get_secret("file-b", versions["file-b"])
    assert (len(cache), inner.gets) == (3, 4)


async def test_a_get_racing_a_disable_is_not_cached(cache: CachedKeyVault, inner: CountingVault) -> None:
    stored = await cache.set_secret("file-a", b"k" * 32)
    fetched = asyncio.Event()
    release = asyncio.Event()
    real_get = LocalJsonVault.get_secret

    async def slow_get(name: str, version: str | None = None) -> SecretVersion:
        secret = await real_get(inner, name, version)
        fetched.set()
        await release.wait()
        return secret

    inner.get_secret = slow_get  # type: ignore[method-assign]
    cache.clear()  # (the set primed the cache: make this get go to the vault)
    racing = asyncio.create_task(cache.get_secret("file-a", stored.version))
    await fetched.wait()  # the value was read while still enabled ...
    await cache.disable_version("file-a", stored.version)  # ... and disabled before it returned
    release.set()
    await racing

    del inner.get_secret
    with pytest.raises(SecretDisabledError):
        await cache.get_secret("file-a", stored.version)


async def test_zero_ttl_caches_nothing(inner: CountingVault) -> None:
    cache = CachedKeyVault(inner, ttl_seconds=0, max_entries=10)
    await cache.set_secret("file-a", b"k" * 32)
    await cache.get_secret("file-a")
    await cache.get_secret("file-a")
    assert (len(cache), inner.gets) == (0, 2)


async def test_other_operations_pass_through(cache: CachedKeyVault, inner: CountingVault) -> None:
    stored = await cache.set_secret("file-a", b"k" * 32, expires_on=datetime(2030, 1, 1).astimezone())

    assert await cache.list_versions("file-a") == [stored]
    assert stored.expires_on is not None
    await cache.ping()
    await cache.close()
    assert len(cache) == 0


def cache_lookups(outcome: str) -> float:
    return REGISTRY.get_sample_value("blobseal_key_cache_total", {"outcome": outcome}) or 0.0


async def test_hits_and_misses_are_counted(cache: CachedKeyVault) -> None:
    hits, misses = cache_lookups("hit"), cache_lookups("miss")
    await cache.set_secret("file-a", b"k" * 32)

    for _ in range(3):
        await cache.get_secret("file-a")

    assert (cache_lookups("hit"), cache_lookups("miss")) == (hits + 2, misses + 1)


def test_bad_bounds_are_refused(inner: CountingVault) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CachedKeyVault(inner, ttl_seconds=60, max_entries=0)


async def test_properties_are_what_the_inner_vault_says(cache: CachedKeyVault) -> None:
    stored = await cache.set_secret("file-a", os.urandom(32))
    secret = await cache.get_secret("file-a")
    assert isinstance(secret.properties, SecretProperties)
    assert secret.properties == stored
