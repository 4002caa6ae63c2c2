"""function_app.py as Microsoft's Python runtime indexes it: functions, bindings, the SDK-type and
streaming bindings it picked, the trigger source from the setting; and importing it does no I/O."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest

from devhost.functions import Function
from tests.support.runtime import runtime_functions, runtime_metadata

EXPECTED = {
    "encrypt_ingest_blob": ("blobTrigger", {"path": "%INGEST_CONTAINER%/{name}", "connection": "DataStorage",
                                            "properties": {"SupportsDeferredBinding": True}}),
    "download_file": ("httpTrigger", {"route": "files/{file_id}", "methods": ["GET", "HEAD"], "authLevel": "FUNCTION"}),
    "delete_file": ("httpTrigger", {"route": "files/{file_id}", "methods": ["DELETE"], "authLevel": "FUNCTION"}),
    "upload_file": ("httpTrigger", {"route": "files", "methods": ["POST"], "authLevel": "FUNCTION"}),
    "file_metadata": ("httpTrigger", {"route": "files/{file_id}/metadata", "methods": ["GET"],
                                      "authLevel": "FUNCTION"}),
    "find_file": ("httpTrigger", {"route": "files", "methods": ["GET"], "authLevel": "FUNCTION"}),
    "access_log": ("httpTrigger", {"route": "audit", "methods": ["GET"], "authLevel": "FUNCTION"}),
    "health": ("httpTrigger", {"route": "health", "methods": ["GET"], "authLevel": "ANONYMOUS"}),
    "status": ("httpTrigger", {"route": "status", "methods": ["GET"], "authLevel": "FUNCTION"}),
    "metrics": ("httpTrigger", {"route": "metrics", "methods": ["GET"], "authLevel": "FUNCTION"}),
    "openapi": ("httpTrigger", {"route": "openapi.json", "methods": ["GET"], "authLevel": "ANONYMOUS"}),
    "not_found": ("httpTrigger", {"route": "{*path}", "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                                                  "OPTIONS"], "authLevel": "ANONYMOUS"}),
    "rotate_keys": ("timerTrigger", {"schedule": "%ROTATION_SCHEDULE%", "runOnStartup": False, "useMonitor": True}),
    "reconcile": ("timerTrigger", {"schedule": "%RECONCILE_SCHEDULE%", "runOnStartup": False, "useMonitor": True}),
}
SETTINGS = {"INGEST_CONTAINER": "ingest", "ROTATION_SCHEDULE": "0 0 * * * *", "RECONCILE_SCHEDULE": "0 */5 * * * *"}


@pytest.fixture(scope="module")
def described() -> dict[str, Any]:
    return runtime_metadata(**SETTINGS)


@pytest.fixture(scope="module")
def functions(described: dict[str, Any]) -> dict[str, Function]:
    return runtime_functions(described)


def test_every_function_is_indexed(functions: dict[str, Function]) -> None:
    assert set(functions) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trigger_bindings(functions: dict[str, Function], name: str) -> None:
    trigger_type, fields = EXPECTED[name]
    trigger = functions[name].trigger
    assert trigger["type"] == trigger_type and trigger["direction"] == "IN"
    for key, expected in fields.items():
        assert trigger[key] == expected, key


def test_http_functions_stream_through_the_runtimes_own_server(described: dict[str, Any],
                                                                functions: dict[str, Function]) -> None:
    assert described["capabilities"]["HttpUri"].startswith("http://127.0.0.1:")  # the FastAPI extension's server
    assert described["capabilities"]["RequiresRouteParameters"] == "true"
    for function in functions.values():
        if function.trigger_type == "httpTrigger":
            assert {"type": "http", "direction": "OUT", "name": "$return"} in function.bindings


def test_trigger_source_follows_the_setting() -> None:
    for source in ("EventGrid", "LogsAndContainerScan"):
        blob = runtime_functions(runtime_metadata(**SETTINGS, BLOB_TRIGGER_SOURCE=source))["encrypt_ingest_blob"]
        assert blob.trigger["source"] == source


def test_keys_off_makes_every_route_but_health_anonymous_to_the_host() -> None:
    """With FUNCTION_KEYS_ENABLED=false (the templates: App Service Authentication in front) the host checks no
    key; the app still checks every caller's role. With it on (the default), every route needs a key but health,
    the API's document and the catch-all's JSON 404/405."""
    for keys, level in (("false", "ANONYMOUS"), ("true", "FUNCTION")):
        functions = runtime_functions(runtime_metadata(**SETTINGS, FUNCTION_KEYS_ENABLED=keys))
        levels = {f.name: f.trigger["authLevel"] for f in functions.values() if f.trigger_type == "httpTrigger"}
        assert [levels.pop(name) for name in ("health", "openapi", "not_found")] == ["ANONYMOUS"] * 3
        assert set(levels.values()) == {level}


def test_import_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import bootstrap

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("DataStorage", "garbage")
    sys.modules.pop("function_app", None)
    importlib.import_module("function_app")
    assert bootstrap._services is None  # nothing built, nothing connected
    sys.modules.pop("function_app", None)
