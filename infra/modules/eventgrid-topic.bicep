// Event Grid system topic for the data storage account. It must live in the storage account's
// region. Its system-assigned identity writes dead-lettered events (see rbac.bicep).

param name string
param location string
param tags object = {}
param storageAccountId string

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output id string = topic.id
output name string = topic.name
output principalId string = topic.identity.principalId
