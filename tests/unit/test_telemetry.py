"""The Prometheus -> OpenTelemetry mirror reads the same registry; no export without a connection string."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shared.config import Settings
from shared.telemetry import configure_telemetry, counter_observations


def test_counter_observations_read_the_registry() -> None:
    registry = CollectorRegistry()
    counter = Counter("blobseal_demo", "demo", ["outcome"], registry=registry)
    counter.labels("ok").inc(3)
    counter.labels("IntegrityError").inc()
    assert sorted(counter_observations(registry, "blobseal_demo"), key=lambda o: o[0]) == [
        (1.0, {"outcome": "IntegrityError"}), (3.0, {"outcome": "ok"})]
    assert counter_observations(registry, "blobseal_missing") == []


def test_nothing_is_configured_without_a_connection_string() -> None:
    assert configure_telemetry(Settings.from_env({})) is False
