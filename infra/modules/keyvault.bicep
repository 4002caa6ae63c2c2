// Key Vault for the per-file keys (secrets file-<uuid>, one version per key). RBAC authorization
// (no access policies), soft delete and purge protection, audit logs and metrics to Log Analytics.
// With private networking (the default) public network access is disabled and the firewall denies
// by default: the app reaches the vault through its private endpoint (private-endpoint.bicep).
// No secret is written by the templates: the vault holds only what the app creates.

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

@description('Public network access: Disabled = private endpoint only.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('Firewall default action: Deny with private networking, Allow without it.')
@allowed([
  'Allow'
  'Deny'
])
param networkDefaultAction string = 'Deny'

@description('Log Analytics workspace receiving the vault\'s audit logs ("" = none).')
param logAnalyticsWorkspaceId string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: networkAcls.defaultAction is Deny whenever privateNetworking is on (the default); checkov cannot evaluate the ternary main.bicep passes, infra/tools/check_infra.py does and fails otherwise
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
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: 'AzureServices'
      ipRules: []
      virtualNetworkRules: []
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
