// blobseal on Azure: Flex Consumption function app (Python 3.11), data + host storage,
// Key Vault (RBAC), PostgreSQL Flexible Server 16, Log Analytics + Application Insights, and the
// Event Grid system topic that feeds the blob trigger.
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

// PostgreSQL
@description('PostgreSQL administrator login (not "azure_superuser", "admin", "root", "postgres", ...).')
param postgresAdminLogin string = 'blobsealadmin'

@secure()
@description('PostgreSQL administrator password (12-128 chars, three of: upper, lower, digit, symbol). Only ever stored in the server and inside the Key Vault secret database-url.')
@minLength(12)
@maxLength(128)
param postgresAdminPassword string

@allowed([
  '16'
])
param postgresVersion string = '16'

param postgresSkuName string = 'Standard_B1ms'

@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

@minValue(32)
param postgresStorageSizeGB int = 32

@description('Firewall rule 0.0.0.0 ("allow Azure services"). Needed without VNet integration; see README for production.')
param postgresAllowAzureServices bool = true

@allowed([
  'require'
  'verify-ca'
  'verify-full'
])
param postgresSslMode string = 'require'

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

@description('Python function name of the blob trigger.')
param encryptFunctionName string = 'encrypt_ingest_blob'

@description('Connection name of the blob trigger (connection="..." in function_app.py). Its identity-based settings are <name>__blobServiceUri and <name>__queueServiceUri.')
param blobConnectionName string = 'DataStorage'

param ingestContainerName string = 'ingest'
param protectedContainerName string = 'protected'

@description('NCRONTAB (6 fields) of the rotation timer; the code binds it as "%ROTATION_SCHEDULE%".')
param rotationSchedule string = '0 0 * * * *'

@minValue(1)
@maxValue(3650)
param keyRotationDays int = 30

@minValue(1)
@maxValue(100)
param chunkSizeMB int = 5

@minValue(4)
@maxValue(16384)
param blockSizeKB int = 64

@minValue(0)
@maxValue(10080)
param keyVaultCacheMinutes int = 60

@description('asyncpg pool size per instance (DATABASE_POOL_MAX). Instances x this must stay below the server\'s connection limit.')
@minValue(1)
@maxValue(100)
param databasePoolMax int = 4

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
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param dataStorageSku string = 'Standard_LRS'

// Monitoring
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Daily ingestion cap of the Log Analytics workspace in GB; -1 = none.')
param logDailyCapGb int = -1

// Access for people
@description('Object id of a user/group/service principal granted Storage Blob Data Contributor on the data account ("" = none).')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

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
}

var deploymentContainerName = 'app-package'
var deadLetterContainerName = 'eventgrid-deadletter'
var databaseUrlSecretName = 'database-url'

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

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
    skuName: 'Standard_LRS'
    containerNames: [
      deploymentContainerName
      deadLetterContainerName
    ]
    allowSharedKeyAccess: false
    blobSoftDeleteDays: 7
    containerSoftDeleteDays: 7
  }
}

// Data storage: ingest (plaintext, deleted after encryption) and protected (ciphertext).
// Blob soft delete and versioning stay off: they would keep deleted plaintext recoverable.
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
    ]
    allowSharedKeyAccess: false
    blobSoftDeleteDays: 0
    containerSoftDeleteDays: 7
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
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'blobseal-postgres'
  params: {
    serverName: names.postgres
    location: location
    tags: tags
    version: postgresVersion
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageSizeGB
    databaseName: databaseName
    allowAzureServices: postgresAllowAzureServices
    keyVaultName: keyVault.outputs.name
    databaseUrlSecretName: databaseUrlSecretName
    sslMode: postgresSslMode
  }
}

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
    dataStorageAccountName: dataStorage.outputs.name
    hostStorageAccountName: hostStorage.outputs.name
    systemTopicPrincipalId: systemTopic.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

// Read after the monitoring module (the settings module depends on it), so the connection
// string goes straight into the secure settings object and never into a module output.
resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: names.appInsights
}

// Every setting the app reads. Storage and Key Vault are reached with the app's managed
// identity; the only secret (DATABASE_URL) is a Key Vault reference resolved by the platform.
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
  DATABASE_POOL_MAX: string(databasePoolMax)
  DATABASE_URL: '@Microsoft.KeyVault(SecretUri=${postgres.outputs.databaseUrlSecretUri})'
  BLOB_TRIGGER_SOURCE: 'EventGrid'
  INGEST_CONTAINER: ingestContainerName
  PROTECTED_CONTAINER: protectedContainerName
  // The plaintext in ingest is deleted once its ciphertext, key and metadata are durable.
  KEEP_PLAINTEXT: 'false'
  ROTATION_SCHEDULE: rotationSchedule
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
    rbac
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (names and endpoints only; no key, password or connection string)
// ---------------------------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output dataStorageAccountName string = dataStorage.outputs.name
output hostStorageAccountName string = hostStorage.outputs.name
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
output postgresServerName string = postgres.outputs.serverName
output postgresFqdn string = postgres.outputs.fqdn
output systemTopicName string = systemTopic.outputs.name
output appInsightsName string = monitoring.outputs.appInsightsName
output ingestContainerName string = ingestContainerName
output protectedContainerName string = protectedContainerName
output deadLetterContainerName string = deadLetterContainerName
output encryptFunctionName string = encryptFunctionName
