// blobseal on Azure: Flex Consumption function app (Python 3.13), data + host storage,
// Key Vault (RBAC; with keyMode=envelope also the KEK, an RSA key), PostgreSQL Flexible Server 16
// (Microsoft Entra authentication only), Log Analytics + Application Insights with alerts, the
// Event Grid system topic that feeds the blob trigger, and (privateNetworking, on by default) a
// virtual network with Flex Consumption VNet integration, private endpoints and private DNS zones;
// public network access is then disabled on both storage accounts, the Key Vault and PostgreSQL.
//
// Callers: App Service Authentication (Easy Auth) with Microsoft Entra ID in front of every route but
// /api/health: a token for the blobseal API app registration (apiClientId; deploy.sh creates it with
// the app roles blobseal.read, .write, .erase, .audit and .operate, which the app checks per route).
// Function keys are off (FUNCTION_KEYS_ENABLED=false, functionKeysEnabled). The access log's signed
// digests go to a write-once (WORM) container of the data account; blob, PostgreSQL and Key Vault
// logs go to Log Analytics.
//
// No password, key or connection-string secret is a parameter, a setting or an output: storage,
// Key Vault and PostgreSQL are reached with the function app's managed identity.
//
// Deploy into an existing resource group (see infra/README.md and infra/deploy.sh):
//   phase 1: this template (enableBlobEventSubscription=false, the default)
//   phase 2: publish the code
//   phase 3: the Event Grid subscription (modules/blob-event-subscription.bicep standalone,
//            or this template again with enableBlobEventSubscription=true)

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

@description('Name prefix: 3-10 lowercase letters or digits, starting with a letter. Names get a stable 8-character suffix derived from the subscription, resource group and prefix.')
@minLength(3)
@maxLength(10)
param namePrefix string = 'blobseal'

@description('Region of every resource. It must offer Flex Consumption and PostgreSQL Flexible Server.')
param location string = resourceGroup().location

param tags object = {
  app: 'blobseal'
}

// PostgreSQL: Microsoft Entra authentication only (no password anywhere).
@description('Object id of the PostgreSQL Entra administrator: a group of DB admins (recommended), a user, or the deploying service principal. It runs the migrations and grants the app its role (deploy.sh).')
param postgresAdminObjectId string

@description('That principal\'s name as PostgreSQL sees it (group display name, user UPN, or service principal display name); the admin connects with it as the user name.')
param postgresAdminName string

@allowed([
  'Group'
  'User'
  'ServicePrincipal'
])
param postgresAdminType string = 'Group'

@allowed([
  '16'
])
param postgresVersion string = '16'

@description('Compute size. The default (2 vCores, 8 GiB, max_connections 859) is the smallest with the built-in PgBouncer; Standard_B1ms with postgresSkuTier=Burstable suits a dev deployment (no PgBouncer, 35 user connections: lower maximumInstanceCount to 7). docs/DATABASE.md has the budget.')
param postgresSkuName string = 'Standard_D2ds_v5'

@description('Burstable has no built-in PgBouncer: the app then connects to 5432 directly.')
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'GeneralPurpose'

@description('PgBouncer server connections for the app (pgbouncer.default_pool_size): Microsoft suggests 2-5 x vCores to start.')
@minValue(1)
@maxValue(4950)
param postgresPgBouncerPoolSize int = 10

@description('PgBouncer client connections in all (pgbouncer.max_client_conn): at least maximumInstanceCount x databasePoolMax, plus operators.')
@minValue(1)
@maxValue(50000)
param postgresPgBouncerMaxClientConn int = 5000

@minValue(32)
param postgresStorageSizeGB int = 32

@allowed([
  'Disabled'
  'SameZone'
  'ZoneRedundant'
])
@description('PostgreSQL high availability (ZoneRedundant needs GeneralPurpose or MemoryOptimized).')
param postgresHighAvailability string = 'Disabled'

@description('Only with privateNetworking=false: firewall rule 0.0.0.0 ("allow Azure services"), needed then for the app to connect (Entra tokens remain the only credential).')
param postgresAllowAzureServices bool = false


