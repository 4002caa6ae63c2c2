#!/usr/bin/env bash
# Deploy blobseal to Azure, passwordless, in four phases (after the API's app registration):
#   0. the API app registration in Microsoft Entra ID (infra/app-registration.json: the app roles
#      blobseal.read, .write, .erase, .audit, .operate), its service principal (tokens only for
#      principals holding an app role), unless --api-client-id names one managed elsewhere
#   1. infrastructure  (az deployment group create -f infra/main.bicep; App Service Authentication
#                       takes that registration's tokens); then the app role assignments asked for
#                       (--assign-app-role) and, with --lock-audit-digests, the digests' WORM lock
#   2. database        as the PostgreSQL Entra administrator: schema migrations
#                      (python -m shared.cli migrate) and the app's least-privileged role
#                      (infra/tools/db_roles.py); the password is an Entra access token
#   3. code            (func azure functionapp publish <app> --python when Core Tools and a
#                       .funcignore exist, else a zip deploy of HEAD with remote build)
#   4. Event Grid subscription for the blob trigger (infra/modules/blob-event-subscription.bicep),
#      once the host has started and created its blobs_extension system key
# Then check it: infra/smoke.sh --azure -g <resource-group>
#
# Usage:
#   infra/deploy.sh -g <resource-group> -l <region> [options]
#
# Options:
#   -g, --resource-group NAME   resource group (created when missing)                  [required]
#   -l, --location REGION       region; required when the group does not exist yet
#   -p, --prefix PREFIX         name prefix, 3-10 lowercase letters/digits              [blobseal]
#   -s, --subscription ID       subscription to use (az account set)
#       --param KEY=VALUE       extra main.bicep parameter (repeatable), e.g. --param privateNetworking=false
#       --db-admin-object-id ID PostgreSQL Entra administrator (a group of DB admins, recommended)
#       --db-admin-name NAME    its name: group display name, user UPN or service principal name
#       --db-admin-type TYPE    Group, User or ServicePrincipal
#                               (all three default to the signed-in user or service principal)
#       --operator-group ID     object id of the operators' Entra group: Storage Blob Data Contributor
#       --operator-group-name NAME  and Key Vault Secrets Officer (ARM), database role blobseal_operator
#       --grant-operator        the same operator grants for the signed-in user instead of a group
#       --db-access-ip IP       this machine is outside the VNet: open PostgreSQL to IP for phase 2
#                               only (public access + one firewall rule, both removed on exit)
#       --api-client-id ID      use this API app registration (client id) as it is; deploy.sh then
#                               neither creates nor changes one (an Entra admin manages it)
#       --api-app-name NAME     display name of the registration deploy.sh creates or updates
#                                                                       [<prefix>-api-<resource group>]
#       --assign-app-role ROLE=OBJECT_ID
#                               give a user, group or service principal (object id) an app role:
#                               read, write, erase, audit or operate (repeatable; kept if present)
#       --lock-audit-digests    lock the immutability (WORM) policy of the access log's digest container.
#                               IRREVERSIBLE: a locked policy can be lengthened, never shortened or
#                               removed, and the container and the data account cannot be deleted while
#                               a digest is retained. Later runs see the lock and leave the policy alone
#       --what-if               show what phase 1 would change (az deployment group what-if) and stop
#       --skip-infra            skip phase 1 (reads names from the last main deployment)
#       --skip-database         skip phase 2
#       --skip-code             skip phase 3
#       --skip-subscription     skip phase 4
#   -h, --help
#
# Environment:
#   BLOBSEAL_PYTHON             Python with the app's requirements for phase 2 [.venv/bin/python, else python3]
#   DEPLOYMENT_NAME             name of the main deployment                             [blobseal-main]
#
# No password exists: PostgreSQL takes Microsoft Entra tokens only. Phase 2 gets one for the
# administrator (az account get-access-token --resource-type oss-rdbms) and hands it to the child
# processes in PGPASSWORD (environment, never a command line); it is never printed.
#
# Phase 0 needs the right to create app registrations (the default for members, or Application
# Developer) and, for --assign-app-role, to assign app roles (owner of the service principal, or
# Cloud Application Administrator); without them, have an admin run infra/README.md's commands and
# pass --api-client-id.
set -euo pipefail
set +x # even if tracing was inherited: it would print the access token

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
MAIN_TEMPLATE="${SCRIPT_DIR}/main.bicep"
SUBSCRIPTION_TEMPLATE="${SCRIPT_DIR}/modules/blob-event-subscription.bicep"
DB_ROLES="${SCRIPT_DIR}/tools/db_roles.py"
APP_REGISTRATION="${SCRIPT_DIR}/app-registration.json"
GRAPH="https://graph.microsoft.com/v1.0"
DEPLOYMENT_NAME="${DEPLOYMENT_NAME:-blobseal-main}"
EVENTS_DEPLOYMENT_NAME="${DEPLOYMENT_NAME}-events"
# What the zip deploy ships when Core Tools are absent (Core Tools use .funcignore instead).
PACKAGE_PATHS=(function_app.py host.json requirements.txt shared)
PROVIDERS=(Microsoft.Web Microsoft.App Microsoft.Storage Microsoft.KeyVault Microsoft.DBforPostgreSQL
  Microsoft.EventGrid Microsoft.OperationalInsights Microsoft.Insights Microsoft.Network)

