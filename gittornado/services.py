"""The git services a client may ask for, and the pure checks on what it sends.

Dispatch is data: ``SERVICES`` maps a wire name to the right it needs and the
git subcommand that serves it; every transport reads the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Service", "SERVICES", "service_for", "valid_git_protocol", "READ", "WRITE"]

READ = "read"
WRITE = "write"


@dataclass(frozen=True)
class Service:
    name: str         #: wire name, e.g. ``git-upload-pack``
    subcommand: str   #: ``git <subcommand>``
    right: str        #: READ or WRITE
    http: bool        #: offered over smart HTTP (upload-archive is not in git 2.39)

    @property
    def advertisement_type(self) -> str:
        return f"application/x-{self.name}-advertisement"

    @property
    def request_type(self) -> str:
        return f"application/x-{self.name}-request"

    @property
    def result_type(self) -> str:
        return f"application/x-{self.name}-result"


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("git-upload-pack", "upload-pack", READ, http=True),
        Service("git-receive-pack", "receive-pack", WRITE, http=True),
        Service("git-upload-archive", "upload-archive", READ, http=False),
    )
}


def service_for(name: str, *, transport: str = "http") -> Service | None:
    """The service called ``name`` if ``transport`` offers it, else None."""
    svc = SERVICES.get(name)
    if svc is None or (transport == "http" and not svc.http):
        return None
    return svc


# gitprotocol-v2 / gitprotocol-http: the header is a colon-separated list of
# "key" or "key=value" items. Git only ever sends version=N, but extensions are
# allowed; we accept the same safe alphabet Gitea does and refuse anything that
# could smuggle shell or environment syntax into GIT_PROTOCOL.
_GIT_PROTOCOL_ITEM = re.compile(r"[A-Za-z0-9._-]+(?:=[A-Za-z0-9._-]+)?\Z")


def valid_git_protocol(value: str) -> bool:
    """True when ``value`` is a well-formed ``Git-Protocol`` header value."""
    if not value or len(value) > 256:
        return False
    return all(_GIT_PROTOCOL_ITEM.match(item) for item in value.split(":"))


def protocol_version(value: str | None) -> int:
    """The protocol version a (valid) ``Git-Protocol`` value asks for; 0 if none."""
    version = 0
    for item in (value or "").split(":"):
        key, _, val = item.partition("=")
        if key == "version" and val.isdigit():
            version = max(version, int(val))
    return version
