// Secrets the app reads (the webhook signing secret, and the function key the
// container host checks) live in Key Vault, never in app settings: Flex gets
// them as Key Vault references, Container Apps as Key Vault secret refs, both
// resolved with the app's user-assigned identity.

param name string
param location string
param tags object = {}

@description('Principal id that reads the secrets (Key Vault Secrets User).')
param principalId string

@description('Secrets to store, name -> value. An empty value is skipped, so a deployment without the value keeps the secret already in the vault (set it with az keyvault secret set).')
@secure()
param secrets object = {}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    // RBAC instead of access policies: one role assignment below, auditable
    // like the storage roles.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

resource stored 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [
  for secret in filter(items(secrets), s => !empty(s.value)): {
    parent: vault
    name: secret.key
    properties: { value: secret.value }
  }
]

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
