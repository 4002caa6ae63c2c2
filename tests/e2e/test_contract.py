"""The API against its contract, through the local host and Microsoft's runtime: the served OpenAPI document
validates, Schemathesis (every operation, the upload -> download -> delete links, with the function key) finds no
server error and no answer outside the document, and every path or method without a function answers in the same
JSON shape as every error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from localinfra.azurite import Azurite
from localinfra.hostprocess import DevHost
from shared.openapi import document
from tests.support.host import running_host

pytestmark = [pytest.mark.postgres, pytest.mark.azurite, pytest.mark.slow]

# What the document can state and the answers must keep to. Left out, with why (README, "HTTP API"):
# positive_data_acceptance: the one name rule and the RFC 9110 preconditions refuse more than a schema can say
# (a name with a percent-encoded control character, If-Match of another version: 400 and 412 are the answers);
# use_after_free: a deleted file's record stays as a tombstone (metadata 200, status deleted; download 404);
# unsupported_method: TRACE cannot be registered (azure.functions.HttpMethod has none), so the host, not the app,
# answers it (404); every other method gets the app's JSON 405, tested below.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,allow_header_conformance,missing_required_header,"
          "ignored_auth")


@pytest.fixture(scope="module")
def host(azurite: Azurite, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHost]:
    with running_host(azurite, database_url, tmp_path_factory.mktemp("contract")) as process:
        yield process


def test_the_served_document_is_the_contract_and_valid(host: DevHost) -> None:
    served = httpx.get(f"{host.url}/openapi.json", timeout=30)  # anonymous, as health
    assert served.status_code == 200 and served.headers["content-type"].startswith("application/json")
    validate(served.json())
    assert served.json() == json.loads(json.dumps(document()))


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(host: DevHost,
                                                                                tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{host.url}/openapi.json",
         "--header", f"x-functions-key: {host.headers['x-functions-key']}", "--checks", CHECKS,
         "--max-examples", "40", "--seed", "20261206", "--generation-database", "none", "--no-color",
         "--report", "json", "--report-json-path", str(report), "--workers", "2"],
        capture_output=True, text=True, timeout=600, check=False)
    summary = run.stdout[run.stdout.rfind("SUMMARY"):]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Selected: 10/10" in summary and "Tested: 10" in summary, summary  # every operation
    assert "Stateful" in summary and "generated" in summary, summary


@pytest.mark.parametrize("method,path,status", [
    ("PUT", "/files", 405), ("PATCH", "/files/00000000-0000-0000-0000-000000000000", 405),
    ("POST", "/health", 405), ("GET", "/nothing-here", 404), ("DELETE", "/files/x/y/z", 404),
    ("OPTIONS", "/audit", 405)])
def test_paths_and_methods_without_a_function_answer_json(host: DevHost, method: str, path: str,
                                                          status: int) -> None:
    response = httpx.request(method, f"{host.url}{path}", timeout=30)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == ("MethodNotAllowed" if status == 405 else "NotFound")
    if status == 405:
        assert response.headers["allow"] and method not in response.headers["allow"]
