"""Settings: declared once, read from the environment once, validated with one error for all.

Each setting is one field of ``Settings``, declared with ``setting(ENV_NAME, default, doc,
bounds or choices)``: the default lives there and nowhere else. ``from_env`` parses every
field by its type and declaration, then checks contradictions between fields; the README's
settings table and ``local.settings.json.example`` are rendered from the same declarations
(``make docs``; a unit test fails when they disagree).

Nothing else in the project reads ``os.environ``: the bootstrap calls
``Settings.from_env(os.environ)`` once per worker and passes the object down. Secrets in the
settings (client secret, database URL, connection strings, function key) stay out of ``repr``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from shared.errors import ConfigError

__all__ = [
    "DATA_STORAGE", "HOST_SETTINGS", "LOCAL_STORAGE", "Settings", "Spec", "key_fingerprint", "redact_url",
    "render_default", "setting", "specs",
]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_STORAGE = "UseDevelopmentStorage=true"
# The app setting (connection name) the blob trigger and the core's blob clients use.
DATA_STORAGE = "DataStorage"
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_NCRONTAB = re.compile(r"(\S+\s+){5}\S+")
CUSTODIES = ("secret", "envelope")  # what KEY_CUSTODIES may list (shared.custody)
ROLES = ("read", "write", "erase", "audit", "operate")  # what a caller may be allowed (shared.identity)


_SECRET_QUERY = re.compile(r"(?i)((?:^|&)(?:password|sslpassword)=)[^&]*")


def redact_url(url: str) -> str:
    """The URL with any password replaced (in the user part and in ``password=``/``sslpassword=`` of the
    query), for logs and error messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    except ValueError:  # not a URL at all: say nothing of it
        return "<not a URL>"
    return urlunsplit(parts._replace(netloc=netloc, query=_SECRET_QUERY.sub(r"\1***", parts.query)))


@dataclass(frozen=True)
class Spec:
    """How one setting is read: its name, bounds or choices, doc; the default is the field's."""

    env: str
    doc: str
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other names accepted when ``env`` is unset
    example: str | None = None  # the value in local.settings.json.example, when not the default
    in_example: bool = True  # False: left out of the example (it would change what the host resolves)


def setting(env: str, default: T, doc: str, *, secret: bool = False, **spec: Any) -> T:
    """Declare a setting where it lives: the ``Settings`` field, its default, parser bounds and doc."""
    return field(default=default, repr=not secret, metadata={"spec": Spec(env, doc, **spec)})


@dataclass(frozen=True)
class HostSetting:
    """A setting the Functions host reads, not the app (documented and put in the example)."""

    env: str
    example: str
    doc: str


HOST_SETTINGS = (
    HostSetting("FUNCTIONS_WORKER_RUNTIME", "python", "Functions host: the language worker"),
    HostSetting("AzureWebJobsStorage", LOCAL_STORAGE, "Functions host: its own storage (timers, receipts, leases)"),
    HostSetting("PYTHON_ENABLE_INIT_INDEXING", "1", "Functions host: needed for HTTP streaming on Python <= 3.12"),
)


