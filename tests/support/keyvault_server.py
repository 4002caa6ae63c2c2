"""A loopback HTTPS server speaking enough of the Key Vault secrets and keys REST APIs for the real SDKs.

No Key Vault emulator can be installed here, so the Azure adapters are tested with the real
``azure-keyvault-secrets`` and ``azure-keyvault-keys`` clients against this server. It reproduces the
wire shapes the SDKs depend on (checked against the REST reference and SDK sources; ``docs/VAULT_AZURE.md``
for secrets, the installed ``azure-keyvault-keys`` sources for keys):

- challenge auth: a request without an accepted bearer token gets 401 with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``;
- ``PUT /secrets/{name}`` adds a version (32 hex digits); ``GET /secrets/{name}/{version}``
  (empty version = latest); ``PATCH /secrets/{name}/{version}``; ``GET /secrets/{name}/versions``
  paged with ``nextLink``; ``DELETE /secrets/{name}`` (soft delete) and ``/deletedsecrets/{name}``;
- errors as ``{"error": {"code", "message", "innererror": {"code"}}}``: 404 ``SecretNotFound``,
  403 ``Forbidden``/``SecretDisabled`` for a disabled version, 409 ``Conflict``/
  ``ObjectIsDeletedButRecoverable`` when a soft-deleted name is set again, 429 ``Throttled``;
- versions are listed in version-id order, not creation order, as the service does;
- keys (RSA and EC P-256, real ``cryptography`` keys): ``POST /keys/{name}/create`` adds a version;
  ``GET /keys/{name}/{version}`` (empty version = latest) answers the public JWK (``n``, ``e`` or
  ``crv``, ``x``, ``y``, base64url without padding, ``kid`` ``{url}/keys/{name}/{version}``); ``POST
  /keys/{name}/{version}/wrapkey`` and ``/unwrapkey`` with ``{"alg", "value"}`` (RSA-OAEP-256 or
  RSA-OAEP) answer ``{"kid", "value"}``; ``POST /keys/{name}/{version}/sign`` with ``{"alg": "ES256",
  "value": <SHA-256 digest>}`` answers ``{"kid", "value": r || s}``; an operation the key's
  ``key_ops`` do not list is 403 ``Forbidden``; 404 ``KeyNotFound``, 403 ``Forbidden``/``KeyDisabled``
  for a disabled version, 400 ``BadParameter`` for a value that does not unwrap.

Fault injection applies to the next authorized requests: an HTTP status (429 with Retry-After,
503), a dropped connection, or a response delayed past the client's read timeout. A rate limit
can be set on secret creates, as Key Vault enforces one (300 per 10 s per vault), and one on all
key requests together (get, create, wrap, unwrap: Key Vault's "all other transactions" limit for
keys): beyond it the server answers 429 with the Retry-After that the window says. Every request
is recorded (method, path, api-version, bearer present, status, arrival time) for assertions.
TLS material is generated at test time; nothing is committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import ipaddress
import math
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.core.credentials import AccessToken
from azure.keyvault.keys._shared import http_challenge_cache as keys_challenge_cache
from azure.keyvault.secrets._shared import http_challenge_cache as secrets_challenge_cache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.vault.azure import RetryOptions, TransportOptions
from shared.vault.azure_kek import AzureKeyWrapper
from shared.vault.azure_signer import AzureSigner

__all__ = ["FakeCredential", "KeyVaultServer", "RequestRecord", "TlsMaterial", "make_tls_material"]

CHALLENGE_RESOURCE = "https://vault.azure.net"
MAX_PAGE = 25  # the service's maximum page size for list operations
PURGE_DAYS = 90
RSA_KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")  # the service's default
EC_KEY_OPS = ("sign", "verify")
_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"RSA-OAEP-256": hashes.SHA256, "RSA-OAEP": hashes.SHA1}


# --- TLS material --------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsMaterial:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name("blobseal throwaway test CA"))
        .issuer_name(_name("blobseal throwaway test CA"))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> x509.Certificate:
    san = x509.SubjectAlternativeName([_general_name(name) for name in names])
    return (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls_material(directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TlsMaterial:
    """A throwaway CA and a leaf for ``names`` (127.0.0.1/localhost), written as PEM files in ``directory``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key, now)
    leaf = _leaf_certificate(leaf_key, ca, ca_key, now, names)
    material = TlsMaterial(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    material.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    material.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    material.key_file.touch(mode=0o600)
    material.key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return material


# --- credential ----------------------------------------------------------------------------


@dataclass
class FakeCredential:
    """Any object with an async ``get_token`` serves the SDK as a credential."""

    token: str = "fake-access-token-0123456789"
    error: Exception | None = None
    calls: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)
    closed: bool = False

    async def get_token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None, **kwargs: Any
    ) -> AccessToken:
        self.calls.append((scopes, tenant_id))
        if self.error is not None:
            raise self.error
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


