"""A TTL and LRU cache of ``get_secret`` results in front of any ``KeyVault``.

This module owns what may be served from memory and for how long. Entries are keyed by
``(name, version)``; a latest lookup (``version=None``) is cached under ``(name, None)`` and
also under its exact version. Each entry lives at most ``ttl_seconds`` (by the injected
clock), the cache holds at most ``max_entries`` (least recently used evicted first), and
``set_secret``, ``disable_version`` and ``delete_secret`` through this wrapper drop every
entry of that name (``set_secret`` then keeps the version it just stored, exactly). Errors
(not found, disabled) are never cached.

What it cannot see: a version disabled or a name deleted by another process, or directly in
the vault, is still served from here until its entry expires. The TTL is that bound:
``KEY_CACHE_SECONDS`` (60 s at most), the fail-closed bound of docs/RELIABILITY.md.
One instance serves one event loop; it is not shared between threads.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

from shared.metrics import KEY_CACHE
from shared.vault.base import KeyVault, SecretProperties, SecretVersion

__all__ = ["CachedKeyVault", "TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries live at most ``ttl_seconds`` (by ``clock``); at most ``max_entries``, least recently used
    evicted first. An entry may belong to a group (``forget_group`` drops them all at once)."""

    def __init__(self, *, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl, self._max, self._clock = ttl_seconds, max_entries, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._groups: dict[Hashable, set[K]] = {}
        self._group_of: dict[K, Hashable] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires_at, value = found
        if self._clock() >= expires_at:
            self.forget(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, group: Hashable = None) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        if group is not None:
            self._groups.setdefault(group, set()).add(key)
            self._group_of[key] = group
        while len(self._entries) > self._max:
            self.forget(next(iter(self._entries)))

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)
        group = self._group_of.pop(key, None)
        members = self._groups.get(group) if group is not None else None
        if members is not None:
            members.discard(key)
            if not members:
                del self._groups[group]

    def forget_group(self, group: Hashable) -> None:
        for key in self._groups.pop(group, set()):
            self._entries.pop(key, None)
            self._group_of.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._groups.clear()
        self._group_of.clear()


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
        self._inner = inner
        self._cache: TtlCache[tuple[str, str | None], SecretVersion] = TtlCache(
            ttl_seconds=ttl_seconds, max_entries=max_entries, clock=clock)
        # Bumped by every invalidation: a fetch that overlapped one must not be stored,
        # or a value read just before a disable could be served after it.
        self._generation = 0

    def __len__(self) -> int:
        """Entries held (the tests check the LRU bound with it)."""
        return len(self._cache)

    async def get_secret(self, name: str, version: str | None = None) -> SecretVersion:
        cached = self._cache.get((name, version))
        if cached is not None:
            KEY_CACHE.labels("hit").inc()
            return cached
        KEY_CACHE.labels("miss").inc()
        generation = self._generation
        secret = await self._inner.get_secret(name, version)
        if generation == self._generation and secret.properties.enabled:
            self._cache.put((name, version), secret, name)
            if version is None:
                self._cache.put((name, secret.properties.version), secret, name)
        return secret

    async def set_secret(self, name: str, value: bytes, *, expires_on: datetime | None = None) -> SecretProperties:
        """Store through; the new version is then served from memory (a new file's key: no second round trip)."""
        try:
            props = await self._inner.set_secret(name, value, expires_on=expires_on)
        finally:
            self.invalidate(name)
        self._cache.put((name, props.version), SecretVersion(properties=props, value=bytes(value)), name)
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

    async def check_writable(self) -> None:
        await self._inner.check_writable()

    async def close(self) -> None:
        self.clear()
        await self._inner.close()

    def invalidate(self, name: str) -> None:
        """Forget every cached version of ``name``."""
        self._generation += 1
        self._cache.forget_group(name)

    def clear(self) -> None:
        self._generation += 1
        self._cache.clear()
