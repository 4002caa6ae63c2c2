#!/usr/bin/env bash
# Post-deploy smoke test of blobseal: does the deployment work, end to end?
#
#   health     GET /api/health (anonymous) answers 200 with status up
#   auth       a file route without credentials is refused (401/403): in Azure by App Service
#              Authentication (no token), locally by the host (no function key)
#   token      (Azure) with the token, GET /api/files?limit=1 answers 200: App Service Authentication
#              took the token and the app found the caller's blobseal.read role
#   upload     a random file (about 200 KiB: several 64 KiB blocks) is put into the ingest container
#   wait       GET /api/files?name=<upload> until its status is "encrypted"
#   download   GET /api/files/<id> returns the same bytes
#   range      Range: bytes=a-b returns 206 and exactly those bytes
#   metadata   GET /api/files/<id>/metadata names the file, its size and status
#   cleanup    DELETE /api/files/<id> erases it (the download then fails); in Azure the ingest blob
#              goes too if the app kept it; the local copies go on exit
#
# Each step prints "smoke: ok <step>" ("smoke: skip <step>" for an Azure-only one run locally); the
# first failure prints "smoke: FAIL <step>: <why>" and exits non-zero.
#
# Usage:
#   infra/smoke.sh                         against a local run (make dev): http://127.0.0.1:7071/api,
#                                          key local-dev-key, upload with python -m devhost.upload
#   infra/smoke.sh --azure -g <rg>         against a deployment: names from the main deployment's
#                                          outputs, an Entra access token for the API from az
#                                          (Authorization: Bearer), upload with
#                                          az storage blob upload --auth-mode login
# Options:
#   --base-url URL      API base URL (local default http://127.0.0.1:7071/api)
#   --key KEY           function key (local default: $LOCAL_FUNCTION_KEY or local-dev-key); in Azure
#                       only where the deployment turned keys on (functionKeysEnabled), sent with the token
#   --azure             Azure mode; needs -g, az logged in as a principal holding the API's app roles
#                       blobseal.read and blobseal.erase, and Storage Blob Data Contributor on the data
#                       account with a network path to it (see infra/README.md)
#   --resource URI      what the token is requested for      [the deployment's apiAppIdUri output]
#   -g, --resource-group NAME
#   --deployment NAME   main deployment name                              [blobseal-main]
#   --timeout SECONDS   how long to wait for the encryption               [120 local, 300 Azure]
#   -h, --help
# Environment: BLOBSEAL_PYTHON (local uploads; default .venv/bin/python), and for local uploads the
# app's settings (DataStorage, INGEST_CONTAINER) as for make dev.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

MODE=local
BASE_URL=""
KEY=""
RESOURCE=""
RESOURCE_GROUP=""
DEPLOYMENT_NAME="${DEPLOYMENT_NAME:-blobseal-main}"
TIMEOUT=""

usage() { sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
fail() {
  printf 'smoke: FAIL %s: %s\n' "$1" "$2" >&2
  exit 1
}
ok() { printf 'smoke: ok %s%s\n' "$1" "${2:+ ($2)}"; }
skip() { printf 'smoke: skip %s (%s)\n' "$1" "$2"; }

while (($# > 0)); do
  case "$1" in
    --base-url) BASE_URL="${2:?$1 needs a value}"; shift 2 ;;
    --key) KEY="${2:?$1 needs a value}"; shift 2 ;;
    --resource) RESOURCE="${2:?$1 needs a value}"; shift 2 ;;
    --azure) MODE=azure; shift ;;
    --local) MODE=local; shift ;;
    -g | --resource-group) RESOURCE_GROUP="${2:?$1 needs a value}"; shift 2 ;;
    --deployment) DEPLOYMENT_NAME="${2:?$1 needs a value}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?$1 needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) fail setup "unknown argument: $1 (see --help)" ;;
  esac
done

command -v curl >/dev/null 2>&1 || fail setup "curl is required"
JSON_PYTHON="$(command -v python3 || true)"
[[ -n "$JSON_PYTHON" ]] || fail setup "python3 is required (JSON)"

