"""Leases in ``reconciler_state``: a named row holding a holder and an expiry in the database's time.

Each statement stands alone (autocommit) and no connection is held in between, so a lease holds
through PgBouncer's transaction pooling too (a session advisory lock does not: it belongs to whichever
server connection ran the statement). The reconciler's run lease is one (``shared.reconcile.RunLease``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LeaseRepository"]


class LeaseRepository:
    _TAKE = """
        INSERT INTO reconciler_state (name, value)
        VALUES ($1, json_build_object('holder', $2::text, 'until', now() + make_interval(secs => $3))::text)
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
         WHERE (reconciler_state.value::json ->> 'until')::timestamptz <= now()
            OR reconciler_state.value::json ->> 'holder' = $2
        RETURNING 1"""
    _RENEW = """
        UPDATE reconciler_state
           SET value = json_build_object('holder', $2::text, 'until', now() + make_interval(secs => $3))::text
         WHERE name = $1 AND value::json ->> 'holder' = $2"""
    _RELEASE = "DELETE FROM reconciler_state WHERE name = $1 AND value::json ->> 'holder' = $2"
    _HOLDER = "SELECT value::json ->> 'holder' FROM reconciler_state WHERE name = $1"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def take(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease when it is absent, expired or already ``holder``'s."""
        return await self._conn.fetchval(self._TAKE, name, holder, seconds) is not None

    async def renew(self, name: str, holder: str, seconds: float) -> bool:
        return str(await self._conn.execute(self._RENEW, name, holder, seconds)) == "UPDATE 1"

    async def release(self, name: str, holder: str) -> None:
        await self._conn.execute(self._RELEASE, name, holder)

    async def holder(self, name: str) -> str | None:
        """Who holds the lease now (an expired holder included), or None."""
        value = await self._conn.fetchval(self._HOLDER, name)
        return None if value is None else str(value)
