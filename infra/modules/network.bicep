// Private networking: one virtual network with two subnets, their network security groups, and the
// private DNS zones the private endpoints register in (each linked to the network).
//
//   functions           delegated to Microsoft.App/environments (Flex Consumption VNet integration);
//                       the function app's outbound traffic enters the network here
//   private-endpoints   the private endpoints of the storage accounts, the Key Vault and PostgreSQL;
//                       its NSG admits only the network itself (peered networks and VPN included,
//                       which is the operator path) on 443, 5432 and 6432 (PostgreSQL's built-in PgBouncer)
//
// Deployed only when main.bicep's privateNetworking is true (the default).

@description('Virtual network name.')
param vnetName string

param location string
param tags object = {}

param addressPrefix string = '10.20.0.0/16'

@description('Flex Consumption integration subnet (delegated to Microsoft.App/environments; /27 or larger).')
param functionsSubnetPrefix string = '10.20.0.0/24'

param privateEndpointsSubnetPrefix string = '10.20.1.0/24'

@description('Private DNS zones to create and link to the network (privatelink.blob..., privatelink.vaultcore..., ...).')
param privateDnsZoneNames array

var functionsSubnetName = 'functions'
var privateEndpointsSubnetName = 'private-endpoints'

// Outbound from the function app: the default rules (VNet and Internet outbound allowed, inbound
// from the Internet denied) are what it needs; no inbound rule is added.
resource functionsNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${vnetName}-functions-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource privateEndpointsNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${vnetName}-pe-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-vnet-to-private-endpoints'
        properties: {
          description: 'HTTPS (blob, queue, table, Key Vault), PostgreSQL and its PgBouncer from inside the network (incl. peerings and VPN)'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'VirtualNetwork'
          sourcePortRange: '*'
          destinationAddressPrefix: privateEndpointsSubnetPrefix
          destinationPortRanges: [
            '443'
            '5432'
            '6432'
          ]
        }
      }
      {
        name: 'deny-all-other-inbound'
        properties: {
          description: 'Nothing else reaches the private endpoints'
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: functionsSubnetName
        properties: {
          addressPrefix: functionsSubnetPrefix
          networkSecurityGroup: {
            id: functionsNsg.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointsSubnetName
        properties: {
          addressPrefix: privateEndpointsSubnetPrefix
          networkSecurityGroup: {
            id: privateEndpointsNsg.id
          }
          // NSG rules apply to the private endpoints too.
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for zoneName in privateDnsZoneNames: {
    name: zoneName
    location: 'global'
    tags: tags
  }
]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (zoneName, i) in privateDnsZoneNames: {
    parent: zones[i]
    name: '${vnetName}-link'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnet.id
      }
    }
  }
]

output vnetId string = vnet.id
output vnetName string = vnet.name
output functionsSubnetId string = '${vnet.id}/subnets/${functionsSubnetName}'
output privateEndpointsSubnetId string = '${vnet.id}/subnets/${privateEndpointsSubnetName}'
