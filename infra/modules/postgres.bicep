// Azure Database for PostgreSQL Flexible Server with the application database, passwordless:
// Microsoft Entra authentication only (password authentication off, no administrator login or
// password at all). The Entra administrator (a group, preferably) runs the migrations and creates the
// app's least-privileged role (infra/tools/db_roles.py, run by deploy.sh); the function app's managed
// identity connects with an access token as its password.
//
// Network: the server is created in public-access mode (no delegated subnet) so that it can take a
// private endpoint (private-endpoint.bicep, group postgresqlServer); public network access is then
// disabled and no firewall rule exists. The "allow Azure services" rule is only possible with
// private networking off (postgresAllowAzureServices), and then only tokens get in.
//
// Connection pooling: the built-in PgBouncer (General Purpose and Memory Optimized tiers only; port
// 6432 on the same host name, Entra tokens accepted) in transaction pooling, enabled when
// pgBouncerEnabled. The app connects through it (DATABASE_PGBOUNCER=true: no prepared statements kept
// across transactions); migrations and roles go to 5432 directly. Budget and sources: docs/DATABASE.md.
//
// Logs (logAnalyticsWorkspaceId): the server log (PostgreSQLLogs: errors, warnings, connection and
// authentication messages as the log_* server parameters decide) and the sessions data
// (PostgreSQLFlexSessions: sampled pg_stat_activity, which needs metrics.collector_database_activity,
// set on below) go to Log Analytics, with the metrics. pgaudit is not enabled: see infra/README.md.

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

@description('Geo-redundant backups (not available in every region; cannot be changed after creation).')
@allowed([
  'Disabled'
  'Enabled'
])
param geoRedundantBackup string = 'Disabled'

@description('High availability: ZoneRedundant/SameZone need GeneralPurpose or MemoryOptimized.')
@allowed([
  'Disabled'
  'SameZone'
  'ZoneRedundant'
])
param highAvailabilityMode string = 'Disabled'

param databaseName string = 'blobseal'

@description('Object id of the Microsoft Entra administrator (a group of DB admins, a user, or the deploying service principal).')
param adminPrincipalId string

@description('Name of that principal as PostgreSQL sees it: the group\'s display name, the user\'s UPN, or the service principal\'s display name. It is also the user name the admin connects with.')
param adminPrincipalName string

@allowed([
  'Group'
  'User'
  'ServicePrincipal'
])
param adminPrincipalType string = 'Group'

@description('Public network access: Disabled = private endpoint only.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('Only without private networking: the 0.0.0.0 rule ("allow Azure services"), without which a Flex Consumption app outside a VNet cannot connect. Entra tokens remain the only way in.')
param allowAzureServices bool = false

@description('The built-in PgBouncer on port 6432, in transaction pooling (not available on the Burstable tier).')
param pgBouncerEnabled bool = false

@description('PgBouncer server connections per user/database pair (pgbouncer.default_pool_size, 1-4950).')
@minValue(1)
@maxValue(4950)
param pgBouncerDefaultPoolSize int = 10

@description('PgBouncer client connections in all (pgbouncer.max_client_conn, 1-50000).')
@minValue(1)
@maxValue(50000)
param pgBouncerMaxClientConn int = 5000

@description('Log Analytics workspace receiving the server log and sessions data ("" = none).')
param logAnalyticsWorkspaceId string = ''

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
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: tenant().tenantId
    }
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: backupRetentionDays
      geoRedundantBackup: geoRedundantBackup
    }
    highAvailability: {
      mode: highAvailabilityMode
    }
    network: {
      publicNetworkAccess: publicNetworkAccess
    }
  }
}

// The Entra administrator: a member of azure_pg_admin, able to create Entra roles
// (pgaadauth_create_principal_with_oid). Name = the principal's object id.
resource administrator 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: adminPrincipalId
  properties: {
    principalName: adminPrincipalName
    principalType: adminPrincipalType
    tenantId: tenant().tenantId
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  // One server operation at a time: the administrator first.
  dependsOn: [
    administrator
  ]
}

resource allowAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = if (allowAzureServices && publicNetworkAccess == 'Enabled') {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
  dependsOn: [
    database
  ]
}

// PgBouncer's server parameters, one at a time (the server applies one configuration change at a
// time), after the database and the firewall rule. All are dynamic: no restart.
resource pgBouncer 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (pgBouncerEnabled) {
  parent: server
  name: 'pgbouncer.enabled'
  properties: {
    value: 'true'
    source: 'user-override'
  }
  dependsOn: [
    database
    allowAzure
  ]
}

// Transaction pooling (Azure's default, set explicitly): a server connection serves one transaction.
resource pgBouncerPoolMode 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (pgBouncerEnabled) {
  parent: server
  name: 'pgbouncer.pool_mode'
  properties: {
    value: 'transaction'
    source: 'user-override'
  }
  dependsOn: [
    pgBouncer
  ]
}

resource pgBouncerPoolSize 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (pgBouncerEnabled) {
  parent: server
  name: 'pgbouncer.default_pool_size'
  properties: {
    value: string(pgBouncerDefaultPoolSize)
    source: 'user-override'
  }
  dependsOn: [
    pgBouncerPoolMode
  ]
}

resource pgBouncerMaxClients 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (pgBouncerEnabled) {
  parent: server
  name: 'pgbouncer.max_client_conn'
  properties: {
    value: string(pgBouncerMaxClientConn)
    source: 'user-override'
  }
  dependsOn: [
    pgBouncerPoolSize
  ]
}

// Sessions data for the PostgreSQLFlexSessions category (dynamic: no restart), after the other
// parameters (one configuration change at a time).
resource sessionsData 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = if (!empty(logAnalyticsWorkspaceId)) {
  parent: server
  name: 'metrics.collector_database_activity'
  properties: {
    value: 'on'
    source: 'user-override'
  }
  dependsOn: [
    database
    allowAzure
    pgBouncerMaxClients
  ]
}

resource serverLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  name: 'logs-to-log-analytics'
  scope: server
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'PostgreSQLLogs'
        enabled: true
      }
      {
        category: 'PostgreSQLFlexSessions'
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

output id string = server.id
output serverName string = server.name
output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