RESOURCE_GROUP=""
LOCATION=""
PREFIX="blobseal"
SUBSCRIPTION=""
DB_ADMIN_ID=""
DB_ADMIN_NAME=""
DB_ADMIN_TYPE=""
OPERATOR_ID=""
OPERATOR_NAME=""
OPERATOR_TYPE="Group"
GRANT_OPERATOR=0
DB_ACCESS_IP=""
WHAT_IF=0
SKIP_INFRA=0
SKIP_DATABASE=0
SKIP_CODE=0
SKIP_SUBSCRIPTION=0
EXTRA_PARAMS=()
API_CLIENT_ID=""
API_CLIENT_ID_GIVEN=0
API_APP_NAME=""
APP_ROLE_ASSIGNMENTS=()
LOCK_DIGESTS=0

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($# > 0)); do
  case "$1" in
    -g | --resource-group) RESOURCE_GROUP="${2:?$1 needs a value}"; shift 2 ;;
    -l | --location) LOCATION="${2:?$1 needs a value}"; shift 2 ;;
    -p | --prefix) PREFIX="${2:?$1 needs a value}"; shift 2 ;;
    -s | --subscription) SUBSCRIPTION="${2:?$1 needs a value}"; shift 2 ;;
    --param)
      [[ "${2:-}" == *=* ]] || die "--param needs KEY=VALUE"
      EXTRA_PARAMS+=("$2")
      shift 2
      ;;
    --db-admin-object-id) DB_ADMIN_ID="${2:?$1 needs a value}"; shift 2 ;;
    --db-admin-name) DB_ADMIN_NAME="${2:?$1 needs a value}"; shift 2 ;;
    --db-admin-type) DB_ADMIN_TYPE="${2:?$1 needs a value}"; shift 2 ;;
    --operator-group) OPERATOR_ID="${2:?$1 needs a value}"; shift 2 ;;
    --operator-group-name) OPERATOR_NAME="${2:?$1 needs a value}"; shift 2 ;;
    --grant-operator) GRANT_OPERATOR=1; shift ;;
    --db-access-ip) DB_ACCESS_IP="${2:?$1 needs a value}"; shift 2 ;;
    --api-client-id) API_CLIENT_ID="${2:?$1 needs a value}" API_CLIENT_ID_GIVEN=1; shift 2 ;;
    --api-app-name) API_APP_NAME="${2:?$1 needs a value}"; shift 2 ;;
    --assign-app-role)
      [[ "${2:-}" =~ ^(read|write|erase|audit|operate)=[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$ ]] ||
        die "--assign-app-role needs ROLE=OBJECT_ID (ROLE: read, write, erase, audit or operate)"
      APP_ROLE_ASSIGNMENTS+=("$2")
      shift 2
      ;;
    --lock-audit-digests) LOCK_DIGESTS=1; shift ;;
    --what-if) WHAT_IF=1; shift ;;
    --skip-infra) SKIP_INFRA=1; shift ;;
    --skip-database) SKIP_DATABASE=1; shift ;;
    --skip-code) SKIP_CODE=1; shift ;;
    --skip-subscription) SKIP_SUBSCRIPTION=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ -n "$RESOURCE_GROUP" ]] || die "--resource-group is required (see --help)"
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{2,9}$ ]] || die "--prefix must be 3-10 lowercase letters/digits, starting with a letter"
[[ -z "$DB_ADMIN_TYPE" || "$DB_ADMIN_TYPE" =~ ^(Group|User|ServicePrincipal)$ ]] ||
  die "--db-admin-type must be Group, User or ServicePrincipal"
