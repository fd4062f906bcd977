"""`xt create team NAME`: an ARM template for a team's XT services.

Storage (the XT container), Service Bus (jobs and events queues, dead-lettering on), Key Vault
(RBAC), Cosmos DB for MongoDB (its connection string goes straight into the vault), a Batch
account, a Linux Function App (Python 3.13, managed identity, the app settings of
local.settings.example.json) with Application Insights, and role assignments that give the app
only what it uses: read secrets, send and receive on its two queues, read and write its container.
No key or connection string appears in the template's outputs.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List

from xt_submit.domain.errors import OneLineError

TEAM_NAME = re.compile(r"^[a-z][a-z0-9]{2,11}$")
CONTAINER = "xtdata"
JOBS_QUEUE, EVENTS_QUEUE, TASKS_QUEUE = "xt-jobs", "xt-events", "xt-tasks"
MAX_DELIVERY_COUNT = 5
# Built-in role definitions (the same GUIDs in every tenant)
ROLES = {
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",  # scoped to the Batch account only (its pools)
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",  # scoped to the nodes' identity only
}
NODE_IDENTITY = "resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', variables('nodeIdentity'))"


class TeamError(OneLineError):
    pass


def _role(name: str, scope_id: str, scope: str, depends: List[str], for_nodes: bool = False) -> Dict[str, Any]:
    """A role for the Functions app's identity, or (for_nodes) for the Batch nodes' user-assigned identity."""
    if for_nodes:
        principal, who, holder = f"[reference({NODE_IDENTITY}, '2023-01-31').principalId]", "the Batch nodes'", f"[{NODE_IDENTITY}]"
    else:
        principal = "[reference(resourceId('Microsoft.Web/sites', variables('functionApp')), '2023-12-01', 'full').identity.principalId]"
        who, holder = "the Functions app's", "[resourceId('Microsoft.Web/sites', variables('functionApp'))]"
    return {
        "type": "Microsoft.Authorization/roleAssignments", "apiVersion": "2022-04-01",
        "scope": scope,
        "name": f"[guid({scope_id}, variables('{'nodeIdentity' if for_nodes else 'functionApp'}'), '{ROLES[name]}')]",
        "dependsOn": depends + [holder],
        "properties": {"roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{ROLES[name]}')]",
                       "principalId": principal, "principalType": "ServicePrincipal",
                       "description": f"xt: {who} {name}"},
    }


def build_template(team: str) -> Dict[str, Any]:
    if not TEAM_NAME.match(team):
        raise TeamError(f"team name: expected 3-12 lowercase letters and digits starting with a letter, got {team!r}")
    storage_id = "resourceId('Microsoft.Storage/storageAccounts', variables('storage'))"
    container_scope = f"Microsoft.Storage/storageAccounts/{{0}}/blobServices/default/containers/{CONTAINER}"
    queue_scope = "Microsoft.ServiceBus/namespaces/{0}/queues/{1}"
    app_settings = [
        ("FUNCTIONS_EXTENSION_VERSION", "~4"),
        ("FUNCTIONS_WORKER_RUNTIME", "python"),
        ("PYTHON_SCRIPT_FILE_NAME", "xt_functions.py"),
        ("AzureWebJobsStorage__accountName", "[variables('storage')]"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", "[reference(resourceId('Microsoft.Insights/components', variables('insights')), '2020-02-02').ConnectionString]"),
        ("XT_STORAGE__blobServiceUri", "[reference(resourceId('Microsoft.Storage/storageAccounts', variables('storage')), '2023-05-01').primaryEndpoints.blob]"),
        ("XT_STORAGE_CONTAINER", CONTAINER),
        ("XT_SERVICEBUS__fullyQualifiedNamespace", "[format('{0}.servicebus.windows.net', variables('serviceBus'))]"),
        ("XT_JOBS_QUEUE", JOBS_QUEUE),
        ("XT_EVENTS_QUEUE", EVENTS_QUEUE),
        ("XT_MONGO", "[format('@Microsoft.KeyVault(SecretUri={0}secrets/xt-mongo-connection/)', reference(resourceId('Microsoft.KeyVault/vaults', variables('vault')), '2023-07-01').vaultUri)]"),
        ("XT_MONGO_DATABASE", "xt"),
        ("XT_TASKS_QUEUE", TASKS_QUEUE),
        ("XT_HEARTBEAT_TIMEOUT", "300"),
        # batch targets (JSON, see function_app/settings.py) and the wheel their nodes install: set after deployment
        ("XT_BATCH_TARGETS", "{}"),
        ("XT_BATCH_NODE_PACKAGE", ""),
    ]
    resources: List[Dict[str, Any]] = [
        {"type": "Microsoft.OperationalInsights/workspaces", "apiVersion": "2023-09-01", "name": "[variables('logs')]",
         "location": "[parameters('location')]", "properties": {"sku": {"name": "PerGB2018"}, "retentionInDays": 30}},
        {"type": "Microsoft.Insights/components", "apiVersion": "2020-02-02", "name": "[variables('insights')]",
         "location": "[parameters('location')]", "kind": "web",
         "dependsOn": ["[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"],
         "properties": {"Application_Type": "web",
                        "WorkspaceResourceId": "[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"}},
        {"type": "Microsoft.Storage/storageAccounts", "apiVersion": "2023-05-01", "name": "[variables('storage')]",
         "location": "[parameters('location')]", "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
         "properties": {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2", "supportsHttpsTrafficOnly": True,
                        "allowSharedKeyAccess": False}},
        {"type": "Microsoft.Storage/storageAccounts/blobServices/containers", "apiVersion": "2023-05-01",
         "name": f"[format('{{0}}/default/{CONTAINER}', variables('storage'))]",
         "dependsOn": [f"[{storage_id}]"], "properties": {"publicAccess": "None"}},
        {"type": "Microsoft.ServiceBus/namespaces", "apiVersion": "2022-10-01-preview", "name": "[variables('serviceBus')]",
         "location": "[parameters('location')]", "sku": {"name": "Standard", "tier": "Standard"},
         "properties": {"disableLocalAuth": True, "minimumTlsVersion": "1.2"}},
        {"type": "Microsoft.KeyVault/vaults", "apiVersion": "2023-07-01", "name": "[variables('vault')]",
         "location": "[parameters('location')]",
         "properties": {"tenantId": "[subscription().tenantId]", "sku": {"family": "A", "name": "standard"},
                        "enableRbacAuthorization": True, "enableSoftDelete": True, "enablePurgeProtection": True}},
        {"type": "Microsoft.DocumentDB/databaseAccounts", "apiVersion": "2024-05-15", "name": "[variables('cosmos')]",
         "location": "[parameters('location')]", "kind": "MongoDB",
         "properties": {"databaseAccountOfferType": "Standard", "apiProperties": {"serverVersion": "7.0"},
                        "capabilities": [{"name": "EnableMongo"}, {"name": "EnableServerless"}],
                        "locations": [{"locationName": "[parameters('location')]", "failoverPriority": 0}],
                        "consistencyPolicy": {"defaultConsistencyLevel": "Session"}}},
        {"type": "Microsoft.DocumentDB/databaseAccounts/mongodbDatabases", "apiVersion": "2024-05-15",
         "name": "[format('{0}/xt', variables('cosmos'))]",
         "dependsOn": ["[resourceId('Microsoft.DocumentDB/databaseAccounts', variables('cosmos'))]"],
         "properties": {"resource": {"id": "xt"}}},
        {"type": "Microsoft.KeyVault/vaults/secrets", "apiVersion": "2023-07-01",
         "name": "[format('{0}/xt-mongo-connection', variables('vault'))]",
         "dependsOn": ["[resourceId('Microsoft.KeyVault/vaults', variables('vault'))]",
                       "[resourceId('Microsoft.DocumentDB/databaseAccounts', variables('cosmos'))]"],
         # computed at deployment, straight into the vault: never an output, never in a file
         "properties": {"value": "[listConnectionStrings(resourceId('Microsoft.DocumentDB/databaseAccounts', variables('cosmos')), '2024-05-15').connectionStrings[0].connectionString]"}},
        {"type": "Microsoft.Batch/batchAccounts", "apiVersion": "2024-02-01", "name": "[variables('batch')]",
         "location": "[parameters('location')]", "identity": {"type": "SystemAssigned"},
         "properties": {"poolAllocationMode": "BatchService", "publicNetworkAccess": "Enabled"}},
        # what a Batch pool's nodes run as: they write run records and send run events, nothing else
        {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31",
         "name": "[variables('nodeIdentity')]", "location": "[parameters('location')]"},
        {"type": "Microsoft.Web/serverfarms", "apiVersion": "2023-12-01", "name": "[variables('plan')]",
         "location": "[parameters('location')]", "kind": "functionapp", "sku": {"name": "Y1", "tier": "Dynamic"},
         "properties": {"reserved": True}},
        {"type": "Microsoft.Web/sites", "apiVersion": "2023-12-01", "name": "[variables('functionApp')]",
         "location": "[parameters('location')]", "kind": "functionapp,linux", "identity": {"type": "SystemAssigned"},
         "dependsOn": ["[resourceId('Microsoft.Web/serverfarms', variables('plan'))]", f"[{storage_id}]",
                       "[resourceId('Microsoft.Insights/components', variables('insights'))]",
                       "[resourceId('Microsoft.KeyVault/vaults', variables('vault'))]"],
         "properties": {"serverFarmId": "[resourceId('Microsoft.Web/serverfarms', variables('plan'))]", "httpsOnly": True,
                        "keyVaultReferenceIdentity": "SystemAssigned",
                        "siteConfig": {"linuxFxVersion": "Python|3.13", "ftpsState": "Disabled", "minTlsVersion": "1.2",
                                       "appSettings": [{"name": k, "value": v} for k, v in app_settings]}}},
    ]
    for queue in (JOBS_QUEUE, EVENTS_QUEUE, TASKS_QUEUE):
        resources.append({
            "type": "Microsoft.ServiceBus/namespaces/queues", "apiVersion": "2022-10-01-preview",
            "name": f"[format('{{0}}/{queue}', variables('serviceBus'))]",
            "dependsOn": ["[resourceId('Microsoft.ServiceBus/namespaces', variables('serviceBus'))]"],
            "properties": {"maxDeliveryCount": MAX_DELIVERY_COUNT, "deadLetteringOnMessageExpiration": True,
                           "lockDuration": "PT5M", "defaultMessageTimeToLive": "P14D"}})
    for queue in (JOBS_QUEUE, EVENTS_QUEUE):
        queue_id = f"resourceId('Microsoft.ServiceBus/namespaces/queues', variables('serviceBus'), '{queue}')"
        scope = f"[format('{queue_scope}', variables('serviceBus'), '{queue}')]"
        for role in ("Azure Service Bus Data Sender", "Azure Service Bus Data Receiver"):
            resources.append(_role(role, queue_id, scope, [f"[{queue_id}]"]))
    tasks_id = f"resourceId('Microsoft.ServiceBus/namespaces/queues', variables('serviceBus'), '{TASKS_QUEUE}')"
    resources.append(_role("Azure Service Bus Data Sender", tasks_id,  # the app hands tasks out; agents take them
                           f"[format('{queue_scope}', variables('serviceBus'), '{TASKS_QUEUE}')]", [f"[{tasks_id}]"]))
    container_id = f"resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', variables('storage'), 'default', '{CONTAINER}')"
    resources.append(_role("Storage Blob Data Contributor", container_id,
                           f"[format('{container_scope}', variables('storage'))]", [f"[{container_id}]"]))
    resources.append(_role("Storage Blob Data Contributor", container_id,
                           f"[format('{container_scope}', variables('storage'))]", [f"[{container_id}]"], for_nodes=True))
    events_id = f"resourceId('Microsoft.ServiceBus/namespaces/queues', variables('serviceBus'), '{EVENTS_QUEUE}')"
    resources.append(_role("Azure Service Bus Data Sender", events_id,
                           f"[format('{queue_scope}', variables('serviceBus'), '{EVENTS_QUEUE}')]", [f"[{events_id}]"],
                           for_nodes=True))
    # the app creates and scales the batch targets' pools (ARM) and gives them the nodes' identity
    batch_id = "resourceId('Microsoft.Batch/batchAccounts', variables('batch'))"
    resources.append(_role("Contributor", batch_id, "[format('Microsoft.Batch/batchAccounts/{0}', variables('batch'))]",
                           [f"[{batch_id}]"]))
    resources.append(_role("Managed Identity Operator", NODE_IDENTITY,
                           "[format('Microsoft.ManagedIdentity/userAssignedIdentities/{0}', variables('nodeIdentity'))]",
                           [f"[{NODE_IDENTITY}]"]))
    vault_id = "resourceId('Microsoft.KeyVault/vaults', variables('vault'))"
    resources.append(_role("Key Vault Secrets User", vault_id,
                           "[format('Microsoft.KeyVault/vaults/{0}', variables('vault'))]", [f"[{vault_id}]"]))
    # the Functions host's own bookkeeping (AzureWebJobsStorage, identity-based) on the account
    for role in ("Storage Blob Data Owner", "Storage Queue Data Contributor", "Storage Table Data Contributor"):
        resources.append(_role(role, storage_id, "[format('Microsoft.Storage/storageAccounts/{0}', variables('storage'))]",
                               [f"[{storage_id}]"]))
    suffix = "uniqueString(resourceGroup().id)"
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"description": f"XT services for team {team} (generated by `xt create team`)"},
        "parameters": {"location": {"type": "string", "defaultValue": "[resourceGroup().location]"}},
        "variables": {
            "storage": f"[take(concat('xt{team}', {suffix}), 24)]",
            "serviceBus": f"[concat('xt-{team}-', {suffix})]",
            "vault": f"[take(concat('xt-{team}-', {suffix}), 24)]",
            "cosmos": f"[concat('xt-{team}-', {suffix})]",
            "batch": f"[take(concat('xt{team}', {suffix}), 24)]",
            "nodeIdentity": f"xt-{team}-nodes",
            "plan": f"xt-{team}-plan", "functionApp": f"[concat('xt-{team}-', {suffix})]",
            "insights": f"xt-{team}-insights", "logs": f"xt-{team}-logs",
        },
        "resources": resources,
        "outputs": {
            "storageAccountUrl": {"type": "string", "value": f"[reference({storage_id}, '2023-05-01').primaryEndpoints.blob]"},
            "serviceBusNamespace": {"type": "string", "value": "[format('{0}.servicebus.windows.net', variables('serviceBus'))]"},
            "keyVaultUri": {"type": "string", "value": f"[reference({vault_id}, '2023-07-01').vaultUri]"},
            "cosmosAccount": {"type": "string", "value": "[variables('cosmos')]"},
            "batchAccount": {"type": "string", "value": "[variables('batch')]"},
            "batchAccountUrl": {"type": "string", "value": f"[format('https://{{0}}', reference({batch_id}, '2024-02-01').accountEndpoint)]"},
            "batchAccountId": {"type": "string", "value": f"[{batch_id}]"},
            "nodeIdentity": {"type": "string", "value": f"[{NODE_IDENTITY}]"},
            "nodeIdentityClientId": {"type": "string", "value": f"[reference({NODE_IDENTITY}, '2023-01-31').clientId]"},
            "functionApp": {"type": "string", "value": "[variables('functionApp')]"},
        },
    }


def next_steps(team: str, path: str) -> str:
    return f"""wrote {path}: the ARM template for team {team}'s XT services.
