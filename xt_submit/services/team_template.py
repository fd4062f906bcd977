"""`xt create team NAME`: an ARM template for a team's XT services, deployable as generated.

It creates:
- Storage: the XT container, and `app-package`, the container the Functions app is deployed from;
  shared keys off, so everything reaches it with an identity.
- Service Bus: the jobs, events, tasks and uploads queues, each with dead-lettering on.
- Key Vault (RBAC) and Cosmos DB for MongoDB (serverless). Cosmos's connection string goes
  straight into the vault under the name that `$vault` reads for `team-stats: {connection-string:
  $vault}`.
- A Batch account, and the user-assigned identity its pools' nodes run as.
- An Event Grid system topic on the storage account. Its subscription puts the BlobCreated events
  of uploads/*.zip on the uploads queue and is delivered with the topic's own identity: nothing in
  it needs the app to have started, unlike the blob extension's webhook.
- The Functions app on a Flex Consumption plan (FC1; Python 3.13 in `functionAppConfig`, not in the
  app settings that plan rejects), with a managed identity, the app settings of
  local.settings.example.json, and Application Insights.

Role assignments give each identity only what it uses:
- the app reads secrets; it sends and receives on its trigger queues (it re-sends a failed message
  to its own queue for backoff) and sends on the tasks queue; it reads and writes its container;
  it creates pools (Contributor on the Batch account) and submits jobs and tasks (Azure Batch Job
  Submitter);
- the nodes write run records and send run events;
- the topic sends to the uploads queue.

No key or connection string appears in the template's outputs. Every apiVersion is GA, and every
resource validates against Microsoft's published schema for its type and apiVersion
(tests/unit/test_team_template.py, on the copies in tests/peers/arm-schemas).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List

from xt_submit.domain.secrets import secret_name
from xt_submit.domain.errors import OneLineError
from xt_submit.domain.layout import UPLOADS_PREFIX

TEAM_NAME = re.compile(r"^[a-z][a-z0-9]{2,11}$")
CONTAINER = "xtdata"
DEPLOYMENT_CONTAINER = "app-package"  # Flex Consumption runs the package published here
JOBS_QUEUE, EVENTS_QUEUE, TASKS_QUEUE = "xt-jobs", "xt-events", "xt-tasks"
UPLOADS_QUEUE = "xt-uploads"  # Event Grid's BlobCreated events for uploads/*.zip, the upload trigger's queue
UPLOADS_SUBJECT_BEGINS = f"/blobServices/default/containers/{CONTAINER}/blobs/{UPLOADS_PREFIX}"
UPLOADS_SUBJECT_ENDS = ".zip"
MAX_DELIVERY_COUNT = 5
MONGO_SECRET = secret_name("team-stats", "connection-string")  # what `$vault` reads for the config's team-stats
# GA apiVersions, each with a published schema (tests/peers/arm-schemas)
WEB_API, STORAGE_API, SERVICEBUS_API, KEYVAULT_API = "2024-04-01", "2023-05-01", "2024-01-01", "2023-07-01"
COSMOS_API = "2024-11-15"  # the first GA version whose schema allows serverVersion 7.0
BATCH_API, IDENTITY_API, EVENTGRID_API, INSIGHTS_API = "2024-02-01", "2023-01-31", "2025-02-15", "2020-02-02"
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
    # the Batch data plane: jobs and tasks (learn.microsoft.com/azure/batch/batch-role-based-access-control)
    "Azure Batch Job Submitter": "48e5e92e-a480-4e71-aa9c-2778f4c13781",
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",  # scoped to the nodes' identity only
}
NODE_IDENTITY = "resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', variables('nodeIdentity'))"
APP_ID = "resourceId('Microsoft.Web/sites', variables('functionApp'))"
UPLOADS_TOPIC_ID = "resourceId('Microsoft.EventGrid/systemTopics', variables('uploadsTopic'))"
# who a role is for: (the variable naming it, its resource id, its principal id, how the description says it)
HOLDERS = {
    "app": ("functionApp", APP_ID, f"reference({APP_ID}, '{WEB_API}', 'full').identity.principalId",
            "the Functions app's"),
    "nodes": ("nodeIdentity", NODE_IDENTITY, f"reference({NODE_IDENTITY}, '{IDENTITY_API}').principalId",
              "the Batch nodes'"),
    "uploads topic": ("uploadsTopic", UPLOADS_TOPIC_ID,
                      f"reference({UPLOADS_TOPIC_ID}, '{EVENTGRID_API}', 'full').identity.principalId",
                      "the uploads Event Grid topic's"),
}


class TeamError(OneLineError):
    pass


def _role(name: str, scope_id: str, scope: str, depends: List[str], holder: str = "app") -> Dict[str, Any]:
    """Role `name` on `scope` for the Functions app's identity, the Batch nodes' or the uploads topic's."""
    variable, holder_id, principal, who = HOLDERS[holder]
    return {
        "type": "Microsoft.Authorization/roleAssignments", "apiVersion": "2022-04-01",
        "scope": scope,
        "name": f"[guid({scope_id}, variables('{variable}'), '{ROLES[name]}')]",
        "dependsOn": depends + [f"[{holder_id}]"],
        "properties": {"roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{ROLES[name]}')]",
                       "principalId": f"[{principal}]", "principalType": "ServicePrincipal",
                       "description": f"xt: {who} {name}"},
    }


