"""Azure Monitor export (the fleet-wide view), through azure-monitor-opentelemetry.

opencensus-ext-azure, named in the original brief, was retired on 2024-09-30; its supported
successor is azure-monitor-opentelemetry. When ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is
set, logs and traces go to Application Insights, and every ``blobseal_*`` Prometheus counter
is mirrored as an OpenTelemetry observable counter (read from the same registry at export
time, so there is one source of truth for the numbers). Without it, nothing is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from shared.config import Settings
from shared.metrics import REGISTRY

__all__ = ["configure_telemetry", "counter_observations"]

log = logging.getLogger(__name__)
_configured = False


def counter_observations(registry: CollectorRegistry, family: str) -> list[tuple[float, dict[str, str]]]:
    """The current samples of one Prometheus counter family as (value, labels)."""
    return [(sample.value, dict(sample.labels)) for metric in registry.collect() if metric.name == family
            for sample in metric.samples if sample.name == f"{family}_total"]


def _families(registry: CollectorRegistry) -> Iterable[tuple[str, str]]:
    return [(metric.name, metric.documentation) for metric in registry.collect() if metric.type == "counter"]


def configure_telemetry(settings: Settings, registry: CollectorRegistry = REGISTRY) -> bool:
    """Set up export once per process; False when no connection string is configured."""
    global _configured
    if _configured or not settings.app_insights_connection_string:
        return _configured
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    configure_azure_monitor(connection_string=settings.app_insights_connection_string, logger_name="shared")
    meter = metrics.get_meter("blobseal")
    for family, description in _families(registry):
        def observe(_options: CallbackOptions, family: str = family) -> list[Observation]:
            return [Observation(value, labels) for value, labels in counter_observations(registry, family)]

        meter.create_observable_counter(family, callbacks=[observe], description=description)
    _configured = True
    log.info("Azure Monitor export configured")
    return True
