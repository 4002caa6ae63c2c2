// One private endpoint in the private-endpoints subnet and its DNS registration: the zone group
// writes the endpoint's A record into the private DNS zone (created and linked by network.bicep), so
// <account>.blob.core.windows.net, <vault>.vault.azure.net and <server>.postgres.database.azure.com
// resolve to private addresses inside the network.

param name string
param location string
param tags object = {}

@description('Subnet of the endpoint (network.bicep output privateEndpointsSubnetId).')
param subnetId string

@description('Resource the endpoint connects to.')
param targetResourceId string

@description('Sub-resource: blob, queue, table (storage), vault (Key Vault), postgresqlServer (PostgreSQL).')
@allowed([
  'blob'
  'queue'
  'table'
  'vault'
  'postgresqlServer'
])
param groupId string

@description('Private DNS zone of that sub-resource, in this resource group.')
param privateDnsZoneName string

resource zone 'Microsoft.Network/privateDnsZones@2024-06-01' existing = {
  name: privateDnsZoneName
}

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: name
        properties: {
          privateLinkServiceId: targetResourceId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource dnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: replace(privateDnsZoneName, '.', '-')
        properties: {
          privateDnsZoneId: zone.id
        }
      }
    ]
  }
}

output id string = endpoint.id
