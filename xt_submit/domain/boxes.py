"""A pool's box as the config names it: its address, parsed, and the error that names a box."""
from __future__ import annotations

from typing import NamedTuple

from xt_submit.domain.errors import OneLineError

LOCAL_ADDRESS = "localhost"  # a box at this address runs here, without SSH
# A host's warm name (bootstrap.warm's list, on its command line): connect to this registered pool's
# boxes at once, while the job for it is still being sent
CONNECT_AHEAD = "connect:"


class BoxError(OneLineError):
    """A box that cannot be used, named, with why (never a key)."""


class BoxAddress(NamedTuple):
    user: str
    host: str
    port: int

    @classmethod
    def parse(cls, address: str, box: str) -> "BoxAddress":
        """`user@host[:port]` or `host[:port]`; the user defaults to the one running XT."""
        user, _, hostport = address.rpartition("@")
        host, port = hostport, 22
        if hostport.count(":") == 1:
            host, _, port_text = hostport.partition(":")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise BoxError(f"boxes.{box}.address: expected user@host[:port] with a port number, got {address!r}")
            port = int(port_text)
        if not host or any(c.isspace() for c in address):
            raise BoxError(f"boxes.{box}.address: expected user@host[:port], got {address!r}")
        import getpass

        return cls(user or getpass.getuser(), host, port)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"
