#!/usr/bin/env bash
# Deploy blobseal to Azure in three phases:
#   1. infrastructure  (az deployment group create -f infra/main.bicep)
#   2. code            (func azure functionapp publish <app> --python when Core Tools and a
#                       .funcignore exist, else a zip deploy of HEAD with remote build)
#   3. Event Grid subscription for the blob trigger (infra/modules/blob-event-subscription.bicep),
#      once the host has started and created its blobs_extension system key
#
# Usage:
#   POSTGRES_ADMIN_PASSWORD='...' infra/deploy.sh -g <resource-group> -l <region> [options]
#
# Options:
#   -g, --resource-group NAME   resource group (created when missing)                  [required]
#   -l, --location REGION       region; required when the group does not exist yet
#   -p, --prefix PREFIX         name prefix, 3-10 lowercase letters/digits              [blobseal]
#   -s, --subscription ID       subscription to use (az account set)
#       --param KEY=VALUE       extra main.bicep parameter (repeatable), e.g. --param postgresSkuTier=GeneralPurpose
#       --grant-operator        grant the signed-in user Storage Blob Data Contributor on the data account
#       --what-if               show what phase 1 would change (az deployment group what-if) and stop
#       --skip-infra            skip phase 1 (reads names from the last main deployment)
#       --skip-code             skip phase 2
#       --skip-subscription     skip phase 3
#   -h, --help
#
# Environment:
#   POSTGRES_ADMIN_PASSWORD     PostgreSQL admin password for phase 1 (asked for when unset and
#                               interactive). It goes to Azure only through a 0600 parameters file
#                               in a private temp dir, deleted on exit; it is never printed, never put
#                               on a command line, and ends up only in the server and in the Key Vault
#                               secret database-url.
#   DEPLOYMENT_NAME             name of the main deployment                             [blobseal-main]
#
# Never run this script with `bash -x`: tracing would print the parameters file's contents.
set -euo pipefail
set +x # even if tracing was inherited: it would print the password

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
MAIN_TEMPLATE="${SCRIPT_DIR}/main.bicep"
SUBSCRIPTION_TEMPLATE="${SCRIPT_DIR}/modules/blob-event-subscription.bicep"
DEPLOYMENT_NAME="${DEPLOYMENT_NAME:-blobseal-main}"
EVENTS_DEPLOYMENT_NAME="${DEPLOYMENT_NAME}-events"
# What the zip deploy ships when Core Tools are absent (Core Tools use .funcignore instead).
PACKAGE_PATHS=(function_app.py host.json requirements.txt shared)
PROVIDERS=(Microsoft.Web Microsoft.Storage Microsoft.KeyVault Microsoft.DBforPostgreSQL
  Microsoft.EventGrid Microsoft.OperationalInsights Microsoft.Insights)

RESOURCE_GROUP=""
LOCATION=""
PREFIX="blobseal"
SUBSCRIPTION=""
GRANT_OPERATOR=0
WHAT_IF=0
SKIP_INFRA=0
SKIP_CODE=0
SKIP_SUBSCRIPTION=0
EXTRA_PARAMS=()

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
      [[ "${2%%=*}" != postgresAdminPassword ]] || die "pass the password in POSTGRES_ADMIN_PASSWORD, not on the command line"
      EXTRA_PARAMS+=("$2")
      shift 2
      ;;
    --grant-operator) GRANT_OPERATOR=1; shift ;;
    --what-if) WHAT_IF=1; shift ;;
    --skip-infra) SKIP_INFRA=1; shift ;;
    --skip-code) SKIP_CODE=1; shift ;;
    --skip-subscription) SKIP_SUBSCRIPTION=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[[ -n "$RESOURCE_GROUP" ]] || die "--resource-group is required (see --help)"
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{2,9}$ ]] || die "--prefix must be 3-10 lowercase letters/digits, starting with a letter"
command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"

TMP_DIR="$(mktemp -d)"
chmod 700 "$TMP_DIR"
cleanup() { rm -rf "$TMP_DIR"; }
trap cleanup EXIT