# --- server state --------------------------------------------------------------------------


@dataclass
class RequestRecord:
    method: str
    path: str
    api_version: str | None
    bearer: bool
    arrived: float  # time.monotonic()
    client_port: int
    status: int | None = None  # None: the connection was dropped
    fault: str | None = None


@dataclass
class _Version:
    id: str
    value: str
    content_type: str | None
    enabled: bool
    created: int
    updated: int
    expires: int | None
    tags: dict[str, str] | None


@dataclass
class _KeyVersion:
    id: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    kty: str
    key_ops: list[str]
    enabled: bool
    created: int
    updated: int


@dataclass
class _Deleted:
    versions: list[_Version]
    deleted: int
    polls_until_visible: int


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status" | "drop" | "hang"
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0


class _Window:
    """A sliding-window limit: at most ``count`` requests in any ``seconds``."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count = count
        self.seconds = seconds
        self.accepted: deque[float] = deque()  # monotonic times of the requests accepted in the window

    def admit(self) -> int | None:
        """None if the request is accepted (and counted), else the Retry-After in seconds."""
        now = time.monotonic()
        while self.accepted and self.accepted[0] <= now - self.seconds:
            self.accepted.popleft()
        if len(self.accepted) < self.count:
            self.accepted.append(now)
            return None
        return max(1, math.ceil(self.accepted[0] + self.seconds - now))


class _Reply(Exception):
    """Raised by a route to answer with a Key Vault error body."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error: dict[str, Any] = {"code": code, "message": message}
        if inner is not None:
            self.error["innererror"] = {"code": inner}

    def response(self, marker: str = "") -> web.Response:
        error = {**self.error, "message": self.error["message"] + marker}
        return web.json_response({"error": error}, status=self.status)


