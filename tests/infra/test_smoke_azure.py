"""infra/smoke.sh --azure, the way it meets a deployment with App Service Authentication and keys off:
a stub az (deployment outputs, an access token, blob upload) and a stand-in for the function app that
answers like Easy Auth in front of the API (401 without the bearer token; /api/health anonymous).

What this shows: the script asks az for a token for the deployment's apiAppIdUri, sends it as
``Authorization: Bearer`` on every API request (never a function key, never the token on a command
line or in the output), a request without credentials is refused (auth), and a token the platform or
the app refuses fails the ``token`` step with the status. Whether Azure really answers so is for a
real deployment (infra/README.md, Validation)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.infra.infra_helpers import INFRA, ROOT

SMOKE = INFRA / "smoke.sh"
CLIENT_ID = "33333333-3333-3333-3333-333333333333"
FILE_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"

STUB_AZ = r"""#!/usr/bin/env bash
set -euo pipefail
printf '%s\x1f' "$@" >>"$STUB_LOG"; printf '\n' >>"$STUB_LOG"
args=" $* "
arg_after() { local prev="" a; for a in "$@"; do [[ "$prev" == "$WANT" ]] && { echo "$a"; return; }; prev="$a"; done; }
case "$args" in
  *" deployment group show "*)
    q="${args#*properties.outputs.}"; q="${q%%.value*}"
    case "$q" in
      functionAppHostName) echo "stub-func.azurewebsites.net" ;;
      dataStorageAccountName) echo "stubdata" ;;
      ingestContainerName) echo "ingest" ;;
      apiAppIdUri) echo "$STUB_RESOURCE" ;;
      *) echo "stub-$q" ;;
    esac ;;
  *" account get-access-token "*) echo "$STUB_TOKEN" ;;
  *" storage blob upload "*)
    name="$(WANT=-n arg_after "$@")"; file="$(WANT=-f arg_after "$@")"
    cp "$file" "$STUB_BLOBS/$(printf '%s' "$name" | tr '/' '_')" ;;
  *" storage blob delete "*) ;;
  *) echo "stub az: unexpected call: $*" >&2; exit 3 ;;