param databaseName string = 'blobseal'

// Function app
@minValue(1)
@maxValue(1000)
@description('Flex Consumption scale-out limit. Each instance adds Key Vault traffic: see the README scaling notes.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Zone-redundant Flex Consumption plan and ZRS host storage (needs a region with availability zones).')
param zoneRedundant bool = true

@description('Python function name of the blob trigger.')
param encryptFunctionName string = 'encrypt_ingest_blob'

@description('Connection name of the blob trigger (connection="..." in function_app.py). Its identity-based settings are <name>__blobServiceUri and <name>__queueServiceUri.')
param blobConnectionName string = 'DataStorage'

param ingestContainerName string = 'ingest'
param protectedContainerName string = 'protected'

@description('NCRONTAB (6 fields) of the rotation timer; the code binds it as "%ROTATION_SCHEDULE%".')
param rotationSchedule string = '0 0 * * * *'

@minValue(1)
@maxValue(100000)
param rotationBatchSize int = 100

@description('Below functionTimeout in host.json.')
@minValue(1)
@maxValue(3600)
param rotationTimeBudgetSeconds int = 240

@minValue(0)
@maxValue(10080)
param rotationGraceMinutes int = 60

@minValue(5)
@maxValue(86400)
param rotationLeaseSeconds int = 900

@description('NCRONTAB (6 fields) of the reconciler timer; the code binds it as "%RECONCILE_SCHEDULE%".')
param reconcileSchedule string = '0 */5 * * * *'

@minValue(1)
@maxValue(100000)
param reconcileBatchSize int = 200

@minValue(0)
@maxValue(604800)
param reconcileAfterSeconds int = 300

@minValue(0)
@maxValue(3600)
param ingestRetrySeconds int = 120

@description('Health is degraded, and the plaintext alert fires, while an upload older than this is still plaintext.')
@minValue(1)
@maxValue(10080)
param plaintextAlertMinutes int = 30

@minValue(1)
@maxValue(3650)
param keyRotationDays int = 30

@description('Largest body POST /api/files accepts, in MiB (UPLOAD_MAX_MB).')
@minValue(1)
@maxValue(4194304)
param uploadMaxMB int = 10240

@description('AUDIT_RETENTION_DAYS: `blobseal audit purge` removes access log rows older than this (the purge role only; the database keeps every row at least 30 days, the app refuses less).')
@minValue(30)
@maxValue(36500)
param auditRetentionDays int = 365

@description('Names of function keys in the access log, "name:fingerprint,..." (fingerprints, not keys: `blobseal key-fingerprint`); only with functionKeysEnabled.')
param functionKeyNames string = ''

// Callers: App Service Authentication with Microsoft Entra ID (modules/easyauth.bicep)
@description('Application (client) id of the blobseal API app registration, whose tokens Easy Auth accepts. deploy.sh creates (or finds) it with the five app roles and passes it; infra/README.md ("Callers") has the manual way.')
@minLength(36)
@maxLength(36)
param apiClientId string

@description('Application id URI of the API, what callers request tokens for ("" = api://<apiClientId>, what deploy.sh sets).')
param apiAppIdUri string = ''

@description('Tenant whose tokens Easy Auth accepts (the issuer is <login endpoint><tenant>/v2.0).')
param apiTenantId string = tenant().tenantId

@description('FUNCTION_KEYS_ENABLED: the HTTP functions also require a function key (auth level function), so a caller needs a token and a key. Off (the default): Easy Auth alone admits callers, the app checks their roles.')
param functionKeysEnabled bool = false

@description('FUNCTION_KEY_ROLES: roles of named function keys, "name=read+write,other=audit" (only with functionKeysEnabled).')
param functionKeyRoles string = ''

@description('HEALTH_PROBE_SECONDS: the anonymous /api/health answers from dependency probes at most this old.')
@minValue(1)
@maxValue(3600)
param healthProbeSeconds int = 30

