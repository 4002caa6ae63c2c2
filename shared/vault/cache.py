"""A TTL and LRU cache of ``get_secret`` results in front of any ``KeyVault``.

This module owns what may be served from memory and for how long. Entries are keyed by
``(name, version)``; a latest lookup (``version=None``) is cached under ``(name, None)`` and
also under its exact version. Each entry lives at most ``ttl_seconds`` (by the injected
clock), the cache holds at most ``max_entries`` (least recently used evicted first), and
``set_secret``, ``disable_version`` and ``delete_secret`` through this wrapper drop every
entry of that name (``set_secret`` then keeps the version it just stored, exactly). Errors
(not found, disabled) are never cached.

What it cannot see: a version disabled or a name deleted by another process, or directly in
the vault, is still served from here until its entry expires. The TTL is that bound, so keep
it as short as the rotation procedure needs (``KEY_VAULT_CACHE_DURATION_MINUTES``).
One instance serves one event loop; it is not shared between threads.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from shared.metrics import KEY_CACHE
from shared.vault.base import KeyVault, SecretProperties, SecretVersion

__all__ = ["CachedKeyVault"]

_Key = tuple[str, str | None]


class CachedKeyVault:
    """``KeyVault`` that answers repeated ``get_secret`` calls from memory."""

    def __init__(
        self,
        inner: KeyVault,
        *,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._inner = inner
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[_Key, tuple[float, SecretVersion]] = OrderedDict()
        self._keys_by_name: dict[str, set[_Key]] = {}
        # Bumped by every invalidation: a fetch that overlapped one must not be stored,
        # or a value read just before a disable could be served after it.
        self._generation = 0

    def __len__(self) -> int:
        """Entries held (the tests check the LRU bound with it)."""
        return len(self._entries)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        cached = self._lookup((name, version))
        if cached is not None:
            KEY_CACHE.labels("hit").inc()
            return cached
        KEY_CACHE.labels("miss").inc()
        generation = self._generation
        secret = await self._inner.get_secret(name, version)
        if generation == self._generation and secret.properties.enabled:
            self._store((name, version), secret)
            if version is None:
                self._store((name, secret.properties.version), secret)
        return secret

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        """Store through; the new version is then served from memory (a new file's key: no second round trip)."""
        try:
            props = await self._inner.set_secret(name, value, expires_on=expires_on)
        finally:
            self.invalidate(name)
        self._store((name, props.version), SecretVersion(properties=props, value=bytes(value)))
        return props

    async def disable_version(self, name: str, version: str) -> None:
        try:
            await self._inner.disable_version(name, version)
        finally:
            self.invalidate(name)

    async def delete_secret(self, name: str) -> None:
        try:
            await self._inner.delete_secret(name)
        finally:
            self.invalidate(name)

    async def list_versions(self, name: str) -> list[SecretProperties]:
        return await self._inner.list_versions(name)

    async def ping(self) -> None:
        await self._inner.ping()

    async def initialize(self) -> None:
        await self._inner.initialize()

    async def close(self) -> None:
        self.clear()
        await self._inner.close()

    def invalidate(self, name: str) -> None:
        """Forget every cached version of ``name``."""
        self._generation += 1
        for key in self._keys_by_name.pop(name, set()):
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._keys_by_name.clear()

    def _lookup(self, key: _Key) -> SecretVersion | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires_at, secret = found
        if self._clock() >= expires_at:
            self._forget(key)
            return None
        self._entries.move_to_end(key)
        return secret

    def _store(self, key: _Key, secret: SecretVersion) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, secret)
        self._entries.move_to_end(key)
        self._keys_by_name.setdefault(key[0], set()).add(key)
        while len(self._entries) > self._max:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: _Key) -> None:
        self._entries.pop(key, None)
        keys = self._keys_by_name.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_by_name[key[0]]
