// Flex Consumption plan + Linux function app (Python 3.11) with a system-assigned managed
// identity. The deployment package lives in a blob container of the host storage account and
// is read with the app's identity.
//
// App settings are NOT set here: main.bicep writes them (modules/appsettings.bicep) after the
// role assignments exist, so the Key Vault reference and the identity-based storage
// connections resolve on the first start.
//
// Flex Consumption takes the language from functionAppConfig.runtime; it rejects the
// FUNCTIONS_WORKER_RUNTIME app setting (and FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE,
// and site properties such as ftpsState or use32BitWorkerProcess).

param planName string
param appName string
param location string
param tags object = {}

@description('Host storage account (AzureWebJobsStorage, deployment package).')
param hostStorageAccountName string

@description('Container in the host storage account that receives the deployment package.')
param deploymentContainerName string

@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

output id string = site.id
output name string = site.name
@description('The real default host name (may be a "secure unique" <name>-<hash>.<region>-01.azurewebsites.net name).')
output defaultHostName string = site.properties.defaultHostName
output principalId string = site.identity.principalId
