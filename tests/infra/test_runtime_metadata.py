"""What Microsoft's Python runtime reports about function_app.py, checked against the deployment in infra/.

The metadata is the runtime's own ``FunctionMetadataResponse`` (``python -m devhost.metadata``: worker
init, metadata and load, nothing invoked), read with the settings the templates give the app in Azure
(``BLOB_TRIGGER_SOURCE=EventGrid`` ...). Checked: every ``%SETTING%`` a binding names is an app
setting of infra/main.bicep; the blob trigger's connection has its identity-based settings; the Event
Grid subscription names the blob trigger's function and container; the timers' schedules deployed are
valid NCRONTAB; every request of infra/smoke.sh reaches a function with its method and the auth level
smoke.sh expects.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devhost.frontdoor import routes_of
from devhost.functions import Function, resolve
from devhost.ncrontab import Schedule
from tests.infra.infra_helpers import INFRA, load_check_infra
from tests.infra.test_app_settings import app_settings
from tests.support.runtime import runtime_functions, runtime_metadata

AZURE_ENV = {"BLOB_TRIGGER_SOURCE": "EventGrid", "INGEST_CONTAINER": "ingest", "ROTATION_SCHEDULE": "0 0 * * * *",
             "RECONCILE_SCHEDULE": "0 */5 * * * *", "DataStorage__blobServiceUri": "https://account.blob.example"}


@pytest.fixture(scope="module")
def settings() -> dict[str, Any]:
    return app_settings()


def keys_enabled(settings: dict[str, Any]) -> bool:
    """Whether the deployed app has the host check function keys (off: App Service Authentication in front)."""
    return str(settings.get("FUNCTION_KEYS_ENABLED") or "true").lower() != "false"


@pytest.fixture(scope="module")
def azure_functions(settings: dict[str, Any]) -> dict[str, Function]:
    keys = "true" if keys_enabled(settings) else "false"
    return runtime_functions(runtime_metadata(**AZURE_ENV, FUNCTION_KEYS_ENABLED=keys))


def main_parameter(name: str) -> Any:
    module = load_check_infra()
    module.INFRA = INFRA
    bicep = module.load(INFRA / "main.bicep", module._parser())
    return module.Scope(bicep, {}).lookup(name)


def of_type(functions: dict[str, Function], trigger: str) -> list[Function]:
    return [f for f in functions.values() if f.trigger_type == trigger]


def test_every_setting_a_binding_names_is_deployed(azure_functions: dict[str, Function],
                                                    settings: dict[str, Any]) -> None:
    named = {name for f in azure_functions.values() for b in f.bindings for value in b.values()
             if isinstance(value, str) for name in re.findall(r"%([A-Za-z0-9_]+)%", value)}
    assert named == {"INGEST_CONTAINER", "ROTATION_SCHEDULE", "RECONCILE_SCHEDULE"}
    assert not named - set(settings), f"bound but not set by infra/main.bicep: {sorted(named - set(settings))}"


def test_the_blob_trigger_matches_its_connection_and_event_grid_subscription(
        azure_functions: dict[str, Function], settings: dict[str, Any]) -> None:
    [blob] = of_type(azure_functions, "blobTrigger")
    trigger = blob.trigger
    assert trigger["source"] == "EventGrid"  # what Flex Consumption supports, from the deployed setting
    assert settings["BLOB_TRIGGER_SOURCE"] == "EventGrid"
    assert trigger["properties"] == {"SupportsDeferredBinding": True}  # the SDK-type binding: names only
    connection = trigger["connection"]
    assert main_parameter("blobConnectionName") == connection
    assert {f"{connection}__blobServiceUri", f"{connection}__queueServiceUri"} <= set(settings)
    assert connection not in settings  # identity-based: no connection string in Azure
    assert main_parameter("encryptFunctionName") == blob.name
    subscription = (INFRA / "modules" / "blob-event-subscription.bicep").read_text()
    assert "functionName=Host.Functions.${functionName}" in subscription
    assert "containers/${ingestContainerName}/blobs/" in subscription
    container = resolve(trigger["path"], {"INGEST_CONTAINER": main_parameter("ingestContainerName")}).split("/")[0]
    assert container == main_parameter("ingestContainerName")
    main = (INFRA / "main.bicep").read_text()
    assert "functionName: encryptFunctionName" in main and "ingestContainerName: ingestContainerName" in main


def test_the_deployed_schedules_are_valid_ncrontab(azure_functions: dict[str, Function],
                                                   settings: dict[str, Any]) -> None:
    timers = of_type(azure_functions, "timerTrigger")
    assert {t.name for t in timers} == {"rotate_keys", "reconcile"}
    for timer in timers:
        deployed = resolve(timer.trigger["schedule"], settings)
        Schedule.parse(deployed)  # raises on anything but six valid NCRONTAB fields
        assert timer.trigger.get("runOnStartup") in (None, False)  # a cold start must not fire them


def smoke_requests() -> Iterator[tuple[str, str, bool]]:
    """(method, path under /api, sends the function key) of every request infra/smoke.sh makes."""
    for line in (INFRA / "smoke.sh").read_text().splitlines():
        found = re.search(r'"\$\{BASE_URL\}(/[^"]*)"', line)
        if found is None or line.lstrip().startswith("#"):
            continue
        method = re.search(r"-X (\w+)", line)
        path = found.group(1).replace("${FILE_ID}", str(uuid.uuid4())).split("?", 1)[0]
        yield (method.group(1) if method else "GET"), path, bool(re.search(r"\bapi\b", line.split("$(", 1)[-1]))


def test_every_request_of_the_smoke_test_reaches_a_function(azure_functions: dict[str, Function],
                                                            settings: dict[str, Any]) -> None:
    routes, reached = routes_of(list(azure_functions.values())), set()
    requests = list(smoke_requests())
    assert len(requests) >= 7
    for method, path, keyed in requests:
        found = next(((r, p) for r in routes if (p := r.match(method, path.lstrip("/"))) is not None), None)
        assert found is not None, f"smoke.sh: {method} {path} reaches no function"
        route, _ = found
        reached.add(route.function.name)
        if not keyed and path == "/health":  # health answers without a key
            assert route.function.anonymous, f"{method} {path}: auth level"
        elif not keyed and keys_enabled(settings):  # the auth check: the host must refuse it without a key
            assert not route.function.anonymous, f"{method} {path}: auth level"
    assert {"health", "find_file", "download_file", "file_metadata", "delete_file"} <= reached


def test_auth_levels_and_methods_as_deployed(azure_functions: dict[str, Function],
                                            settings: dict[str, Any]) -> None:
    http = {f.name: f for f in of_type(azure_functions, "httpTrigger")}
    anonymous = {name for name, f in http.items() if f.anonymous}
    assert anonymous == ({"health", "openapi", "not_found"} if keys_enabled(settings) else set(http))
    routed = sorted((f.route, m) for f in http.values() for m in f.methods if f.name != "not_found")
    assert routed == sorted([
        ("files/{file_id}", "GET"), ("files/{file_id}", "HEAD"), ("files/{file_id}", "DELETE"),
        ("files/{file_id}/metadata", "GET"), ("files", "GET"), ("files", "POST"), ("health", "GET"),
        ("audit", "GET"), ("status", "GET"), ("metrics", "GET"), ("openapi.json", "GET")])
    assert http["not_found"].route == "{*path}"  # the JSON 404/405 for the rest: last in the host's route order