// The access log's trust anchors
@description('AUDIT_CHAIN_KEY_NAME: the vault secret that keys the access log\'s chains (the app makes it on first use). Never rename it while chained rows exist: every row would look forged.')
@minLength(1)
@maxLength(127)
param auditChainKeyName string = 'blobseal-audit-chain'

@description('AUDIT_DIGEST_CONTAINER: the data account\'s container of the access log\'s signed digests, under a time-based immutability (WORM) policy.')
@minLength(3)
@maxLength(63)
param auditDigestContainerName string = 'audit-digests'

@description('Days each digest stays immutable after it is written: at least auditRetentionDays, so every row the log keeps is pinned by a digest nobody can change. Once the policy is locked, lengthen it only with `az storage container immutability-policy extend` (a locked policy is not rewritten by a deployment).')
@minValue(1)
@maxValue(146000)
param auditDigestRetentionDays int = 365

@description('The digest container\'s policy is locked (deploy.sh finds this out itself): the template then leaves the policy alone, a deployment cannot rewrite a locked one. Locking: deploy.sh --lock-audit-digests.')
param auditDigestImmutabilityLocked bool = false

@minValue(1)
@maxValue(100)
param chunkSizeMB int = 5

@minValue(4)
@maxValue(16384)
param blockSizeKB int = 64

// The key cache's TTL in minutes (KEY_VAULT_CACHE_DURATION_MINUTES). The app never keeps a key longer
// than KEY_CACHE_SECONDS (60 s, its fail-closed bound) whatever this says: 1 states what happens; 0 turns
// the cache off.
@minValue(0)
@maxValue(10080)
param keyVaultCacheMinutes int = 1

@minValue(1)
@maxValue(10000000)
param keyVaultCacheMaxEntries int = 10000

@description('asyncpg pool size per instance (DATABASE_POOL_MAX). Instances x this are the client connections: below pgbouncer.max_client_conn, or without PgBouncer below the server\'s max_connections (docs/DATABASE.md).')
@minValue(1)
@maxValue(100)
param databasePoolMax int = 4

// Key custody (docs/SCALE.md)
@description('KEY_MODE: where new file keys go. secret = one Key Vault secret per file key (the default); envelope = wrapped in the database by intermediate keys that the KEK (an RSA key in the vault) wraps; this also deploys the KEK and its role assignments. Both modes read keys of both kinds; existing keys move only with `blobseal migrate-keys`.')
@allowed([
  'secret'
  'envelope'
])
param keyMode string = 'secret'

@description('Name of the key-encryption key in the vault (KEY_VAULT_KEK_NAME): 1-127 letters, digits and hyphens. Never rename a KEK that wraps keys.')
@minLength(1)
@maxLength(127)
param kekName string = 'blobseal-kek'

@description('Name of the signing key in the vault (KEY_VAULT_SIGNING_KEY_NAME): an EC P-256 key the app may only sign with. Never rename it while signed rows exist.')
@minLength(1)
@maxLength(127)
param signingKeyName string = 'blobseal-signing'

@description('Deploy the KEK and its role assignments while keyMode is secret: one deployment ahead of a switch (so the grants have propagated), or after switching back until `blobseal migrate-keys --to secret` has moved every key. keyMode=envelope deploys them anyway.')
param deployKek bool = false

@description('ENVELOPE_INTERMEDIATE_MINUTES: an instance wraps new file keys with one intermediate key for at most this long.')
@minValue(1)
@maxValue(10080)
param envelopeIntermediateMinutes int = 60

@description('ENVELOPE_INTERMEDIATE_MAX_FILES: and for at most this many files.')
@minValue(1)
@maxValue(10000000)
param envelopeIntermediateMaxFiles int = 100000

// Key Vault
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionDays int = 90

@description('Set to "recover" to redeploy over a soft-deleted vault of the same name (after a teardown, within its retention period).')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