def _queue_id(queue: str) -> str:
    return f"resourceId('Microsoft.ServiceBus/namespaces/queues', variables('serviceBus'), '{queue}')"


def _queue_role(name: str, queue: str, holder: str = "app") -> Dict[str, Any]:
    scope = f"[format('Microsoft.ServiceBus/namespaces/{{0}}/queues/{{1}}', variables('serviceBus'), '{queue}')]"
    return _role(name, _queue_id(queue), scope, [f"[{_queue_id(queue)}]"], holder)


def _container(name: str, storage_id: str) -> Dict[str, Any]:
    return {"type": "Microsoft.Storage/storageAccounts/blobServices/containers", "apiVersion": STORAGE_API,
            "name": f"[format('{{0}}/default/{name}', variables('storage'))]",
            "dependsOn": [f"[{storage_id}]"], "properties": {"publicAccess": "None"}}


def _uploads_trigger(storage_id: str) -> List[Dict[str, Any]]:
    """The storage account's system topic, its sender role on the uploads queue, and the subscription
    that puts uploads/*.zip's BlobCreated events there (delivered with the topic's identity, so the
    subscription waits for the role)."""
    sender = _queue_role("Azure Service Bus Data Sender", UPLOADS_QUEUE, holder="uploads topic")
    sender_id = f"extensionResourceId({_queue_id(UPLOADS_QUEUE)}, 'Microsoft.Authorization/roleAssignments', {sender['name'][1:-1]})"
    topic = {"type": "Microsoft.EventGrid/systemTopics", "apiVersion": EVENTGRID_API, "name": "[variables('uploadsTopic')]",
             "location": "[parameters('location')]", "identity": {"type": "SystemAssigned"},
             "dependsOn": [f"[{storage_id}]"],
             "properties": {"source": f"[{storage_id}]", "topicType": "Microsoft.Storage.StorageAccounts"}}
    subscription = {
        "type": "Microsoft.EventGrid/systemTopics/eventSubscriptions", "apiVersion": EVENTGRID_API,
        "name": "[format('{0}/xtuploads', variables('uploadsTopic'))]",
        "dependsOn": [f"[{UPLOADS_TOPIC_ID}]", f"[{_queue_id(UPLOADS_QUEUE)}]", f"[{sender_id}]"],
        "properties": {
            "eventDeliverySchema": "EventGridSchema",
            "filter": {"includedEventTypes": ["Microsoft.Storage.BlobCreated"],
                       "subjectBeginsWith": UPLOADS_SUBJECT_BEGINS, "subjectEndsWith": UPLOADS_SUBJECT_ENDS},
            "deliveryWithResourceIdentity": {
                "identity": {"type": "SystemAssigned"},
                "destination": {"endpointType": "ServiceBusQueue",
                                "properties": {"resourceId": f"[{_queue_id(UPLOADS_QUEUE)}]"}}}}}
    return [topic, sender, subscription]


