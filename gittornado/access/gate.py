"""The access decision every transport asks for: authenticate -> authorise -> look up.

This is the only place 401, 403, 404 and 429 are decided (SPEC "Status codes"),
so HTTP, WebSocket and SSH cannot disagree, and the answer never depends on
whether a repository the requester may not read exists.

The policy is an ``Authorizer`` (and, when it checks passwords, an
``Authenticator``) from ``gittornado.rights``; the older duck-typed shapes are
adapted by ``gittornado.legacy``. The repository *lookup* is duck-typed: it has
``lookup(name) -> path | Repository | None``, or is such a callable; sync or
``async``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import Forbidden, NotFound, Unauthorized
from ..protocol.services import READ, WRITE
from .legacy import adapt, call_hook
from .repos import Repository, RepositoryLookup, is_git_dir, normalize_name
from .rights import AccessRequest, BadCredentials, Credentials, Grant
from .throttle import Throttle

__all__ = [
    "Credentials",
    "AccessRequest",
    "Grant",
    "Session",
    "BadCredentials",
    "OpenAccess",
    "Throttle",
    "Gate",
    "call_hook",
]

app_log = logging.getLogger("gittornado.application")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Session:
    """A decided request: who, on which repository on disk, allowed to do what."""

    user: str | None
    repo: Repository
    operation: str
    env: dict[str, str]


class OpenAccess:
    """The policy with no access file: everyone reads, nobody pushes.

    Deliberately no ``authenticate``: credentials are ignored rather than
    checked, so a wrong password is never a 401 here and a push is a 403
    whoever asks (no credentials could help).
    """

    async def authorize(self, request: AccessRequest) -> Grant:
        return self.check(request)

    def check(self, request: AccessRequest) -> Grant:
        """The 0.2 access protocol, for code that called it directly."""
        return Grant(user=None, read=True, write=False, ask_credentials=False)


class Gate:
    """``decide(request) -> Session`` or raise the error whose status SPEC prescribes.

    :arg access: an ``Authorizer`` (also used as the ``Authenticator`` when it
        has ``authenticate``), or an older shape ``legacy.adapt`` accepts;
        default ``OpenAccess``.
    :arg lookup: repository lookup; default ``RepositoryLookup(gitbase)``.
    :arg throttle: counts failed logins per address (None: no throttling).
    """

    def __init__(
        self, access: Any = None, lookup: Any = None, *, gitbase: str = ".", throttle: Throttle | None = None
    ) -> None:
        self.access = access if access is not None else OpenAccess()
        self.authenticator, self.authorizer = adapt(self.access)
        self.lookup = lookup if lookup is not None else RepositoryLookup(gitbase)
        self.throttle = throttle

    async def _verified(self, addr: str, step: Callable[[], Awaitable[_T]]) -> _T:
        """``await step()``, the step that checks a password, under the login throttle.

        The throttle admits the attempt before the password is looked at (429
        when the address is blocked, also while it waits its turn) and runs it
        in a slot; a ``BadCredentials`` is counted and becomes a 401.
        """
        if self.throttle is None:
            try:
                return await step()
            except BadCredentials:
                raise Unauthorized("invalid username or password") from None
        async with self.throttle.attempt(addr) as attempt:
            try:
                return await step()
            except BadCredentials:
                if attempt.failed():
                    app_log.warning(
                        "too many failed logins from %s: refusing logins for %ds",
                        addr,
                        int(self.throttle.block),
                    )
                raise Unauthorized("invalid username or password") from None

    async def authenticate(self, request: AccessRequest) -> AccessRequest:
        """``request`` with ``user`` set to whom its credentials prove; 401 or 429 when they fail.

        Blocked addresses are refused before any password is checked. Without
        an authenticator (or with a user the transport already vouched for)
        the request is returned as is: the policy sees the credentials itself.
        """
        if request.credentials is None:
            return request
        if self.authenticator is None or request.user is not None:
            if self.throttle is not None:
                self.throttle.check(request.remote_addr)
            return request
        authenticator, credentials = self.authenticator, request.credentials
        user = await self._verified(request.remote_addr, lambda: authenticator.authenticate(credentials))
        if not isinstance(user, str) or not user:
            raise TypeError(f"{self.authenticator!r} authenticated {user!r}, not a user name")
        return dataclasses.replace(request, user=user)

    async def _authorize(self, request: AccessRequest) -> Grant:
        if self.authenticator is None and request.user is None and request.credentials is not None:
            # An adapted policy checks the password itself, in authorize().
            return await self._verified(request.remote_addr, lambda: self.authorizer.authorize(request))
        return await self.authorizer.authorize(request)

    async def _find(self, name: str) -> Repository | None:
        found = await call_hook(self.lookup, "lookup", name)
        if found is None or isinstance(found, Repository):
            return found
        return Repository(name, str(found))

    async def decide(self, request: AccessRequest) -> Session:
        name = normalize_name(request.repo)
        if name is None:
            raise NotFound()
        request = await self.authenticate(dataclasses.replace(request, repo=name))
        grant = await self._authorize(request)
        anonymous = grant.user is None
        # Rights first, and nothing on disk is touched for a request they refuse:
        # the answer to a name the requester may not read then takes the same
        # path whether or not it exists (its existence cannot show in the timing).
        if not grant.read:
            if anonymous and grant.ask_credentials:
                raise Unauthorized()
            raise NotFound()
        if request.operation == WRITE and not grant.write:
            if anonymous and grant.ask_credentials:
                raise Unauthorized()
            raise Forbidden()
        if grant.path is not None:
            # A path chosen by the policy (legacy gitlookup) must still be a
            # git directory: anything else is as missing as no repository.
            real = os.path.realpath(grant.path)
            repo: Repository | None = Repository(name, real) if is_git_dir(real) else None
        else:
            repo = await self._find(grant.real_name or name)
            if repo is not None and grant.real_name:
                repo = Repository(name, repo.path)
        if repo is None:
            raise NotFound()
        return Session(user=grant.user, repo=repo, operation=request.operation, env=dict(grant.env))

    async def readable(self, names: list[str], request: AccessRequest) -> list[str]:
        """The subset of ``names`` the requester may read (the index page).

        The requester is authenticated once, then authorised per name. Wrong
        credentials raise ``Unauthorized`` (or ``TooManyRequests``) as for any
        other request; a missing or unreadable repository is just left out.
        """
        request = await self.authenticate(dataclasses.replace(request, operation=READ))
        out = []
        for name in names:
            if (await self._authorize(dataclasses.replace(request, repo=name))).read:
                out.append(name)
        return out
