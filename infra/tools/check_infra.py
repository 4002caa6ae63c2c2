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
   connections, reference DATABASE_URL from Key Vault, and avoid settings Flex Consumption
   rejects; no output exposes a secure parameter or a listKeys() result;
6. deploy.sh: `bash -n`, shellcheck (when installed), and a dry run against a stub `az` that
   records every call: the phases run in order, the password never appears in any command
   line or in the output, and the parameters file is private and removed afterwards.

Usage:
    python -m venv .venv-infra && .venv-infra/bin/pip install -r infra/tools/requirements.txt
    .venv-infra/bin/python infra/tools/check_infra.py
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
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
    "Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01": {
        "": {"parent", "name", "properties"},
        "properties": {"charset", "collation"},
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
    "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15": {
        "properties.eventDeliverySchema": {"CloudEventSchemaV1_0", "CustomInputSchema", "EventGridSchema"},
        "properties.deadLetterWithResourceIdentity.identity.type": {"SystemAssigned", "UserAssigned"},
        "properties.deadLetterWithResourceIdentity.deadLetterDestination.endpointType": {"StorageBlob"},
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
    # decorators
    "allowed", "description", "maxLength", "maxValue", "metadata", "minLength", "minValue", "secure",
}

REQUIRED_APP_SETTINGS = {
    "AzureWebJobsStorage__accountName", "APPLICATIONINSIGHTS_CONNECTION_STRING", "PYTHON_ENABLE_INIT_INDEXING",
    "ENCRYPTION_ENABLED", "ENCRYPTION_ALGORITHM", "ENCRYPTION_KEY_ROTATION_DAYS", "ENCRYPTION_CHUNK_SIZE_MB",
    "ENCRYPTION_BLOCK_SIZE_KB", "KEY_VAULT_ENABLED", "KEY_VAULT_MODE", "KEY_VAULT_URL", "KEY_VAULT_CACHE_ENABLED",
    "KEY_VAULT_CACHE_DURATION_MINUTES", "DATABASE_URL", "BLOB_TRIGGER_SOURCE", "INGEST_CONTAINER",
    "PROTECTED_CONTAINER", "ROTATION_SCHEDULE",
}
# Flex Consumption rejects or ignores these; connection strings must not be plain settings.
FORBIDDEN_APP_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "AzureWebJobsStorage",
    "KEY_VAULT_CLIENT_SECRET", "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD",
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
    if database_url is None or not _text(database_url).startswith("'@Microsoft.KeyVault(SecretUri="):
        report.fail("main.bicep: DATABASE_URL must be a Key Vault reference @Microsoft.KeyVault(SecretUri=...)")
    literal_values = {
        "KEY_VAULT_MODE": "azure", "BLOB_TRIGGER_SOURCE": "EventGrid", "PYTHON_ENABLE_INIT_INDEXING": "1",
        "ENCRYPTION_ALGORITHM": "AES-256-GCM", "ENCRYPTION_ENABLED": "true", "KEY_VAULT_ENABLED": "true",
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
    if "%ROTATION_SCHEDULE%" not in app_source:
        report.fail("function_app.py: the timer does not bind %ROTATION_SCHEDULE%")
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
# deploy.sh
# ---------------------------------------------------------------------------------------------

STUB_AZ = r"""#!/usr/bin/env bash
# Stub az: records each call (one line, arguments separated by \x1f) and answers like az would.
set -euo pipefail
printf '%s\x1f' "$@" >>"$STUB_LOG"; printf '\n' >>"$STUB_LOG"
args=" $* "
case "$args" in
  *" account show "*"--query"*) printf 'Stub subscription\t00000000-0000-0000-0000-000000000000\n' ;;
  *" account show "*) ;;
  *" provider show "*) echo Registered ;;
  *" deployment group create "*"main.bicep"*)
    for a in "$@"; do
      if [[ "$a" == @* ]]; then
        f="${a#@}"
        echo "PARAMS_FILE $f $(stat -c %a "$f") $(stat -c %a "$(dirname "$f")")" >>"$STUB_LOG"
        python3 "$STUB_HELPER" params "$f" >>"$STUB_LOG"
      fi
    done ;;
  *" deployment group show "*)
    q="${args#*properties.outputs.}"; q="${q%%.value*}"
    case "$q" in
      functionAppHostName) echo "stub-func.azurewebsites.net" ;;
      *) echo "stub-$q" ;;
    esac ;;
  *" functionapp deployment source config-zip "*)
    prev=""
    for a in "$@"; do
      if [[ "$prev" == "--src" ]]; then
        python3 "$STUB_HELPER" zip "$a" >>"$STUB_LOG"
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

STUB_HELPER = """
import hashlib, json, sys, zipfile
kind, path = sys.argv[1], sys.argv[2]
if kind == "params":
    value = json.load(open(path))["parameters"]["postgresAdminPassword"]["value"]
    print("PASSWORD_SHA256", hashlib.sha256(value.encode()).hexdigest())
else:
    names = zipfile.ZipFile(path).namelist()
    print("ZIP", " ".join(sorted(n for n in names if "/" not in n)))
"""


def _stub_env(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(STUB_AZ)
    curl = bin_dir / "curl"
    curl.write_text("#!/usr/bin/env bash\nexit 0\n")
    for tool in (az, curl):
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    # A PATH without Core Tools, so the zip-deploy branch runs.
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "func").exists()]
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_ADMIN_PASSWORD", "BASH_ENV", "SHELLOPTS")}
    helper = tmp / "stub_helper.py"
    helper.write_text(STUB_HELPER)
    env.update(
        PATH=os.pathsep.join([str(bin_dir), *keep]),
        STUB_LOG=str(tmp / "az.log"),
        STUB_HELPER=str(helper),
        TMPDIR=str(tmp),
    )
    return env


def check_deploy_script(report: Report) -> None:
    script = INFRA / "deploy.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        report.fail(f"deploy.sh: bash -n: {result.stderr.strip()}")
        return
    source = script.read_text()
    if re.search(r"^\s*set\s+-[a-z]*x", source, re.MULTILINE):
        report.fail("deploy.sh: must not enable tracing (set -x)")
    if "set -euo pipefail" not in source:
        report.fail("deploy.sh: needs set -euo pipefail")
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            report.fail(f"deploy.sh: shellcheck:\n{result.stdout}")
        else:
            report.ok("deploy.sh: shellcheck clean")
    else:
        report.ok("shellcheck not installed: skipped")

    # A password with every character JSON and shells care about.
    password = "Aa1!" + secrets.token_urlsafe(18) + "\"'\\$`;&|* %"
    digest = hashlib.sha256(password.encode()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = _stub_env(tmp)
        env["POSTGRES_ADMIN_PASSWORD"] = password
        args = ["-g", "rg-test", "-l", "westeurope", "-p", "bstest", "--param", "maximumInstanceCount=50"]
        run = subprocess.run(
            ["bash", str(script), *args],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120, check=False,
        )
        log = (tmp / "az.log").read_text() if (tmp / "az.log").exists() else ""
        calls = [line.split("\x1f") for line in log.splitlines() if "\x1f" in line]
        if password in run.stdout or password in run.stderr or password in log:
            report.fail("deploy.sh: the password appears in the output or on an az command line")
        if run.returncode != 0:
            report.fail(f"deploy.sh dry run failed ({run.returncode}):\n{run.stderr[-2000:]}")
            return
        if f"PASSWORD_SHA256 {digest}" not in log:
            report.fail("deploy.sh: the parameters file does not carry the password intact (JSON escaping)")
        params = re.search(r"^PARAMS_FILE (\S+) (\d+) (\d+)$", log, re.MULTILINE)
        if params is None:
            report.fail("deploy.sh: main deployment did not get an @parameters file")
        else:
            if params.group(2) != "600" or params.group(3) != "700":
                report.fail(f"deploy.sh: parameters file mode {params.group(2)}, dir {params.group(3)} (want 600/700)")
            if Path(params.group(1)).exists() or Path(params.group(1)).parent.exists():
                report.fail("deploy.sh: parameters file left behind")
        order = []
        for call in calls:
            joined = " ".join(call)
            if "deployment group create" in joined and "main.bicep" in joined:
                order.append("infra")
                if "namePrefix=bstest" not in call or "maximumInstanceCount=50" not in call:
                    report.fail("deploy.sh: main deployment misses the prefix or the --param override")
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
        if order != ["infra", "code", "key", "subscription"]:
            report.fail(f"deploy.sh: phases ran as {order}")
        zip_line = re.search(r"^ZIP (.*)$", log, re.MULTILINE)
        app_files = {"function_app.py", "host.json", "requirements.txt"}
        if zip_line is None or not app_files <= set(zip_line.group(1).split()):
            report.fail(f"deploy.sh: zip package lacks the app files: {zip_line.group(1) if zip_line else None}")

        # No password and no terminal: refuse before touching Azure resources.
        env2 = _stub_env(Path(tempfile.mkdtemp(dir=tmp)))
        run2 = subprocess.run(
            ["bash", str(script), "-g", "rg-test", "-l", "westeurope"],
            capture_output=True, text=True, env=env2, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )
        if run2.returncode == 0 or "POSTGRES_ADMIN_PASSWORD" not in run2.stderr:
            report.fail("deploy.sh: runs without a password instead of refusing")
        run3 = subprocess.run(
            ["bash", str(script), "-g", "rg", "--param", "postgresAdminPassword=x"],
            capture_output=True, text=True, env=env2, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )
        if run3.returncode == 0:
            report.fail("deploy.sh: accepts the password as a --param")
    if not any("deploy.sh: the" in p or "deploy.sh dry" in p for p in report.problems):
        report.ok("deploy.sh: dry run against a stub az: phases in order, password never printed or on argv")


def main() -> int:
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
    check_with_pycep(paths, report)
    for bicep in files.values():
        check_names(bicep, report)
        check_resources(bicep, report)
    check_modules(files, report)
    check_policy(files, report)
    check_app_contract(files, report)
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
