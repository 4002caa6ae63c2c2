"""The one bootstrap: read settings once, build the real adapters lazily, reuse them.

Nothing here does I/O at import. ``load_settings`` is the only reader of the process
environment (plus ``local.settings.json`` for the CLI and the local host, environment
first). ``services()`` builds the database pool, the vault (local JSON or Azure, wrapped in
the TTL cache), the file key service, the blob store and the file service on first use in
the running event loop, and returns the same objects afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared.access import Guard
from shared.audit import AuditLog, ChainKey, Digests, DigestStore
from shared.blobs import BlobStore, Container
from shared.config import Settings
from shared.custody import EnvelopeCustody, IntermediateKeys, IntermediatePolicy, KeyCustody, SecretCustody
from shared.db.pool import Database
from shared.download import Reader
from shared.erase import Eraser
from shared.errors import ConfigError
from shared.health import Health
from shared.identity import IdentityPolicy
from shared.ingest import Ingestor, RetryPolicy
from shared.keys import FileKeyService
from shared.maintenance import Maintenance
from shared.reconcile import ReconcilePolicy, Reconciler
from shared.rotation import RotationPolicy, Rotator
from shared.service import FileService
from shared.telemetry import configure_telemetry
from shared.transfer import Transfer
from shared.upload import Uploader
from shared.vault.base import KeyVault
from shared.vault.cache import CachedKeyVault, TtlCache
from shared.vault.kek import KeyWrapper, LocalKeyWrapper
from shared.vault.sealing import MasterKeySource
from shared.vault.signer import LocalSigner, Signer

__all__ = [
    "Services",
    "build_services",
    "close_services",
    "load_settings",
    "reconcile_policy",
    "rotation_policy",
    "services",
    "settings_mapping",
    "transfer",
    "trigger_source",
]

log = logging.getLogger(__name__)

# The app folder (where function_app.py is): the settings file and a relative local vault path
# are found from here, whatever the working directory of the process (host, CLI, tests).
APP_ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FILE = APP_ROOT / "local.settings.json"


def settings_mapping(environ: Mapping[str, str] | None = None, settings_file: Path = SETTINGS_FILE) -> dict[str, str]:
    """The environment over the ``Values`` of ``local.settings.json`` (when present)."""
    values: dict[str, str] = {}
    if settings_file.exists():
        try:
            document = json.loads(settings_file.read_text())
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
            raise ConfigError([f"{settings_file} is not valid JSON ({where})"]) from None
        except (OSError, ValueError) as exc:
            raise ConfigError([f"{settings_file} cannot be read ({type(exc).__name__})"]) from exc
        values = {str(k): str(v) for k, v in (document.get("Values") or {}).items()}
    values.update(os.environ if environ is None else environ)
    return values


def load_settings(environ: Mapping[str, str] | None = None, settings_file: Path = SETTINGS_FILE) -> Settings:
    return Settings.from_env(settings_mapping(environ, settings_file))


def trigger_source(environ: Mapping[str, str] | None = None) -> str:
    """The blob trigger's source, needed when the worker indexes ``function_app.py``.

    ``EventGrid`` in Azure (Flex Consumption supports nothing else), ``LogsAndContainerScan``
    (polling) locally and against Azurite. Everything else is validated on first use.
    """
    return Settings.from_env({"BLOB_TRIGGER_SOURCE": settings_mapping(environ).get("BLOB_TRIGGER_SOURCE", "")}) \
        .blob_trigger_source


def http_auth_level(environ: Mapping[str, str] | None = None) -> str:
    """The HTTP functions' auth level, needed when the worker indexes ``function_app.py``: ``function``
    while ``FUNCTION_KEYS_ENABLED`` (the host checks a key first), else ``anonymous`` (App Service
    Authentication in front decides who gets in; the app checks each caller's roles either way)."""
    value = settings_mapping(environ).get("FUNCTION_KEYS_ENABLED", "")
    return "function" if Settings.from_env({"FUNCTION_KEYS_ENABLED": value}).function_keys_enabled else "anonymous"


@dataclass
class Services:
    """Every adapter of one worker, built from the settings, and the services over them."""

    settings: Settings
    db: Database
    vault: KeyVault
    keys: FileKeyService
    intermediates: IntermediateKeys
    blobs: BlobStore
    ingest: Container
    protected: Container
    files: FileService
    maintenance: Maintenance
    health: Health
    identity: IdentityPolicy

    async def close(self) -> None:
        for close in (self.files.close, self.blobs.close, self.keys.close, self.intermediates.close, self.vault.close,
                      self.db.close):
            try:
                await close()
            except Exception:  # closing is best effort; report, keep closing the rest
                log.warning("closing %s failed", close.__qualname__, exc_info=True)


def local_vault_path(settings: Settings) -> Path:
    """``KEY_VAULT_LOCAL_PATH``, a relative one taken from the app folder (never the working directory)."""
    return settings.key_vault_local_path if settings.key_vault_local_path.is_absolute() \
        else APP_ROOT / settings.key_vault_local_path


def master_key_source(settings: Settings) -> MasterKeySource:
    """Where the local vault's master key is: the setting's text, else its file (relative: from the app folder)."""
    folder = local_vault_path(settings)
    given = Path(settings.key_vault_local_master_key_file)
    if not settings.key_vault_local_master_key_file:
        path = folder.parent / f"{folder.name}.master-key"
    else:
        path = given if given.is_absolute() else APP_ROOT / given
    return MasterKeySource(path, settings.key_vault_local_master_key)


def build_vault(settings: Settings, adapter: KeyVault | None = None) -> KeyVault:
    """The vault the settings name (or ``adapter``), behind the TTL cache when it is on."""
    vault: KeyVault
    if adapter is not None:
        vault = adapter
    elif settings.key_vault_mode == "azure":
        from shared.vault.azure import AzureKeyVault  # the Azure SDK only where it is used

        vault = AzureKeyVault.from_settings(settings)
    else:
        from shared.vault.local import LocalJsonVault

        vault = LocalJsonVault(local_vault_path(settings), master=master_key_source(settings))
    if settings.key_ttl_seconds > 0:
        vault = CachedKeyVault(vault, ttl_seconds=settings.key_ttl_seconds,
                               max_entries=settings.key_vault_cache_max_entries)
    return vault


def build_kek(settings: Settings, vault: KeyVault, adapter: KeyWrapper | None = None) -> KeyWrapper:
    """The KEK the settings name: a Key Vault key (azure mode), or a secret of the local vault."""
    if adapter is not None:
        return adapter
    if settings.key_vault_mode == "azure":
        from shared.vault.azure_kek import AzureKeyWrapper  # the Azure SDK only where it is used

        return AzureKeyWrapper.from_settings(settings)
    return LocalKeyWrapper(vault, settings.key_vault_kek_name)


def build_signer(settings: Settings, vault: KeyVault, adapter: Signer | None = None) -> Signer:
    """The signing key the settings name: a Key Vault EC key (azure mode), or a secret of the local vault."""
    if adapter is not None:
        return adapter
    if settings.key_vault_mode == "azure":
        from shared.vault.azure_signer import AzureSigner  # the Azure SDK only where it is used

        return AzureSigner.from_settings(settings)
    return LocalSigner(vault, settings.key_vault_signing_key_name)


def build_intermediates(settings: Settings, db: Database, vault: KeyVault, kek: KeyWrapper | None = None,
                        signer: Signer | None = None) -> IntermediateKeys:
    """The envelope custody's intermediate keys: the KEK wraps them, the signing key vouches for them."""
    policy = IntermediatePolicy(period=timedelta(minutes=settings.envelope_intermediate_minutes),
                                max_files=settings.envelope_intermediate_max_files,
                                cache_seconds=settings.key_ttl_seconds,
                                cache_entries=settings.key_vault_cache_max_entries,
                                may_create_keys=settings.key_vault_mode == "local")
    return IntermediateKeys(db, build_kek(settings, vault, kek), build_signer(settings, vault, signer), policy,
                            instance=instance_name())


def build_key_service(settings: Settings, db: Database, vault: KeyVault, intermediates: IntermediateKeys) \
        -> FileKeyService:
    """The key service over every custody; it reads those ``KEY_CUSTODIES`` allows, ``KEY_MODE`` places new keys."""
    custodies: dict[str, KeyCustody] = {"secret": SecretCustody(vault, db), "envelope": EnvelopeCustody(intermediates)}
    return FileKeyService(db, custodies, rotation_days=settings.key_rotation_days,
                          mode="envelope" if settings.key_mode == "envelope" else "secret",
                          allowed=settings.allowed_custodies,  # type: ignore[arg-type]
                          cache=TtlCache(ttl_seconds=settings.key_ttl_seconds,
                                         max_entries=settings.key_vault_cache_max_entries))


def instance_name() -> str:
    """Who made an intermediate key: the Functions instance (or host) and the process."""
    return f"{os.environ.get('WEBSITE_INSTANCE_ID', socket.gethostname())[:40]}/{os.getpid()}"


def transfer(settings: Settings) -> Transfer:
    return Transfer(chunk_size=settings.chunk_size, block_size=settings.block_size)


def rotation_policy(settings: Settings) -> RotationPolicy:
    return RotationPolicy(batch_size=settings.rotation_batch_size,
                          time_budget_seconds=settings.rotation_time_budget_seconds,
                          grace=timedelta(minutes=settings.rotation_grace_minutes),
                          lease_seconds=settings.rotation_lease_seconds)


def reconcile_policy(settings: Settings) -> ReconcilePolicy:
    return ReconcilePolicy(batch_size=settings.reconcile_batch_size,
                           settle=timedelta(seconds=settings.reconcile_after_seconds))


def build_services(settings: Settings, *, vault: KeyVault | None = None, kek: KeyWrapper | None = None,
                   signer: Signer | None = None) -> Services:
    """Construct every adapter (no I/O: pools and clients connect on first use).

    ``vault``, ``kek`` and ``signer`` replace the adapters the settings name, ``vault`` behind the same
    cache (tests drive the Azure adapters against a loopback Key Vault stand-in this way; nothing else does).
    """
    db = Database.from_settings(settings)
    vault = build_vault(settings, vault)
    intermediates = build_intermediates(settings, db, vault, kek, signer)
    keys = build_key_service(settings, db, vault, intermediates)
    blobs = BlobStore.from_settings(settings)
    ingest, protected = blobs.container(settings.ingest_container), blobs.container(settings.protected_container)
    chain_key = ChainKey(vault, db, settings.audit_chain_key_name)
    guard = Guard(AuditLog(db, chain_key, fail_open=settings.audit_fail_open))
    digests = Digests(db, intermediates, DigestStore(blobs.container(settings.audit_digest_container)),
                      writer=instance_name())
    ingestor = build_ingestor(settings, db, keys, ingest, protected)
    rotator = Rotator(db=db, keys=keys, protected=protected, transfer=transfer(settings),
                      policy=rotation_policy(settings))
    eraser = Eraser(db=db, keys=keys, ingest=ingest, protected=protected)
    reconciler = Reconciler(db=db, keys=keys, eraser=eraser, ingest=ingest, protected=protected, ingestor=ingestor,
                            rotator=rotator, digests=digests, policy=reconcile_policy(settings),
                            keep_plaintext=settings.keep_plaintext)
    uploader = Uploader(db=db, keys=keys, protected=protected, transfer=transfer(settings),
                        max_bytes=settings.upload_max_mb * 1024 * 1024)
    files = FileService(db=db, keys=keys, reader=Reader(protected), eraser=eraser, ingestor=ingestor,
                        uploader=uploader, guard=guard)
    maintenance = Maintenance(db=db, keys=keys, intermediates=intermediates, rotator=rotator, reconciler=reconciler,
                              ingestor=ingestor, digests=digests, chain_key=chain_key, signer=intermediates.signer,
                              guard=guard, retention=timedelta(days=settings.audit_retention_days))
    health = Health(db=db, probes={"storage": protected.ping, "database": db.ping, "vault": keys.check_vault},
                    capabilities={"uploads": keys.check_uploads}, guard=guard,
                    interval_seconds=settings.health_probe_seconds,
                    plaintext_alert=timedelta(minutes=settings.plaintext_alert_minutes))
    return Services(settings, db, vault, keys, intermediates, blobs, ingest, protected, files, maintenance, health,
                    IdentityPolicy.from_settings(settings))


def build_ingestor(settings: Settings, db: Database, keys: FileKeyService, ingest: Container,
                   protected: Container) -> Ingestor:
    return Ingestor(db=db, keys=keys, ingest=ingest, protected=protected, transfer=transfer(settings),
                    keep_plaintext=settings.keep_plaintext, enabled=settings.encryption_enabled,
                    retry=RetryPolicy(patience_seconds=settings.ingest_retry_seconds),
                    replace_grace=timedelta(minutes=settings.rotation_grace_minutes))


_services: Services | None = None
_lock: asyncio.Lock | None = None


async def services() -> Services:
    """The worker's services, built once per process on first use."""
    global _services, _lock
    if _services is not None:
        return _services
    _lock = _lock or asyncio.Lock()
    async with _lock:
        if _services is None:
            # the Azure SDK logs every request at INFO; operators want our INFO, not its
            logging.getLogger("azure").setLevel(logging.WARNING)
            settings = load_settings()
            configure_telemetry(settings)
            _services = build_services(settings)
            log.info("blobseal services ready (vault mode %s)", _services.settings.key_vault_mode)
    return _services


async def close_services() -> None:
    global _services
    if _services is not None:
        await _services.close()
        _services = None
