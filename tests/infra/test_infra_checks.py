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