// Storage
@description('Data account (ingest + protected). Geo-zone-redundant by default; the ciphertext is the only copy of each file.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param dataStorageSku string = 'Standard_GZRS'

// Network
@description('Virtual network, Flex Consumption VNet integration, private endpoints and private DNS zones; public network access disabled on storage, Key Vault and PostgreSQL. false = everything on public endpoints (identity and TLS only).')
param privateNetworking bool = true

param vnetAddressPrefix string = '10.20.0.0/16'
param functionsSubnetPrefix string = '10.20.0.0/24'
param privateEndpointsSubnetPrefix string = '10.20.1.0/24'

// Monitoring
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Daily ingestion cap of the Log Analytics workspace in GB; -1 = none.')
param logDailyCapGb int = -1

@description('Existing action groups (resource ids) that every alert notifies.')
param alertActionGroupIds array = []

@description('E-mail addresses for an action group created by this template (empty = none).')
param alertEmailAddresses array = []

@description('Key Vault 429s per 15 minutes tolerated before the throttling alert fires.')
@minValue(0)
param keyVaultThrottleAlertThreshold int = 10

// Access for people
@description('Object id of the operator group (or user / service principal) that runs the CLI: Storage Blob Data Contributor on the data account, Key Vault Secrets Officer on the vault and, with the KEK, Key Vault Crypto Officer on the KEK ("" = none). Its PostgreSQL role is granted by deploy.sh (infra/tools/db_roles.py --operator).')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

// Phase 3
@description('Create the Event Grid subscription (only after the code is published and the host has started once).')
param enableBlobEventSubscription bool = false

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')
var suffix = take(uniqueString(subscription().id, resourceGroup().id, prefix), 8)

var names = {
  dataStorage: take('${compactPrefix}data${suffix}', 24)
  hostStorage: take('${compactPrefix}host${suffix}', 24)
  keyVault: take('${prefix}-kv-${suffix}', 24)
  postgres: '${prefix}-pg-${suffix}'
  plan: '${prefix}-plan-${suffix}'
  functionApp: '${prefix}-func-${suffix}'
  logAnalytics: '${prefix}-log-${suffix}'
  appInsights: '${prefix}-appi-${suffix}'
  systemTopic: '${prefix}-data-events-${suffix}'
  vnet: '${prefix}-vnet-${suffix}'
  alerts: '${prefix}-${suffix}'
}

var deploymentContainerName = 'app-package'
var deadLetterContainerName = 'eventgrid-deadletter'

// The app's PostgreSQL role: an Entra role named like the function app (its system-assigned
// identity), created by deploy.sh (infra/tools/db_roles.py) with least privilege.
var databaseUser = names.functionApp

// The built-in PgBouncer exists on General Purpose and Memory Optimized only: there the app goes
// through it (6432, transaction pooling, DATABASE_PGBOUNCER=true); on Burstable to 5432 directly.
var postgresPgBouncer = postgresSkuTier != 'Burstable'
var databasePort = postgresPgBouncer ? 6432 : 5432

// The KEK exists (and the app and operators hold their roles on it) in envelope mode, or ahead of a
// switch / after a switch back (deployKek). The app never creates it (fail closed).
var kekDeployed = keyMode == 'envelope' || deployKek

// Private DNS zones of the private endpoints (public cloud names; storage from environment()).
var dnsZones = {
  blob: 'privatelink.blob.${environment().suffixes.storage}'
  queue: 'privatelink.queue.${environment().suffixes.storage}'
  table: 'privatelink.table.${environment().suffixes.storage}'
  vault: 'privatelink.vaultcore.azure.net'
  postgres: 'privatelink.postgres.database.azure.com'
}

// With private networking: no public network access, firewall default Deny.
var publicNetworkAccess = privateNetworking ? 'Disabled' : 'Enabled'
var networkDefaultAction = privateNetworking ? 'Deny' : 'Allow'

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

module network 'modules/network.bicep' = if (privateNetworking) {
  name: 'blobseal-network'
  params: {
    vnetName: names.vnet
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    functionsSubnetPrefix: functionsSubnetPrefix
    privateEndpointsSubnetPrefix: privateEndpointsSubnetPrefix
    privateDnsZoneNames: [
      dnsZones.blob
      dnsZones.queue
      dnsZones.table
      dnsZones.vault
      dnsZones.postgres
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'blobseal-monitoring'
  params: {
    workspaceName: names.logAnalytics
    appInsightsName: names.appInsights
    location: location
    tags: tags
    retentionInDays: logRetentionDays
    dailyQuotaGb: logDailyCapGb
  }
}

// Functions host storage: AzureWebJobsStorage (identity), deployment package, dead letters.
module hostStorage 'modules/storage.bicep' = {
  name: 'blobseal-host-storage'
  params: {
    name: names.hostStorage
    location: location
    tags: tags
    skuName: zoneRedundant ? 'Standard_ZRS' : 'Standard_LRS'
    containerNames: [
      deploymentContainerName
      deadLetterContainerName
    ]
    allowSharedKeyAccess: false
    blobSoftDeleteDays: 7
    containerSoftDeleteDays: 7
    publicNetworkAccess: publicNetworkAccess
    networkDefaultAction: networkDefaultAction
  }
}

// Data storage: ingest (plaintext, deleted after encryption), protected (ciphertext) and the access
// log's signed digests (write once: a container-level time-based retention policy, which needs no
// blob versioning). Blob soft delete and versioning stay off: they would keep deleted plaintext
// recoverable. Every blob read, write and delete is logged to the workspace.
module dataStorage 'modules/storage.bicep' = {
  name: 'blobseal-data-storage'
  params: {
    name: names.dataStorage
    location: location
    tags: tags
    skuName: dataStorageSku
    containerNames: [
      ingestContainerName
      protectedContainerName
      auditDigestContainerName
    ]
    allowSharedKeyAccess: false
    blobSoftDeleteDays: 0
    containerSoftDeleteDays: 7
    publicNetworkAccess: publicNetworkAccess
    networkDefaultAction: networkDefaultAction
    immutableContainerName: auditDigestContainerName
    immutabilityPeriodDays: auditDigestRetentionDays
    immutabilityPolicyLocked: auditDigestImmutabilityLocked
    blobLogsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'blobseal-keyvault'
  params: {
    name: names.keyVault
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionDays
    createMode: keyVaultCreateMode
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    publicNetworkAccess: publicNetworkAccess
    networkDefaultAction: networkDefaultAction
    kekName: kekName
    deployKek: kekDeployed
    signingKeyName: signingKeyName
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'blobseal-postgres'
  params: {
    serverName: names.postgres
    location: location
    tags: tags
    version: postgresVersion
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageSizeGB
    highAvailabilityMode: postgresHighAvailability
    databaseName: databaseName
    adminPrincipalId: postgresAdminObjectId
    adminPrincipalName: postgresAdminName
    adminPrincipalType: postgresAdminType
    publicNetworkAccess: publicNetworkAccess
    allowAzureServices: !privateNetworking && postgresAllowAzureServices
    pgBouncerEnabled: postgresPgBouncer
    pgBouncerDefaultPoolSize: postgresPgBouncerPoolSize
    pgBouncerMaxClientConn: postgresPgBouncerMaxClientConn
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

// One private endpoint per sub-resource the app (and operators inside the network) reach:
// blob + queue of the data account (the queue holds poison-blob messages), blob + queue + table of
// the host account (AzureWebJobsStorage, deployment package), the vault, the server.
var privateEndpoints = [
  {
    name: '${names.dataStorage}-blob-pe'
    target: resourceId('Microsoft.Storage/storageAccounts', names.dataStorage)
    groupId: 'blob'
    zone: dnsZones.blob
  }
  {
    name: '${names.dataStorage}-queue-pe'
    target: resourceId('Microsoft.Storage/storageAccounts', names.dataStorage)
    groupId: 'queue'
    zone: dnsZones.queue
  }
  {
    name: '${names.hostStorage}-blob-pe'
    target: resourceId('Microsoft.Storage/storageAccounts', names.hostStorage)
    groupId: 'blob'
    zone: dnsZones.blob
  }
  {
    name: '${names.hostStorage}-queue-pe'
    target: resourceId('Microsoft.Storage/storageAccounts', names.hostStorage)
    groupId: 'queue'
    zone: dnsZones.queue
  }
  {
    name: '${names.hostStorage}-table-pe'
    target: resourceId('Microsoft.Storage/storageAccounts', names.hostStorage)
    groupId: 'table'
    zone: dnsZones.table
  }
  {
    name: '${names.keyVault}-pe'
    target: resourceId('Microsoft.KeyVault/vaults', names.keyVault)
    groupId: 'vault'
    zone: dnsZones.vault
  }
  {
    name: '${names.postgres}-pe'
    target: resourceId('Microsoft.DBforPostgreSQL/flexibleServers', names.postgres)
    groupId: 'postgresqlServer'
    zone: dnsZones.postgres
  }
]

module endpoints 'modules/private-endpoint.bicep' = [
  for endpoint in (privateNetworking ? privateEndpoints : []): {
    name: 'blobseal-pe-${endpoint.groupId}-${uniqueString(endpoint.name)}'
    params: {
      name: endpoint.name
      location: location
      tags: tags
      subnetId: privateNetworking ? network.outputs.privateEndpointsSubnetId : ''
      targetResourceId: endpoint.target
      groupId: endpoint.groupId
      privateDnsZoneName: endpoint.zone
    }
    dependsOn: [
      dataStorage
      hostStorage
      keyVault
      postgres
    ]
  }
]

module functionApp 'modules/functionapp.bicep' = {
  name: 'blobseal-functionapp'
  params: {
    planName: names.plan
    appName: names.functionApp
    location: location
    tags: tags
    hostStorageAccountName: hostStorage.outputs.name
    deploymentContainerName: deploymentContainerName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    zoneRedundant: zoneRedundant
    virtualNetworkSubnetId: privateNetworking ? network.outputs.functionsSubnetId : ''
  }
}

module systemTopic 'modules/eventgrid-topic.bicep' = {
  name: 'blobseal-eventgrid-topic'
  params: {
    name: names.systemTopic
    location: location
    tags: tags
    storageAccountId: dataStorage.outputs.id
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'blobseal-rbac'
  params: {
    functionPrincipalId: functionApp.outputs.principalId
    keyVaultName: keyVault.outputs.name
    kekName: keyVault.outputs.kekName
    signingKeyName: keyVault.outputs.signingKeyName
    grantKek: kekDeployed
    dataStorageAccountName: dataStorage.outputs.name
    hostStorageAccountName: hostStorage.outputs.name
    systemTopicPrincipalId: systemTopic.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'blobseal-alerts'
  params: {
    namePrefix: names.alerts
    location: location
    tags: tags
    appInsightsId: monitoring.outputs.appInsightsId
    keyVaultId: keyVault.outputs.id
    systemTopicId: systemTopic.outputs.id
    existingActionGroupIds: alertActionGroupIds
    alertEmailAddresses: alertEmailAddresses
    plaintextAlertMinutes: plaintextAlertMinutes
    keyVaultThrottleThreshold: keyVaultThrottleAlertThreshold
  }
}

// Read after the monitoring module (the settings module depends on it), so the connection
// string goes straight into the secure settings object and never into a module output.
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: names.appInsights
}

// Every setting the app reads (tests/infra/test_settings.py compares this object with
// shared.config; settings left out on purpose are listed there with the reason). Storage, Key Vault
// and PostgreSQL are reached with the app's managed identity: no secret is a setting.
var appSettings = {
  // Host storage, identity-based (no connection string, shared keys are off).
  AzureWebJobsStorage__accountName: hostStorage.outputs.name
  // Blob trigger / data connection, identity-based (queue: the poison-blob queue).
  '${blobConnectionName}__blobServiceUri': dataStorage.outputs.blobEndpoint
  '${blobConnectionName}__queueServiceUri': dataStorage.outputs.queueEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  // Streaming HTTP responses (azurefunctions-extensions-http-fastapi) on Python <= 3.12.
  PYTHON_ENABLE_INIT_INDEXING: '1'
  // DefaultAzureCredential: only environment / workload identity / managed identity.
  AZURE_TOKEN_CREDENTIALS: 'prod'
  ENCRYPTION_ENABLED: 'true'
  ENCRYPTION_ALGORITHM: 'AES-256-GCM'
  ENCRYPTION_KEY_ROTATION_DAYS: string(keyRotationDays)
  ENCRYPTION_CHUNK_SIZE_MB: string(chunkSizeMB)
  ENCRYPTION_BLOCK_SIZE_KB: string(blockSizeKB)
  KEY_VAULT_ENABLED: 'true'
  KEY_VAULT_MODE: 'azure'
  KEY_VAULT_URL: keyVault.outputs.uri
  KEY_VAULT_CACHE_ENABLED: 'true'
  KEY_VAULT_CACHE_DURATION_MINUTES: string(keyVaultCacheMinutes)
  KEY_VAULT_CACHE_MAX_ENTRIES: string(keyVaultCacheMaxEntries)
  // Custody of new file keys (both modes read keys of both kinds); envelope: wrapped under
  // intermediate keys that the KEK wraps. The KEK is deployed by the templates, never by the app.
  KEY_MODE: keyMode
  KEY_VAULT_KEK_NAME: kekName
  // The custodies whose key rows the app reads: envelope rows only where the KEK is deployed; any
  // other custody named in a row is refused as tampered (docs/THREATS.md).
  KEY_CUSTODIES: kekDeployed ? 'secret,envelope' : 'secret'
  // Signs each intermediate key row (a database writer cannot forge one); deployed always.
  KEY_VAULT_SIGNING_KEY_NAME: signingKeyName
  ENVELOPE_INTERMEDIATE_MINUTES: string(envelopeIntermediateMinutes)
  ENVELOPE_INTERMEDIATE_MAX_FILES: string(envelopeIntermediateMaxFiles)
  // PostgreSQL with the managed identity: an Entra access token is the password (refreshed by the
  // app's pool); the URL names the app's role and holds no password. verify-full: the token goes only
  // to a server whose certificate chains to a root the platform trusts and names the host (the app
  // refuses DATABASE_AUTH=entra with anything less; shared/db/tls.py).
  DATABASE_AUTH: 'entra'
  // Through the built-in PgBouncer (6432, transaction pooling) where the tier has it; migrations and
  // roles (deploy.sh phase 2) go to 5432 directly.
  DATABASE_URL: 'postgresql://${databaseUser}@${postgres.outputs.fqdn}:${databasePort}/${databaseName}?sslmode=verify-full'
  // Empty: the system-assigned identity (a user-assigned one would put its client id here).
  DATABASE_ENTRA_CLIENT_ID: ''
  DATABASE_POOL_MAX: string(databasePoolMax)
  DATABASE_PGBOUNCER: postgresPgBouncer ? 'true' : 'false'
  BLOB_TRIGGER_SOURCE: 'EventGrid'
  INGEST_CONTAINER: ingestContainerName
  PROTECTED_CONTAINER: protectedContainerName
  // The plaintext in ingest is deleted once its ciphertext, key and metadata are durable.
  KEEP_PLAINTEXT: 'false'
  ROTATION_SCHEDULE: rotationSchedule
  ROTATION_BATCH_SIZE: string(rotationBatchSize)
  ROTATION_TIME_BUDGET_SECONDS: string(rotationTimeBudgetSeconds)
  ROTATION_GRACE_MINUTES: string(rotationGraceMinutes)
  ROTATION_LEASE_SECONDS: string(rotationLeaseSeconds)
  RECONCILE_SCHEDULE: reconcileSchedule
  RECONCILE_BATCH_SIZE: string(reconcileBatchSize)
  RECONCILE_AFTER_SECONDS: string(reconcileAfterSeconds)
  INGEST_RETRY_SECONDS: string(ingestRetrySeconds)
  PLAINTEXT_ALERT_MINUTES: string(plaintextAlertMinutes)
  UPLOAD_MAX_MB: string(uploadMaxMB)
  // Fail closed: an access that cannot be written to the access log is refused.
  AUDIT_FAIL_OPEN: 'false'
  AUDIT_RETENTION_DAYS: string(auditRetentionDays)
  AUDIT_CHAIN_KEY_NAME: auditChainKeyName
  AUDIT_DIGEST_CONTAINER: auditDigestContainerName
  // Callers come from App Service Authentication (modules/easyauth.bicep): the platform sets
  // WEBSITE_AUTH_ENABLED itself, and no template may (check_infra.py): a setting of that name overrides
  // the platform's value (false would switch the host's enforcement off on Flex Consumption, true would
  // make the app trust principal headers nobody validated). Function keys are off unless asked for.
  FUNCTION_KEYS_ENABLED: functionKeysEnabled ? 'true' : 'false'
  FUNCTION_KEY_ROLES: functionKeyRoles
  FUNCTION_KEY_NAMES: functionKeyNames
  HEALTH_PROBE_SECONDS: string(healthProbeSeconds)
}

module settings 'modules/appsettings.bicep' = {
  name: 'blobseal-appsettings'
  params: {
    appName: functionApp.outputs.name
    settings: appSettings
  }
  dependsOn: [
    rbac
    monitoring
    endpoints
  ]
}

var apiAudience = empty(apiAppIdUri) ? 'api://${apiClientId}' : apiAppIdUri

// Easy Auth, after the settings (one site configuration change at a time).
module easyAuth 'modules/easyauth.bicep' = {
  name: 'blobseal-easyauth'
  params: {
    appName: functionApp.outputs.name
    clientId: apiClientId
    appIdUri: apiAudience
    tenantId: apiTenantId
  }
  dependsOn: [
    settings
  ]
}

module blobSubscription 'modules/blob-event-subscription.bicep' = if (enableBlobEventSubscription) {
  name: 'blobseal-blob-event-subscription'
  params: {
    functionAppName: functionApp.outputs.name
    systemTopicName: systemTopic.outputs.name
    functionName: encryptFunctionName
    ingestContainerName: ingestContainerName
    deadLetterStorageAccountName: hostStorage.outputs.name
    deadLetterContainerName: deadLetterContainerName
  }
  dependsOn: [
    settings
    easyAuth
    rbac
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (names, endpoints and object ids only; no key, password or connection string)
// ---------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
@description('Object id of the app\'s managed identity: deploy.sh maps it to the database role.')
output functionAppPrincipalId string = functionApp.outputs.principalId
output dataStorageAccountName string = dataStorage.outputs.name
output hostStorageAccountName string = hostStorage.outputs.name
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
@description('KEY_VAULT_KEK_NAME (the key exists in envelope mode or with deployKek).')
output keyVaultKekName string = keyVault.outputs.kekName
output keyMode string = keyMode
output postgresServerName string = postgres.outputs.serverName
output postgresFqdn string = postgres.outputs.fqdn
output databaseName string = postgres.outputs.databaseName
output databaseUser string = databaseUser
output privateNetworking bool = privateNetworking
output vnetName string = privateNetworking ? network.outputs.vnetName : ''
output systemTopicName string = systemTopic.outputs.name
output appInsightsName string = monitoring.outputs.appInsightsName
output ingestContainerName string = ingestContainerName
output protectedContainerName string = protectedContainerName
output deadLetterContainerName string = deadLetterContainerName
output encryptFunctionName string = encryptFunctionName
@description('The API\'s app registration: callers get a token for apiAppIdUri (az account get-access-token --resource <it>).')
output apiClientId string = apiClientId
output apiAppIdUri string = apiAudience
output auditDigestContainerName string = auditDigestContainerName
