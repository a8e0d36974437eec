"""The access seam: what a transport asks, what a policy answers, and the two policy roles.

Everything above this module (the gate, the transports) speaks only these
types, and every policy (the INI access file, the open policy, the
Gitorious-style HTTP API, an embedding app's own) implements one or both
protocols below. The types are frozen so a decision can be neither altered
after it was made nor altered by the code asked to make it.

Authentication and authorisation are separate roles because they happen a
different number of times: a login is checked once per request (and once for
a whole index page), rights once per repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..protocol.services import READ, WRITE

__all__ = ["BadCredentials", "Credentials", "AccessRequest", "Grant", "Authenticator", "Authorizer"]


class BadCredentials(Exception):
    """A user name/password pair is wrong: always a 401, and a failure for the login throttle."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password as the client sent them: not yet verified."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AccessRequest:
    """What a transport asks: may this requester do ``operation`` on ``repo``?

    Derived requests (the canonical name, the authenticated user) are made
    with ``dataclasses.replace``, never by mutation.
    """

    repo: str  #: public name; canonical (no ``.git``) once the gate has it
    operation: str  #: ``services.READ`` or ``services.WRITE``
    credentials: Credentials | None = None
    remote_addr: str = ""
    transport: str = "http"
    #: The verified user: set by a transport that authenticated on its own (an
    #: SSH forced command), or by the gate after authentication. None: anonymous
    #: (or not yet authenticated).
    user: str | None = None
    #: The transport's own request, for adapters of callables that expect it.
    native_request: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.operation not in (READ, WRITE):
            raise ValueError(f"operation must be {READ!r} or {WRITE!r}, not {self.operation!r}")


@dataclass(frozen=True)
class Grant:
    """A policy's answer for one requester on one repository name.

    The defaults deny: a policy has to say what it allows.
    """

    #: Who the policy vouches the requester is (hooks and logs see this name);
    #: None for anonymous.
    user: str | None = None
    read: bool = False
    write: bool = False
    #: False when no credentials could change the answer (no access file at all):
    #: denials are then 403/404, never a pointless password prompt.
    ask_credentials: bool = True
    #: Where the repository really is: a name for the lookup (API path mapping)...
    real_name: str | None = None
    #: ...or a path on disk the policy resolved itself (legacy ``gitlookup``).
    path: str | None = None
    #: Extra environment for git and its hooks (custom hook paths, ...).
    env: dict[str, str] = field(default_factory=dict, compare=False)
    rule: str | None = None  #: which rule granted it, for logs and check-access


@runtime_checkable
class Authenticator(Protocol):
    """Verifies credentials; the gate calls it at most once per request.

    Only a policy that *uses* credentials implements it: a policy without one
    (the open policy) is never given a password to check, so a wrong password
    cannot turn a request it would serve into a 401.
    """

    async def authenticate(self, credentials: Credentials) -> str:
        """The verified user name; raise ``BadCredentials`` when the pair is wrong.

        Must cost the same whether or not the user exists (no user enumeration
        by timing); the gate counts each ``BadCredentials`` for the throttle.
        """
        ...


@runtime_checkable
class Authorizer(Protocol):
    """Decides rights on one repository for an already authenticated requester."""

    async def authorize(self, request: AccessRequest) -> Grant:
        """Rights, the real location and hook environment for ``request.repo``.

        ``request.user`` is the authenticated user, None for anonymous. Answer
        for missing repositories too, as if they existed: the gate looks the
        repository up whatever the grant says and picks 401/403/404 itself, so
        a policy never has to know the status codes (SPEC "Status codes").
        """
        ...
