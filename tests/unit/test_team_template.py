"""`xt create team`: the ARM template's resources, settings, least-privilege roles, and no secrets."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from xt_submit.services.team_template import ROLES, TeamError, build_template

ROOT = Path(__file__).resolve().parents[2]


def resources_by_type(template):
    found = {}
    for resource in template["resources"]:
        found.setdefault(resource["type"], []).append(resource)
    return found


def test_every_service_of_a_team_is_in_the_template():
    template = build_template("vision")
    types = resources_by_type(template)
    for kind in ("Microsoft.Storage/storageAccounts", "Microsoft.Storage/storageAccounts/blobServices/containers",
                 "Microsoft.ServiceBus/namespaces", "Microsoft.KeyVault/vaults", "Microsoft.DocumentDB/databaseAccounts",
                 "Microsoft.DocumentDB/databaseAccounts/mongodbDatabases", "Microsoft.Batch/batchAccounts",
                 "Microsoft.Web/serverfarms", "Microsoft.Web/sites", "Microsoft.Insights/components"):
        assert kind in types, kind
    queues = types["Microsoft.ServiceBus/namespaces/queues"]
    assert [q["properties"]["maxDeliveryCount"] for q in queues] == [5, 5, 5]
    assert all(q["properties"]["deadLetteringOnMessageExpiration"] for q in queues)
    assert types["Microsoft.KeyVault/vaults"][0]["properties"]["enableRbacAuthorization"] is True
    site = types["Microsoft.Web/sites"][0]
    assert site["identity"]["type"] == "SystemAssigned" and site["properties"]["siteConfig"]["linuxFxVersion"] == "Python|3.13"
    for resource in template["resources"]:
        assert resource["apiVersion"] and resource["name"]


def test_app_settings_match_what_the_app_reads():
    site = resources_by_type(build_template("vision"))["Microsoft.Web/sites"][0]
    settings = {s["name"] for s in site["properties"]["siteConfig"]["appSettings"]}
    example = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert set(example) - {"AzureWebJobsStorage__accountName"} <= settings


def test_roles_are_least_privilege_and_scoped():
    roles = resources_by_type(build_template("vision"))["Microsoft.Authorization/roleAssignments"]
    granted = sorted((next(n for n, g in ROLES.items() if g in r["properties"]["roleDefinitionId"]), r["scope"]) for r in roles)
    assert ("Key Vault Secrets User", "[format('Microsoft.KeyVault/vaults/{0}', variables('vault'))]") in granted
    queue_roles = [(name, scope) for name, scope in granted if "queues" in scope]
    assert len(queue_roles) == 6 and {n for n, _ in queue_roles} == {"Azure Service Bus Data Sender",
                                                                     "Azure Service Bus Data Receiver"}
    assert ("Storage Blob Data Contributor",
            "[format('Microsoft.Storage/storageAccounts/{0}/blobServices/default/containers/xtdata', variables('storage'))]") in granted
    assert not [name for name, _ in granted if "Owner" in name and "Blob" not in name]  # no broad owner roles
    assert [scope for name, scope in granted if name == "Contributor"] == [
        "[format('Microsoft.Batch/batchAccounts/{0}', variables('batch'))]"]  # the Batch account's pools, nothing wider


def test_batch_nodes_have_their_own_identity_that_only_writes_and_reports():
    template = build_template("vision")
    assert resources_by_type(template)["Microsoft.ManagedIdentity/userAssignedIdentities"]
    roles = resources_by_type(template)["Microsoft.Authorization/roleAssignments"]
    node_roles = sorted((next(n for n, g in ROLES.items() if g in r["properties"]["roleDefinitionId"]), r["scope"])
                        for r in roles if "nodeIdentity" in r["properties"]["principalId"])
    assert node_roles == [
        ("Azure Service Bus Data Sender", "[format('Microsoft.ServiceBus/namespaces/{0}/queues/{1}', variables('serviceBus'), 'xt-events')]"),
        ("Storage Blob Data Contributor",
         "[format('Microsoft.Storage/storageAccounts/{0}/blobServices/default/containers/xtdata', variables('storage'))]")]
    assert {"batchAccountUrl", "batchAccountId", "nodeIdentity", "nodeIdentityClientId"} <= set(template["outputs"])


def test_no_secret_leaves_the_template():
    template = build_template("vision")
    text = json.dumps(template["outputs"])
    assert not re.search(r"listKeys|listConnectionStrings|AccountKey|password", text)
    secret = resources_by_type(template)["Microsoft.KeyVault/vaults/secrets"][0]
    assert "listConnectionStrings" in secret["properties"]["value"]  # computed into the vault at deployment


@pytest.mark.parametrize("name", ["ab", "Vision", "team-1", "averyveryverylongname", "1team"])
def test_bad_team_names(name):
    with pytest.raises(TeamError, match="team name: expected 3-12 lowercase"):
        build_template(name)


def test_cli_writes_the_template_and_the_next_steps(tmp_path):
    run = subprocess.run([sys.executable, "-m", "xt_submit.cli", "create", "team", "vision"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "xt_team_vision.json").read_text())["contentVersion"] == "1.0.0.0"
    assert "next steps" in run.stdout and "xt-services" in run.stdout
    again = subprocess.run([sys.executable, "-m", "xt_submit.cli", "create", "team", "vision"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr
