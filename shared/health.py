"""Health: up or down for anyone, from cached probes; the details for the ``operate`` role.

Each dependency (storage, database, vault) and each capability (``uploads``: a new file's key could be
placed now) is probed at most once per ``HEALTH_PROBE_SECONDS`` whatever the request rate: callers
inside an interval get the last results, and concurrent callers at its end share one probe. So
anonymous callers cannot turn health into load on the vault or the database, and learn one word.

- ``up``/``down`` (anonymous) follows the dependencies: whether files can be served. A capability that
  fails (uploads refused: the local vault's disk full, the KEK missing) leaves it ``up``: a load
  balancer would otherwise drain every instance (they share the vault) and stop reads that still
  work. The KEK missing fails the ``vault`` dependency too (reads of keys not in memory need it).
- The details (``operate``): ``status`` (``ok``, ``degraded``: a capability fails or an upload is
  plaintext too long, ``unavailable``: a dependency fails), each dependency's and capability's state
  (``ok`` or its error's type), ``causes`` (each failure's own message, free of secrets: what the
  operator must fix), the age of the oldest upload still in plaintext, the last reconciler run.
  ``blobseal_health_check{check}`` has the last probe of each (1 or 0), for alerts.
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
from shared.metrics import HEALTH_CHECKS
from shared.reconcile import LAST_RUN_STATE, OLDEST_PLAINTEXT_STATE

__all__ = ["Health", "Probe"]

PROBE_TIMEOUT_SECONDS = 5.0
Probe = Callable[[], Awaitable[None]]


_Checks = tuple[dict[str, str], dict[str, str]]  # (each check's state, each failure's cause)


class Health:
    def __init__(self, *, db: Database, probes: Mapping[str, Probe], guard: Guard,
                 capabilities: Mapping[str, Probe] | None = None, interval_seconds: float = 30.0,
                 plaintext_alert: timedelta = timedelta(minutes=30), clock: Clock = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db, self._probes, self._guard = db, dict(probes), guard
        self._capabilities = dict(capabilities or {})
        self._interval, self._plaintext_alert, self._clock, self._monotonic = (interval_seconds, plaintext_alert,
                                                                               clock, monotonic)
        self._last: tuple[float, _Checks] | None = None
        self._probing: asyncio.Future[_Checks] | None = None

    async def summary(self) -> bool:
        """Whether every dependency answered at the last probe (at most ``interval`` old)."""
        states, _ = await self._checks()
        return all(states[name] == "ok" for name in self._probes)

    async def details(self, caller: Caller) -> dict[str, Any]:
        """The status, each dependency's and capability's state, the causes of failures, and the plaintext
        report (``operate``)."""
        await self._guard.authorize("health_details", caller, "operate")
        states, causes = await self._checks()
        dependencies = {name: states[name] for name in self._probes}
        report: dict[str, Any] = {"dependencies": dependencies, **{name: states[name] for name in self._capabilities},
                                  "causes": causes, "degraded": False}
        if dependencies.get("database") == "ok":
            report.update(await self._plaintext_report())
        report["degraded"] = bool(report["degraded"]) or any(states[name] != "ok" for name in self._capabilities)
        healthy = all(state == "ok" for state in dependencies.values())
        report["status"] = "unavailable" if not healthy else "degraded" if report["degraded"] else "ok"
        return report

    async def _checks(self) -> _Checks:
        if self._last is not None and self._monotonic() - self._last[0] < self._interval:
            return self._last[1]
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._probing)

    async def _probe(self) -> _Checks:
        probes = {**self._probes, **self._capabilities}
        results = await asyncio.gather(*(asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
                                         for probe in probes.values()), return_exceptions=True)
        states, causes = {}, {}
        for name, result in zip(probes, results, strict=True):
            states[name] = "ok" if not isinstance(result, BaseException) else type(result).__name__
            HEALTH_CHECKS.labels(name).set(1 if states[name] == "ok" else 0)
            if isinstance(result, BaseException):
                causes[name] = _cause(result)
        self._last = (self._monotonic(), (states, causes))
        return states, causes

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


def _cause(exc: BaseException) -> str:
    """What failed, for the operator: our own message (free of secrets by construction), else the type."""
    if isinstance(exc, BlobsealError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_SECONDS:.0f} s"
    return f"{type(exc).__name__} (unexpected)"
