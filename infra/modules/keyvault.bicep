// Key Vault for the per-file keys (secrets file-<uuid>, one version per key) and, in the envelope
// key mode, the key-encryption key (KEK). RBAC authorization (no access policies), soft delete and
// purge protection, audit logs and metrics to Log Analytics. With private networking (the default)
// public network access is disabled and the firewall denies by default: the app reaches the vault
// through its private endpoint (private-endpoint.bicep).
// No secret is written by the templates: the vault holds only what the app creates, the KEK and the
// signing key.
//
// The signing key (always): an EC P-256 key named signingKeyName (KEY_VAULT_SIGNING_KEY_NAME),
// operations sign and verify only, not exportable. The app signs with it what it must be able to
// prove its own later (each intermediate key row of the envelope mode; docs/THREATS.md) and
// verifies with the public half alone; its identity may read the key and sign with it, nothing else
// (rbac.bicep's custom role). A database writer can wrap a key of its own with the KEK's public key,
// but cannot sign. The app never creates it in Azure (fail closed), so the template must.
//
// The KEK (deployKek, set by main.bicep when keyMode is 'envelope' or deployKek is true): an RSA
// 3072 key named kekName (KEY_VAULT_KEK_NAME), operations wrapKey and unwrapKey only, not
// exportable, software-protected (a standard vault; the limits in docs/SCALE.md are those of an
// RSA 3072 software key). The app only gets it, wraps (with the public key, in process) and unwraps
// with it (RSA-OAEP-256, shared/vault/azure_kek.py); it never creates it, so the template must.
// ARM creates the first version only: a redeployment never adds a version or changes the key
// (Keys - Create If Not Exist). Operators add versions with `blobseal rotate-kek`.
//
// No rotation policy and no expiry, on purpose:
// - an expiry stops envelope ingest when it passes: the SDK wraps locally and refuses an expired
//   version, so every new intermediate key would fail until someone rotates;
// - Key Vault's automatic rotation adds a version but does not rewrap the intermediate keys, so
//   the old version stays in use (and enabled) until `blobseal rotate-kek --rewrap-only`, and a
//   "notify" action needs an expiry to count from. `blobseal rotate-kek` does both steps at once
//   and reports the versions still in use (docs/OPERATIONS.md, "Key modes and the KEK").

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

@description('Name of the key-encryption key (KEY_VAULT_KEK_NAME): 1-127 letters, digits and hyphens.')
@minLength(1)
@maxLength(127)
param kekName string = 'blobseal-kek'

@description('Deploy the KEK (envelope key mode). The deploying principal then needs a Key Vault data-plane role on keys (Key Vault Crypto Officer): ARM checks it for the key.')
param deployKek bool = false

@description('Name of the signing key (KEY_VAULT_SIGNING_KEY_NAME): 1-127 letters, digits and hyphens. Always deployed.')
@minLength(1)
@maxLength(127)
param signingKeyName string = 'blobseal-signing'

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

// The KEK. Its version is what the app records (`<name>/<version>` in intermediate_keys); the
// private part never leaves the vault.
resource kek 'Microsoft.KeyVault/vaults/keys@2023-07-01' = if (deployKek) {
  // checkov:skip=CKV_AZURE_112: a standard vault holds software-protected keys only (RSA-HSM needs the premium SKU); the KEK is not exportable, its private part never leaves the vault, and docs/SCALE.md sizes the design on the software-key limits
  // checkov:skip=CKV_AZURE_40: no expiry on purpose: the SDK wraps locally and refuses an expired version, so an expiry would stop envelope ingest; rotation is `blobseal rotate-kek` (a new version and a rewrap of every intermediate key), see the header
  parent: vault
  name: kekName
  tags: tags
  properties: {
    kty: 'RSA'
    keySize: 3072
    keyOps: [
      'wrapKey'
      'unwrapKey'
    ]
    attributes: {
      enabled: true
      exportable: false
    }
  }
}

// The signing key: ES256 signatures over what the service vouches for (shared/vault/azure_signer.py).
resource signingKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = {
  // checkov:skip=CKV_AZURE_112: a standard vault holds software-protected keys only (EC-HSM needs the premium SKU); the key is not exportable and its private part never leaves the vault
  // checkov:skip=CKV_AZURE_40: no expiry on purpose: an expired version cannot sign, so envelope ingest would stop; rotation adds a version (`az keyvault key rotate`), and rows signed by older versions stay verifiable
  parent: vault
  name: signingKeyName
  tags: tags
  properties: {
    kty: 'EC'
    curveName: 'P-256'
    keyOps: [
      'sign'
      'verify'
    ]
    attributes: {
      enabled: true
      exportable: false
    }
  }
}

// Who read, created or disabled which secret, and who got the KEK, unwrapped with it or added a
// version (the app wraps in process with the public key), kept in the workspace (category group
// "audit").
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
@description('The KEK\'s name (KEY_VAULT_KEK_NAME); the key exists only when deployKek is true (or was, in an earlier deployment).')
output kekName string = kekName
@description('The signing key\'s name (KEY_VAULT_SIGNING_KEY_NAME).')
output signingKeyName string = signingKey.name