# JSON string escaping for the parameters file (backslash and double quote; control characters
# are refused rather than encoded).
json_string() {
  local s="$1"
  if [[ "$s" =~ [[:cntrl:]] ]]; then
    return 1
  fi
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

output_of() {
  # Non-secret output of a deployment (main.bicep outputs hold names and endpoints only).
  az deployment group show -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" \
    --query "properties.outputs.$1.value" -o tsv
}

# --------------------------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------------------------
az account show -o none 2>/dev/null || die "not logged in: run 'az login' first"
if [[ -n "$SUBSCRIPTION" ]]; then
  az account set --subscription "$SUBSCRIPTION"
fi
log "subscription: $(az account show --query '[name, id]' -o tsv | paste -sd ' ' -)"

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
# Phase 1: infrastructure
# --------------------------------------------------------------------------------------------
if ((SKIP_INFRA == 0)); then
  if [[ -z "${POSTGRES_ADMIN_PASSWORD:-}" ]]; then
    [[ -t 0 ]] || die "POSTGRES_ADMIN_PASSWORD is not set (and there is no terminal to ask on)"
    read -r -s -p "PostgreSQL admin password (12-128 chars): " POSTGRES_ADMIN_PASSWORD
    printf '\n' >&2
  fi
  ((${#POSTGRES_ADMIN_PASSWORD} >= 12 && ${#POSTGRES_ADMIN_PASSWORD} <= 128)) ||
    die "the PostgreSQL admin password must be 12-128 characters"

  params_file="${TMP_DIR}/main.parameters.json"
  (
    umask 077
    password_json="$(json_string "$POSTGRES_ADMIN_PASSWORD")" ||
      die "the PostgreSQL admin password must not contain control characters"
    # shellcheck disable=SC2016 # "$schema" is a JSON key, not a shell expansion
    printf '{"$schema":"https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#","contentVersion":"1.0.0.0","parameters":{"postgresAdminPassword":{"value":%s}}}\n' \
      "$password_json" >"$params_file"
  )
  unset POSTGRES_ADMIN_PASSWORD

  main_params=(namePrefix="$PREFIX" location="$LOCATION")
  if ((GRANT_OPERATOR == 1)); then
    operator_id="$(az ad signed-in-user show --query id -o tsv 2>/dev/null || true)"
    [[ -n "$operator_id" ]] || die "--grant-operator needs a signed-in user (not a service principal)"
    main_params+=(operatorPrincipalId="$operator_id" operatorPrincipalType=User)
  fi
  main_params+=("${EXTRA_PARAMS[@]}")

  if ((WHAT_IF == 1)); then
    log "what-if for $DEPLOYMENT_NAME (nothing is changed)"
    az deployment group what-if -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" -f "$MAIN_TEMPLATE" \
      --parameters "@${params_file}" --parameters "${main_params[@]}"
    exit 0
  fi

  log "phase 1: deploying infrastructure ($DEPLOYMENT_NAME), this takes 5-15 minutes"
  az deployment group create -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" -f "$MAIN_TEMPLATE" \
    --parameters "@${params_file}" --parameters "${main_params[@]}" -o none
  rm -f "$params_file"
fi

APP="$(output_of functionAppName)"
APP_HOST="$(output_of functionAppHostName)"
TOPIC="$(output_of systemTopicName)"
HOST_STORAGE="$(output_of hostStorageAccountName)"
DATA_STORAGE="$(output_of dataStorageAccountName)"
INGEST="$(output_of ingestContainerName)"
DEAD_LETTER="$(output_of deadLetterContainerName)"
FUNCTION_NAME="$(output_of encryptFunctionName)"
[[ -n "$APP" && -n "$TOPIC" ]] || die "could not read the outputs of deployment $DEPLOYMENT_NAME"
log "function app: $APP ($APP_HOST)"

# --------------------------------------------------------------------------------------------
# Phase 2: code
# --------------------------------------------------------------------------------------------
if ((SKIP_CODE == 0)); then
  if command -v func >/dev/null 2>&1 && [[ -f "${REPO_ROOT}/.funcignore" ]]; then
    # Core Tools upload the whole project directory minus .funcignore: without that file they
    # would ship .venv, node_modules and the tests, so the zip path below is used instead.
    log "phase 2: publishing with Azure Functions Core Tools (remote build)"
    (cd "$REPO_ROOT" && func azure functionapp publish "$APP" --python)
  else
    log "phase 2: zip deploy of the committed HEAD (${PACKAGE_PATHS[*]}) with remote build"
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
# Phase 3: Event Grid subscription (needs the running host's blobs_extension key)
# --------------------------------------------------------------------------------------------
if ((SKIP_SUBSCRIPTION == 0)); then
  log "phase 3: waiting for the host to create its blobs_extension system key"
  has_key="false"
  for _ in $(seq 1 30); do
    # Wake the app up (Flex Consumption scales to zero); the answer does not matter.
    curl -fsS -o /dev/null --max-time 30 "https://${APP_HOST}/" 2>/dev/null || true
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

  function app    https://${APP_HOST}
  data account    ${DATA_STORAGE} (containers ${INGEST}, $(output_of protectedContainerName))
  key vault       $(output_of keyVaultName)
  postgres        $(output_of postgresFqdn)

  Try it (needs Storage Blob Data Contributor on ${DATA_STORAGE}, see --grant-operator):
    az storage blob upload --auth-mode login --account-name ${DATA_STORAGE} -c ${INGEST} -f <file> -n <name>
EOF
