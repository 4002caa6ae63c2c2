"""The reconciler's run lease: one holder at a time, renewed while held, taken over once it runs out."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from shared.db import Database
from shared.reconcile import LEASE_STATE, RunLease

pytestmark = pytest.mark.postgres


async def _lease_row(db: Database) -> str | None:
    async with db.connection() as conn:
        value = await conn.fetchval("SELECT value FROM reconciler_state WHERE name = $1", LEASE_STATE)
    return None if value is None else str(value)


async def test_one_holder_at_a_time_and_none_left_after(pg_db: Database) -> None:
    one = RunLease(pg_db, duration=timedelta(minutes=1))
    two = RunLease(pg_db, duration=timedelta(minutes=1))
    async with one.held() as first:
        assert first
        async with two.held() as second:
            assert not second
        assert await one.take()  # ours already: taking it again is a renewal
        assert one.holder in (await _lease_row(pg_db) or "")
    assert await _lease_row(pg_db) is None
    async with two.held() as second:
        assert second


async def test_many_at_once_exactly_one_takes_it(pg_db: Database) -> None:
    leases = [RunLease(pg_db, duration=timedelta(minutes=1)) for _ in range(12)]
    taken = await asyncio.gather(*(lease.take() for lease in leases))
    assert taken.count(True) == 1


async def test_a_held_lease_is_renewed_past_its_duration(pg_db: Database) -> None:
    holder = RunLease(pg_db, duration=timedelta(seconds=0.8))  # renewed every 0.2 s
    async with holder.held() as taken:
        assert taken
        await asyncio.sleep(2.0)  # more than twice its duration: still held
        assert not await RunLease(pg_db, duration=timedelta(seconds=1)).take()
        assert not holder.lost


async def test_an_abandoned_lease_runs_out_and_its_holder_learns_it_lost_it(pg_db: Database) -> None:
    crashed = RunLease(pg_db, duration=timedelta(seconds=0.5))
    assert await crashed.take()  # and never renewed: its process died
    successor = RunLease(pg_db, duration=timedelta(minutes=1))
    assert not await successor.take()
    await asyncio.sleep(0.7)
    assert await successor.take()
    assert not await crashed.renew() and crashed.lost  # a holder that was only stalled stops
    await crashed.release()  # releases nothing of the successor's
    assert successor.holder in (await _lease_row(pg_db) or "")
