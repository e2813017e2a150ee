// Flex Consumption (FC1) Linux Python function app. Settings come in as one
// object from main.bicep (shared with the container app) so both hosting
// modes read the same names.

param planName string
param appName string
param location string
param tags object = {}

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Client id of that identity (deployment storage and Key Vault references use it).')
param identityClientId string

@description('Blob endpoint of the storage account holding the deployment container.')
param blobEndpoint string

param deploymentContainerName string

@description('Plain app settings, name -> value.')
param appSettings object

@description('Settings resolved from Key Vault: setting name -> secret name.')
param keyVaultSettings object

@description('The vault\'s URI (https://<name>.vault.azure.net/).')
param keyVaultUri string

@allowed([512, 2048, 4096])
param instanceMemoryMB int

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Always-ready instances: [{name, instanceCount}] (name "function:<fn>", "http", "blob" or "durable").')
param alwaysReady array

param pythonVersion string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  // azd finds the app to deploy to by this tag (service "api" in azure.yaml).
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references resolve with the user-assigned identity, not a
    // system-assigned one (there is none).
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: alwaysReady
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// On Flex FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and
// WEBSITE_RUN_FROM_PACKAGE must not be set: functionAppConfig replaces them.
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(appSettings, toObject(
    items(keyVaultSettings),
    entry => entry.key,
    entry => '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${entry.value})'
  ))
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output identityClientId string = identityClientId
