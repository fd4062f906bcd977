"""Where a `$vault` config value lives: the Key Vault secret named for its service and key (the
team template stores its secrets under the same names)."""
from __future__ import annotations

import re


def secret_name(service: str, key: str) -> str:
    """Key Vault names allow letters, digits and dashes: `team-stats` + `connection-string`."""
    return re.sub(r"[^A-Za-z0-9-]", "-", f"{service}-{key}")[:127]
