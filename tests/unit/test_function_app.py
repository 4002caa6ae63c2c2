"""function_app.py indexes the way the Python worker indexes it: functions, bindings, parameters."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import azurefunctions.extensions.bindings.blob as blob_ext
import pytest
from azurefunctions.extensions.http.fastapi import Request

EXPECTED = {
    "encrypt_ingest_blob": ("blobTrigger", {"path": "%INGEST_CONTAINER%/{name}", "connection": "DataStorage"}),
    "download_file": ("httpTrigger", {"route": "files/{file_id}", "methods": ["GET", "HEAD"], "authLevel": "function"}),
    "delete_file": ("httpTrigger", {"route": "files/{file_id}", "methods": ["DELETE"], "authLevel": "function"}),
    "upload_file": ("httpTrigger", {"route": "files", "methods": ["POST"], "authLevel": "function"}),
    "file_metadata": ("httpTrigger", {"route": "files/{file_id}/metadata", "methods": ["GET"],
                                      "authLevel": "function"}),
    "find_file": ("httpTrigger", {"route": "files", "methods": ["GET"], "authLevel": "function"}),
    "access_log": ("httpTrigger", {"route": "audit", "methods": ["GET"], "authLevel": "function"}),
    "health": ("httpTrigger", {"route": "health", "methods": ["GET"], "authLevel": "anonymous"}),
    "status": ("httpTrigger", {"route": "status", "methods": ["GET"], "authLevel": "function"}),
    "metrics": ("httpTrigger", {"route": "metrics", "methods": ["GET"], "authLevel": "function"}),
    "rotate_keys": ("timerTrigger", {"schedule": "%ROTATION_SCHEDULE%", "runOnStartup": False}),
    "reconcile": ("timerTrigger", {"schedule": "%RECONCILE_SCHEDULE%", "runOnStartup": False}),
}


def load_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("function_app", None)
    return importlib.import_module("function_app")


@pytest.fixture
def functions(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    module = load_app(monkeypatch)
    yield {f.get_function_name(): f for f in module.app.get_functions()}
    sys.modules.pop("function_app", None)


def plain(value: Any) -> Any:
    if isinstance(value, list):
        return [plain(v) for v in value]
    return getattr(value, "value", value)


def test_every_function_is_indexed(functions: dict[str, Any]) -> None:
    assert set(functions) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trigger_bindings(functions: dict[str, Any], name: str) -> None:
    trigger_type, fields = EXPECTED[name]
    bindings = functions[name].get_bindings()
    trigger = next(b for b in bindings if b.type.endswith("Trigger"))
    assert trigger.type == trigger_type
    data = trigger.get_dict_repr()
    for key, expected in fields.items():
        assert plain(data[key]) == expected, key
    parameters = inspect.signature(functions[name].get_user_function()).parameters
    assert trigger.name in parameters  # the binding names a real parameter
    assert inspect.iscoroutinefunction(functions[name].get_user_function())


def test_parameter_types_pick_sdk_and_streaming_bindings(functions: dict[str, Any]) -> None:
    blob_fn = inspect.signature(functions["encrypt_ingest_blob"].get_user_function())
    assert blob_fn.parameters["client"].annotation is blob_ext.BlobClient
    for name in ("download_file", "delete_file", "upload_file", "file_metadata", "find_file", "access_log", "health",
                 "status", "metrics"):
        assert inspect.signature(functions[name].get_user_function()).parameters["req"].annotation is Request


def test_trigger_source_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for source in ("EventGrid", "LogsAndContainerScan"):
        module = load_app(monkeypatch, BLOB_TRIGGER_SOURCE=source)
        trigger = next(f for f in module.app.get_functions() if f.get_function_name() == "encrypt_ingest_blob")
        assert plain(trigger.get_bindings()[0].get_dict_repr()["source"]) == source
    sys.modules.pop("function_app", None)


def test_keys_off_makes_every_route_but_health_anonymous_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """With FUNCTION_KEYS_ENABLED=false (the templates: App Service Authentication in front) the host checks no
    key; the app still checks every caller's role. With it on (the default), every route but health needs a key."""
    for keys, level in (("false", "anonymous"), ("true", "function")):
        module = load_app(monkeypatch, FUNCTION_KEYS_ENABLED=keys)
        levels = {f.get_function_name(): plain(f.get_bindings()[0].get_dict_repr().get("authLevel"))
                  for f in module.app.get_functions() if f.get_bindings()[0].type == "httpTrigger"}
        assert levels.pop("health") == "anonymous"
        assert set(levels.values()) == {level}
    sys.modules.pop("function_app", None)


def test_import_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import bootstrap

    load_app(monkeypatch, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", DataStorage="garbage")
    assert bootstrap._services is None  # nothing built, nothing connected
    sys.modules.pop("function_app", None)
