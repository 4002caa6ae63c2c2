"""infra/ checked offline: infra/tools/check_infra.py and checkov pass, and the checks are not blind.

Nothing here needs a network: check_infra parses the templates (tree-sitter-bicep, pycep-parser),
evaluates main.bicep with its defaults and dry-runs deploy.sh against stubs; checkov scans the
Bicep files with --skip-download (no policy download, no platform).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.infra_helpers import CHECK_INFRA, CHECKOV, INFRA, ROOT, load_check_infra


@pytest.fixture(scope="module")
def checkov_run() -> Iterator[subprocess.Popen[str]]:
    """checkov started once, in the background, while the other tests run (about 12 s)."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make install` creates .venv/checkov (see Makefile)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    env["LOG_LEVEL"] = "WARNING"
    process = subprocess.Popen(
        [str(CHECKOV), "--directory", str(INFRA), "--framework", "bicep", "--skip-download", "--output", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def check(infra: Path, *extra: str) -> tuple[int, str]:
    """check_infra's main() in process; (exit code, output)."""
    module = load_check_infra()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = module.main(["--infra", str(infra), *extra])
    return code, out.getvalue()


def test_check_infra_passes(checkov_run: subprocess.Popen[str]) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([sys.executable, str(CHECK_INFRA)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s)" in result.stdout
    for expected in ("pycep-parser parsed", "secrets: no secure input", "private networking:",
                     "deploy.sh: dry run against a stub az", "deploy.sh: shellcheck clean",
                     "smoke.sh: shellcheck clean"):
        assert expected in result.stdout, f"{expected!r} not checked:\n{result.stdout}"


@pytest.fixture
def infra_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for app in ("function_app.py", "shared"):  # the app beside it: its settings and roles are checked too
        (tmp_path / app).symlink_to(ROOT / app)
    return copy


def mutate(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the test no longer matches the template"
    path.write_text(text.replace(old, new, 1))


# Each mutation breaks one promise of the templates; the checker must name it.
MUTATIONS = [
    ("modules/keyvault.bicep", "publicNetworkAccess: publicNetworkAccess\n", "publicNetworkAccess: 'Enabled'\n",
     "keyvault.bicep: vault: properties.publicNetworkAccess is 'Enabled'"),
    ("main.bicep", "param privateNetworking bool = true", "param privateNetworking bool = false",
     "privateNetworking must default to true"),
    ("main.bicep", "var networkDefaultAction = privateNetworking ? 'Deny' : 'Allow'",
     "var networkDefaultAction = 'Allow'", "networkAcls.defaultAction is 'Allow'"),
    ("main.bicep", "var publicNetworkAccess = privateNetworking ? 'Disabled' : 'Enabled'",
     "var publicNetworkAccess = 'Enabled'",
     "postgres.bicep: server: properties.network.publicNetworkAccess is 'Enabled'"),
    ("modules/postgres.bicep", "= if (allowAzureServices && publicNetworkAccess == 'Enabled') {", "= if (true) {",
     "a PostgreSQL firewall rule is deployed"),
    ("main.bicep", "    groupId: 'postgresqlServer'\n", "    groupId: 'vault'\n",
     "no private endpoint postgresqlServer"),
    ("modules/functionapp.bicep",
     "virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId",
     "virtualNetworkSubnetId: null", "not VNet-integrated"),
    ("modules/postgres.bicep", "passwordAuth: 'Disabled'", "passwordAuth: 'Enabled'",
     "passwordAuth must be 'Disabled'"),
    ("modules/postgres.bicep", "param databaseName string = 'blobseal'",
     "param databaseName string = 'blobseal'\n\n@secure()\nparam adminPassword string",
     "secure parameter adminPassword"),
    ("main.bicep", "output databaseUser string = databaseUser",
     "output databaseUser string = databaseUser\noutput insights string = appInsights.properties.ConnectionString",
     "output insights exposes a connection string"),
    ("main.bicep", "DATABASE_URL: 'postgresql://${databaseUser}@", "DATABASE_URL: 'postgresql://${databaseUser}:pw@",
     "with a user and no password"),
    ("main.bicep", "DATABASE_AUTH: 'entra'", "DATABASE_AUTH: 'password'", "DATABASE_AUTH must be 'entra'"),
    ("modules/storage.bicep", "publicNetworkAccess: publicNetworkAccess\n", "\n",
     "storage.bicep: account: publicNetworkAccess not set"),
    ("modules/keyvault.bicep", "      'sign'\n      'verify'\n", "      'sign'\n      'verify'\n      'unwrapKey'\n",
     "signingKey: keyOps must be exactly sign and verify"),
    ("modules/keyvault.bicep", "    curveName: 'P-256'\n", "    curveName: 'P-384'\n",
     "signingKey: must be curve 'P-256'"),
    ("modules/rbac.bicep", "          'Microsoft.KeyVault/vaults/keys/sign/action'\n",
     "          'Microsoft.KeyVault/vaults/keys/sign/action'\n"
     "          'Microsoft.KeyVault/vaults/keys/decrypt/action'\n",
     "signerRole: grants"),
    ("main.bicep", "    blobSoftDeleteDays: 0\n", "    blobSoftDeleteDays: 7\n",
     "dataStorage must pass blobSoftDeleteDays: 0"),
    ("modules/storage.bicep", "isVersioningEnabled: false", "isVersioningEnabled: true",
     "isVersioningEnabled must be false"),
    ("modules/rbac.bicep", "var resourceGroupId = resourceGroup().id\n", "var resourceGroupId = subscription().id\n",
     "signerRole: must be assignable in the resource group only"),
    # who may call: App Service Authentication in front of everything but health and the blob webhook
    ("modules/easyauth.bicep", "        '/api/health'\n", "        '/api/health'\n        '/api/files'\n",
     "globalValidation.excludedPaths is ['/api/health', '/api/files', '/runtime/webhooks/blobs']"),
    ("modules/easyauth.bicep", "        '/runtime/webhooks/blobs'\n", "        '/runtime'\n",
     "globalValidation.excludedPaths is ['/api/health', '/runtime']"),
    ("modules/easyauth.bicep", "unauthenticatedClientAction: 'Return401'",
     "unauthenticatedClientAction: 'AllowAnonymous'",
     "globalValidation.unauthenticatedClientAction is 'AllowAnonymous'"),
    ("modules/easyauth.bicep", "requireAuthentication: true", "requireAuthentication: false",
     "globalValidation.requireAuthentication is False"),
    ("modules/easyauth.bicep", "    platform: {\n      enabled: true\n", "    platform: {\n      enabled: false\n",
     "platform.enabled is False"),
    ("modules/easyauth.bicep", "      tokenStore: {\n        enabled: false\n",
     "      tokenStore: {\n        enabled: true\n", "login.tokenStore.enabled is True"),
    ("modules/easyauth.bicep", "          clientId: clientId\n",
     "          clientId: clientId\n          clientSecretSettingName: 'MICROSOFT_PROVIDER_AUTHENTICATION_SECRET'\n",
     "registration.clientSecretSettingName: validating bearer tokens needs no client secret"),
    ("modules/easyauth.bicep", "${tenantId}/v2.0'", "${tenantId}/'", "openIdIssuer must be the tenant's v2.0 issuer"),
    ("modules/easyauth.bicep", "  parent: site\n  name: 'authsettingsV2'\n", "  name: 'authsettingsV2'\n",
     "auth: must name its site with parent:"),
    ("modules/easyauth.bicep", "  name: 'authsettingsV2'\n", "  name: 'authsettings'\n",
     "0 App Service Authentication (authsettingsV2) resources deployed"),
    ("main.bicep", "param functionKeysEnabled bool = false", "param functionKeysEnabled bool = true",
     "FUNCTION_KEYS_ENABLED must be 'false' with the defaults, not 'true'"),
    ("main.bicep", "  AUDIT_FAIL_OPEN: 'false'\n", "  AUDIT_FAIL_OPEN: 'false'\n  WEBSITE_AUTH_ENABLED: 'true'\n",
     "sets WEBSITE_AUTH_ENABLED: only the platform may"),
    ("modules/easyauth.bicep", "  properties: {\n    platform: {\n",
     "  properties: {\n    platform: {\n      runtimeVersion: '${appName}-WEBSITE_AUTH_ENABLED'\n",
     "easyauth.bicep:55: sets WEBSITE_AUTH_ENABLED"),
    ("deploy.sh", 'log "done"\n',
     'az functionapp config appsettings set -g "$RESOURCE_GROUP" -n "$APP" --settings WEBSITE_AUTH_ENABLED=true\n'
     'log "done"\n', "sets WEBSITE_AUTH_ENABLED: only the platform may"),
    ("app-registration.json", '"value": "blobseal.operate"', '"value": "blobseal.admin"',
     "app-registration.json: app roles ['blobseal.admin', 'blobseal.audit'"),
    ("app-registration.json", '"requestedAccessTokenVersion": 2', '"requestedAccessTokenVersion": 1',
     "api.requestedAccessTokenVersion must be 2"),
    ("app-registration.json", '"allowedMemberTypes": ["User", "Application"],\n      "isEnabled": true\n    }\n  ]',
     '"allowedMemberTypes": ["User"],\n      "isEnabled": true\n    }\n  ]',
     "blobseal.operate: must be enabled, for users (and groups) and applications"),
    # the access log's digests: write once, in the data account, never rewritten once locked
    ("modules/immutability-policy.bicep", "allowProtectedAppendWrites: false", "allowProtectedAppendWrites: true",
     "allowProtectedAppendWrites must be false"),
    ("main.bicep", "param auditDigestRetentionDays int = 365", "param auditDigestRetentionDays int = 90",
     "digests immutable for 90 days, less than auditRetentionDays (365)"),
    ("main.bicep", "      protectedContainerName\n      auditDigestContainerName\n", "      protectedContainerName\n",
     "the digest container 'audit-digests' must be created in the data account"),
    ("main.bicep", "immutableContainerName: auditDigestContainerName", "immutableContainerName: ingestContainerName",
     "protects container 'ingest', the app writes digests to 'audit-digests'"),
    ("main.bicep", "    immutableContainerName: auditDigestContainerName\n", "",
     "0 immutability policies deployed, not 1"),
    ("modules/storage.bicep", "if (!empty(immutableContainerName) && !immutabilityPolicyLocked)",
     "if (!empty(immutableContainerName))", "with auditDigestImmutabilityLocked=true the policy is still deployed"),
    # logs: blob reads, writes and deletes; the server log and sessions
    ("modules/storage.bicep", "      {\n        category: 'StorageDelete'\n        enabled: true\n      }\n", "",
     "the data account's blob logs are ['StorageRead', 'StorageWrite']"),
    ("main.bicep", "    blobLogsWorkspaceId: monitoring.outputs.workspaceId\n", "",
     "the data account's blob service sends no diagnostic logs"),
    ("modules/postgres.bicep", "        category: 'PostgreSQLFlexSessions'\n        enabled: true",
     "        category: 'PostgreSQLFlexSessions'\n        enabled: false", "the server's logs are ['PostgreSQLLogs']"),
    ("modules/postgres.bicep", "    value: 'on'\n", "    value: 'off'\n",
     "PostgreSQLFlexSessions stays empty without metrics.collector_database_activity=on"),
    ("main.bicep", "    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId\n  }\n}\n\n// One private endpoint",
     "  }\n}\n\n// One private endpoint", "the PostgreSQL server sends no diagnostic logs"),
    # the access log's alert, like the key-integrity one
    ("modules/alerts.bicep", "    severity: 0\n    query: auditFailuresQuery\n",
     "    severity: 2\n    query: auditFailuresQuery\n", "access-log-failures: severity 2"),
    ("modules/alerts.bicep",
     ',\n  (customMetrics | where name in ("blobseal_audit_failures", "blobseal_audit_failures_total") and value > 0)',
     "", "access-log-failures: the query does not fire on blobseal_audit_failures > 0"),
    ("modules/alerts.bicep",
     'where name in ("blobseal_key_integrity_failures", "blobseal_key_integrity_failures_total")',
     'where name == "blobseal_key_integrity_failures_total"',
     "key-integrity: looks for blobseal_key_integrity_failures_total, which never reaches customMetrics"),
]

# Each mutation breaks a promise of deploy.sh's phase 0 or of the digests' lock; the dry run must name it.
DEPLOY_MUTATIONS = [
    ('--if-match "$etag"', '--if-match "*"', "want the policy locked with its ETag after phase 1"),
    ("    digests_locked=true\n", "    digests_locked=false\n", "must pass auditDigestImmutabilityLocked=true"),
    ('      app_body scopes "api://${API_CLIENT_ID}"', '      app_body full "api://${API_CLIENT_ID}"',
     "the Azure CLI must be pre-authorized in the second update only"),
    ("""--body '{"appRoleAssignmentRequired": true}'""", """--body '{"appRoleAssignmentRequired": false}'""",
     "does not require an app role assignment"),
    ('    elif [[ "$answer" == *"already exists"* ]]; then', "    elif false; then",
     "--assign-app-role (assigned already: True)"),
    ("(read|write|erase|audit|operate)=", "([a-z]+)=", "accepts --assign-app-role with a role the app does not have"),
    ('role_id="$(app_role_id "$role")"', 'role_id="$(app_role_id read)"',
     "--assign-app-role (assigned already: False)"),
    ('apiClientId="$API_CLIENT_ID"', 'apiClientId="${API_CLIENT_ID}x"', "--assign-app-role (assigned already: False)"),
]


def test_the_offline_checks_pass_and_catch_each_broken_promise(infra_copy: Path) -> None:
    code, output = check(infra_copy, "--skip-scripts", "--no-pycep")
    assert code == 0, output
    for rel, old, new, expected in MUTATIONS:
        target = infra_copy / rel
        original = target.read_text()
        mutate(target, old, new)
        code, output = check(infra_copy, "--skip-scripts", "--no-pycep")
        target.write_text(original)
        assert code == 1 and expected in output, f"{rel}: {new!r} not caught as {expected!r}:\n{output}"


def test_the_deploy_dry_run_catches_a_leaked_token(infra_copy: Path) -> None:
    mutate(infra_copy / "deploy.sh", '  admin_url="postgresql://',
           '  echo "token: ${pg_token}" >&2\n  admin_url="postgresql://')
    code, output = check(infra_copy, "--no-pycep")
    assert code == 1 and "the database token appears" in output, output


@pytest.mark.parametrize(("old", "new", "expected"), DEPLOY_MUTATIONS, ids=[m[2][:40] for m in DEPLOY_MUTATIONS])
def test_the_deploy_dry_run_catches_each_broken_promise(infra_copy: Path, old: str, new: str, expected: str) -> None:
    mutate(infra_copy / "deploy.sh", old, new)
    code, output = check(infra_copy, "--no-pycep")
    assert code == 1 and expected in output, output


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason(checkov_run: subprocess.Popen[str]) -> None:
    stdout, stderr = checkov_run.communicate(timeout=120)
    report = json.loads(stdout)
    reports = report if isinstance(report, list) else [report]
    summary = reports[0]["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0, stderr[-2000:]
    assert summary["passed"] >= 30, summary
    for skipped in (c for r in reports for c in r["results"]["skipped_checks"]):
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"
    # Every inline skip in the templates is one checkov saw (no stale, unused skip comments).
    inline = {(m.group(1), p.name) for p in INFRA.rglob("*.bicep")
              for m in re.finditer(r"checkov:skip=(CKV2?_AZURE_\d+):", p.read_text())}
    used = {(c["check_id"], Path(c["file_path"]).name) for r in reports for c in r["results"]["skipped_checks"]}
    assert inline == used, f"unused skips: {sorted(inline - used)}"
    # App Service Authentication is checked for real: the V2 check (CKV_AZURE_56) passes on authsettingsV2;
    # the V1-only CKV_AZURE_13 is skipped there and on the appsettings resource, nowhere else.
    passed = {(c["check_id"], c["resource"]) for r in reports for c in r["results"]["passed_checks"]}
    assert ("CKV_AZURE_56", "Microsoft.Web/sites/config.auth") in passed, sorted(passed)
    v1_skips = sorted(c["resource"] for r in reports for c in r["results"]["skipped_checks"]
                      if c["check_id"] == "CKV_AZURE_13")
    assert v1_skips == ["Microsoft.Web/sites/config.appSettings", "Microsoft.Web/sites/config.auth"], v1_skips
