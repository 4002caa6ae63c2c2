"""The API's contract (``shared.openapi``): a valid OpenAPI 3.1 document, and the same operations as the functions
``function_app.py`` registers (route, methods, who may call), so neither can change without the other."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from shared.openapi import OPERATIONS, allowed_methods, document


@pytest.fixture
def http_functions() -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    found = {}
    for function in module.app.get_functions():
        trigger = function.get_bindings()[0].get_dict_repr()
        if trigger["type"] != "httpTrigger":
            continue
        for method in trigger["methods"]:
            found[("/" + trigger["route"], str(getattr(method, "value", method)))] = {
                "name": function.get_function_name(), "auth": str(getattr(trigger["authLevel"], "value",
                                                                          trigger["authLevel"]))}
    yield found
    sys.modules.pop("function_app", None)


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    operation_ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids)) == len(OPERATIONS)


def test_every_function_route_is_documented_and_nothing_else(http_functions: dict[tuple[str, str], Any]) -> None:
    registered = {key: value for key, value in http_functions.items() if value["name"] != "not_found"}
    documented = {(op.path, op.method): op for op in OPERATIONS}
    assert set(registered) == set(documented)
    for key, op in documented.items():
        assert registered[key]["name"] == op.function
        assert (registered[key]["auth"] == "anonymous") == (op.role is None or registered[key]["auth"] == "anonymous")
        if op.role is None:
            assert registered[key]["auth"] == "anonymous", key


def test_the_catch_all_takes_every_other_method_and_path(http_functions: dict[tuple[str, str], Any]) -> None:
    caught = {method for (route, method), value in http_functions.items() if value["name"] == "not_found"}
    assert {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} <= caught
    assert allowed_methods("/api/files") == ["GET", "POST"]
    assert allowed_methods(f"/api/files/{'0' * 8}") == ["DELETE", "GET", "HEAD"]
    assert allowed_methods("/api/nothing-here") == [] and allowed_methods("/files") == []


def test_every_operation_answers_errors_in_one_shape() -> None:
    """Health and status answer 503 with their own report: down is an answer there, not an error."""
    spec = document()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and method != "head" and (path, status) not in {("/api/health", "503"),
                                                                                       ("/api/status", "503")}:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
