"""Service secrets from Azure Key Vault, for config values written `$vault`.

    external-services:
      team-vault: {type: vault, url: "https://teamxt.vault.azure.net/"}
      team-stats: {type: mongo, connection-string: $vault}      # secret "team-stats-connection-string"
    xt-services: {vault: team-vault, stats: team-stats}

Signing in follows `general.authentication`. Fetched secrets are cached for the OS login session
only (under $XDG_RUNTIME_DIR, mode 0600, with an expiry), so a new session signs in again;
`xt clear credentials` removes the cache. A secret's value never appears in a message, a log or
an error: errors name the secret, not its value.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from xt_submit.domain.errors import OneLineError
from xt_submit.domain.secrets import secret_name

VAULT_MARKER = "$vault"
CACHE_SECONDS = 8 * 3600


class SecretError(OneLineError):
    pass


def credential_for(authentication: str):
    """The azure-identity credential `general.authentication` asks for."""
    import azure.identity as identity

    if authentication == "browser":
        return identity.InteractiveBrowserCredential()
    if authentication == "device-code":
        return identity.DeviceCodeCredential()
    if authentication == "service-principal":
        return identity.EnvironmentCredential()  # AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET
    return identity.DefaultAzureCredential()


def cache_path() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")  # per login session, cleared at logout
    base = Path(runtime) if runtime else Path(tempfile.gettempdir()) / f"xt-{os.getuid()}"
    return base / "xt" / "secrets.json"


class VaultSecrets:
    """Reads secrets from one vault, through a session cache."""

    def __init__(self, vault_url: str, credential, *, transport=None, cache: Optional[Path] = None,
                 clock=time.time) -> None:
        from azure.keyvault.secrets import SecretClient

        options = {"transport": transport} if transport is not None else {}
        self.vault_url = vault_url.rstrip("/") + "/"
        self.client = SecretClient(self.vault_url, credential, **options)
        self.cache = cache if cache is not None else cache_path()
        self.clock = clock

    def get(self, name: str) -> str:
        cached = self._cached().get(self.vault_url + name)
        if cached and cached["expires"] > self.clock():
            return cached["value"]
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            value = self.client.get_secret(name).value
        except ResourceNotFoundError:
            raise SecretError(f"key vault {self.vault_url}: no secret named {name!r}") from None
        except HttpResponseError as exc:
            raise SecretError(f"key vault {self.vault_url}: reading secret {name!r} failed ({exc.status_code} "
                              f"{exc.reason})") from None
        self._remember(self.vault_url + name, value)
        return value

    def _cached(self) -> Dict[str, Any]:
        try:
            if self.cache.stat().st_mode & 0o077:
                return {}  # readable by others: not ours to trust
            return json.loads(self.cache.read_text())
        except (OSError, ValueError):
            return {}

    def _remember(self, key: str, value: str) -> None:
        entries = {k: v for k, v in self._cached().items() if v.get("expires", 0) > self.clock()}
        entries[key] = {"value": value, "expires": self.clock() + CACHE_SECONDS}
        self.cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.cache.parent, prefix=".secrets-")
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            json.dump(entries, f)
        os.replace(tmp, self.cache)


def resolve(service: str, spec: Dict[str, Any], vault: Optional[VaultSecrets]) -> Dict[str, Any]:
    """The service description with each `$vault` value read from the vault."""
    wanted = [key for key, value in spec.items() if value == VAULT_MARKER]
    if not wanted:
        return spec
    if vault is None:
        raise SecretError(f"external-services.{service}: {', '.join(wanted)} say $vault, but xt-services.vault "
                          f"names no vault")
    return {**spec, **{key: vault.get(secret_name(service, key)) for key in wanted}}


def clear_cache() -> bool:
    path = cache_path()
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
