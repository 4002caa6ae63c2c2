// Key Vault for the per-file keys (secrets file-<uuid>, one version per key) and the
// database-url secret. RBAC authorization (no access policies), soft delete and purge
// protection, audit logs to Log Analytics.

@description('Vault name: 3-24 letters, digits and hyphens, starting with a letter, globally unique.')
@minLength(3)
@maxLength(24)
param name string

param location string
param tags object = {}

@description('Soft-delete retention (7-90 days). Purge protection keeps deleted secrets, and the vault name, for this long.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('\'recover\' re-attaches a soft-deleted vault of the same name (needed after a teardown, within the retention period).')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

@description('Log Analytics workspace receiving the vault\'s audit logs ("" = none).')
param logAnalyticsWorkspaceId string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    createMode: createMode
    enableRbacAuthorization: true
    // RBAC only: access policies are ignored, but the API wants the property on create.
    accessPolicies: []
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Who read, created or disabled which secret, kept in the workspace (category group "audit").
resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