def _not_found(name: str, version: str | None = None, kind: str = "secret") -> _Reply:
    what = f"{name}/{version}" if version else name
    return _Reply(
        404,
        f"{kind.capitalize()}NotFound",
        f"A {kind} with (name/id) {what} was not found in this key vault. If you recently deleted this {kind} "
        "you may be able to recover it using the correct recovery command. For help resolving this issue, "
        "please see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: object) -> bytes:
    if not isinstance(text, str) or not text:
        raise _Reply(400, "BadParameter", "Property 'value' is required.")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _Reply(400, "BadParameter", "Content of 'value' is not base64url.") from None


def _unsigned(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 7) // 8, "big")


# Client retries for tests: a few quick attempts, so a fault test ends in a second, not a minute.
FAST_RETRY = RetryOptions(total=3, status=3, connect=2, read=1, backoff_factor=0.01, backoff_max=0.05, deadline=10)


def transport_for(server: KeyVaultServer) -> TransportOptions:
    """How the real SDKs reach this server: its CA, no challenge-resource check (loopback), short timeouts."""
    return TransportOptions(verify_challenge_resource=False, connection_verify=str(server.tls.ca_file),
                            connection_timeout=1.0, read_timeout=2.0)


async def key_adapters(server: KeyVaultServer, *, kek: str = "blobseal-kek", signing: str = "blobseal-signing",
                       kek_size: int = 2048) -> tuple[AzureKeyWrapper, AzureSigner]:
    """The app's Azure KEK and signing key adapters on this server, both keys made (as the templates deploy them)."""
    options: dict[str, Any] = {"retry": FAST_RETRY, "transport": transport_for(server)}
    wrapper = AzureKeyWrapper(server.url, FakeCredential(), kek, key_size=kek_size, **options)
    signer = AzureSigner(server.url, FakeCredential(), signing, **options)
    await wrapper.create()
    await signer.create()
    return wrapper, signer


@asynccontextmanager
async def serving(tls: TlsMaterial) -> AsyncIterator[KeyVaultServer]:
    """A started server (for a fixture), with the SDKs' process-wide challenge caches cleared: they are
    keyed by host:port, and ports get reused."""
    keys_challenge_cache.clear()
    secrets_challenge_cache.clear()
    server = KeyVaultServer(tls)
    await server.start()
    try:
        yield server
    finally:
        server.clear_faults()
        await server.stop()


class KeyVaultServer:
    """The fake vault. ``await start()``, point the SDK at ``url``, ``await stop()``."""

    def __init__(
        self,
        tls: TlsMaterial,
        *,
        tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47",
        accepted_tokens: frozenset[str] = frozenset({FakeCredential.token}),
        clock: Callable[[], float] = time.time,
        version_ids: Iterator[str] | None = None,
    ) -> None:
        self.tls = tls
        self.tenant_id = tenant_id
        self.accepted_tokens = accepted_tokens
        self.clock = clock
        self.version_ids = version_ids
        self.delete_lag_polls = 0  # GET /deletedsecrets answers 404 this many times after a delete
        self.purge_protection = False  # True: purging a deleted secret is refused (403), as the templates deploy
        self.error_marker = ""  # appended to every error message: proves clients do not copy them
        self.requests: list[RequestRecord] = []
        self.secrets: dict[str, list[_Version]] = {}
        self.deleted: dict[str, _Deleted] = {}
        self.keys: dict[str, list[_KeyVersion]] = {}
        self.unwrapped: list[bytes] = []  # every wrapped value an unwrapkey request carried (what the vault opened)
        self._faults: deque[_Fault] = deque()
        self._create_window: _Window | None = None
        self._key_window: _Window | None = None
        self.throttled = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self.tls.server_context()).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- fault injection (applies to the next authorized requests, in order) ---

    def fail_next(self, count: int = 1, *, status: int = 503, retry_after: str | None = None) -> None:
        self._faults.extend(_Fault("status", status, retry_after) for _ in range(count))

    def throttle_next(self, count: int = 1, *, retry_after: str | None = "1") -> None:
        self.fail_next(count, status=429, retry_after=retry_after)

    def drop_next(self, count: int = 1) -> None:
        self._faults.extend(_Fault("drop") for _ in range(count))

    def hang_next(self, count: int = 1, *, seconds: float = 5.0) -> None:
        self._faults.extend(_Fault("hang", seconds=seconds) for _ in range(count))

    def clear_faults(self) -> None:
        self._faults.clear()

    def limit_creates(self, count: int, per_seconds: float) -> None:
        """At most ``count`` secret creates (PUT) in any ``per_seconds``; beyond that 429 + Retry-After."""
        self._create_window = _Window(count, per_seconds)

    def limit_key_operations(self, count: int, per_seconds: float) -> None:
        """At most ``count`` key requests (get, create, wrap, unwrap share one window) in any
        ``per_seconds``; beyond that 429 + Retry-After."""
        self._key_window = _Window(count, per_seconds)

    def _throttled(self, request: web.Request) -> web.Response | None:
        if request.method == "PUT":
            window = self._create_window
        elif request.path.startswith("/keys/"):
            window = self._key_window
        else:
            return None
        retry_after = window.admit() if window is not None else None
        if retry_after is None:
            return None
        self.throttled += 1
        response = _Reply(429, "Throttled", "Request was not processed because too many requests were received. "
                          "Reason: VaultRequestTypeLimitReached").response(self.error_marker)
        response.headers["Retry-After"] = str(retry_after)
        return response

    # --- helpers for assertions ---

    def value_of(self, name: str, version: str) -> str:
        """The stored (wire) value of a version: what the adapter sent."""
        return next(v.value for v in self.secrets[name] if v.id == version)

    def content_type_of(self, name: str, version: str) -> str | None:
        return next(v.content_type for v in self.secrets[name] if v.id == version)

    def key_versions(self, name: str) -> list[str]:
        """The versions of key ``name``, oldest first."""
        return [v.id for v in self.keys.get(name, [])]

    def public_key(self, name: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The public half of the latest version (what anyone with read access to the key gets)."""
        return self.keys[name][-1].private.public_key()

    def unwrap_with(self, name: str, version: str, wrapped: bytes, alg: str = "RSA-OAEP-256") -> bytes:
        """Decrypt ``wrapped`` with the private key of that exact version (raises ``ValueError`` if it does not)."""
        found = next(v for v in self.keys[name] if v.id == version)
        return _rsa(found).decrypt(wrapped, _oaep(alg))

    # --- request handling ---

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord(
            request.method,
            request.path,
            request.query.get("api-version"),
            request.headers.get("Authorization", "").startswith("Bearer "),
            time.monotonic(),
            request.transport.get_extra_info("peername")[1] if request.transport else 0,
        )
        self.requests.append(record)
        response = await self._answer(request, record)
        record.status = None if record.fault == "drop" else response.status
        return response

    async def _answer(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        if not self._authorized(request):
            return self._challenge(record.bearer)
        if record.api_version is None:
            return _Reply(400, "BadParameter", "The api-version query parameter is missing.").response()
        if (throttled := self._throttled(request)) is not None:
            record.fault = "throttled"
            return throttled
        fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            record.fault = fault.kind
            early = await self._inject(request, fault)
            if early is not None:
                return early
        try:
            return await self._route(request)
        except _Reply as reply:
            return reply.response(self.error_marker)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and token in self.accepted_tokens

    def _challenge(self, had_token: bool) -> web.Response:
        message = (
            "AKV10032: Invalid issuer or token." if had_token else "AKV10000: Request is missing a Bearer or PoP token."
        )
        authority = f"https://login.microsoftonline.com/{self.tenant_id}"
        header = f'Bearer authorization="{authority}", resource="{CHALLENGE_RESOURCE}"'
        response = _Reply(401, "Unauthorized", message).response(self.error_marker)
        response.headers["WWW-Authenticate"] = header
        return response

    async def _inject(self, request: web.Request, fault: _Fault) -> web.StreamResponse | None:
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=599)  # never reaches the client
        if fault.status == 429:
            reply = _Reply(
                429,
                "Throttled",
                "Request was not processed because too many requests were received. "
                "Reason: VaultRequestTypeLimitReached",
            )
        else:
            reply = _Reply(fault.status, "ServiceUnavailable", "The service is temporarily unavailable.")
        response = reply.response(self.error_marker)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = fault.retry_after
        return response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/") if request.path != "/" else []
        method = request.method
        if request.path.endswith("/") and len(parts) == 2:
            parts.append("")  # GET /secrets/{name}/ means the latest version
        match parts:
            case ["secrets", name] if method == "PUT":
                return self._set(name, await request.json())
            case ["secrets", name] if method == "DELETE":
                return self._delete(name)
            case ["secrets", name, "versions"] if method == "GET":
                return self._list_versions(request, name)
            case ["secrets", name, version] if method == "GET":
                return self._get(name, version)
            case ["secrets", name, version] if method == "PATCH":
                return self._update(name, version, await request.json())
            case ["deletedsecrets", name] if method == "GET":
                return self._get_deleted(name)
            case ["deletedsecrets", name] if method == "DELETE":
                return self._purge(name)
            case ["keys", name, "create"] if method == "POST":
                return await self._create_key(name, await request.json())
            case ["keys", name, version] if method == "GET":
                return web.json_response(self._key_bundle(name, self._usable_key(name, version, "get")))
            case ["keys", name, version, "wrapkey"] if method == "POST":
                return self._wrap_key(name, version, await request.json())
            case ["keys", name, version, "unwrapkey"] if method == "POST":
                return self._unwrap_key(name, version, await request.json())
            case ["keys", name, version, "sign"] if method == "POST":
                return self._sign(name, version, await request.json())
        raise _Reply(400, "BadParameter", f"{method} {request.path} is not supported by the test server.")

    # --- operations ---

    def _now(self) -> int:
        return int(self.clock())

    def _new_version_id(self) -> str:
        return next(self.version_ids) if self.version_ids is not None else secrets.token_hex(16)

    def _set(self, name: str, body: dict[str, Any]) -> web.Response:
        if name in self.deleted:
            raise _Reply(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged.",
                "ObjectIsDeletedButRecoverable",
            )
        attributes = body.get("attributes") or {}
        now = self._now()
        version = _Version(
            id=self._new_version_id(),
            value=body["value"],
            content_type=body.get("contentType"),
            enabled=attributes.get("enabled", True),
            created=now,
            updated=now,
            expires=attributes.get("exp"),
            tags=body.get("tags"),
        )
        self.secrets.setdefault(name, []).append(version)
        return web.json_response(self._bundle(name, version, with_value=True))

    def _find(self, name: str, version: str) -> _Version:
        versions = self.secrets.get(name)
        if not versions:
            raise _not_found(name)
        if version == "":
            return versions[-1]
        for candidate in versions:
            if candidate.id == version:
                return candidate
        raise _not_found(name, version)

    def _get(self, name: str, version: str) -> web.Response:
        found = self._find(name, version)
        if not found.enabled:
            raise _Reply(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
        return web.json_response(self._bundle(name, found, with_value=True))

    def _update(self, name: str, version: str, body: dict[str, Any]) -> web.Response:
        found = self._find(name, version)
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            found.enabled = bool(attributes["enabled"])
        if "exp" in attributes:
            found.expires = attributes["exp"]
        if "contentType" in body:
            found.content_type = body["contentType"]
        found.updated = self._now()
        return web.json_response(self._bundle(name, found, with_value=False))

    def _list_versions(self, request: web.Request, name: str) -> web.Response:
        versions = sorted(self.secrets.get(name, []), key=lambda v: v.id)
        size = min(int(request.query.get("maxresults", MAX_PAGE)), MAX_PAGE)
        start = int(request.query.get("$skiptoken", "0"))
        page = versions[start : start + size]
        next_link = None
        if start + size < len(versions):
            query = f"api-version={request.query['api-version']}&$skiptoken={start + size}&maxresults={size}"
            next_link = f"{self.url}/secrets/{name}/versions?{query}"
        items = [self._item(name, v) for v in page]
        return web.json_response({"value": items, "nextLink": next_link})

    def _delete(self, name: str) -> web.Response:
        versions = self.secrets.pop(name, None)
        if not versions:
            raise _not_found(name)
        self.deleted[name] = _Deleted(versions, self._now(), self.delete_lag_polls)
        return web.json_response(self._deleted_bundle(name))

    def _get_deleted(self, name: str) -> web.Response:
        entry = self.deleted.get(name)
        if entry is None or entry.polls_until_visible > 0:
            if entry is not None:
                entry.polls_until_visible -= 1
            raise _Reply(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return web.json_response(self._deleted_bundle(name))

    def _purge(self, name: str) -> web.Response:
        if self.purge_protection and name in self.deleted:
            raise _Reply(403, "Forbidden", "Operation \"purge\" is not allowed because purge protection is enabled "
                         "for this vault.")
        if self.deleted.pop(name, None) is None:
            raise _Reply(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return web.Response(status=204)

    async def _create_key(self, name: str, body: dict[str, Any]) -> web.Response:
        private = await _new_private_key(body)
        now = self._now()
        version = _KeyVersion(
            id=self._new_version_id(),
            private=private,
            kty=str(body.get("kty")),
            key_ops=list(body.get("key_ops") or (RSA_KEY_OPS if isinstance(private, rsa.RSAPrivateKey)
                                                 else EC_KEY_OPS)),
            enabled=(body.get("attributes") or {}).get("enabled", True),
            created=now,
            updated=now,
        )
        self.keys.setdefault(name, []).append(version)
        return web.json_response(self._key_bundle(name, version))

    def _usable_key(self, name: str, version: str, operation: str) -> _KeyVersion:
        found = self._enabled_key(name, version, operation)
        if operation != "get" and operation not in found.key_ops:
            raise _Reply(403, "Forbidden", f"Operation {operation} is not permitted on this key.")
        return found

    def _enabled_key(self, name: str, version: str, operation: str) -> _KeyVersion:
        versions = self.keys.get(name)
        if not versions:
            raise _not_found(name, kind="key")
        found = versions[-1] if version == "" else next((v for v in versions if v.id == version), None)
        if found is None:
            raise _not_found(name, version, kind="key")
        if not found.enabled:
            raise _Reply(403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled")
        return found

    def _wrap_key(self, name: str, version: str, body: dict[str, Any]) -> web.Response:
        found = self._usable_key(name, version, "wrapKey")
        value = _from_b64url(body.get("value"))
        wrapped = _rsa(found).public_key().encrypt(value, _oaep(body.get("alg")))
        return web.json_response({"kid": self._kid(name, found), "value": _b64url(wrapped)})

    def _unwrap_key(self, name: str, version: str, body: dict[str, Any]) -> web.Response:
        found = self._usable_key(name, version, "unwrapKey")
        value = _from_b64url(body.get("value"))
        self.unwrapped.append(value)
        try:
            key = _rsa(found).decrypt(value, _oaep(body.get("alg")))
        except ValueError:
            raise _Reply(400, "BadParameter", "Error occurred while decoding OAEP padding.") from None
        return web.json_response({"kid": self._kid(name, found), "value": _b64url(key)})

    def _sign(self, name: str, version: str, body: dict[str, Any]) -> web.Response:
        found = self._usable_key(name, version, "sign")
        digest = _from_b64url(body.get("value"))
        if body.get("alg") != "ES256" or not isinstance(found.private, ec.EllipticCurvePrivateKey) \
                or len(digest) != 32:
            raise _Reply(400, "BadParameter", "The test server signs SHA-256 digests with ES256 (EC P-256 keys) only.")
        der = found.private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        r, s = decode_dss_signature(der)
        return web.json_response({"kid": self._kid(name, found), "value": _b64url(r.to_bytes(32, "big")
                                                                                  + s.to_bytes(32, "big"))})

    # --- wire shapes ---

    def _kid(self, name: str, version: _KeyVersion) -> str:
        return f"{self.url}/keys/{name}/{version.id}"

    def _key_bundle(self, name: str, version: _KeyVersion) -> dict[str, Any]:
        return {
            "key": {"kid": self._kid(name, version), "kty": version.kty, "key_ops": version.key_ops,
                    **_public_jwk(version.private)},
            "attributes": {
                "enabled": version.enabled,
                "created": version.created,
                "updated": version.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": PURGE_DAYS,
                "exportable": False,
            },
        }

    def _attributes(self, version: _Version) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": PURGE_DAYS,
        }
        if version.expires is not None:
            attributes["exp"] = version.expires
        return attributes

    def _item(self, name: str, version: _Version) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": f"{self.url}/secrets/{name}/{version.id}",
            "attributes": self._attributes(version),
        }
        if version.content_type is not None:
            item["contentType"] = version.content_type
        if version.tags:
            item["tags"] = version.tags
        return item

    def _bundle(self, name: str, version: _Version, *, with_value: bool) -> dict[str, Any]:
        bundle = self._item(name, version)
        if with_value:
            bundle["value"] = version.value
        return bundle

    def _deleted_bundle(self, name: str) -> dict[str, Any]:
        entry = self.deleted[name]
        bundle = self._item(name, entry.versions[-1])
        bundle["recoveryId"] = f"{self.url}/deletedsecrets/{name}"
        bundle["deletedDate"] = entry.deleted
        bundle["scheduledPurgeDate"] = entry.deleted + PURGE_DAYS * 86400
        return bundle


async def _new_private_key(body: dict[str, Any]) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    kty, size, curve = body.get("kty"), body.get("key_size") or 2048, body.get("crv")
    if kty in ("EC", "EC-HSM") and curve == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if kty not in ("RSA", "RSA-HSM") or size not in (2048, 3072, 4096):
        raise _Reply(400, "BadParameter", "The test server creates RSA keys of 2048, 3072 or 4096 bits and EC P-256 "
                     "keys only.")
    return await asyncio.to_thread(rsa.generate_private_key, body.get("public_exponent") or 65537, size)


def _public_jwk(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, str]:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        numbers = private.public_key().public_numbers()
        return {"crv": "P-256", "x": _b64url(numbers.x.to_bytes(32, "big")),
                "y": _b64url(numbers.y.to_bytes(32, "big"))}
    public = private.public_key().public_numbers()
    return {"n": _b64url(_unsigned(public.n)), "e": _b64url(_unsigned(public.e))}


def _rsa(version: _KeyVersion) -> rsa.RSAPrivateKey:
    if not isinstance(version.private, rsa.RSAPrivateKey):
        raise _Reply(400, "BadParameter", "The key is not an RSA key.")
    return version.private


def _oaep(alg: object) -> padding.OAEP:
    hash_type = _OAEP_HASHES.get(alg) if isinstance(alg, str) else None
    if hash_type is None:
        raise _Reply(400, "BadParameter", "The test server wraps with RSA-OAEP-256 or RSA-OAEP only.")
    return padding.OAEP(mgf=padding.MGF1(algorithm=hash_type()), algorithm=hash_type(), label=None)