[[ -z "$DB_ACCESS_IP" || "$DB_ACCESS_IP" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--db-access-ip must be an IPv4 address"
[[ -z "$OPERATOR_ID" || -n "$OPERATOR_NAME" ]] || die "--operator-group needs --operator-group-name (its display name is the database role)"
[[ -z "$API_CLIENT_ID" || "$API_CLIENT_ID" =~ ^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$ ]] ||
  die "--api-client-id must be an application (client) id"
command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"

PYTHON="${BLOBSEAL_PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then PYTHON="${REPO_ROOT}/.venv/bin/python"; else PYTHON=python3; fi
fi

TMP_DIR="$(mktemp -d)"
chmod 700 "$TMP_DIR"
CLEANUPS=()
cleanup() {
  local step
  for step in "${CLEANUPS[@]}"; do
    eval "$step" || log "cleanup step failed: $step"
  done
  rm -rf "$TMP_DIR"
}
trap cleanup EXIT

output_of() {
  # Non-secret output of a deployment (main.bicep outputs hold names, endpoints and ids only).
  az deployment group show -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" \
    --query "properties.outputs.$1.value" -o tsv
}

urlencode() { "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# The Graph body of the API registration: app-registration.json with its identifier URI; stage
# "scopes" leaves out the pre-authorized clients (a client can only be pre-authorized for a scope that
# exists already).
app_body() {
  "$PYTHON" -c 'import json, sys
manifest, stage, uri = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
api = dict(manifest["api"])
if stage == "scopes":
    api.pop("preAuthorizedApplications", None)
print(json.dumps({"identifierUris": [uri], "appRoles": manifest["appRoles"], "api": api}))' "$APP_REGISTRATION" "$1" "$2"
}

# The id of app role blobseal.<role> (app-registration.json).
app_role_id() {
  "$PYTHON" -c 'import json, sys
print(next(r["id"] for r in json.load(open(sys.argv[1]))["appRoles"] if r["value"] == "blobseal." + sys.argv[2]))' \
    "$APP_REGISTRATION" "$1"
}

# State of a container's immutability policy: Locked, Unlocked, or nothing (no account, container or policy).
digest_policy_state() {
  az storage container immutability-policy show -g "$RESOURCE_GROUP" --account-name "$1" -c "$2" \
    --query state -o tsv 2>/dev/null || true
}

# --------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------
az account show -o none 2>/dev/null || die "not logged in: run 'az login' first"
if [[ -n "$SUBSCRIPTION" ]]; then
  az account set --subscription "$SUBSCRIPTION"
fi
log "subscription: $(az account show --query '[name, id]' -o tsv | paste -sd ' ' -)"

# The signed-in principal: default PostgreSQL administrator, and the operator with --grant-operator.
SIGNED_IN_TYPE="$(az account show --query user.type -o tsv)"
if [[ "$SIGNED_IN_TYPE" == "servicePrincipal" ]]; then
  SIGNED_IN_ID="$(az ad sp show --id "$(az account show --query user.name -o tsv)" --query id -o tsv)"
  SIGNED_IN_NAME="$(az ad sp show --id "$SIGNED_IN_ID" --query displayName -o tsv)"
  SIGNED_IN_KIND="ServicePrincipal"
else
  SIGNED_IN_ID="$(az ad signed-in-user show --query id -o tsv)"
  SIGNED_IN_NAME="$(az ad signed-in-user show --query userPrincipalName -o tsv)"
  SIGNED_IN_KIND="User"
fi
if [[ -z "$DB_ADMIN_ID" ]]; then
  DB_ADMIN_ID="$SIGNED_IN_ID" DB_ADMIN_NAME="$SIGNED_IN_NAME" DB_ADMIN_TYPE="$SIGNED_IN_KIND"
  log "PostgreSQL Entra administrator: the signed-in ${SIGNED_IN_KIND} (${SIGNED_IN_NAME}); use --db-admin-* for a group"
fi
[[ -n "$DB_ADMIN_NAME" && -n "$DB_ADMIN_TYPE" ]] || die "--db-admin-object-id needs --db-admin-name and --db-admin-type"
if ((GRANT_OPERATOR == 1)); then
  OPERATOR_ID="$SIGNED_IN_ID" OPERATOR_NAME="$SIGNED_IN_NAME" OPERATOR_TYPE="$SIGNED_IN_KIND"
fi

if ((SKIP_INFRA == 0)); then
  for namespace in "${PROVIDERS[@]}"; do
    state="$(az provider show -n "$namespace" --query registrationState -o tsv 2>/dev/null || true)"
    if [[ "$state" != "Registered" ]]; then
      log "registering resource provider $namespace"
      az provider register -n "$namespace" --wait -o none
    fi
  done

  if [[ "$(az group exists -n "$RESOURCE_GROUP")" != "true" ]]; then
    [[ -n "$LOCATION" ]] || die "resource group $RESOURCE_GROUP does not exist: pass --location to create it"
    log "creating resource group $RESOURCE_GROUP in $LOCATION"
    az group create -n "$RESOURCE_GROUP" -l "$LOCATION" --tags app=blobseal -o none
  fi
  if [[ -z "$LOCATION" ]]; then
    LOCATION="$(az group show -n "$RESOURCE_GROUP" --query location -o tsv)"
  fi
fi

# --------------------------------------------------------------------------------------------
# Phase 0: the API app registration (App Service Authentication accepts tokens issued for it)
# --------------------------------------------------------------------------------------------
if ((SKIP_INFRA == 0)); then
  if ((API_CLIENT_ID_GIVEN == 1)); then
    log "phase 0: API app registration ${API_CLIENT_ID} (given: not changed)"
  else
    API_APP_NAME="${API_APP_NAME:-${PREFIX}-api-${RESOURCE_GROUP}}"
    found="$(az ad app list --display-name "$API_APP_NAME" --query "[?displayName=='${API_APP_NAME}'].appId" -o tsv)"
    (($(wc -w <<<"$found") <= 1)) || die "several app registrations are named ${API_APP_NAME}: pass --api-client-id"
    API_CLIENT_ID="$found"
    if [[ -z "$API_CLIENT_ID" && "$WHAT_IF" == 1 ]]; then
      API_CLIENT_ID=00000000-0000-0000-0000-000000000000
      log "what-if: no app registration ${API_APP_NAME} yet (a placeholder client id stands in)"
    elif [[ -z "$API_CLIENT_ID" ]]; then
      log "phase 0: creating the API app registration ${API_APP_NAME}"
      API_CLIENT_ID="$(az ad app create --display-name "$API_APP_NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)"
      [[ -n "$API_CLIENT_ID" ]] || die "could not create the app registration ${API_APP_NAME}"
    else
      log "phase 0: API app registration ${API_APP_NAME} (${API_CLIENT_ID})"
    fi
    if ((WHAT_IF == 0)); then
      # Roles, identifier URI api://<client id>, v2 access tokens, the user_impersonation scope and the
      # Azure CLI pre-authorized for it (az account get-access-token --resource api://<client id>).
      app_url="${GRAPH}/applications(appId='${API_CLIENT_ID}')"
      app_body scopes "api://${API_CLIENT_ID}" >"${TMP_DIR}/app-scopes.json"
      app_body full "api://${API_CLIENT_ID}" >"${TMP_DIR}/app-full.json"
      az rest --method patch --url "$app_url" --headers Content-Type=application/json \
        --body "@${TMP_DIR}/app-scopes.json" -o none
      az rest --method patch --url "$app_url" --headers Content-Type=application/json \
        --body "@${TMP_DIR}/app-full.json" -o none
      api_sp="$(az ad sp show --id "$API_CLIENT_ID" --query id -o tsv 2>/dev/null || true)"
      [[ -n "$api_sp" ]] || api_sp="$(az ad sp create --id "$API_CLIENT_ID" --query id -o tsv)"
      # Entra issues tokens for the API only to principals holding one of its app roles.
      az rest --method patch --url "${GRAPH}/servicePrincipals/${api_sp}" --headers Content-Type=application/json \
        --body '{"appRoleAssignmentRequired": true}' -o none
    fi
  fi
fi

# --------------------------------------------------------------------------------------------
# Phase 1: infrastructure
# --------------------------------------------------------------------------------------------
if ((SKIP_INFRA == 0)); then
  # A locked immutability policy cannot be rewritten by a deployment: the template leaves it alone then.
  digests_locked=false
  previous_account="$(output_of dataStorageAccountName 2>/dev/null || true)"
  previous_container="$(output_of auditDigestContainerName 2>/dev/null || true)"
  if [[ -n "$previous_account" && -n "$previous_container" &&
    "$(digest_policy_state "$previous_account" "$previous_container")" == Locked ]]; then
    digests_locked=true
    log "the immutability policy of ${previous_container} is locked: the deployment leaves it alone"
  fi
  main_params=(namePrefix="$PREFIX" location="$LOCATION" postgresAdminObjectId="$DB_ADMIN_ID"
    postgresAdminName="$DB_ADMIN_NAME" postgresAdminType="$DB_ADMIN_TYPE" apiClientId="$API_CLIENT_ID"
    auditDigestImmutabilityLocked="$digests_locked")
  if [[ -n "$OPERATOR_ID" ]]; then
    main_params+=(operatorPrincipalId="$OPERATOR_ID" operatorPrincipalType="$OPERATOR_TYPE")
  fi
  main_params+=("${EXTRA_PARAMS[@]}")

  if ((WHAT_IF == 1)); then
    log "what-if for $DEPLOYMENT_NAME (nothing is changed)"
    az deployment group what-if -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" -f "$MAIN_TEMPLATE" \
      --parameters "${main_params[@]}"
    exit 0
  fi

  log "phase 1: deploying infrastructure ($DEPLOYMENT_NAME), this takes 10-20 minutes"
  az deployment group create -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" -f "$MAIN_TEMPLATE" \
    --parameters "${main_params[@]}" -o none
fi

APP="$(output_of functionAppName)"
APP_HOST="$(output_of functionAppHostName)"
APP_PRINCIPAL="$(output_of functionAppPrincipalId)"
TOPIC="$(output_of systemTopicName)"
HOST_STORAGE="$(output_of hostStorageAccountName)"
DATA_STORAGE="$(output_of dataStorageAccountName)"
INGEST="$(output_of ingestContainerName)"
DEAD_LETTER="$(output_of deadLetterContainerName)"
FUNCTION_NAME="$(output_of encryptFunctionName)"
PG_SERVER="$(output_of postgresServerName)"
PG_FQDN="$(output_of postgresFqdn)"
DATABASE="$(output_of databaseName)"
DATABASE_USER="$(output_of databaseUser)"
API_APP_ID_URI="$(output_of apiAppIdUri)"
DIGEST_CONTAINER="$(output_of auditDigestContainerName)"
[[ -n "$APP" && -n "$TOPIC" && -n "$PG_FQDN" ]] || die "could not read the outputs of deployment $DEPLOYMENT_NAME"
log "function app: $APP ($APP_HOST)"

# App roles for the principals asked for (idempotent: an assignment that exists is kept).
if ((${#APP_ROLE_ASSIGNMENTS[@]} > 0)); then
  [[ -n "$API_CLIENT_ID" ]] || API_CLIENT_ID="$(output_of apiClientId)"
  api_sp="$(az ad sp show --id "$API_CLIENT_ID" --query id -o tsv)" ||
    die "no service principal for the API app registration ${API_CLIENT_ID}"
  for assignment in "${APP_ROLE_ASSIGNMENTS[@]}"; do
    role="${assignment%%=*}" principal="${assignment#*=}"
    role_id="$(app_role_id "$role")"
    printf '{"principalId": "%s", "resourceId": "%s", "appRoleId": "%s"}\n' "$principal" "$api_sp" "$role_id" \
      >"${TMP_DIR}/assignment.json"
    if answer="$(az rest --method post --url "${GRAPH}/servicePrincipals/${api_sp}/appRoleAssignedTo" \
      --headers Content-Type=application/json --body "@${TMP_DIR}/assignment.json" -o none 2>&1)"; then
      log "app role blobseal.${role} assigned to ${principal}"
    elif [[ "$answer" == *"already exists"* ]]; then
      log "app role blobseal.${role} was assigned to ${principal} already"
    else
      die "could not assign blobseal.${role} to ${principal}: ${answer}"
    fi
  done
fi

# Lock the digests' write-once policy (irreversible; asked for with --lock-audit-digests).
if ((LOCK_DIGESTS == 1)); then
  case "$(digest_policy_state "$DATA_STORAGE" "$DIGEST_CONTAINER")" in
    Locked) log "the immutability policy of ${DIGEST_CONTAINER} is locked already" ;;
    Unlocked)
      etag="$(az storage container immutability-policy show -g "$RESOURCE_GROUP" --account-name "$DATA_STORAGE" \
        -c "$DIGEST_CONTAINER" --query etag -o tsv)"
      log "locking the immutability policy of ${DIGEST_CONTAINER}: from now on it can be lengthened, never shortened or removed"
      az storage container immutability-policy lock -g "$RESOURCE_GROUP" --account-name "$DATA_STORAGE" \
        -c "$DIGEST_CONTAINER" --if-match "$etag" -o none
      ;;
    *) die "no immutability policy on ${DIGEST_CONTAINER} in ${DATA_STORAGE} to lock (deploy the infrastructure first)" ;;
  esac
fi

# --------------------------------------------------------------------------------------------
# Phase 2: database (as the Entra administrator; the app's code only ever runs as its own role)
# --------------------------------------------------------------------------------------------
if ((SKIP_DATABASE == 0)); then
  if [[ -n "$DB_ACCESS_IP" ]]; then
    server_id="$(az postgres flexible-server show -g "$RESOURCE_GROUP" -n "$PG_SERVER" --query id -o tsv)"
    log "opening PostgreSQL to ${DB_ACCESS_IP} for this phase (removed on exit)"
    # Undone on exit, whatever happens: the rule goes, then public access.
    CLEANUPS+=("az postgres flexible-server firewall-rule delete -g '$RESOURCE_GROUP' -n '$PG_SERVER' --rule-name deploy-temporary --yes -o none"
      "az rest --method patch --url 'https://management.azure.com${server_id}?api-version=2024-08-01' --body '{\"properties\":{\"network\":{\"publicNetworkAccess\":\"Disabled\"}}}' -o none")
    az rest --method patch --url "https://management.azure.com${server_id}?api-version=2024-08-01" \
      --body '{"properties":{"network":{"publicNetworkAccess":"Enabled"}}}' -o none
    az postgres flexible-server firewall-rule create -g "$RESOURCE_GROUP" -n "$PG_SERVER" \
      --rule-name deploy-temporary --start-ip-address "$DB_ACCESS_IP" --end-ip-address "$DB_ACCESS_IP" -o none
  fi

  log "phase 2: migrations and database roles as ${DB_ADMIN_NAME} (Entra token)"
  # An access token for Azure Database for PostgreSQL, valid about an hour; it only ever lives in
  # this variable and in the children's environment.
  pg_token="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)"
  [[ -n "$pg_token" ]] || die "could not get an Entra token for PostgreSQL (az account get-access-token --resource-type oss-rdbms)"
  admin_url="postgresql://$(urlencode "$DB_ADMIN_NAME")@${PG_FQDN}:5432/${DATABASE}?sslmode=verify-full"
  (
    cd "$REPO_ROOT"
    # The URL names the administrator and holds no password: asyncpg takes PGPASSWORD (the token).
    PGPASSWORD="$pg_token" DATABASE_AUTH=password DATABASE_URL="$admin_url" "$PYTHON" -m shared.cli migrate || exit 1
    db_roles_args=(--host "$PG_FQDN" --database "$DATABASE" --admin "$DB_ADMIN_NAME" --sslmode verify-full
      --app-role "$DATABASE_USER" --app-object-id "$APP_PRINCIPAL")
    if [[ -n "$OPERATOR_ID" ]]; then
      db_roles_args+=(--operator-role "$OPERATOR_NAME" --operator-object-id "$OPERATOR_ID" --operator-type "$OPERATOR_TYPE")
    fi
    PGPASSWORD="$pg_token" "$PYTHON" "$DB_ROLES" "${db_roles_args[@]}" || exit 1
  ) || die "phase 2 failed: is this machine inside the VNet (or pass --db-access-ip), and is ${DB_ADMIN_NAME} the server's Entra administrator?"
  unset pg_token
fi

# --------------------------------------------------------------------------------------------
# Phase 3: code
# --------------------------------------------------------------------------------------------
if ((SKIP_CODE == 0)); then
  if command -v func >/dev/null 2>&1 && [[ -f "${REPO_ROOT}/.funcignore" ]]; then
    # Core Tools upload the whole project directory minus .funcignore: without that file they
    # would ship .venv, node_modules and the tests, so the zip path below is used instead.
    log "phase 3: publishing with Azure Functions Core Tools (remote build)"
    (cd "$REPO_ROOT" && func azure functionapp publish "$APP" --python)
  else
    log "phase 3: zip deploy of the committed HEAD (${PACKAGE_PATHS[*]}) with remote build"
    command -v git >/dev/null 2>&1 || die "git is required to build the package"
    if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- "${PACKAGE_PATHS[@]}")" ]]; then
      log "warning: uncommitted changes under ${PACKAGE_PATHS[*]} are NOT deployed (the package is HEAD)"
    fi
    package="${TMP_DIR}/blobseal.zip"
    git -C "$REPO_ROOT" archive --format=zip -o "$package" HEAD -- "${PACKAGE_PATHS[@]}"
    az functionapp deployment source config-zip -g "$RESOURCE_GROUP" -n "$APP" \
      --src "$package" --build-remote true -o none
  fi
fi

# --------------------------------------------------------------------------------------------
# Phase 4: Event Grid subscription (needs the running host's blobs_extension key)
# --------------------------------------------------------------------------------------------
if ((SKIP_SUBSCRIPTION == 0)); then
  log "phase 4: waiting for the host to create its blobs_extension system key"
  has_key="false"
  for _ in $(seq 1 30); do
    # Wake the app up (Flex Consumption scales to zero) on its anonymous route; the answer does not matter.
    curl -fsS -o /dev/null --max-time 30 "https://${APP_HOST}/api/health" 2>/dev/null || true
    # Only a boolean comes back: the key itself is never printed.
    # shellcheck disable=SC2016 # `null` is a JMESPath literal
    has_key="$(az functionapp keys list -g "$RESOURCE_GROUP" -n "$APP" \
      --query 'systemKeys.blobs_extension != `null`' -o tsv 2>/dev/null || true)"
    [[ "$has_key" == "true" ]] && break
    sleep 10
  done
  [[ "$has_key" == "true" ]] ||
    die "no blobs_extension key after 5 minutes: is ${FUNCTION_NAME} a blob trigger with source=EventGrid, and did the host start? (Application Insights: traces of ${APP})"

  log "creating the Event Grid subscription ${TOPIC} -> ${FUNCTION_NAME}"
  created=0
  for attempt in 1 2 3; do
    if az deployment group create -g "$RESOURCE_GROUP" -n "$EVENTS_DEPLOYMENT_NAME" -f "$SUBSCRIPTION_TEMPLATE" \
      --parameters functionAppName="$APP" systemTopicName="$TOPIC" functionName="$FUNCTION_NAME" \
      ingestContainerName="$INGEST" deadLetterStorageAccountName="$HOST_STORAGE" \
      deadLetterContainerName="$DEAD_LETTER" -o none; then
      created=1
      break
    fi
    # Event Grid validates the webhook when it creates the subscription; a cold start can
    # miss its 30-second window.
    log "attempt ${attempt} failed (webhook validation on a cold start?); retrying in 30 s"
    sleep 30
  done
  ((created == 1)) || die "could not create the Event Grid subscription"
fi

log "done"
cat >&2 <<EOF

  function app    https://${APP_HOST} (callers: Entra tokens for ${API_APP_ID_URI}, app roles blobseal.*)
  data account    ${DATA_STORAGE} (containers ${INGEST}, $(output_of protectedContainerName), ${DIGEST_CONTAINER} (WORM))
  key vault       $(output_of keyVaultName)
  postgres        ${PG_FQDN} (Entra only; the app connects as ${DATABASE_USER})

  A token for the API:  az account get-access-token --resource ${API_APP_ID_URI} --query accessToken -o tsv
  Check the deployment (needs app roles read and erase, the operator roles and a network path, see infra/README.md):
    infra/smoke.sh --azure -g ${RESOURCE_GROUP}
EOF
