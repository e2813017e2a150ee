// One user-assigned identity for the app, whichever way it is hosted: it is
// what the storage, Key Vault, App Insights and ACS role assignments name, so
// moving between Flex Consumption and Container Apps changes no permissions.

@description('Name of the user-assigned managed identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
