// Azure Database for PostgreSQL Flexible Server with the application database, a firewall
// rule for Azure services, and the connection string stored as a Key Vault secret (never as a
// plain app setting, never as a deployment output).
//
// Production: replace public access + "allow Azure services" with private access (VNet
// integration of the function app + a delegated subnet or a private endpoint for the server).

@description('Server name: 3-63 lowercase letters, digits and hyphens, globally unique.')
@minLength(3)
@maxLength(63)
param serverName string

param location string
param tags object = {}

@allowed([
  '16'
])
param version string = '16'

param administratorLogin string

@secure()
@minLength(12)
@maxLength(128)
param administratorLoginPassword string

param skuName string = 'Standard_B1ms'

@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param skuTier string = 'Burstable'

@minValue(32)
param storageSizeGB int = 32

@minValue(7)
@maxValue(35)
param backupRetentionDays int = 7

param databaseName string = 'blobseal'

@description('Add the 0.0.0.0 rule ("allow public access from any Azure service within Azure to this server").')
param allowAzureServices bool = true

@description('Key Vault that receives the connection string.')
param keyVaultName string

@description('Name of the Key Vault secret holding the connection string.')
param databaseUrlSecretName string = 'database-url'

@description('sslmode in the connection string. asyncpg: "require" encrypts without checking the certificate; "verify-full" also needs a root CA file on the instance (sslrootcert or ~/.postgresql/root.crt).')
@allowed([
  'require'
  'verify-ca'
  'verify-full'
])
param sslMode string = 'require'

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: serverName
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: skuTier
  }
  properties: {
    version: version
    administratorLogin: administratorLogin
    administratorLoginPassword: administratorLoginPassword
    authConfig: {
      activeDirectoryAuth: 'Disabled'
      passwordAuth: 'Enabled'
    }
    storage: {
      storageSizeGB: storageSizeGB
    }
    backup: {
      backupRetentionDays: backupRetentionDays
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
    network: {
      publicNetworkAccess: 'Enabled'
    }
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

resource allowAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = if (allowAzureServices) {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// postgresql://<login>:<url-encoded password>@<fqdn>:5432/<db>?sslmode=<mode>
// Written through ARM (control plane): the deployer needs no data-plane role on the vault.
resource databaseUrl 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: databaseUrlSecretName
  properties: {
    contentType: 'text/plain'
    value: 'postgresql://${administratorLogin}:${uriComponent(administratorLoginPassword)}@${server.properties.fullyQualifiedDomainName}:5432/${database.name}?sslmode=${sslMode}'
  }
}

output serverName string = server.name
output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
@description('Versionless secret URI: Key Vault references follow the newest version.')
output databaseUrlSecretUri string = databaseUrl.properties.secretUri
