"""Roles per caller, identity only from the platform, a complete record, health that leaks nothing
(docs/THREATS.md: "a function-key holder", "an Entra user", "anyone on the internet").

Requests go through the HTTP face (``shared.http_api``) as the Functions host hands them over: a
Starlette request with its headers, the peer address, and the body as ASGI messages (a client that
goes away mid-body is an ``http.disconnect``). The access log is read back from the database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest

from localinfra.azurite import Azurite
from shared import http_api
from shared.bootstrap import Services
from shared.cli.identity import operator, principal_name
from shared.config import Settings
from shared.identity import ROLES
from shared.vault.azure import AzureKeyVault, RetryOptions
from tests.integration.service_fixtures import upload
from tests.support import FakeCredential, KeyVaultServer
from tests.support.http import PEER, call
from tests.support.stack import OPERATOR, StackFactory

pytestmark = [pytest.mark.postgres, pytest.mark.azurite]

KEYS = {role: f"{role}-key-{uuid.uuid4().hex[:8]}" for role in ROLES}  # one key per role, named after it
ROLE_SETTINGS = {"LOCAL_FUNCTION_KEYS": ",".join(f"{role}={key}" for role, key in KEYS.items()),
                 "FUNCTION_KEY_ROLES": ",".join(f"{role}={role}" for role in ROLES)}


def key(role: str) -> dict[str, str]:
    return {"x-functions-key": KEYS[role]}


async def log_rows(stack: Services, **where: Any) -> list[dict[str, Any]]:
    async with stack.db.connection() as conn:
        rows = await conn.fetch("SELECT operation, caller, client_address, file_id, outcome, bytes_sent "
                                "FROM access_log ORDER BY id")
    return [dict(r) for r in rows if all(r[k] == v for k, v in where.items())]


async def an_encrypted_file(stack: Services, azurite: Azurite, data: bytes = b"quarterly numbers") -> str:
    name = f"{uuid.uuid4()}.txt"
    await upload(azurite, stack.settings.ingest_container, name, data)
    outcome = await stack.files.encrypt_ingest_blob(name)
    return str(outcome.file_id)


@pytest.fixture
async def stack(make_stack: StackFactory) -> Services:
    return await make_stack(**ROLE_SETTINGS)


def routes(file_id: str) -> dict[str, tuple[str, Any, str, dict[str, Any]]]:
    """Each endpoint: the role it needs, its handler, method, and request."""
    one = {"path_params": {"file_id": file_id}}
    return {
        "download": ("read", http_api.download, "GET", one),
        "head": ("read", http_api.download, "HEAD", one),
        "metadata": ("read", http_api.metadata, "GET", one),
        "list": ("read", http_api.find_file, "GET", {}),
        "lookup": ("read", http_api.find_file, "GET", {"query": {"name": "whatever.txt"}}),
        "upload": ("write", http_api.upload, "POST", {"headers": {"x-file-name": "new.txt"}, "body": [b"new"]}),
        "delete": ("erase", http_api.delete, "DELETE", one),
        "audit log": ("audit", http_api.access_log, "GET", {}),
        "status": ("operate", http_api.status, "GET", {}),
        "metrics": ("operate", http_api.metrics, "GET", {}),
    }


async def test_each_endpoint_needs_its_role_and_every_refusal_is_logged(stack: Services, azurite: Azurite) -> None:
    file_id = await an_encrypted_file(stack, azurite)
    refused: list[tuple[str, str]] = []
    for name, (needed, handler, method, request) in routes(file_id).items():
        for role in ROLES:
            if role == needed:
                continue
            headers = {**key(role), **request.get("headers", {})}
            answer = await call(stack, handler, method, f"/api/{name}", **{**request, "headers": headers})
            assert answer.status == 403, (name, role, answer.status)
            if method != "HEAD":
                assert answer.json() == {"error": "AccessDeniedError", "message": f"this needs the {needed} role"}
            assert answer.headers["x-required-role"] == needed
            refused.append((f"key:{role}", f"forbidden: needs {needed}"))
        anonymous = await call(stack, handler, method, f"/api/{name}", **request)
        assert anonymous.status == 403, name
        refused.append(("anonymous", f"forbidden: needs {needed}"))
    logged = [(r["caller"], r["outcome"]) for r in await log_rows(stack) if r["outcome"].startswith("forbidden")]
    assert sorted(logged) == sorted(refused)
    assert {r["client_address"] for r in await log_rows(stack) if r["outcome"].startswith("forbidden")} == {PEER}
    assert (await log_rows(stack, operation="delete")) == [r for r in await log_rows(stack, operation="delete")
                                                           if r["outcome"].startswith("forbidden")]  # none got far
    assert (await stack.files.encrypted_file(file_id)).status == "encrypted"  # nothing was erased


async def test_each_role_gets_what_it_needs(stack: Services, azurite: Azurite) -> None:
    file_id = await an_encrypted_file(stack, azurite)
    expected = {"download": 200, "head": 200, "metadata": 200, "list": 200, "lookup": 404, "upload": 201,
                "audit log": 200, "status": 200, "metrics": 200, "delete": 200}
    for name, (needed, handler, method, request) in routes(file_id).items():
        answer = await call(stack, handler, method, f"/api/{name}",
                            **{**request, "headers": {**key(needed), **request.get("headers", {})}})
        assert answer.status == expected[name], (name, answer.body[:200])


async def test_an_upload_only_caller_sees_its_upload_answer_and_nothing_else(stack: Services,
                                                                               azurite: Azurite) -> None:
    """The decision (README, "Roles"): a write-only caller gets its own upload's record in the POST answer
    (id, size, status); it cannot list, look up, read metadata of or download any file, its own included."""
    others = await an_encrypted_file(stack, azurite, b"someone else's file")
    mine = await call(stack, http_api.upload, "POST", "/api/files", headers={**key("write"), "x-file-name": "a.txt"},
                      body=[b"my upload"])
    assert mine.status == 201 and mine.json()["size"] == len(b"my upload") and mine.json()["status"] == "encrypted"
    own = mine.json()["file_id"]
    for file_id in (others, own):
        for handler, method in ((http_api.download, "GET"), (http_api.metadata, "GET")):
            answer = await call(stack, handler, method, "/api/files/x", headers=key("write"),
                                path_params={"file_id": file_id})
            assert answer.status == 403
    assert (await call(stack, http_api.find_file, "GET", "/api/files", headers=key("write"))).status == 403
    assert (await call(stack, http_api.find_file, "GET", "/api/files", headers=key("write"),
                       query={"name": "a.txt"})).status == 403


PRINCIPAL = {"auth_typ": "aad", "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
             "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"}


def principal(name: str, *roles: str, oid: str = "11111111-2222-3333-4444-555555555555") -> str:
    claims = [{"typ": "preferred_username", "val": name},
              {"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid}]
    claims += [{"typ": "roles", "val": f"blobseal.{role}"} for role in roles]
    return base64.b64encode(json.dumps({**PRINCIPAL, "claims": claims}).encode()).decode()


FORGED = {"x-ms-client-principal": principal("admin@contoso.com", *ROLES),
          "x-ms-client-principal-name": "admin@contoso.com", "x-ms-client-principal-id": "forged"}


async def test_forged_principal_headers_never_change_who_is_logged(stack: Services,
                                                                                  azurite: Azurite) -> None:
    """App Service Authentication is off here (as before the templates turned it on): a caller's own
    X-MS-CLIENT-PRINCIPAL* headers are words, not identity. (A caller's own X-Forwarded-For never reaches
    the app: the host sets it; through the local host: tests/e2e/test_runtime.py.)"""
    file_id = await an_encrypted_file(stack, azurite)
    with_key = await call(stack, http_api.metadata, "GET", "/api/files/x", headers={**key("read"), **FORGED},
                          path_params={"file_id": file_id})
    assert with_key.status == 200
    erase = await call(stack, http_api.delete, "DELETE", "/api/files/x", headers={**key("read"), **FORGED},
                       path_params={"file_id": file_id})
    assert erase.status == 403  # the forged principal's roles gave nothing
    alone = await call(stack, http_api.metadata, "GET", "/api/files/x", headers=FORGED,
                       path_params={"file_id": file_id})
    assert alone.status == 403
    rows = await log_rows(stack)
    assert {(r["caller"], r["client_address"]) for r in rows} == {("key:read", PEER), ("anonymous", PEER)}
    # the front end's own address is appended after a caller's X-Forwarded-For: the rightmost is the one
    chained = await call(stack, http_api.metadata, "GET", "/api/files/x", peer="10.0.0.4",
                         headers={**key("read"), "x-forwarded-for": f"10.6.6.6, {PEER}"},
                         path_params={"file_id": file_id})
    assert chained.status == 200 and (await log_rows(stack))[-1]["client_address"] == PEER


async def test_with_app_service_authentication_the_principal_and_its_app_roles_decide(
        make_stack: StackFactory, azurite: Azurite) -> None:
    """WEBSITE_AUTH_ENABLED (set by the platform while Easy Auth is on; it strips callers' own principal
    headers and validated the token): the principal is the caller, its Entra app roles its roles; function
    keys are off, so a key header (never checked by the host) gives nothing."""
    stack = await make_stack(WEBSITE_AUTH_ENABLED="True", FUNCTION_KEYS_ENABLED="false", **ROLE_SETTINGS)
    file_id = await an_encrypted_file(stack, azurite)
    reader = {"x-ms-client-principal": principal("reader@contoso.com", "read")}
    assert (await call(stack, http_api.metadata, "GET", "/", headers=reader,
                       path_params={"file_id": file_id})).status == 200
    assert (await call(stack, http_api.delete, "DELETE", "/", headers=reader,
                       path_params={"file_id": file_id})).status == 403
    unchecked_key = await call(stack, http_api.metadata, "GET", "/", headers=key("read"),
                               path_params={"file_id": file_id})
    assert unchecked_key.status == 403
    garbage = await call(stack, http_api.metadata, "GET", "/", headers={"x-ms-client-principal": "not base64!"},
                         path_params={"file_id": file_id})
    assert garbage.status == 403
    callers = [(r["caller"], r["outcome"]) for r in await log_rows(stack)]
    assert callers == [("entra:reader@contoso.com", "ok"), ("entra:reader@contoso.com", "forbidden: needs erase"),
                       ("anonymous", "forbidden: needs read"), ("anonymous", "forbidden: needs read")]


async def test_every_state_change_has_its_intent_and_outcome(stack: Services, azurite: Azurite) -> None:
    uploaded = await call(stack, http_api.upload, "POST", "/api/files",
                          headers={**key("write"), "x-file-name": "r.txt"}, body=[b"report"])
    file_id = uploaded.json()["file_id"]
    await stack.maintenance.rotate_file(OPERATOR, file_id)
    got = await stack.files.decrypt_file(OPERATOR, file_id)
    assert got.body is not None and b"".join([bytes(p) async for p in got.body]) == b"report"
    await stack.maintenance.migrate_keys(OPERATOR, "envelope")
    name = f"{uuid.uuid4()}.bin"
    await upload(azurite, stack.settings.ingest_container, name, b"replayed")
    await stack.maintenance.replay(OPERATOR, name)
    await stack.maintenance.reconcile(OPERATOR)
    deleted = await call(stack, http_api.delete, "DELETE", "/", headers=key("erase"), path_params={"file_id": file_id})
    assert deleted.status == 200
    rows = await log_rows(stack)
    for operation in ("upload", "rotate", "decrypt_file", "migrate_keys_to_envelope", "replay", "reconcile", "delete"):
        outcomes = [r["outcome"] for r in rows if r["operation"] == operation]
        assert len(outcomes) == 2 and outcomes[0] == "intent" and outcomes[1].startswith("ok"), (operation, outcomes)
    decrypted = [r for r in rows if r["operation"] == "decrypt_file"]
    assert decrypted[1]["bytes_sent"] == len(b"report") and decrypted[1]["caller"] == OPERATOR.name


async def test_a_client_gone_mid_upload_is_logged_aborted_and_leaves_nothing(stack: Services) -> None:
    answer = await call(stack, http_api.upload, "POST", "/api/files", headers={**key("write"), "x-file-name": "c.bin"},
                        body=[b"x" * 300_000], cut=True)
    assert answer.status == 400 and answer.json()["error"] == "ClientGoneError"
    assert [r["outcome"] for r in await log_rows(stack, operation="upload")] == ["intent", "aborted"]
    async with stack.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE source_name = 'c.bin'") == 0


async def test_a_download_cut_by_the_client_is_logged_with_what_was_sent(stack: Services, azurite: Azurite) -> None:
    file_id = await an_encrypted_file(stack, azurite, b"y" * 3_000_000)
    got = await stack.files.download(OPERATOR, file_id, lambda record: None)
    assert got.body is not None
    first = await anext(got.body)
    await got.body.aclose()  # type: ignore[attr-defined]
    rows = await log_rows(stack, operation="download")
    assert [r["outcome"] for r in rows] == ["ok", "aborted"] and rows[1]["bytes_sent"] == len(first)


async def test_anonymous_health_is_one_word_from_probes_of_at_most_one_per_interval(
        make_stack: StackFactory, keyvault_server: KeyVaultServer) -> None:
    """200 anonymous calls a second for 3 seconds against a Key Vault (the stand-in, the real SDK): the vault
    sees the probes of at most one round per interval (HEALTH_PROBE_SECONDS=1), not one per call."""
    vault = AzureKeyVault(keyvault_server.url, FakeCredential(), verify_challenge_resource=False,
                          connection_verify=str(keyvault_server.tls.ca_file), retry=RetryOptions(deadline=10))
    stack = await make_stack(vault=vault, HEALTH_PROBE_SECONDS="1", KEY_MODE="secret", KEY_CUSTODIES="secret")
    first = await call(stack, http_api.health, "GET", "/api/health")  # the first probe (and the SDK's challenge)
    assert first.status == 200 and first.json() == {"status": "up"}
    before = len(keyvault_server.requests)
    started, calls = asyncio.get_running_loop().time(), 0
    for _ in range(60):  # 10 calls every 50 ms: 200 a second, spread over each second
        answers = await asyncio.gather(*(call(stack, http_api.health, "GET", "/api/health") for _ in range(10)))
        calls += len(answers)
        assert all(a.status == 200 and a.json() == {"status": "up"} for a in answers)
        await asyncio.sleep(max(0.0, started + calls / 200 - asyncio.get_running_loop().time()))
    elapsed = asyncio.get_running_loop().time() - started
    vault_requests = len(keyvault_server.requests) - before
    print(f"health: {calls} anonymous calls in {elapsed:.2f} s, {vault_requests} vault request(s)")
    assert 1 <= vault_requests <= int(elapsed) + 1, (vault_requests, elapsed)  # at most one per 1 s interval
    details = await call(stack, http_api.status, "GET", "/api/status", headers={"x-functions-key": "test-function-key"})
    assert details.status == 200 and set(details.json()["dependencies"]) == {"storage", "database", "vault"}


def jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.signature"


class Credential:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str) -> Any:
        return type("AccessToken", (), {"token": self.token})()


def test_the_cli_caller_is_the_signed_in_principal_else_says_unauthenticated() -> None:
    azure = Settings.from_env({"DATABASE_URL": "postgresql://u@db.example/x?sslmode=verify-full",
                               "DATABASE_AUTH": "entra", "DataStorage": "UseDevelopmentStorage=true"})
    signed_in = operator(azure, Credential(jwt({"upn": "ops@contoso.com", "oid": "abc"})))
    assert signed_in.name == "cli:entra:ops@contoso.com (abc)" and signed_in.roles == frozenset(ROLES)
    app = operator(azure, Credential(jwt({"appid": "1234", "oid": "def"})))
    assert app.name == "cli:entra:1234 (def)"
    assert operator(azure, Credential("not a token")).name.startswith("cli:unauthenticated:")
    local = Settings.from_env({"DATABASE_URL": "postgresql://u@localhost/x",
                               "DataStorage": "UseDevelopmentStorage=true"})
    assert operator(local, Credential(jwt({"upn": "never-asked"}))).name.startswith("cli:unauthenticated:")
    assert principal_name(jwt({})) is None