if [[ "$MODE" == azure ]]; then
  command -v az >/dev/null 2>&1 || fail setup "the Azure CLI is required with --azure"
  [[ -n "$RESOURCE_GROUP" ]] || fail setup "--azure needs -g <resource-group>"
  output_of() {
    az deployment group show -g "$RESOURCE_GROUP" -n "$DEPLOYMENT_NAME" --query "properties.outputs.$1.value" -o tsv
  }
  HOST="$(output_of functionAppHostName)" || fail setup "cannot read deployment $DEPLOYMENT_NAME in $RESOURCE_GROUP"
  DATA_ACCOUNT="$(output_of dataStorageAccountName)"
  INGEST="$(output_of ingestContainerName)"
  BASE_URL="${BASE_URL:-https://${HOST}/api}"
  RESOURCE="${RESOURCE:-$(output_of apiAppIdUri)}"
  [[ -n "$RESOURCE" ]] || fail setup "deployment $DEPLOYMENT_NAME has no apiAppIdUri output (pass --resource)"
  # The token stays in this variable and in curl's header file (never on a command line).
  TOKEN="$(az account get-access-token --resource "$RESOURCE" --query accessToken -o tsv)" ||
    fail setup "no token for $RESOURCE: does this principal hold an app role of the API? (infra/README.md, Callers)"
  [[ -n "$TOKEN" ]] || fail setup "no token for $RESOURCE"
  TIMEOUT="${TIMEOUT:-300}"
else
  BASE_URL="${BASE_URL:-http://127.0.0.1:7071/api}"
  KEY="${KEY:-${LOCAL_FUNCTION_KEY:-local-dev-key}}"
  TIMEOUT="${TIMEOUT:-120}"
  PYTHON="${BLOBSEAL_PYTHON:-${REPO_ROOT}/.venv/bin/python}"
fi
BASE_URL="${BASE_URL%/}"

WORK="$(mktemp -d)"
chmod 700 "$WORK"
UPLOADED=""
cleanup() {
  local code=$?
  if [[ "$MODE" == azure && -n "$UPLOADED" ]]; then
    az storage blob delete --auth-mode login --account-name "$DATA_ACCOUNT" -c "$INGEST" -n "$UPLOADED" \
      -o none 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT

# curl with the credentials in headers read from a file (not on the command line): in Azure the
# bearer token (and a function key if one was given), locally the function key.
: >"${WORK}/auth.header"
if [[ "$MODE" == azure ]]; then
  printf 'Authorization: Bearer %s\n' "$TOKEN" >>"${WORK}/auth.header"
  unset TOKEN
fi
if [[ -n "$KEY" ]]; then
  printf 'x-functions-key: %s\n' "$KEY" >>"${WORK}/auth.header"
fi
api() { curl -sS --max-time 60 -H "@${WORK}/auth.header" "$@"; }
json_field() { "$JSON_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$1" "$2"; }

# --- health --------------------------------------------------------------------------------------
code="$(curl -sS --max-time 30 -o "${WORK}/health.json" -w '%{http_code}' "${BASE_URL}/health" 2>"${WORK}/err")" ||
  fail health "no answer from ${BASE_URL}/health: $(head -c 200 "${WORK}/err")"
[[ "$code" == 200 ]] || fail health "HTTP $code: $(head -c 300 "${WORK}/health.json")"
status="$(json_field "${WORK}/health.json" status)" || fail health "not JSON: $(head -c 300 "${WORK}/health.json")"
[[ "$status" == up ]] || fail health "status '$status'"
ok health

# --- auth ----------------------------------------------------------------------------------------
code="$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' "${BASE_URL}/files/00000000-0000-0000-0000-000000000000")" ||
  fail auth "no answer"
[[ "$code" == 401 || "$code" == 403 ]] || fail auth "a request without credentials got HTTP $code"
ok auth "HTTP $code without credentials"

# --- token ---------------------------------------------------------------------------------------
if [[ "$MODE" == azure ]]; then
  code="$(api -o "${WORK}/list.json" -w '%{http_code}' "${BASE_URL}/files?limit=1")" || fail token "no answer"
  case "$code" in
    200) ok token "the token is accepted, the caller may read" ;;
    401) fail token "HTTP 401 with the token: App Service Authentication refused it (audience $RESOURCE, issuer, tenant?)" ;;
    403) fail token "HTTP 403 with the token: $(head -c 300 "${WORK}/list.json") (app role blobseal.read assigned?)" ;;
    *) fail token "HTTP $code: $(head -c 300 "${WORK}/list.json")" ;;
  esac
else
  skip token "Azure only: locally the function key stands in for the token"
fi

# --- upload --------------------------------------------------------------------------------------
NAME="smoke/$(date -u +%Y%m%dT%H%M%SZ)-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n').bin"
SIZE=$((3 * 65536 + 12345))
head -c "$SIZE" /dev/urandom >"${WORK}/original.bin"
if [[ "$MODE" == azure ]]; then
  az storage blob upload --auth-mode login --account-name "$DATA_ACCOUNT" -c "$INGEST" -n "$NAME" \
    -f "${WORK}/original.bin" --content-type application/octet-stream -o none 2>"${WORK}/err" ||
    fail upload "az storage blob upload: $(tail -c 300 "${WORK}/err") (operator role and network path? see infra/README.md)"
