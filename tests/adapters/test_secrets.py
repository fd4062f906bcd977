"""Key Vault secrets for `$vault` config values, through the real azure-keyvault-secrets pipeline
with a transport that answers like the service (challenge, 200, 404, 429): no emulator exists."""
import io
import json
import os
import stat
import time

import pytest
import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

from xt_submit.adapters import vault as secrets

VAULT = "https://teamvault.vault.azure.net"
PLANTED = "mongodb://xt:planted-vault-secret-93e1@db.example:27017"


class FakeKeyVault(requests.adapters.BaseAdapter):
    """Answers as Key Vault does (REST reference shapes): a 401 bearer challenge without a token,
    then the secret, SecretNotFound, or a 429 with Retry-After once."""

    def __init__(self, secrets_by_name, throttle_once=()):
        super().__init__()
        self.secrets = secrets_by_name
        self.throttle = set(throttle_once)
        self.requests = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        response = requests.Response()
        response.url, response.request = request.url, request
        name = request.path_url.split("?")[0].rstrip("/").split("/secrets/")[1].split("/")[0]
        if "Authorization" not in request.headers:
            return self._reply(response, 401, {"error": {"code": "Unauthorized", "message": "AKV10000"}},
                               {"WWW-Authenticate": 'Bearer authorization="https://login.microsoftonline.com/tenant", '
                                                    'resource="https://vault.azure.net"'})
        if name in self.throttle:
            self.throttle.discard(name)
            return self._reply(response, 429, {"error": {"code": "Throttled", "message": "slow down"}}, {"Retry-After": "0"})
        if name not in self.secrets:
            return self._reply(response, 404, {"error": {"code": "SecretNotFound",
                                                         "message": f"A secret with (name/id) {name} was not found"}})
        return self._reply(response, 200, {"value": self.secrets[name], "id": f"{VAULT}/secrets/{name}/0123",
                                           "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000,
                                                          "recoveryLevel": "Recoverable+Purgeable"}})

    @staticmethod
    def _reply(response, status, body, headers=None):
        data = json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(data)),
                       **(headers or {})}
        response.status_code = status
        response.headers.update(all_headers)
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(data), headers=all_headers, status=status,
                                            preload_content=False)
        response._content = data
        return response

    def close(self):
        pass


class StaticCredential:
    def __init__(self):
        self.calls = 0

    def get_token(self, *scopes, **kwargs):
        self.calls += 1
        return AccessToken("test-token", int(time.time()) + 3600)


def vault_with(fake, tmp_path, clock=time.time):
    session = requests.Session()
    session.mount("https://", fake)
    return secrets.VaultSecrets(VAULT, StaticCredential(), transport=RequestsTransport(session=session),
                                cache=tmp_path / "runtime" / "xt" / "secrets.json", clock=clock)


def test_vault_values_resolve_through_the_sdk_and_are_cached_for_the_session(tmp_path):
    fake = FakeKeyVault({"team-stats-connection-string": PLANTED}, throttle_once={"team-stats-connection-string"})
    vault = vault_with(fake, tmp_path)
    spec = {"type": "mongo", "connection-string": "$vault", "database": "xt"}
    assert secrets.resolve("team-stats", spec, vault) == {"type": "mongo", "connection-string": PLANTED, "database": "xt"}
    paths = [r.path_url for r in fake.requests]
    assert all(p.startswith("/secrets/team-stats-connection-string") and "api-version=" in p for p in paths)
    assert [r.headers.get("Authorization") for r in fake.requests][-1] == "Bearer test-token"
    assert len(fake.requests) == 3  # challenge, throttled, then the secret
    cache = tmp_path / "runtime" / "xt" / "secrets.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    secrets.resolve("team-stats", spec, vault)
    assert len(fake.requests) == 3  # served from the session cache
    later = vault_with(fake, tmp_path, clock=lambda: time.time() + secrets.CACHE_SECONDS + 1)
    secrets.resolve("team-stats", spec, later)
    assert len(fake.requests) > 3  # expired: read again


def test_errors_name_the_secret_never_a_value(tmp_path):
    vault = vault_with(FakeKeyVault({}), tmp_path)
    with pytest.raises(secrets.SecretError) as info:
        secrets.resolve("team-stats", {"type": "mongo", "connection-string": "$vault"}, vault)
    assert str(info.value) == f"key vault {VAULT}/: no secret named 'team-stats-connection-string'"
    with pytest.raises(secrets.SecretError, match="say \\$vault, but xt-services.vault names no vault"):
        secrets.resolve("team-stats", {"type": "mongo", "connection-string": "$vault"}, None)


def test_a_cache_others_can_read_is_ignored_and_clear_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    fake = FakeKeyVault({"s-key": "v"})
    vault = vault_with(fake, tmp_path)
    assert vault.get("s-key") == "v"
    cache = secrets.cache_path()
    fake.secrets["s-key"] = "rotated"
    assert vault.get("s-key") == "v"  # from the session cache
    os.chmod(cache, 0o644)
    assert vault.get("s-key") == "rotated"  # a cache others can read is not trusted: read from the vault
    assert secrets.clear_cache() and not cache.exists()
    assert not secrets.clear_cache()


def test_vault_must_name_a_vault_service(tmp_path):
    from xt_submit.config import ConfigError, load_config

    (tmp_path / "xt_config.yaml").write_text("external-services:\n  s: {type: mongo}\nxt-services:\n  vault: s\n")
    with pytest.raises(ConfigError, match="xt-services.vault: expected an external-services entry of type vault"):
        load_config(cwd=tmp_path)