def build_template(team: str) -> Dict[str, Any]:
    if not TEAM_NAME.match(team):
        raise TeamError(f"team name: expected 3-12 lowercase letters and digits starting with a letter, got {team!r}")
    storage_id = "resourceId('Microsoft.Storage/storageAccounts', variables('storage'))"
    container_scope = f"Microsoft.Storage/storageAccounts/{{0}}/blobServices/default/containers/{CONTAINER}"
    blob_endpoint = f"reference({storage_id}, '{STORAGE_API}').primaryEndpoints.blob"
    vault_id = "resourceId('Microsoft.KeyVault/vaults', variables('vault'))"
    cosmos_id = "resourceId('Microsoft.DocumentDB/databaseAccounts', variables('cosmos'))"
    # no FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION: Flex Consumption rejects them (functionAppConfig.runtime)
    app_settings = [
        ("PYTHON_SCRIPT_FILE_NAME", "xt_functions.py"),
        ("AzureWebJobsStorage__accountName", "[variables('storage')]"),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", f"[reference(resourceId('Microsoft.Insights/components', variables('insights')), '{INSIGHTS_API}').ConnectionString]"),
        ("XT_STORAGE__blobServiceUri", f"[{blob_endpoint}]"),
        ("XT_STORAGE_CONTAINER", CONTAINER),
        ("XT_SERVICEBUS__fullyQualifiedNamespace", "[format('{0}.servicebus.windows.net', variables('serviceBus'))]"),
        ("XT_JOBS_QUEUE", JOBS_QUEUE),
        ("XT_EVENTS_QUEUE", EVENTS_QUEUE),
        ("XT_UPLOADS_QUEUE", UPLOADS_QUEUE),
        ("XT_MONGO", f"[format('@Microsoft.KeyVault(SecretUri={{0}}secrets/{MONGO_SECRET}/)', reference({vault_id}, '{KEYVAULT_API}').vaultUri)]"),
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
        {"type": "Microsoft.Insights/components", "apiVersion": INSIGHTS_API, "name": "[variables('insights')]",
         "location": "[parameters('location')]", "kind": "web",
         "dependsOn": ["[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"],
         "properties": {"Application_Type": "web",
                        "WorkspaceResourceId": "[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"}},
        {"type": "Microsoft.Storage/storageAccounts", "apiVersion": STORAGE_API, "name": "[variables('storage')]",
         "location": "[parameters('location')]", "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
         "properties": {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2", "supportsHttpsTrafficOnly": True,
                        "allowSharedKeyAccess": False}},
        _container(CONTAINER, storage_id),
        _container(DEPLOYMENT_CONTAINER, storage_id),
        {"type": "Microsoft.ServiceBus/namespaces", "apiVersion": SERVICEBUS_API, "name": "[variables('serviceBus')]",
         "location": "[parameters('location')]", "sku": {"name": "Standard", "tier": "Standard"},
         "properties": {"disableLocalAuth": True, "minimumTlsVersion": "1.2"}},
        {"type": "Microsoft.KeyVault/vaults", "apiVersion": KEYVAULT_API, "name": "[variables('vault')]",
         "location": "[parameters('location')]",
         "properties": {"tenantId": "[subscription().tenantId]", "sku": {"family": "A", "name": "standard"},
                        "enableRbacAuthorization": True, "enableSoftDelete": True, "enablePurgeProtection": True}},
        {"type": "Microsoft.DocumentDB/databaseAccounts", "apiVersion": COSMOS_API, "name": "[variables('cosmos')]",
         "location": "[parameters('location')]", "kind": "MongoDB",
         # no EnableMongoRetryableWrites: the client honours the connection string's retrywrites=false
         "properties": {"databaseAccountOfferType": "Standard", "apiProperties": {"serverVersion": "7.0"},
                        # compound indexes on nested fields (the stats store's sorts on metrics and
                        # hparams need them; Cosmos refuses those sorts otherwise)
                        "capabilities": [{"name": "EnableMongo"}, {"name": "EnableServerless"},
                                         {"name": "EnableUniqueCompoundNestedDocs"}],
                        "locations": [{"locationName": "[parameters('location')]", "failoverPriority": 0}],
                        "consistencyPolicy": {"defaultConsistencyLevel": "Session"}}},
        {"type": "Microsoft.DocumentDB/databaseAccounts/mongodbDatabases", "apiVersion": COSMOS_API,
         "name": "[format('{0}/xt', variables('cosmos'))]",
         "dependsOn": [f"[{cosmos_id}]"],
         "properties": {"resource": {"id": "xt"}}},
        {"type": "Microsoft.KeyVault/vaults/secrets", "apiVersion": KEYVAULT_API,
         "name": f"[format('{{0}}/{MONGO_SECRET}', variables('vault'))]",
         "dependsOn": [f"[{vault_id}]", f"[{cosmos_id}]"],
         # computed at deployment, straight into the vault: never an output, never in a file
         "properties": {"value": f"[listConnectionStrings({cosmos_id}, '{COSMOS_API}').connectionStrings[0].connectionString]"}},
        {"type": "Microsoft.Batch/batchAccounts", "apiVersion": BATCH_API, "name": "[variables('batch')]",
         "location": "[parameters('location')]", "identity": {"type": "SystemAssigned"},
         "properties": {"poolAllocationMode": "BatchService", "publicNetworkAccess": "Enabled"}},
        # what a Batch pool's nodes run as: they write run records and send run events, nothing else
        {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": IDENTITY_API,
         "name": "[variables('nodeIdentity')]", "location": "[parameters('location')]"},
        {"type": "Microsoft.Web/serverfarms", "apiVersion": WEB_API, "name": "[variables('plan')]",
         "location": "[parameters('location')]", "kind": "functionapp", "sku": {"name": "FC1", "tier": "FlexConsumption"},
         "properties": {"reserved": True}},  # reserved: Linux, the only OS Flex Consumption runs
        {"type": "Microsoft.Web/sites", "apiVersion": WEB_API, "name": "[variables('functionApp')]",
         "location": "[parameters('location')]", "kind": "functionapp,linux", "identity": {"type": "SystemAssigned"},
         "dependsOn": ["[resourceId('Microsoft.Web/serverfarms', variables('plan'))]", f"[{storage_id}]",
                       "[resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', variables('storage'), "
                       f"'default', '{DEPLOYMENT_CONTAINER}')]",
                       "[resourceId('Microsoft.Insights/components', variables('insights'))]", f"[{vault_id}]"],
         "properties": {"serverFarmId": "[resourceId('Microsoft.Web/serverfarms', variables('plan'))]", "httpsOnly": True,
                        "keyVaultReferenceIdentity": "SystemAssigned",
                        "functionAppConfig": {
                            # the app's identity reads the package (Blob Data Owner on the account, below)
                            "deployment": {"storage": {"type": "blobContainer",
                                                       "value": f"[concat({blob_endpoint}, '{DEPLOYMENT_CONTAINER}')]",
                                                       "authentication": {"type": "SystemAssignedIdentity"}}},
                            "scaleAndConcurrency": {"maximumInstanceCount": 100, "instanceMemoryMB": 2048},
                            "runtime": {"name": "python", "version": "3.13"}},
                        # no linuxFxVersion or ftpsState: Flex Consumption has functionAppConfig.runtime and no FTP
                        "siteConfig": {"minTlsVersion": "1.2",
                                       "appSettings": [{"name": k, "value": v} for k, v in app_settings]}}},
    ]
    for queue in (JOBS_QUEUE, EVENTS_QUEUE, TASKS_QUEUE, UPLOADS_QUEUE):
        resources.append({
            "type": "Microsoft.ServiceBus/namespaces/queues", "apiVersion": SERVICEBUS_API,
            "name": f"[format('{{0}}/{queue}', variables('serviceBus'))]",
            "dependsOn": ["[resourceId('Microsoft.ServiceBus/namespaces', variables('serviceBus'))]"],
            "properties": {"maxDeliveryCount": MAX_DELIVERY_COUNT, "deadLetteringOnMessageExpiration": True,
                           "lockDuration": "PT5M", "defaultMessageTimeToLive": "P14D"}})
    resources.extend(_uploads_trigger(storage_id))
    # the app's triggers: it completes what it receives and re-sends a failed message to the same queue, later
    for queue in (JOBS_QUEUE, EVENTS_QUEUE, UPLOADS_QUEUE):
        for role in ("Azure Service Bus Data Sender", "Azure Service Bus Data Receiver"):
            resources.append(_queue_role(role, queue))
    resources.append(_queue_role("Azure Service Bus Data Sender", TASKS_QUEUE))  # the app hands tasks out; agents take them
    container_id = f"resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', variables('storage'), 'default', '{CONTAINER}')"
    for holder in ("app", "nodes"):
        resources.append(_role("Storage Blob Data Contributor", container_id,
                               f"[format('{container_scope}', variables('storage'))]", [f"[{container_id}]"], holder))
    resources.append(_queue_role("Azure Service Bus Data Sender", EVENTS_QUEUE, holder="nodes"))
    # the app creates and scales the batch targets' pools (ARM), gives them the nodes' identity, and
    # submits jobs and tasks on the Batch data plane (which Contributor, an ARM role, does not cover)
    batch_id = "resourceId('Microsoft.Batch/batchAccounts', variables('batch'))"
    for role in ("Contributor", "Azure Batch Job Submitter"):
        resources.append(_role(role, batch_id, "[format('Microsoft.Batch/batchAccounts/{0}', variables('batch'))]",
                               [f"[{batch_id}]"]))
    resources.append(_role("Managed Identity Operator", NODE_IDENTITY,
                           "[format('Microsoft.ManagedIdentity/userAssignedIdentities/{0}', variables('nodeIdentity'))]",
                           [f"[{NODE_IDENTITY}]"]))
    resources.append(_role("Key Vault Secrets User", vault_id,
                           "[format('Microsoft.KeyVault/vaults/{0}', variables('vault'))]", [f"[{vault_id}]"]))
    # the Functions host's own bookkeeping (AzureWebJobsStorage, identity-based) and the deployment package
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
            "uploadsTopic": f"xt-{team}-uploads",
        },
        "resources": resources,
        "outputs": {
            "storageAccountUrl": {"type": "string", "value": f"[{blob_endpoint}]"},
            "serviceBusNamespace": {"type": "string", "value": "[format('{0}.servicebus.windows.net', variables('serviceBus'))]"},
            "keyVaultUri": {"type": "string", "value": f"[reference({vault_id}, '{KEYVAULT_API}').vaultUri]"},
            "cosmosAccount": {"type": "string", "value": "[variables('cosmos')]"},
            "batchAccount": {"type": "string", "value": "[variables('batch')]"},
            "batchAccountUrl": {"type": "string", "value": f"[format('https://{{0}}', reference({batch_id}, '{BATCH_API}').accountEndpoint)]"},
            "batchAccountId": {"type": "string", "value": f"[{batch_id}]"},
            "nodeIdentity": {"type": "string", "value": f"[{NODE_IDENTITY}]"},
            "nodeIdentityClientId": {"type": "string", "value": f"[reference({NODE_IDENTITY}, '{IDENTITY_API}').clientId]"},
            "functionApp": {"type": "string", "value": "[variables('functionApp')]"},
        },
    }


def next_steps(team: str, path: str) -> str:
    return f"""wrote {path}: the ARM template for team {team}'s XT services.
next steps:
  1. deploy it: Azure portal > "Deploy a custom template" > load {path}, or
     az group create -n xt-{team} -l <region> && az deployment group create -g xt-{team} --template-file {path}
     (<region>: one that has Flex Consumption, az functionapp list-flexconsumption-locations)
  2. publish the Functions app from this repository (func azure functionapp publish <functionApp output>)
  3. give each team member the Storage Blob Data Contributor and Service Bus Data Sender roles
  4. paste the outputs into xt_config.yaml:
       external-services:
         team-store: {{type: blob, account-url: <storageAccountUrl>, container: {CONTAINER}}}
         team-bus: {{type: servicebus, namespace: <serviceBusNamespace>, jobs-queue: {JOBS_QUEUE}, events-queue: {EVENTS_QUEUE}, tasks-queue: {TASKS_QUEUE}}}
         team-vault: {{type: vault, url: <keyVaultUri>}}
         team-stats: {{type: mongo, connection-string: $vault, database: xt}}
         team-batch: {{type: batch, account-url: <batchAccountUrl>, resource-id: <batchAccountId>,
                      node-identity: <nodeIdentity>, node-identity-client-id: <nodeIdentityClientId>}}
       xt-services: {{storage: team-store, queue: team-bus, stats: team-stats, vault: team-vault}}
     ($vault reads the vault's secret <service>-<key>: keep the name team-stats, the template wrote {MONGO_SECRET};
     the namespace's fourth queue, {UPLOADS_QUEUE}, is the app's: Event Grid puts there the BlobCreated events of
     {CONTAINER}/{UPLOADS_PREFIX}*{UPLOADS_SUBJECT_ENDS}, and xt_config.yaml does not name it)
  5. runs of local and pool targets go to the machine that runs `xt serve` with this config (the
     agent; give its sign-in Service Bus Data Receiver on {TASKS_QUEUE}); batch targets: xt admin batch-settings"""
