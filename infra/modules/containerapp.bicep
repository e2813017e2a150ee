// Container mode: the same app run by `durable-fx serve` in Azure Container
// Apps. No Functions host here, so KEDA does the host's scaling job: one
// azure-queue rule per queue the app listens on (the durable control and
// work-item queues and the event-source queues) and an HTTP rule, with zero
// replicas when all are idle.

param environmentName string
param appName string
param registryName string
param location string
param tags object = {}

param identityId string
param identityClientId string

@description('Principal id of that identity (AcrPull below).')
param identityPrincipalId string

@description('Log Analytics workspace (name) for the environment\'s console logs.')
param logAnalyticsName string

@description('Image to run; azd replaces the placeholder with the image it builds from the Dockerfile.')
param image string

@description('Plain environment variables, name -> value (the same object the function app gets).')
param appSettings object

@description('Environment variables resolved from Key Vault: name -> secret name.')
param keyVaultSettings object

@description('The vault\'s URI (https://<name>.vault.azure.net/).')
param keyVaultUri string

param storageAccountName string

@description('Queues with a KEDA azure-queue scale rule.')
param scaleQueues array

@minValue(1)
param maxReplicas int

@description('Messages per replica before KEDA adds one.')
param queueLength int = 16

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: registryName
  location: location
  tags: tags
  sku: { name: 'Basic' }
  properties: {
    // Pulls use the app identity (AcrPull below); no admin password exists.
    adminUserEnabled: false
  }
}

var acrPull = '7f951dda-4ed6-4680-a2ca-9c322abefe7d'

resource pull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, identityId, acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPull)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
  }
}

// Container Apps secret names must be lowercase letters, digits and dashes.
var secretNames = toObject(items(keyVaultSettings), e => e.key, e => toLower(replace(e.key, '_', '-')))

// (Bicep allows for-expressions only as whole values, hence these variables.)
var plainEnv = [for entry in items(appSettings): { name: entry.key, value: entry.value }]
var secretEnv = [for entry in items(keyVaultSettings): { name: entry.key, secretRef: secretNames[entry.key] }]

var queueRules = [
  for queueName in scaleQueues: {
    name: 'queue-${queueName}'
    custom: {
      type: 'azure-queue'
      metadata: {
        accountName: storageAccountName
        queueName: queueName
        queueLength: string(queueLength)
        // Count only visible messages: a durable timer is a delayed
        // (invisible) wake-up, which must not keep a replica up for hours.
        // KEDA does so only below 32 visible messages; from 32 on it counts
        // every message of the queue, delayed ones included.
        queueLengthStrategy: 'visibleonly'
      }
      // KEDA reads the queue with the app identity (Queue Data Contributor),
      // like the app itself: no connection string.
      identity: identityId
    }
  }
]

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'worker' })
  dependsOn: [pull]
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8080 // the Dockerfile's --port
        transport: 'auto'
      }
      registries: [
        {
          server: registry.properties.loginServer
          identity: identityId
        }
      ]
      secrets: [
        for entry in items(keyVaultSettings): {
          name: secretNames[entry.key]
          keyVaultUrl: '${keyVaultUri}secrets/${entry.value}'
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'app'
          image: image
          resources: { cpu: json('0.5'), memory: '1Gi' }
          env: concat(plainEnv, secretEnv)
        }
      ]
      scale: {
        // Zero when idle: with no visible message every queue rule counts 0
        // (visibleonly), and a timer's wake-up becomes visible when it is due.
        minReplicas: 0
        maxReplicas: maxReplicas
        rules: concat(
          [
            {
              name: 'http'
              http: { metadata: { concurrentRequests: '50' } }
            }
          ],
          queueRules
        )
      }
    }
  }
}

output name string = app.name
output fqdn string = app.properties.configuration.ingress.fqdn
output registryLoginServer string = registry.properties.loginServer
output identityClientId string = identityClientId
