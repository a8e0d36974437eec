"""The access decision every transport asks for: authenticate -> look up -> authorise.

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
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from .legacy import adapt, call_hook
from .repos import Repository, RepositoryLookup, is_git_dir, normalize_name
from .rights import AccessRequest, BadCredentials, Credentials, Grant
from .services import READ, WRITE

__all__ = [
    "Credentials", "AccessRequest", "Grant", "Session", "BadCredentials",
    "OpenAccess", "Throttle", "Gate", "call_hook",
]

app_log = logging.getLogger("gittornado.application")


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


class Throttle:
    """Counts failed logins per address; past ``limit`` in ``window`` s, blocks for ``block`` s.

    Pure bookkeeping with an injectable clock; a success from another address
    is never affected, and memory is bounded by pruning stale entries.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, block: float = 60.0,
                 clock=time.monotonic, max_entries: int = 100_000) -> None:
        self.limit, self.window, self.block = limit, window, block
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._blocked: dict[str, float] = {}
        self._max = max_entries

    def retry_after(self, addr: str) -> int | None:
        """Seconds the address must still wait, or None if it may try."""
        until = self._blocked.get(addr)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._blocked[addr]
            return None
        return max(1, int(left + 0.999))

    def failure(self, addr: str) -> bool:
        """Record a failed login; True when this failure starts a block (log it once)."""
        now = self._clock()
        recent = [t for t in self._failures.get(addr, ()) if now - t < self.window]
        recent.append(now)
        if len(recent) >= self.limit:
            self._failures.pop(addr, None)
            self._blocked[addr] = now + self.block
            return True
        self._failures[addr] = recent
        if len(self._failures) > self._max:
            self._prune(now)
        return False

    def _prune(self, now: float) -> None:
        self._failures = {a: ts for a, ts in self._failures.items() if now - ts[-1] < self.window}
        self._blocked = {a: u for a, u in self._blocked.items() if u > now}
        while len(self._failures) > self._max:
            self._failures.pop(next(iter(self._failures)))


class Gate:
    """``decide(request) -> Session`` or raise the error whose status SPEC prescribes.

    :arg access: an ``Authorizer`` (also used as the ``Authenticator`` when it
        has ``authenticate``), or an older shape ``legacy.adapt`` accepts;
        default ``OpenAccess``.
    :arg lookup: repository lookup; default ``RepositoryLookup(gitbase)``.
    :arg throttle: counts failed logins per address (None: no throttling).
    """

    def __init__(self, access: Any = None, lookup: Any = None, *, gitbase: str = ".",
                 throttle: Throttle | None = None) -> None:
        self.access = access if access is not None else OpenAccess()
        self.authenticator, self.authorizer = adapt(self.access)
        self.lookup = lookup if lookup is not None else RepositoryLookup(gitbase)
        self.throttle = throttle

    def _login_failed(self, addr: str) -> NoReturn:
        if self.throttle is not None and self.throttle.failure(addr):
            app_log.warning("too many failed logins from %s: refusing logins for %ds",
                            addr, int(self.throttle.block))
        raise Unauthorized("invalid username or password") from None

    async def authenticate(self, request: AccessRequest) -> AccessRequest:
        """``request`` with ``user`` set to whom its credentials prove; 401 or 429 when they fail.

        Blocked addresses are refused before any password is checked. Without
        an authenticator (or with a user the transport already vouched for)
        the request is returned as is: the policy sees the credentials itself.
        """
        if request.credentials is None:
            return request
        if self.throttle is not None:
            wait = self.throttle.retry_after(request.remote_addr)
            if wait is not None:
                raise TooManyRequests(wait)
        if self.authenticator is None or request.user is not None:
            return request
        try:
            user = await self.authenticator.authenticate(request.credentials)
        except BadCredentials:
            self._login_failed(request.remote_addr)
        if not isinstance(user, str) or not user:
            raise TypeError(f"{self.authenticator!r} authenticated {user!r}, not a user name")
        return dataclasses.replace(request, user=user)

    async def _authorize(self, request: AccessRequest) -> Grant:
        try:
            return await self.authorizer.authorize(request)
        except BadCredentials:  # an adapted policy that checks passwords itself
            self._login_failed(request.remote_addr)

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
        # Look the repository up whatever the grant says, so the time taken does
        # not tell a reader without rights whether it exists.
        if grant.path is not None:
            # A path chosen by the policy (legacy gitlookup) must still be a
            # git directory: anything else is as missing as no repository.
            real = os.path.realpath(grant.path)
            repo: Repository | None = Repository(name, real) if is_git_dir(real) else None
        else:
            repo = await self._find(grant.real_name or name)
            if repo is not None and grant.real_name:
                repo = Repository(name, repo.path)
        anonymous = grant.user is None
        if not grant.read:
            if anonymous and grant.ask_credentials:
                raise Unauthorized()
            raise NotFound()
        if request.operation == WRITE and not grant.write:
            if anonymous and grant.ask_credentials:
                raise Unauthorized()
            raise Forbidden()
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
