// Role assignments (Azure RBAC, data plane). Every grant is scoped to one resource.
//
//   function app identity -> Key Vault          Key Vault Secrets Officer
//                                                (set/get/list/update(disable)/delete secrets)
//   function app identity -> the KEK (key)      Key Vault Crypto Service Encryption User, when
//                                                grantKek (envelope key mode): read the key and
//                                                its versions, wrapKey, unwrapKey; no create,
//                                                no update, no delete (the app never makes the KEK)
//   function app identity -> the signing key    blobseal signer (custom role, defined here): read the key
//                                                (its public half) and sign with it; no wrap, decrypt, create,
//                                                update or delete. No built-in role is that narrow (Crypto User
//                                                also encrypts, decrypts, wraps, unwraps and backs keys up)
//   function app identity -> data storage       Storage Blob Data Owner, Storage Queue Data Contributor
//                                                (blob trigger connection: blobs + poison queue)
//   function app identity -> host storage       Storage Blob Data Owner, Storage Queue Data Contributor,
//                                                Storage Table Data Contributor (AzureWebJobsStorage,
//                                                deployment package, timer locks, diagnostics)
//   Event Grid system topic -> host storage     Storage Blob Data Contributor (dead-lettered events)
//   operators (optional)    -> data storage     Storage Blob Data Contributor (uploads with
//                                                --auth-mode login; the CLI reads/writes blobs)
//   operators (optional)    -> Key Vault        Key Vault Secrets Officer (the CLI: rotate, replay,
//                                                decrypt-file, reconcile create/read/disable keys)
//   operators (optional)    -> the signing key  Key Vault Crypto Officer: a new version (rotation), and
//                                                `blobseal attest-intermediates` (signs rows made before upgrading)
//   operators (optional)    -> the KEK (key)    Key Vault Crypto Officer, when grantKek: rotate-kek
//                                                (a new version, rewrap), migrate-keys, disabling
//                                                old versions; on this one key, not the vault
//   (the operators' PostgreSQL role is granted by infra/tools/db_roles.py, not by ARM)
//
// The KEK grants are scoped to the key resource (vaults/<vault>/keys/<kekName>), which Key Vault
// RBAC supports: neither principal gets a key role on the vault. Crypto Service Encryption User
// also carries Microsoft.EventGrid/eventSubscriptions read/write/delete (control plane, for
// services that subscribe to key events), here at the scope of this one key. Crypto Officer can
// also delete the key (soft delete and purge protection keep it recoverable); no narrower built-in
// role can create a version, which rotate-kek needs.

param functionPrincipalId string
param keyVaultName string

@description('Name of the KEK in the vault (KEY_VAULT_KEK_NAME).')
param kekName string = 'blobseal-kek'

@description('Name of the signing key in the vault (KEY_VAULT_SIGNING_KEY_NAME); always deployed.')
param signingKeyName string = 'blobseal-signing'

@description('Grant the KEK roles (the key exists: envelope key mode, or deployKek).')
param grantKek bool = false
param dataStorageAccountName string
param hostStorageAccountName string

@description('Principal id of the Event Grid system topic\'s identity ("" = skip).')
param systemTopicPrincipalId string = ''

@description('Object id of the operator group (or a user / service principal) that runs the CLI ("" = none).')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

// Built-in role definition ids (the same in every tenant). Key Vault's: learn.microsoft.com/azure/
// role-based-access-control/built-in-roles/security (Crypto Service Encryption User: keys/read,
// keys/wrap/action, keys/unwrap/action; Crypto Officer: keys/*, keyrotationpolicies/*).
var roles = {
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  keyVaultCryptoServiceEncryptionUser: 'e147488a-f6f5-4113-8e2d-b22465e65bf6'
  keyVaultCryptoOfficer: '14b46e9e-c2b7-41b4-b07b-48a6ebf60603'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// Only referenced when grantKek: keyvault.bicep deploys it then, before this module runs.
resource kek 'Microsoft.KeyVault/vaults/keys@2023-07-01' existing = {
  parent: vault
  name: kekName
}

resource signingKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' existing = {
  parent: vault
  name: signingKeyName
}

// Sign-only: the app may read the signing key (its public half, for verifying) and sign with it. The role
// is assignable in this resource group only.
var resourceGroupId = resourceGroup().id

resource signerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'blobseal-signer')
  properties: {
    roleName: 'blobseal signer (${resourceGroup().name})'
    description: 'Read a Key Vault key and sign digests with it; nothing else (blobseal: signed intermediate key rows, docs/THREATS.md).'
    type: 'CustomRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/keys/read'
          'Microsoft.KeyVault/vaults/keys/sign/action'
        ]
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroupId
    ]
  }
}

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataStorageAccountName
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource fnVaultSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, functionPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnKekEncryptionUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantKek) {
  name: guid(kek.id, functionPrincipalId, roles.keyVaultCryptoServiceEncryptionUser)
  scope: kek
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoServiceEncryptionUser)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnSigner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(signingKey.id, functionPrincipalId, signerRole.id)
  scope: signingKey
  properties: {
    roleDefinitionId: signerRole.id
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnDataBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionPrincipalId, roles.storageBlobDataOwner)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnDataQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionPrincipalId, roles.storageQueueDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnHostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionPrincipalId, roles.storageBlobDataOwner)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnHostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionPrincipalId, roles.storageQueueDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource fnHostTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionPrincipalId, roles.storageTableDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource topicDeadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(systemTopicPrincipalId)) {
  name: guid(hostStorage.id, systemTopicPrincipalId, roles.storageBlobDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: systemTopicPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource operatorDataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(dataStorage.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorVaultSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorSigningKeyCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(signingKey.id, operatorPrincipalId, roles.keyVaultCryptoOfficer)
  scope: signingKey
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorKekCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantKek && !empty(operatorPrincipalId)) {
  name: guid(kek.id, operatorPrincipalId, roles.keyVaultCryptoOfficer)
  scope: kek
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}
