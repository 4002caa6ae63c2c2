// A container-level time-based retention (WORM) policy on one existing blob container (storage.bicep
// uses it for the access log's digests). Blobs written there cannot be overwritten or deleted for
// immutabilityPeriodDays after they were written, by anyone; allowProtectedAppendWrites is false
// (each digest is a whole new blob, never appended to).
//
// ARM creates or updates the policy unlocked: whoever may manage the account could still delete it.
// Locking is a separate action with the policy's ETag that Bicep cannot express (deploy.sh
// --lock-audit-digests runs `az storage container immutability-policy lock`). A locked policy can be
// lengthened (`... immutability-policy extend`), never shortened or deleted, and a deployment cannot
// rewrite it: storage.bicep skips this module once the policy is locked.

@description('Storage account holding the container.')
param accountName string

@description('The container to protect (it must exist).')
@minLength(3)
@maxLength(63)
param containerName string

@description('Days each blob stays immutable after it is written.')
@minValue(1)
@maxValue(146000)
param immutabilityPeriodDays int

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource policy 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = {
  parent: container
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: immutabilityPeriodDays
    allowProtectedAppendWrites: false
  }
}

output days int = policy.properties.immutabilityPeriodSinceCreationInDays