esac
"""

# curl as it is, its arguments recorded (the token must never be one).
STUB_CURL = """#!/usr/bin/env bash
printf '%s\\x1f' "$@" >>"$STUB_LOG"; printf '\\n' >>"$STUB_LOG"
exec "$REAL_CURL" "$@"
"""


@dataclass
class FakeFunctionApp:
    """Easy Auth (Return401, /api/health excluded) in front of a minimal blobseal API."""

    token: str
    blobs: Path
    refuse_with: int | None = None  # a valid token, refused anyway (audience, or no app role)
    seen: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    def handle(self, method: str, path: str, headers: Any) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(path)
        self.seen.append({"method": method, "path": url.path, "authorization": headers.get("Authorization"),
                          "key": headers.get("x-functions-key")})
        if url.path == "/api/health":
            return 200, {"Content-Type": "application/json"}, b'{"status": "up"}'
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {}, b""  # Easy Auth: no valid token
        if self.refuse_with:
            return self.refuse_with, {"Content-Type": "application/json"}, b'{"error": "forbidden: needs read"}'
        query = parse_qs(url.query)
        stored = sorted(self.blobs.iterdir())
        data = stored[0].read_bytes() if stored else b""
        if url.path == "/api/files" and "limit" in query:
            return 200, {"Content-Type": "application/json"}, b'{"files": [], "next_cursor": null}'
        if url.path == "/api/files" and "name" in query:
            if not stored:
                return 404, {}, b""
            body = {"file_id": FILE_ID, "status": "encrypted", "size": len(data)}
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if url.path == f"/api/files/{FILE_ID}/metadata":
            body = {"file_id": FILE_ID, "status": "encrypted", "size": len(data)}
            return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()
        if url.path == f"/api/files/{FILE_ID}" and method == "DELETE":
            self.deleted = True
            return 204, {}, b""
        if url.path == f"/api/files/{FILE_ID}" and not self.deleted:
            span = re.fullmatch(r"bytes=(\d+)-(\d+)", headers.get("Range") or "")
            if span:
                return 206, {}, data[int(span.group(1)):int(span.group(2)) + 1]
            return 200, {}, data
        return 404, {}, b""


@pytest.fixture
def fake_app(tmp_path: Path) -> Iterator[tuple[FakeFunctionApp, str]]:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    app = FakeFunctionApp("eyFake." + secrets.token_urlsafe(24), blobs)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            code, headers, body = app.handle(self.command, self.path, self.headers)
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def smoke_azure(tmp_path: Path, app: FakeFunctionApp, base_url: str, *extra: str,
                token: str | None = None) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """smoke.sh --azure against ``app``; az hands out ``token`` (default: the one the app accepts)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, text in (("az", STUB_AZ), ("curl", STUB_CURL)):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    real_curl = shutil.which("curl")
    assert real_curl, "curl is needed"
    log = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log),
           "STUB_TOKEN": token or app.token, "STUB_RESOURCE": f"api://{CLIENT_ID}", "STUB_BLOBS": str(app.blobs),
           "REAL_CURL": real_curl, "TMPDIR": str(tmp_path)}
    run = subprocess.run(["bash", str(SMOKE), "--azure", "-g", "rg-test", "--base-url", base_url, "--timeout", "5",
                          *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, check=False)
    calls = [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []
    return run, calls


def test_azure_mode_sends_a_bearer_token_and_no_key(tmp_path: Path,
                                                   fake_app: tuple[FakeFunctionApp, str]) -> None:
    app, base_url = fake_app
    run, calls = smoke_azure(tmp_path, app, base_url)
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("health", "auth", "token", "upload", "wait", "download", "range", "metadata", "cleanup"):
        assert f"smoke: ok {step}" in run.stdout, f"{step}:\n{run.stdout}{run.stderr}"
    assert "smoke: ok auth (HTTP 401 without credentials)" in run.stdout
    # The token was asked for the deployment's application id URI, and is never on a command line or printed.
    assert any(c[:2] == ["account", "get-access-token"] and f"api://{CLIENT_ID}" in c for c in calls), calls
    assert not any(app.token in arg for call in calls for arg in call)
    assert app.token not in run.stdout + run.stderr
    # Every API request but health and the anonymous probe carried it; no function key went anywhere.
    api = [r for r in app.seen if r["path"] != "/api/health"]
    assert api[0]["authorization"] is None  # the auth step
    assert all(r["authorization"] == f"Bearer {app.token}" for r in api[1:]), api
    assert not any(r["key"] for r in app.seen)


def test_azure_mode_names_a_refused_token(tmp_path: Path, fake_app: tuple[FakeFunctionApp, str]) -> None:
    app, base_url = fake_app
    app.refuse_with = 403
    run, _ = smoke_azure(tmp_path, app, base_url)
    assert run.returncode != 0
    assert "smoke: FAIL token: HTTP 403 with the token" in run.stderr and "needs read" in run.stderr, run.stderr
    app.refuse_with = None  # a token the platform does not take (another audience, say)
    run, _ = smoke_azure(tmp_path, app, base_url, token="eyOther." + secrets.token_urlsafe(8))
    assert run.returncode != 0
    assert "smoke: FAIL token: HTTP 401 with the token: App Service Authentication refused it" in run.stderr


def test_azure_mode_sends_a_key_only_when_given(tmp_path: Path, fake_app: tuple[FakeFunctionApp, str]) -> None:
    """A deployment with functionKeysEnabled: the key goes with the token (both are needed then)."""
    app, base_url = fake_app
    run, calls = smoke_azure(tmp_path, app, base_url, "--key", "key-for-a-deployment-with-keys")
    assert run.returncode == 0, run.stdout + run.stderr
    api = [r for r in app.seen if r["path"] != "/api/health" and r["authorization"]]
    assert api and all(r["key"] == "key-for-a-deployment-with-keys" for r in api)
    assert not any("key-for-a-deployment-with-keys" in arg for call in calls for arg in call)
