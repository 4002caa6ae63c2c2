// Flex Consumption plan + Linux function app (Python 3.13) with a system-assigned managed
// identity. The deployment package lives in a blob container of the host storage account and
// is read with the app's identity.
//
// App settings are NOT set here: main.bicep writes them (modules/appsettings.bicep) after the
// role assignments exist, so the identity-based storage, Key Vault and database
// connections resolve on the first start.
//
// Flex Consumption takes the language from functionAppConfig.runtime; it rejects the
// FUNCTIONS_WORKER_RUNTIME app setting (and FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE,
// and site properties such as ftpsState or use32BitWorkerProcess).
//
// Private networking: virtualNetworkSubnetId puts the app's outbound traffic into the VNet
// (subnet delegated to Microsoft.App/environments), where the private endpoints of storage, Key Vault
// and PostgreSQL resolve. Inbound stays public on purpose: the HTTP API is the product's interface
// (Entra tokens checked by App Service Authentication, modules/easyauth.bicep), and Event Grid
// delivers BlobCreated to the blob extension's webhook over the public endpoint (Event Grid cannot
// deliver to a private endpoint). FTP and basic-auth (SCM) publishing credentials are disabled:
// deployments authenticate with Entra ID.

param planName string
param appName string
param location string
param tags object = {}

@description('Host storage account (AzureWebJobsStorage, deployment package).')
param hostStorageAccountName string

@description('Container in the host storage account that receives the deployment package.')
param deploymentContainerName string

// Python 3.13: a Flex Consumption (FC1) runtime (Microsoft Learn, Get-AzFunctionAppFlexConsumptionRuntime:
// "python 3.13 ... 10/30/2029 ... skuCode=FC1"); from 3.13 on the platform loads the app through the
// azure-functions-runtime package pinned in requirements.txt (Microsoft Learn, "Changes and guidance for
// Python 3.13+ in Azure Functions"). The local host and every end-to-end test run that same package.
@allowed([
  '3.13'
])
param pythonVersion string = '3.13'

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Subnet for VNet integration ("" = none, i.e. private networking off).')
param virtualNetworkSubnetId string = ''

@description('Zone-redundant plan (needs a region with availability zones and Flex Consumption zone support).')
param zoneRedundant bool = true

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
    zoneRedundant: zoneRedundant
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: inbound stays public by design: the HTTP API is the interface (Entra tokens, App Service Authentication in easyauth.bicep) and Event Grid delivers to the blob webhook only over the public endpoint
  // checkov:skip=CKV_AZURE_17: callers authenticate with Entra tokens (App Service Authentication, easyauth.bicep); Event Grid's webhook delivery cannot present a client certificate
  // checkov:skip=CKV_AZURE_78: Flex Consumption rejects siteConfig.ftpsState; FTP is off through basicPublishingCredentialsPolicies/ftp below
  // checkov:skip=CKV_AZURE_212: Flex Consumption has no fixed worker count (numberOfWorkers); it scales per function, and the plan is zone redundant
  // checkov:skip=CKV_AZURE_213: /api/health reports dependency health (503 while PostgreSQL is down), so platform health checks would recycle instances for outages they cannot fix; alerts and infra/smoke.sh watch it instead
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
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
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

// No FTP, no basic-auth publishing: `az functionapp deployment` and Core Tools use Entra ID tokens.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
@description('The real default host name (may be a "secure unique" <name>-<hash>.<region>-01.azurewebsites.net name).')
output defaultHostName string = site.properties.defaultHostName
output principalId string = site.identity.principalId
