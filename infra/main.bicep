// durable_fx email pipeline on Azure: Flex Consumption (default, what azd
// deploys) or Container Apps running `durable-fx serve` (hosting =
// 'containerapp'). Both share one storage account, identity, Key Vault and
// App Insights, and read the same settings, defined once below.

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(40)
@description('azd environment name; names and tags every resource.')
param environmentName string

@description('Region for everything except the global ACS and Event Grid resources.')
param location string = resourceGroup().location

@allowed(['functions', 'containerapp'])
@description('functions: Flex Consumption function app; containerapp: the Dockerfile image on Container Apps with KEDA queue scaling.')
param hosting string = 'functions'

@minLength(3)
@maxLength(40)
@description('durable_fx task hub (DURABLE_FX_HUB): 3-40 lowercase letters and digits, starting with a letter. Names the queues <hub>-control-NN, <hub>-control and <hub>-workitems, the table <hub>state and the container <hub>-payloads.')
param hubName string = 'durablefx'

@minValue(1)
@maxValue(16)
@description('Control queue partitions (DURABLE_FX_PARTITIONS): one queue <hub>-control-NN and one function dfx_control_NN each, scaled on their own. Fixed per hub: the store refuses another count for a hub that has one.')
param controlPartitions int = 4

@allowed([512, 2048, 4096])
@description('Flex Consumption instance memory (MB).')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Most instances (Flex) or replicas (Container Apps) the app scales out to.')
param maximumInstanceCount int = 100

@minValue(0)
@description('Flex always-ready instances for each control partition\'s function dfx_control_NN, so controlPartitions times this in all (0: scale to zero; 1 removes cold starts from orchestration wake-ups).')
param alwaysReadyInstances int = 0

@description('Python version of the Flex runtime (the Dockerfile pins its own).')
param pythonVersion string = '3.12'

@allowed(['acs', 'smtp'])
@description('EMAIL_PROVIDER: acs provisions Azure Communication Services Email and its delivery reports; smtp uses the SMTP_* parameters.')
param emailProvider string = 'acs'

@description('Where ACS stores data at rest.')
param emailDataLocation string = 'United States'

@description('Queue the app\'s queue event source reads ACS delivery reports from (email_pipeline: app.event_queue).')
param deliveryQueueName string = 'email-delivery-events'

@description('EMAIL_OPERATIONS_ADDRESS: who hears about escalations.')
param operationsAddress string = 'ops@example.com'

param smtpHost string = ''
param smtpPort string = '587'
@allowed(['none', 'starttls', 'ssl'])
param smtpSecurity string = 'starttls'
param smtpUsername string = ''

@secure()
@description('SMTP password (smtp only); stored in Key Vault.')
param smtpPassword string = ''

@secure()
@description('HMAC secret of the signed delivery webhook; stored in Key Vault. Empty keeps the one already there.')
param deliveryWebhookSecret string = ''

@secure()
@description('Function key `durable-fx serve` accepts (containerapp only; the Functions host manages its own keys). Pass one to keep it stable across deployments.')
param containerFunctionKey string = newGuid()

@description('Image for the container app; azd deploy replaces the placeholder with the one it builds.')
param containerImage string = 'mcr.microsoft.com/k8se/quickstart:latest'

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = { 'azd-env-name': environmentName }

// Queue names durable_fx derives from the hub (durable_fx.bindings._settings):
// one control queue per partition, the legacy single control queue (a
// function drains it for hubs made before partitions) and the work items.
var controlQueues = [for i in range(0, controlPartitions): '${hubName}-control-${padLeft(i, 2, '0')}']
var legacyControlQueue = '${hubName}-control'
var workQueue = '${hubName}-workitems'
var queueNames = concat(controlQueues, [legacyControlQueue, workQueue, deliveryQueueName])

// dfx_control_NN is the function DurableApp registers on partition NN's queue:
// keeping them warm makes orchestration wake-ups (timers, receipts) prompt.
var alwaysReadyFunctions = [
  for i in range(0, controlPartitions): {
    name: 'function:dfx_control_${padLeft(i, 2, '0')}'
    instanceCount: alwaysReadyInstances
  }
]

var deploymentContainerName = 'app-package-${token}'