next steps:
  1. deploy it: Azure portal > "Deploy a custom template" > load {path}, or
     az group create -n xt-{team} -l <region> && az deployment group create -g xt-{team} --template-file {path}
  2. publish the Functions app from this repository (func azure functionapp publish <functionApp output>)
  3. give each team member the Storage Blob Data Contributor and Service Bus Data Sender roles
  4. paste the outputs into xt_config.yaml:
       external-services:
         team-store: {{type: blob, account-url: <storageAccountUrl>, container: {CONTAINER}}}
         team-bus: {{type: servicebus, namespace: <serviceBusNamespace>, jobs-queue: {JOBS_QUEUE}, events-queue: {EVENTS_QUEUE}, tasks-queue: {TASKS_QUEUE}}}
         team-stats: {{type: mongo, connection-string: <secret xt-mongo-connection in keyVaultUri>, database: xt}}
         team-batch: {{type: batch, account-url: <batchAccountUrl>, resource-id: <batchAccountId>,
                      node-identity: <nodeIdentity>, node-identity-client-id: <nodeIdentityClientId>}}
       xt-services: {{storage: team-store, queue: team-bus, stats: team-stats}}
  5. runs of local and pool targets go to the machine that runs `xt serve` with this config (the
     agent; give its sign-in Service Bus Data Receiver on {TASKS_QUEUE}); batch targets: xt admin batch-settings"""
