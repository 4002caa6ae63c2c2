"""Settings: read from the environment once, validated, one error listing every problem.

Nothing else in the project reads ``os.environ``: the bootstrap calls
``Settings.from_env(os.environ)`` once per worker and passes the object down. Secrets in the
settings (client secret, database password) are kept out of ``repr``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from shared.errors import ConfigError

__all__ = ["DATA_STORAGE", "LOCAL_STORAGE", "Settings", "redact_url"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_STORAGE = "UseDevelopmentStorage=true"
# The app setting (connection name) the blob trigger and the core's blob clients use.
DATA_STORAGE = "DataStorage"
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_NCRONTAB = re.compile(r"(\S+\s+){5}\S+")


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def get(self, name: str, default: T, parse: Callable[[str], T], expect: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            self.problems.append(f"{name} must be {expect}, got {value!r}")
            return default

    def flag(self, name: str, default: bool) -> bool:
        return self.get(name, default, _parse_bool, "true or false")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name, default, int, f"an integer from {low} to {high}")
        if not low <= value <= high:
            self.problems.append(f"{name} must be from {low} to {high}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name) or default
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def text(self, name: str, default: str = "") -> str:
        return self.raw(name) or default


def _app_settings(r: _Reader) -> dict[str, Any]:
    """Settings of the function app: storage, containers, triggers, rotation schedule."""
    blob_uri = r.text(f"{DATA_STORAGE}__blobServiceUri") or r.text(f"{DATA_STORAGE}__serviceUri")
    return {
        "data_storage_connection": r.text(DATA_STORAGE, "" if blob_uri else LOCAL_STORAGE),
        "data_storage_blob_uri": blob_uri,
        "ingest_container": r.text("INGEST_CONTAINER", "ingest"),
        "protected_container": r.text("PROTECTED_CONTAINER", "protected"),
        "keep_plaintext": r.flag("KEEP_PLAINTEXT", False),
        "blob_trigger_source": r.choice("BLOB_TRIGGER_SOURCE", "LogsAndContainerScan",
                                        ("LogsAndContainerScan", "EventGrid")),
        "rotation_schedule": r.text("ROTATION_SCHEDULE", "0 0 * * * *"),
        "rotation_batch_size": r.integer("ROTATION_BATCH_SIZE", 100, 1, 100_000),
        "rotation_time_budget_seconds": r.integer("ROTATION_TIME_BUDGET_SECONDS", 240, 1, 3600),
        "rotation_grace_minutes": r.integer("ROTATION_GRACE_MINUTES", 60, 0, 7 * 24 * 60),
        "local_function_key": r.text("LOCAL_FUNCTION_KEY"),
        "app_insights_connection_string": r.text("APPLICATIONINSIGHTS_CONNECTION_STRING"),
    }


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


@dataclass(frozen=True)
class Settings:
    """Every setting of the product, with its default."""

    encryption_enabled: bool = True
    encryption_algorithm: str = "AES-256-GCM"
    key_rotation_days: int = 30
    chunk_size_mb: int = 5
    block_size_kib: int = 64
    key_vault_enabled: bool = True
    key_vault_mode: str = "local"
    key_vault_url: str = ""
    key_vault_tenant_id: str = ""
    key_vault_client_id: str = ""
    key_vault_client_secret: str = field(default="", repr=False)
    key_vault_cache_enabled: bool = True
    key_vault_cache_minutes: int = 60
    key_vault_cache_max_entries: int = 10_000
    key_vault_local_path: Path = Path("secrets")
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    database_pool_max: int = 10
    data_storage_connection: str = field(default=LOCAL_STORAGE, repr=False)
    data_storage_blob_uri: str = ""
    ingest_container: str = "ingest"
    protected_container: str = "protected"
    keep_plaintext: bool = False
    blob_trigger_source: str = "LogsAndContainerScan"
    rotation_schedule: str = "0 0 * * * *"
    rotation_batch_size: int = 100
    rotation_time_budget_seconds: int = 240
    rotation_grace_minutes: int = 60
    local_function_key: str = field(default="", repr=False)
    app_insights_connection_string: str = field(default="", repr=False)

    @property
    def chunk_size(self) -> int:
        """The transfer unit in bytes: what is read, staged and uploaded at a time."""
        return self.chunk_size_mb * 1024 * 1024

    @property
    def block_size(self) -> int:
        """The encrypted format's block size in bytes (recorded in each file's header)."""
        return self.block_size_kib * 1024

    @property
    def database_url_redacted(self) -> str:
        return redact_url(self.database_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate; raise one ``ConfigError`` naming every bad or missing value."""
        r = _Reader(environ)
        values: dict[str, Any] = {
            "encryption_enabled": r.flag("ENCRYPTION_ENABLED", True),
            "encryption_algorithm": r.choice("ENCRYPTION_ALGORITHM", "AES-256-GCM", ("AES-256-GCM",)),
            "key_rotation_days": r.integer("ENCRYPTION_KEY_ROTATION_DAYS", 30, 1, 3650),
            "chunk_size_mb": r.integer("ENCRYPTION_CHUNK_SIZE_MB", 5, 1, 100),
            "block_size_kib": r.integer("ENCRYPTION_BLOCK_SIZE_KB", 64, 4, 16 * 1024),
            "key_vault_enabled": r.flag("KEY_VAULT_ENABLED", True),
            "key_vault_mode": r.choice("KEY_VAULT_MODE", "local", ("local", "azure")),
            "key_vault_url": r.text("KEY_VAULT_URL"),
            "key_vault_tenant_id": r.text("KEY_VAULT_TENANT_ID"),
            "key_vault_client_id": r.text("KEY_VAULT_CLIENT_ID"),
            "key_vault_client_secret": r.text("KEY_VAULT_CLIENT_SECRET"),
            "key_vault_cache_enabled": r.flag("KEY_VAULT_CACHE_ENABLED", True),
            "key_vault_cache_minutes": r.integer("KEY_VAULT_CACHE_DURATION_MINUTES", 60, 0, 7 * 24 * 60),
            "key_vault_cache_max_entries": r.integer("KEY_VAULT_CACHE_MAX_ENTRIES", 10_000, 1, 10_000_000),
            "key_vault_local_path": Path(r.text("KEY_VAULT_LOCAL_PATH", "secrets")),
            "database_url": r.text("DATABASE_URL", DEFAULT_DATABASE_URL),
            "database_pool_max": r.integer("DATABASE_POOL_MAX", 10, 1, 100),
            **_app_settings(r),
        }
        settings = cls(**values)
        r.problems.extend(settings._contradictions())
        if r.problems:
            raise ConfigError(r.problems)
        return settings

    def _contradictions(self) -> list[str]:
        problems = []
        if self.encryption_enabled and not self.key_vault_enabled:
            problems.append("ENCRYPTION_ENABLED=true needs KEY_VAULT_ENABLED=true (keys must live in a vault)")
        if self.key_vault_enabled and self.key_vault_mode == "azure":
            problems.extend(self._azure_problems())
        problems.extend(self._app_problems())
        if urlsplit(self.database_url).scheme not in ("postgresql", "postgres"):
            problems.append(f"DATABASE_URL must be a postgresql:// URL, got {redact_url(self.database_url)!r}")
        return problems

    def _app_problems(self) -> list[str]:
        problems = []
        containers = {"INGEST_CONTAINER": self.ingest_container, "PROTECTED_CONTAINER": self.protected_container}
        for name, value in containers.items():
            if not _CONTAINER.fullmatch(value):
                problems.append(f"{name} must be a container name (3-63 of a-z, 0-9, -), got {value!r}")
        if self.ingest_container == self.protected_container:
            problems.append("INGEST_CONTAINER and PROTECTED_CONTAINER must differ")
        if not _NCRONTAB.fullmatch(self.rotation_schedule):
            problems.append(f"ROTATION_SCHEDULE must be a 6-field NCRONTAB expression, got {self.rotation_schedule!r}")
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