else
  [[ -x "$PYTHON" ]] || fail upload "no Python at $PYTHON (set BLOBSEAL_PYTHON)"
  (cd "$REPO_ROOT" && "$PYTHON" -m devhost.upload "${WORK}/original.bin" "$NAME") >"${WORK}/upload.out" 2>&1 ||
    fail upload "python -m devhost.upload: $(tail -c 300 "${WORK}/upload.out")"
fi
UPLOADED="$NAME"
ok upload "$NAME, $SIZE bytes"

# --- wait ----------------------------------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
FILE_ID=""
while ((SECONDS < deadline)); do
  code="$(api -o "${WORK}/find.json" -w '%{http_code}' -G --data-urlencode "name=${NAME}" "${BASE_URL}/files" 2>/dev/null)" ||
    code=000
  if [[ "$code" == 200 && "$(json_field "${WORK}/find.json" status 2>/dev/null)" == encrypted ]]; then
    FILE_ID="$(json_field "${WORK}/find.json" file_id)"
    break
  fi
  sleep 1
done
[[ -n "$FILE_ID" ]] || fail wait "not encrypted within ${TIMEOUT} s (last answer HTTP $code: $(head -c 300 "${WORK}/find.json" 2>/dev/null))"
ok wait "file $FILE_ID encrypted"

# --- download ------------------------------------------------------------------------------------
code="$(api -o "${WORK}/download.bin" -w '%{http_code}' "${BASE_URL}/files/${FILE_ID}")" || fail download "no answer"
[[ "$code" == 200 ]] || fail download "HTTP $code"
cmp -s "${WORK}/original.bin" "${WORK}/download.bin" ||
  fail download "the content differs ($(wc -c <"${WORK}/download.bin") bytes back, $SIZE sent)"
ok download "$SIZE bytes identical"

# --- range ---------------------------------------------------------------------------------------
FIRST=70000
LAST=140001
code="$(api -o "${WORK}/range.bin" -w '%{http_code}' -H "Range: bytes=${FIRST}-${LAST}" "${BASE_URL}/files/${FILE_ID}")" ||
  fail range "no answer"
[[ "$code" == 206 ]] || fail range "HTTP $code (want 206)"
"$JSON_PYTHON" -c 'import sys; data = open(sys.argv[1], "rb").read(); sys.stdout.buffer.write(data[int(sys.argv[2]):int(sys.argv[3]) + 1])' \
  "${WORK}/original.bin" "$FIRST" "$LAST" >"${WORK}/expected.bin"
cmp -s "${WORK}/expected.bin" "${WORK}/range.bin" || fail range "bytes ${FIRST}-${LAST} differ"
ok range "bytes ${FIRST}-${LAST}"

# --- metadata ------------------------------------------------------------------------------------
code="$(api -o "${WORK}/meta.json" -w '%{http_code}' "${BASE_URL}/files/${FILE_ID}/metadata")" || fail metadata "no answer"
[[ "$code" == 200 ]] || fail metadata "HTTP $code"
[[ "$(json_field "${WORK}/meta.json" file_id)" == "$FILE_ID" ]] || fail metadata "file_id differs"
[[ "$(json_field "${WORK}/meta.json" size)" == "$SIZE" ]] || fail metadata "size is not $SIZE"
[[ "$(json_field "${WORK}/meta.json" status)" == encrypted ]] || fail metadata "status is not encrypted"
ok metadata "size $SIZE, encrypted"

# --- cleanup -------------------------------------------------------------------------------------
# DELETE erases the file (blobs and every key version; the row stays as a tombstone).
code="$(api -o "${WORK}/delete.json" -w '%{http_code}' -X DELETE "${BASE_URL}/files/${FILE_ID}")" || fail cleanup "no answer"
[[ "$code" == 200 || "$code" == 202 || "$code" == 204 ]] || fail cleanup "DELETE: HTTP $code"
code="$(api -o /dev/null -w '%{http_code}' "${BASE_URL}/files/${FILE_ID}")" || fail cleanup "no answer"
[[ "$code" != 200 ]] || fail cleanup "the file still downloads after DELETE"
if [[ "$MODE" == azure ]]; then
  az storage blob delete --auth-mode login --account-name "$DATA_ACCOUNT" -c "$INGEST" -n "$NAME" -o none \
    2>/dev/null || true # usually gone already: the app deletes the plaintext once it is encrypted
  UPLOADED=""
  ok cleanup "file deleted (HTTP $code after), ingest blob removed if it was kept"
else
  ok cleanup "file deleted (HTTP $code after)"
  skip cleanup-ingest "Azure only: locally the app removed the plaintext itself"
fi
printf 'smoke: passed (%s)\n' "$BASE_URL"
