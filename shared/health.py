"""Health: up or down for anyone, from cached probes; the details for the ``operate`` role.

Each dependency (storage, database, vault) is probed at most once per ``HEALTH_PROBE_SECONDS``
whatever the request rate: callers inside an interval get the last results, and concurrent callers
at its end share one probe. So anonymous callers cannot turn health into load on the vault or the
database, and learn one word (``up``/``down``). The details (each dependency's state or error type,
the age of the oldest upload still in plaintext, the last reconciler run) are for ``operate`` only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from shared.access import Guard
from shared.clock import Clock, utcnow
from shared.db.failures import FailureRepository
from shared.db.pool import Database
from shared.errors import BlobsealError
from shared.identity import Caller
from shared.reconcile import LAST_RUN_STATE, OLDEST_PLAINTEXT_STATE

__all__ = ["Health", "Probe"]

PROBE_TIMEOUT_SECONDS = 5.0
Probe = Callable[[], Awaitable[None]]


class Health:
    def __init__(self, *, db: Database, probes: Mapping[str, Probe], guard: Guard, interval_seconds: float = 30.0,
                 plaintext_alert: timedelta = timedelta(minutes=30), clock: Clock = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db, self._probes, self._guard = db, dict(probes), guard
        self._interval, self._plaintext_alert, self._clock, self._monotonic = (interval_seconds, plaintext_alert,
                                                                               clock, monotonic)
        self._last: tuple[float, dict[str, str]] | None = None
        self._probing: asyncio.Future[dict[str, str]] | None = None

    async def summary(self) -> bool:
        """Whether every dependency answered at the last probe (at most ``interval`` old)."""
        return all(state == "ok" for state in (await self._checks()).values())

    async def details(self, caller: Caller) -> dict[str, Any]:
        """Each dependency's state (``ok`` or its error's type), and the plaintext report (``operate``)."""
        await self._guard.authorize("health_details", caller, "operate")
        checks = await self._checks()
        report: dict[str, Any] = {"dependencies": checks}
        if checks.get("database") == "ok":
            report.update(await self._plaintext_report())
        return report

    async def _checks(self) -> dict[str, str]:
        if self._last is not None and self._monotonic() - self._last[0] < self._interval:
            return self._last[1]
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._probing)

    async def _probe(self) -> dict[str, str]:
        results = await asyncio.gather(*(asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
                                         for probe in self._probes.values()), return_exceptions=True)
        checks = {name: "ok" if not isinstance(r, BaseException) else type(r).__name__
                  for name, r in zip(self._probes, results, strict=True)}
        self._last = (self._monotonic(), checks)
        return checks

    async def _plaintext_report(self) -> dict[str, Any]:
        """What the last reconciler run saw in ``ingest`` (health must not list a container itself)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), self._db.connection("health") as conn:
                repo = FailureRepository(conn)
                oldest, last_run = await repo.state(OLDEST_PLAINTEXT_STATE), await repo.state(LAST_RUN_STATE)
        except (BlobsealError, TimeoutError):
            return {}
        age = (self._clock() - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
        return {"oldest_plaintext_seconds": round(age), "reconciled_at": last_run or None,
                "degraded": age > self._plaintext_alert.total_seconds()}
