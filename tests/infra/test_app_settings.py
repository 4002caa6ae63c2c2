"""Every setting the app reads is set by the templates, or left out on purpose with the reason.

The settings table is ``shared.config.specs()`` (the app's own settings) plus ``HOST_SETTINGS``
(what the Functions host reads); the templates' settings are the ``appSettings`` object of
infra/main.bicep, evaluated with main.bicep's default parameters where a value is known before
the deployment.
"""

from __future__ import annotations

from typing import Any

from shared.config import HOST_SETTINGS, render_default, specs
from tests.infra.infra_helpers import INFRA, ROOT, load_check_infra

# Settings the templates intentionally do not set in Azure, and why.
NOT_SET_IN_AZURE = {
    "KEY_VAULT_TENANT_ID": "the system-assigned managed identity needs no service principal tenant",
    "KEY_VAULT_CLIENT_ID": "system-assigned identity: no client id (a user-assigned one would set it)",
    "KEY_VAULT_CLIENT_SECRET": "no secret is ever a setting: the managed identity reaches the vault",
    "KEY_VAULT_LOCAL_PATH": "the local JSON vault only; Azure uses KEY_VAULT_MODE=azure",
    "KEY_VAULT_LOCAL_MASTER_KEY": "the local JSON vault's master key; Key Vault keeps its own keys",
    "KEY_VAULT_LOCAL_MASTER_KEY_FILE": "the local JSON vault's master key file; Key Vault keeps its own keys",
    "DataStorage": "a connection string; the identity-based DataStorage__blobServiceUri is set instead",
    "LOCAL_FUNCTION_KEY": "the local host's key; in Azure the platform keeps the function keys",
    "LOCAL_FUNCTION_KEYS": "the local host's named keys; in Azure the platform keeps the function keys",
    "FUNCTIONS_WORKER_RUNTIME": "Flex Consumption rejects it: the runtime is functionAppConfig.runtime",
    "AzureWebJobsStorage": "a connection string; AzureWebJobsStorage__accountName (identity) is set instead",
    "WEBSITE_AUTH_ENABLED": "set by the platform while App Service Authentication is on (modules/easyauth.bicep); "
                            "a setting of that name would override it, so no template sets it (check_infra.py)",
    "KEY_CACHE_SECONDS": "the fail-closed bound (60 s) is the app's documented default; a deployment must not "
                         "lengthen it (it caps KEY_VAULT_CACHE_DURATION_MINUTES)",
}
# Read by the platform or the SDKs, not by shared/config.py.
PLATFORM = {"AzureWebJobsStorage__accountName", "AZURE_TOKEN_CREDENTIALS", "DataStorage__queueServiceUri"}
# Where Azure's value differs from the app's default on purpose.
AZURE_VALUES = {
    "KEY_VAULT_MODE": "azure",
    "BLOB_TRIGGER_SOURCE": "EventGrid",
    "DATABASE_POOL_MAX": "4",
    "DATABASE_AUTH": "entra",
    "DATABASE_PGBOUNCER": "true",
    "KEY_CUSTODIES": "secret",  # the defaults deploy no KEK: an envelope row is refused (docs/THREATS.md)
    "FUNCTION_KEYS_ENABLED": "false",  # callers come from App Service Authentication; keys are opt-in
    "KEY_VAULT_CACHE_DURATION_MINUTES": "1",  # what KEY_CACHE_SECONDS (60 s) makes of the spec's 60 minutes anyway
}


def app_settings() -> dict[str, Any]:
    """main.bicep's appSettings: name -> value (None where only the deployment knows it)."""
    module = load_check_infra()
    module.INFRA = INFRA
    bicep = module.load(INFRA / "main.bicep", module._parser())
    return app_settings_in(module, bicep, module.Scope(bicep, {}))


def app_settings_in(module: Any, bicep: Any, scope: Any) -> dict[str, Any]:
    """appSettings evaluated in ``scope`` (main.bicep with some parameters given)."""
    node = next(d.named_children[-1] for d in bicep.tree.root_node.named_children
                if d.type == "variable_declaration" and module._text(d.named_children[0]) == "appSettings")
    connection = scope.lookup("blobConnectionName")
    settings = {}
    for key, _, value in module._object_keys(node):
        value = scope.eval(value)
        settings[key.replace("{}", connection)] = value if isinstance(value, str) else None
    return settings


def read_by_app() -> dict[str, str]:
    """Every name the app or host reads (aliases too) -> its default as written in the environment."""
    names = {}
    for field, spec in specs():
        for name in (spec.env, *spec.aliases):
            names[name] = render_default(field.default)
    for host in HOST_SETTINGS:
        names[host.env] = host.example
    return names