// Key Vault secret names (setting -> secret below).
var secretNames = {
  webhook: 'delivery-webhook-secret'
  acs: 'acs-email-connection-string'
  smtp: 'smtp-password'
  functionKey: 'durable-fx-function-key'
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${token}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    name: 'st${token}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    queueNames: queueNames
    principalId: identity.outputs.principalId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: 'kv-${token}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    secrets: {
      '${secretNames.webhook}': deliveryWebhookSecret
      '${secretNames.smtp}': emailProvider == 'smtp' ? smtpPassword : ''
      '${secretNames.functionKey}': hosting == 'containerapp' ? containerFunctionKey : ''
    }
  }
}

module email 'modules/email.bicep' = if (emailProvider == 'acs') {
  name: 'email'
  params: {
    communicationName: 'acs-${token}'
    emailServiceName: 'acsemail-${token}'
    systemTopicName: 'evgt-acs-${token}'
    tags: tags
    dataLocation: emailDataLocation
    storageAccountName: storage.outputs.name
    deliveryQueueName: deliveryQueueName
    keyVaultName: vault.outputs.name
    connectionStringSecretName: secretNames.acs
  }
}

// ---- App settings: the one list both hosting modes get ----------------------

// Identity-based host storage (no AzureWebJobsStorage connection string): the
// Functions host, the durable queue triggers and the durable_fx Azure store all
// read these (durable_fx.storage.azure reads AzureWebJobsStorage__*).
var storageSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
}

// App Insights with Entra ID auth (the component has local auth disabled).
var monitoringSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
}

var durableSettings = {
  DURABLE_FX_HUB: hubName
  DURABLE_FX_PARTITIONS: string(controlPartitions)
}

var pipelineSettings = {
  EMAIL_PROVIDER: emailProvider
  EMAIL_OPERATIONS_ADDRESS: operationsAddress
}

var smtpSettings = emailProvider == 'smtp' ? {
  SMTP_HOST: smtpHost
  SMTP_PORT: smtpPort
  SMTP_SECURITY: smtpSecurity
  SMTP_USERNAME: smtpUsername
} : {}

var appSettings = union(storageSettings, monitoringSettings, durableSettings, pipelineSettings, smtpSettings)

// Secrets reach the app as Key Vault references: setting -> secret name.
var secretSettings = union(
  {
    DELIVERY_WEBHOOK_SECRET: secretNames.webhook
  },
  emailProvider == 'acs' ? { ACS_EMAIL_CONNECTION_STRING: secretNames.acs } : {},
  emailProvider == 'smtp' && !empty(smtpUsername) ? { SMTP_PASSWORD: secretNames.smtp } : {}
)

// Only the container host checks keys itself (durable-fx serve).
var containerSecretSettings = {
  DURABLE_FX_FUNCTION_KEYS: secretNames.functionKey
}


// ---- Hosting -------------------------------------------------------------------

module functionApp 'modules/functionapp.bicep' = if (hosting == 'functions') {
  name: 'functionapp'
  params: {
    planName: 'plan-${token}'
    appName: 'func-${token}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    appSettings: appSettings
    keyVaultSettings: secretSettings
    keyVaultUri: vault.outputs.uri
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReady: alwaysReadyInstances > 0 ? alwaysReadyFunctions : []
    pythonVersion: pythonVersion
  }
}

module containerApp 'modules/containerapp.bicep' = if (hosting == 'containerapp') {
  name: 'containerapp'
  params: {
    environmentName: 'cae-${token}'
    appName: 'ca-${token}'
    registryName: 'cr${token}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityPrincipalId: identity.outputs.principalId
    logAnalyticsName: 'log-${token}'
    image: containerImage
    appSettings: appSettings
    keyVaultSettings: union(secretSettings, containerSecretSettings)
    keyVaultUri: vault.outputs.uri
    storageAccountName: storage.outputs.name
    scaleQueues: queueNames
    maxReplicas: maximumInstanceCount
  }
}

output AZURE_LOCATION string = location
output AZURE_STORAGE_ACCOUNT string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = vault.outputs.name
output DURABLE_FX_HUB string = hubName
output SERVICE_API_NAME string = hosting == 'functions' ? functionApp.outputs.name : ''
output SERVICE_WORKER_NAME string = hosting == 'containerapp' ? containerApp.outputs.name : ''
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = hosting == 'containerapp' ? containerApp.outputs.registryLoginServer : ''
output ACS_SENDER_ADDRESS string = emailProvider == 'acs' ? email.outputs.senderAddress : ''