def key_fingerprint(key: str) -> str:
    """What identifies a function key (in the access log, in FUNCTION_KEY_NAMES) without revealing it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _pairs(text: str, separator: str) -> list[tuple[str, str]]:
    """``a<sep>b,c<sep>d`` as pairs; malformed entries are reported by ``_app_problems``."""
    pairs = [item.strip().partition(separator) for item in text.split(",") if item.strip()]
    return [(name.strip(), value.strip()) for name, sep, value in pairs if sep and name.strip() and value.strip()]


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: int, Path: Path}


def _parse(kind: type, spec: Spec, text: str, problems: list[str]) -> Any:
    """``text`` as ``kind``, or None with the problem noted."""
    try:
        value = _PARSERS.get(kind, str)(text)
    except ValueError:
        expect = "true or false" if kind is bool else f"an integer from {spec.low} to {spec.high}"
        problems.append(f"{spec.env} must be {expect}, got {text!r}")
        return None
    if spec.choices and value not in spec.choices:
        problems.append(f"{spec.env} must be one of {', '.join(spec.choices)}, got {value!r}")
    if kind is int and spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
        problems.append(f"{spec.env} must be from {spec.low} to {spec.high}, got {value}")
    return value


def specs() -> list[tuple[Field[Any], Spec]]:
    """Every app setting, in declaration order: the table the docs and the example come from."""
    return [(f, f.metadata["spec"]) for f in fields(Settings)]


def render_default(value: object) -> str:
    """A default as it is written in the environment."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Settings:
    """Every setting of the product: one line each, with its default, bounds and meaning."""

    encryption_enabled: bool = setting(
        "ENCRYPTION_ENABLED", True,
        "`false`: uploads are left in ingest untouched (logged); downloads of existing files still work")
    encryption_algorithm: str = setting(
        "ENCRYPTION_ALGORITHM", "AES-256-GCM", "the only accepted value", choices=("AES-256-GCM",))
    key_rotation_days: int = setting(
        "ENCRYPTION_KEY_ROTATION_DAYS", 30, "key lifetime; expired keys are rotated by the timer", low=1, high=3650)
    chunk_size_mb: int = setting(
        "ENCRYPTION_CHUNK_SIZE_MB", 5, "transfer unit of ingest and rotation: read, staged and uploaded at a time "
        "(a download streams its body in small pieces)", low=1, high=100)
    block_size_kib: int = setting(
        "ENCRYPTION_BLOCK_SIZE_KB", 64, "format block size for new files; readers take it from each header",
        low=4, high=16 * 1024)
    key_vault_enabled: bool = setting("KEY_VAULT_ENABLED", True, "must be true while encryption is on")
    key_vault_mode: str = setting(
        "KEY_VAULT_MODE", "local", "`local` (JSON file) or `azure` (Key Vault)", choices=("local", "azure"))
    key_vault_url: str = setting("KEY_VAULT_URL", "", "`https://<vault>.vault.azure.net` (azure mode)")
    key_vault_tenant_id: str = setting("KEY_VAULT_TENANT_ID", "", "service principal's tenant (azure mode)")
    key_vault_client_id: str = setting(
        "KEY_VAULT_CLIENT_ID", "", "service principal, or the user-assigned managed identity without a secret")
    key_vault_client_secret: str = setting(
        "KEY_VAULT_CLIENT_SECRET", "", "service principal secret; without it: managed identity "
        "(`DefaultAzureCredential`)", secret=True)
    key_vault_cache_enabled: bool = setting("KEY_VAULT_CACHE_ENABLED", True, "TTL cache of fetched keys (in memory)")
    key_vault_cache_minutes: int = setting(
        "KEY_VAULT_CACHE_DURATION_MINUTES", 60, "cache TTL (the spec's setting), never longer than "
        "`KEY_CACHE_SECONDS`; 0: no cache", low=0, high=7 * 24 * 60)
    key_cache_seconds: int = setting(
        "KEY_CACHE_SECONDS", 60, "the fail-closed bound: the longest any key, or the vault's answer about the KEK or "
        "the signing key, is used from memory. A key, KEK or secret removed or disabled in the vault stops new "
        "uploads, and reads of files not read in this time, within it (docs/RELIABILITY.md)", low=0, high=60)
    key_vault_cache_max_entries: int = setting(
        "KEY_VAULT_CACHE_MAX_ENTRIES", 10_000, "cache bound (LRU)", low=1, high=10_000_000)
    key_mode: str = setting(
        "KEY_MODE", "secret", "`secret`: every file key is its own vault secret (the spec's model); `envelope`: "
        "file keys wrapped by intermediate keys that a Key Vault key (the KEK) wraps (docs/SCALE.md). New keys "
        "follow it; existing keys stay where they are until `blobseal migrate-keys` moves them",
        choices=("secret", "envelope"))
    key_vault_kek_name: str = setting(
        "KEY_VAULT_KEK_NAME", "blobseal-kek", "envelope mode: the name of the KEK (an RSA key in Key Vault; "
        "a secret of the local vault in local mode)")
    key_custodies: str = setting(
        "KEY_CUSTODIES", "secret,envelope", "the custodies whose key rows this deployment reads (comma list of "
        "`secret`, `envelope`); a row naming any other is refused as tampered. Narrow it to `KEY_MODE`'s once "
        "`migrate-keys` has moved every key (docs/THREATS.md)")
    key_vault_signing_key_name: str = setting(
        "KEY_VAULT_SIGNING_KEY_NAME", "blobseal-signing", "the key that signs what the service must prove its own "
        "(intermediate key rows): an EC P-256 key in Key Vault the app may only sign with; a secret of the local "
        "vault in local mode")
    envelope_intermediate_minutes: int = setting(
        "ENVELOPE_INTERMEDIATE_MINUTES", 60, "envelope mode: an instance wraps new file keys with one "
        "intermediate key for at most this long", low=1, high=7 * 24 * 60)
    envelope_intermediate_max_files: int = setting(
        "ENVELOPE_INTERMEDIATE_MAX_FILES", 100_000, "envelope mode: and for at most this many files",
        low=1, high=10_000_000)
    key_vault_local_path: Path = setting(
        "KEY_VAULT_LOCAL_PATH", Path("secrets"),
        "folder of the local vault (`secrets.json`, mode 0600 in a 0700 folder); a relative path is taken "
        "from the app folder (where `function_app.py` is), whatever the working directory")
    key_vault_local_master_key: str = setting(
        "KEY_VAULT_LOCAL_MASTER_KEY", "", "local mode: the master key that seals the vault's values at rest (base64 "
        "of 32 bytes); empty: the file below", secret=True)
    key_vault_local_master_key_file: str = setting(
        "KEY_VAULT_LOCAL_MASTER_KEY_FILE", "", "local mode: the master key's file (0600), made on first run; "
        "empty: `<KEY_VAULT_LOCAL_PATH>.master-key` beside the vault folder, never in it (docs/VAULT_LOCAL.md)")
    database_url: str = setting(
        "DATABASE_URL", DEFAULT_DATABASE_URL, "PostgreSQL (asyncpg). Unset, `make dev` and `make test` use the "
        "server on 127.0.0.1:5432, or else start an embedded one (`.dev/`)", secret=True, in_example=False)
    database_auth: str = setting(
        "DATABASE_AUTH", "password", "`password`: as DATABASE_URL says; `entra`: Microsoft Entra tokens of the "
        "managed identity as the password (passwordless Azure Database for PostgreSQL)",
        choices=("password", "entra"))
    database_entra_client_id: str = setting(
        "DATABASE_ENTRA_CLIENT_ID", "", "with `entra`: the client id of a user-assigned identity (empty: the "
        "system-assigned one)")
    database_pool_max: int = setting("DATABASE_POOL_MAX", 10, "pool size per worker", low=1, high=100)
    database_pgbouncer: bool = setting(
        "DATABASE_PGBOUNCER", False, "`true` when DATABASE_URL points at PgBouncer in transaction pooling "
        "(no prepared statements kept across transactions; docs/SCALE.md)")
    data_storage_connection: str = setting(
        DATA_STORAGE, LOCAL_STORAGE, "storage connection string of the ingest/protected containers "
        "(the blob trigger's connection)", secret=True)
    data_storage_blob_uri: str = setting(
        f"{DATA_STORAGE}__blobServiceUri", "", "instead of a connection string: identity-based access "
        "(managed identity)", aliases=(f"{DATA_STORAGE}__serviceUri",), in_example=False)
    ingest_container: str = setting("INGEST_CONTAINER", "ingest", "container uploads are dropped into")
    protected_container: str = setting("PROTECTED_CONTAINER", "protected", "container of the encrypted files")
    keep_plaintext: bool = setting("KEEP_PLAINTEXT", False, "keep the ingest blob after encryption")
    blob_trigger_source: str = setting(
        "BLOB_TRIGGER_SOURCE", "LogsAndContainerScan", "`EventGrid` in Azure (Flex Consumption needs it); "
        "polling locally", choices=("LogsAndContainerScan", "EventGrid"))
    rotation_schedule: str = setting(
        "ROTATION_SCHEDULE", "0 0 * * * *", "NCRONTAB (six fields) of the rotation timer")
    rotation_batch_size: int = setting(
        "ROTATION_BATCH_SIZE", 100, "files per timer run at most", low=1, high=100_000)
    rotation_time_budget_seconds: int = setting(
        "ROTATION_TIME_BUDGET_SECONDS", 240, "time per timer run at most (the rest waits for the next run)",
        low=1, high=3600)
    rotation_grace_minutes: int = setting(
        "ROTATION_GRACE_MINUTES", 60, "how long a rotated-out blob stays for downloads in flight",
        low=0, high=7 * 24 * 60)
    rotation_lease_seconds: int = setting(
        "ROTATION_LEASE_SECONDS", 900, "a rotation claim lasts this long; a worker that died holding one is "
        "taken over after it", low=5, high=24 * 3600)
    reconcile_schedule: str = setting(
        "RECONCILE_SCHEDULE", "0 */5 * * * *", "NCRONTAB of the reconciler timer (repairs what faults left)")
    reconcile_batch_size: int = setting(
        "RECONCILE_BATCH_SIZE", 200, "repairs of each kind per reconciler run at most", low=1, high=100_000)
    reconcile_after_seconds: int = setting(
        "RECONCILE_AFTER_SECONDS", 300, "the reconciler leaves alone what changed more recently than this "
        "(attempts in flight)", low=0, high=7 * 24 * 3600)
    ingest_retry_seconds: int = setting(
        "INGEST_RETRY_SECONDS", 120, "how long one delivery retries transient failures (backoff, Retry-After)",
        low=0, high=3600)
    plaintext_alert_minutes: int = setting(
        "PLAINTEXT_ALERT_MINUTES", 30, "health is `degraded` while an upload older than this is still plaintext",
        low=1, high=7 * 24 * 60)
    audit_fail_open: bool = setting(
        "AUDIT_FAIL_OPEN", False, "`false`: an access that cannot be written to the access log is refused (503); "
        "`true`: it is served, and the failure counted and logged")
    audit_retention_days: int = setting(
        "AUDIT_RETENTION_DAYS", 365, "`blobseal audit purge` removes access log rows older than this (the purge "
        "role only; the database keeps every row at least 30 days whatever this says)", low=30, high=36500)
    audit_chain_key_name: str = setting(
        "AUDIT_CHAIN_KEY_NAME", "blobseal-audit-chain", "the vault secret that keys the access log's chains (made on "
        "first use while no chained row exists; docs/THREATS.md)")
    audit_digest_container: str = setting(
        "AUDIT_DIGEST_CONTAINER", "audit-digests", "container of the access log's signed digests (in the data "
        "account; an immutability policy in Azure)")
    platform_auth_enabled: bool = setting(
        "WEBSITE_AUTH_ENABLED", False, "set by the platform when App Service Authentication is on (never by hand): "
        "only then is the X-MS-CLIENT-PRINCIPAL header trusted", in_example=False)
    function_keys_enabled: bool = setting(
        "FUNCTION_KEYS_ENABLED", True, "HTTP functions take function keys (auth level `function`); `false`: "
        "anonymous to the host, callers known only through App Service Authentication (the templates' default)")
    function_key_roles: str = setting(
        "FUNCTION_KEY_ROLES", "", "roles of named function keys: `name=read+write,other=audit`; a key not named has "
        "none, except the local development key (`default`), which has every role unless named here")
    function_key_names: str = setting(
        "FUNCTION_KEY_NAMES", "", "names for function keys in the access log: `name:fingerprint,...` "
        "(fingerprint: `blobseal key-fingerprint`); unnamed keys are logged by fingerprint")
    health_probe_seconds: int = setting(
        "HEALTH_PROBE_SECONDS", 30, "anonymous health answers from probes at most this old (one probe of each "
        "dependency per interval, whatever the request rate)", low=1, high=3600)
    upload_max_mb: int = setting(
        "UPLOAD_MAX_MB", 10240, "largest body `POST /api/files` accepts (413 beyond)", low=1, high=4 * 1024 * 1024)
    local_function_keys: str = setting(
        "LOCAL_FUNCTION_KEYS", "", "more keys the local host accepts, named: `name=key,...` (the access log "
        "shows the name)", secret=True)
    local_function_key: str = setting(
        "LOCAL_FUNCTION_KEY", "", "the function key the local host checks (`x-functions-key` or `?code=`)",
        secret=True, example="local-dev-key")
    app_insights_connection_string: str = setting(
        "APPLICATIONINSIGHTS_CONNECTION_STRING", "", "enables Azure Monitor export", secret=True)

    @property
    def key_ttl_seconds(self) -> float:
        """How long anything read from the vault (a key, the KEK's or signing key's current version) is used
        from memory: the cache's TTL, never longer than the fail-closed bound ``KEY_CACHE_SECONDS``; 0 with the
        cache off."""
        if not self.key_vault_cache_enabled:
            return 0.0
        return float(min(self.key_vault_cache_minutes * 60, self.key_cache_seconds))

    @property
    def key_names(self) -> dict[str, str]:
        """Function key fingerprint -> name, from FUNCTION_KEY_NAMES and the local keys."""
        names = {key_fingerprint(key): name for name, key in self.local_keys.items()}
        names.update({fp: name for name, fp in _pairs(self.function_key_names, ":")})
        return names

    @property
    def key_roles(self) -> dict[str, frozenset[str]]:
        """Function key name -> its roles, from FUNCTION_KEY_ROLES."""
        pairs = _pairs(self.function_key_roles, "=")
        return {name: frozenset(role for role in roles.split("+") if role) for name, roles in pairs}

    @property
    def local_keys(self) -> dict[str, str]:
        """The keys the local host accepts, by name (``default``: LOCAL_FUNCTION_KEY)."""
        keys = dict(_pairs(self.local_function_keys, "="))
        if self.local_function_key:
            keys.setdefault("default", self.local_function_key)
        return keys

    @property
    def chunk_size(self) -> int:
        """The transfer unit in bytes: what is read, staged and uploaded at a time."""
        return self.chunk_size_mb * 1024 * 1024

    @property
    def block_size(self) -> int:
        """The encrypted format's block size in bytes (recorded in each file's header)."""
        return self.block_size_kib * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate; raise one ``ConfigError`` naming every bad or missing value."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for f, spec in specs():
            text = next((v.strip() for name in (spec.env, *spec.aliases) if (v := environ.get(name, "")).strip()),
                        None)
            if text is not None and (value := _parse(_KINDS[f.name], spec, text, problems)) is not None:
                values[f.name] = value
        if values.get("data_storage_blob_uri") and "data_storage_connection" not in values:
            values["data_storage_connection"] = ""  # identity-based: no connection string
        settings = cls(**values)
        problems.extend(settings._contradictions())
        if problems:
            raise ConfigError(problems)
        return settings

    def _contradictions(self) -> list[str]:
        problems = []
        if self.encryption_enabled and not self.key_vault_enabled:
            problems.append("ENCRYPTION_ENABLED=true needs KEY_VAULT_ENABLED=true (keys must live in a vault)")
        if self.key_vault_enabled and self.key_vault_mode == "azure":
            problems.extend(self._azure_problems())
        problems.extend(self._app_problems())
        for env, name in (("KEY_VAULT_KEK_NAME", self.key_vault_kek_name),
                          ("KEY_VAULT_SIGNING_KEY_NAME", self.key_vault_signing_key_name),
                          ("AUDIT_CHAIN_KEY_NAME", self.audit_chain_key_name)):
            if not re.fullmatch(r"[0-9a-zA-Z-]{1,127}", name):
                problems.append(f"{env} must be 1-127 letters, digits or dashes, got {name!r}")
        if self.key_vault_kek_name == self.key_vault_signing_key_name:
            problems.append("KEY_VAULT_KEK_NAME and KEY_VAULT_SIGNING_KEY_NAME must differ")
        problems.extend(self._custody_problems())
        problems.extend(self._database_problems())
        return problems

    def _database_problems(self) -> list[str]:
        try:
            url = urlsplit(self.database_url)
            _ = url.port
        except ValueError:
            return ["DATABASE_URL is not a valid URL"]
        problems = []
        if url.scheme not in ("postgresql", "postgres"):
            problems.append(f"DATABASE_URL must be a postgresql:// URL, got {redact_url(self.database_url)!r}")
        if self.database_auth == "entra" and (url.password or _SECRET_QUERY.search(url.query)):
            problems.append("DATABASE_AUTH=entra takes its password from Entra: DATABASE_URL must not hold one")
        if self.database_auth == "entra" and dict(parse_qsl(url.query)).get("sslmode") != "verify-full":
            problems.append("DATABASE_AUTH=entra sends a bearer token as the password: DATABASE_URL must say "
                            "sslmode=verify-full (the server's certificate and name checked)")
        return problems

    def _custody_problems(self) -> list[str]:
        names = [name.strip() for name in self.key_custodies.split(",") if name.strip()]
        unknown = [name for name in names if name not in CUSTODIES]
        if unknown or not names:
            return [f"KEY_CUSTODIES must list custodies among {', '.join(CUSTODIES)}, got {self.key_custodies!r}"]
        if self.key_mode not in names:
            return [f"KEY_CUSTODIES must include KEY_MODE ({self.key_mode}): new keys are placed there"]
        return []

    @property
    def allowed_custodies(self) -> tuple[str, ...]:
        """KEY_CUSTODIES as a tuple, in the order ``CUSTODIES`` lists them."""
        names = {name.strip() for name in self.key_custodies.split(",")}
        return tuple(name for name in CUSTODIES if name in names)

    def _app_problems(self) -> list[str]:
        problems = []
        containers = {"INGEST_CONTAINER": self.ingest_container, "PROTECTED_CONTAINER": self.protected_container}
        for name, value in containers.items():
            if not _CONTAINER.fullmatch(value):
                problems.append(f"{name} must be a container name (3-63 of a-z, 0-9, -), got {value!r}")
        if self.ingest_container == self.protected_container:
            problems.append("INGEST_CONTAINER and PROTECTED_CONTAINER must differ")
        for name, schedule in (("ROTATION_SCHEDULE", self.rotation_schedule),
                               ("RECONCILE_SCHEDULE", self.reconcile_schedule)):
            if not _NCRONTAB.fullmatch(schedule):
                problems.append(f"{name} must be a 6-field NCRONTAB expression, got {schedule!r}")
        for name, text, separator in (("FUNCTION_KEY_NAMES", self.function_key_names, ":"),
                                      ("LOCAL_FUNCTION_KEYS", self.local_function_keys, "="),
                                      ("FUNCTION_KEY_ROLES", self.function_key_roles, "=")):
            entries = [item for item in text.split(",") if item.strip()]
            if len(_pairs(text, separator)) != len(entries):
                problems.append(f"{name} must be a list of name{separator}value pairs separated by commas")
        unknown = sorted({role for roles in self.key_roles.values() for role in roles} - set(ROLES))
        if unknown:
            problems.append(f"FUNCTION_KEY_ROLES names unknown roles {unknown}: the roles are {', '.join(ROLES)}")
        if not _CONTAINER.fullmatch(self.audit_digest_container) or self.audit_digest_container in containers.values():
            problems.append("AUDIT_DIGEST_CONTAINER must be a container name of its own (3-63 of a-z, 0-9, -)")
        if not self.data_storage_connection and not self.data_storage_blob_uri:
            problems.append(f"{DATA_STORAGE} (connection string) or {DATA_STORAGE}__blobServiceUri is required")
        return problems

    def _azure_problems(self) -> list[str]:
        problems = []
        url = urlsplit(self.key_vault_url)
        if not self.key_vault_url:
            problems.append("KEY_VAULT_URL is required when KEY_VAULT_MODE=azure")
        elif url.scheme != "https" or not url.hostname:
            problems.append(f"KEY_VAULT_URL must be an https:// URL, got {self.key_vault_url!r}")
        if self.key_vault_client_secret:
            required = {
                "KEY_VAULT_TENANT_ID": self.key_vault_tenant_id,
                "KEY_VAULT_CLIENT_ID": self.key_vault_client_id,
            }
            for name, value in required.items():
                if not value:
                    problems.append(f"{name} is required when KEY_VAULT_CLIENT_SECRET is set")
        return problems


_KINDS: dict[str, type] = {name: kind for name, kind in get_type_hints(Settings).items()}
