// Azure Communication Services Email with an Azure-managed sender domain, and
// an Event Grid subscription that drops each EmailDeliveryReportReceived event
// on the delivery queue, where the app's queue event source turns it into the
// orchestration's delivery-receipt event.

param communicationName string
param emailServiceName string
param systemTopicName string
param tags object = {}

@description('Where ACS keeps its data at rest (ACS resources themselves are global).')
param dataLocation string

@description('Storage account holding the delivery queue (shared keys disabled).')
param storageAccountName string

@description('Queue the delivery reports land on (created by storage.bicep).')
param deliveryQueueName string

@description('Key Vault that receives the ACS connection string.')
param keyVaultName string

@description('Name of that secret in the vault.')
param connectionStringSecretName string

resource emailService 'Microsoft.Communication/emailServices@2023-04-01' = {
  name: emailServiceName
  location: 'global'
  tags: tags
  properties: { dataLocation: dataLocation }
}

// An Azure-managed domain (DoNotReply@<guid>.azurecomm.net) works without DNS
// changes; link a custom domain later for production mail.
resource domain 'Microsoft.Communication/emailServices/domains@2023-04-01' = {
  parent: emailService
  name: 'AzureManagedDomain'
  location: 'global'
  properties: {
    domainManagement: 'AzureManaged'
    userEngagementTracking: 'Disabled'
  }
}

resource communication 'Microsoft.Communication/communicationServices@2023-04-01' = {
  name: communicationName
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
    linkedDomains: [domain.id]
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// The pipeline's ACS provider authenticates with the resource's connection
// string; it goes straight from ACS into Key Vault and reaches the app only
// as a Key Vault reference, never as a deployment output.
resource connectionSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: connectionStringSecretName
  properties: {
    value: communication.listKeys().primaryConnectionString
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: 'global'
  tags: tags
  // The account has shared keys disabled, so Event Grid delivers to the queue
  // with its own identity (Queue Data Message Sender below).
  identity: { type: 'SystemAssigned' }
  properties: {
    source: communication.id
    topicType: 'Microsoft.Communication.CommunicationServices'
  }
}

var queueDataMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'

resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, topic.id, queueDataMessageSender)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', queueDataMessageSender)
    principalId: topic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource deliveryReports 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'email-delivery-reports'
  dependsOn: [topicSender]
  properties: {
    // Event Grid writes Base64 queue messages (per MicrosoftDocs/azure-docs
    // issue 102923), which host.json's messageEncoding: base64 expects.
    deliveryWithResourceIdentity: {
      identity: { type: 'SystemAssigned' }
      destination: {
        endpointType: 'StorageQueue'
        properties: {
          resourceId: storage.id
          queueName: deliveryQueueName
          // Reports are consumed within minutes; a week matches the queue's
          // own maximum visibility horizon.
          queueMessageTimeToLiveInSeconds: 604800
        }
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: ['Microsoft.Communication.EmailDeliveryReportReceived']
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

output senderAddress string = 'DoNotReply@${domain.properties.mailFromSenderDomain}'
