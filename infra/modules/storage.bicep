// One StorageV2 account: TLS 1.2 only, no anonymous blob access, Entra ID (identity) access only
// by default, and the listed blob containers. Used twice by main.bicep: once for the Functions
// host (AzureWebJobsStorage, deployment package, Event Grid dead letters) and once for data
// (ingest + protected + the access log's digests).
//
// Write once, read many (immutableContainerName): one container can carry a container-level
// time-based retention policy ('default', allowProtectedAppendWrites false: each digest is a whole
// new blob). While it holds, nobody (the account owner included) can overwrite or delete a blob in
// that container; an unlocked policy can still be removed by whoever may manage the account, a
// locked one cannot (not even shortened). Bicep cannot lock it (locking is a POST with the policy's
// ETag): deploy.sh --lock-audit-digests does. A locked policy cannot be rewritten by a deployment,
// so once it is locked (immutabilityPolicyLocked) this template leaves it alone. This is the
// container-level policy, not version-level immutability: that one needs blob versioning, which
// stays off on the data account (erasure, see main.bicep).
//
// Blob logs (blobLogsWorkspaceId): StorageRead, StorageWrite and StorageDelete of the blob service
// go to Log Analytics (table StorageBlobLogs): who read, wrote or deleted which blob, with which
// identity, whatever the app's own access log says.
//
// Network: with private networking (main.bicep's default) public network access is disabled and the
// default action is Deny; the app reaches the account through private endpoints
// (private-endpoint.bicep). Event Grid's BlobCreated events are emitted by the storage service
// itself, so the system topic keeps working; "AzureServices" stays in bypass for trusted services.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_GZRS'

@description('Public network access. Disabled = private endpoints only (main.bicep passes Enabled only when privateNetworking is false).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('Default action of the account firewall: Deny with private networking, Allow without it.')
@allowed([
  'Allow'
  'Deny'
])
param networkDefaultAction string = 'Deny'

@description('Blob containers to create (private).')
param containerNames array = []

@description('Allow Shared Key (account key / SAS) authorization. false = Entra ID only.')
param allowSharedKeyAccess bool = false

@description('Days to keep deleted blobs (0 = blob soft delete off). Keep 0 on the data account: a soft-deleted plaintext from ingest would stay recoverable that long.')
@minValue(0)
@maxValue(365)
param blobSoftDeleteDays int = 0

@description('Days to keep deleted containers (0 = off).')
@minValue(0)
@maxValue(365)
param containerSoftDeleteDays int = 7

@description('One of containerNames to put under a time-based immutability (WORM) policy ("" = none).')
param immutableContainerName string = ''

@description('Days each blob in that container stays immutable after it is written (a locked policy can be lengthened, never shortened).')
@minValue(1)
@maxValue(146000)
param immutabilityPeriodDays int = 365

@description('The policy is locked already: leave it alone (a deployment cannot rewrite a locked policy; lengthen it with az storage container immutability-policy extend).')
param immutabilityPolicyLocked bool = false

@description('Log Analytics workspace receiving the blob service\'s StorageRead, StorageWrite and StorageDelete logs ("" = none).')
param blobLogsWorkspaceId string = ''

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: defaultAction is Deny whenever privateNetworking is on (the default); checkov cannot evaluate the ternary main.bicep passes, infra/tools/check_infra.py does and fails otherwise
  // checkov:skip=CKV_AZURE_206: replication is chosen per account in main.bicep: data GZRS by default (dataStorageSku); host ZRS (zoneRedundant), it holds only the deployment package, host leases and dead letters
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: 'AzureServices'
      ipRules: []
      virtualNetworkRules: []
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: false
    deleteRetentionPolicy: {
      enabled: blobSoftDeleteDays > 0
      days: blobSoftDeleteDays > 0 ? blobSoftDeleteDays : null
    }
    containerDeleteRetentionPolicy: {
      enabled: containerSoftDeleteDays > 0
      days: containerSoftDeleteDays > 0 ? containerSoftDeleteDays : null
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in containerNames: {
    parent: blobService
    name: containerName
    properties: {
      publicAccess: 'None'
    }
  }
]

// Time-based retention on the container named immutableContainerName, unlocked as ARM creates it
// (deploy.sh --lock-audit-digests locks it); not touched once locked.
module wormPolicy 'immutability-policy.bicep' = if (!empty(immutableContainerName) && !immutabilityPolicyLocked) {
  name: '${name}-worm-policy'
  params: {
    accountName: account.name
    containerName: immutableContainerName
    immutabilityPeriodDays: immutabilityPeriodDays
  }
  dependsOn: [
    containers
  ]
}

resource blobLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(blobLogsWorkspaceId)) {
  name: 'blob-access-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: blobLogsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
