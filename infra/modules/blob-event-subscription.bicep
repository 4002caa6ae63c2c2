// Phase 3 of the deployment: the Event Grid subscription that feeds the blob trigger
// (source = EventGrid, the only blob-trigger source on Flex Consumption).
//
// Deploy it only after the code is published and the host has started once: the webhook is
// the blobs extension endpoint
//   https://<default host name>/runtime/webhooks/blobs?functionName=Host.Functions.<function>&code=<blobs_extension key>
// and the blobs_extension system key exists only once the host has loaded a blob trigger with
// source EventGrid. Event Grid also validates the endpoint when the subscription is created,
// which only the running blob extension answers.
//
// The key is read with listKeys() inside this deployment, so it never passes through a shell,
// a parameter or an output. Event Grid keeps the full URL write-only (reads return only
// endpointBaseUrl).
//
// Standalone: az deployment group create -g <rg> -f infra/modules/blob-event-subscription.bicep \
//               -p functionAppName=<app> systemTopicName=<topic> deadLetterStorageAccountName=<host storage>
// or from main.bicep with enableBlobEventSubscription=true.

param functionAppName string
param systemTopicName string

@description('Python function name of the blob trigger (the name the v2 model registers).')
param functionName string = 'encrypt_ingest_blob'

param ingestContainerName string = 'ingest'
param subscriptionName string = 'encrypt-ingest-blob'

@description('Storage account (the host account) receiving dead-lettered events.')
param deadLetterStorageAccountName string
param deadLetterContainerName string = 'eventgrid-deadletter'

@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource deadLetterStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: deadLetterStorageAccountName
}

var blobsExtensionKey = listKeys('${site.id}/host/default', '2024-04-01').systemKeys.blobs_extension
var webhookUrl = 'https://${site.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'

resource eventSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: topic
  name: subscriptionName
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // Only blobs of the ingest container; the protected container is in the same account.
      subjectBeginsWith: '/blobServices/default/containers/${ingestContainerName}/blobs/'
      isSubjectCaseSensitive: false
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    // Events that exhaust their retries land here (the topic's identity writes them), so a
    // blob whose event was lost can be found and re-driven instead of silently staying in ingest.
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorage.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output name string = eventSubscription.name