def test_every_setting_the_app_reads_is_set_or_left_out_with_a_reason() -> None:
    settings, read = app_settings(), read_by_app()
    primary = {spec.env for _, spec in specs()} | {h.env for h in HOST_SETTINGS}
    aliases = {alias for _, spec in specs() for alias in spec.aliases}
    missing = sorted(name for name in primary - set(settings) - set(NOT_SET_IN_AZURE) if name not in aliases)
    assert not missing, f"read by the app but neither set by infra/main.bicep nor listed in NOT_SET_IN_AZURE: {missing}"
    stale = sorted(set(NOT_SET_IN_AZURE) - set(read))
    assert not stale, f"NOT_SET_IN_AZURE lists settings the app no longer reads: {stale}"
    both = sorted(set(NOT_SET_IN_AZURE) & set(settings))
    assert not both, f"listed as not set, but the templates set them: {both}"


def test_the_templates_set_nothing_the_app_does_not_read() -> None:
    unknown = sorted(set(app_settings()) - set(read_by_app()) - PLATFORM)
    assert not unknown, f"infra/main.bicep sets settings nobody reads (misspelled?): {unknown}"


def test_the_new_settings_are_deployed_and_the_reconciler_timer_is_bound() -> None:
    settings = app_settings()
    for name in ("RECONCILE_SCHEDULE", "RECONCILE_BATCH_SIZE", "RECONCILE_AFTER_SECONDS", "INGEST_RETRY_SECONDS",
                 "PLAINTEXT_ALERT_MINUTES", "ROTATION_LEASE_SECONDS", "DATABASE_AUTH", "DATABASE_URL"):
        assert name in settings, name
    assert "%RECONCILE_SCHEDULE%" in (ROOT / "function_app.py").read_text()


def test_azure_values_equal_the_app_defaults_unless_chosen_otherwise() -> None:
    settings, read = app_settings(), read_by_app()
    for name, value in settings.items():
        if value is None or name not in read or name in ("DATABASE_URL", "KEY_VAULT_URL"):
            continue
        expected = AZURE_VALUES.get(name, read[name])
        assert value == expected, f"{name}: the templates set {value!r}, expected {expected!r}"


def test_envelope_rows_are_read_only_where_the_kek_is_deployed() -> None:
    module = load_check_infra()
    module.INFRA = INFRA
    bicep = module.load(INFRA / "main.bicep", module._parser())
    for given, expected in (({}, "secret"), ({"keyMode": "envelope"}, "secret,envelope"),
                            ({"deployKek": True}, "secret,envelope")):
        settings = app_settings_in(module, bicep, module.Scope(bicep, given))
        assert settings["KEY_CUSTODIES"] == expected, given
        assert settings["KEY_VAULT_SIGNING_KEY_NAME"] == "blobseal-signing"


def test_the_database_settings_are_passwordless() -> None:
    settings = app_settings()
    assert settings["DATABASE_AUTH"] == "entra"
    assert settings["DATABASE_ENTRA_CLIENT_ID"] == ""
    assert settings["DATABASE_URL"] is None  # built from the server's FQDN at deployment time
    text = (INFRA / "main.bicep").read_text()
    assert "DATABASE_URL: 'postgresql://${databaseUser}@${postgres.outputs.fqdn}:${databasePort}/" in text


def test_the_app_goes_through_pgbouncer_where_the_tier_has_it() -> None:
    """The default tier has the built-in PgBouncer: port 6432 and DATABASE_PGBOUNCER=true; Burstable has
    none: 5432 directly and false."""
    module = load_check_infra()
    module.INFRA = INFRA
    bicep = module.load(INFRA / "main.bicep", module._parser())
    for given, port, pgbouncer in (({}, 6432, "true"), ({"postgresSkuTier": "Burstable"}, 5432, "false")):
        scope = module.Scope(bicep, given)
        assert scope.lookup("databasePort") == port
        assert app_settings_in(module, bicep, scope)["DATABASE_PGBOUNCER"] == pgbouncer


def test_callers_come_from_app_service_authentication_and_keys_are_opt_in() -> None:
    """Keys off unless functionKeysEnabled; the access log's chain key and digest container are the app's
    defaults, the digest container is one the data account creates; the platform's switch is never set."""
    module = load_check_infra()
    module.INFRA = INFRA
    bicep = module.load(INFRA / "main.bicep", module._parser())
    settings = app_settings_in(module, bicep, module.Scope(bicep, {}))
    assert settings["FUNCTION_KEYS_ENABLED"] == "false"
    assert settings["FUNCTION_KEY_ROLES"] == "" and settings["FUNCTION_KEY_NAMES"] == ""
    assert "WEBSITE_AUTH_ENABLED" not in settings
    keys_on = app_settings_in(module, bicep, module.Scope(bicep, {"functionKeysEnabled": True}))
    assert keys_on["FUNCTION_KEYS_ENABLED"] == "true"
    assert settings["AUDIT_CHAIN_KEY_NAME"] == "blobseal-audit-chain"
    assert settings["AUDIT_DIGEST_CONTAINER"] == "audit-digests"
    assert settings["HEALTH_PROBE_SECONDS"] == "30"
