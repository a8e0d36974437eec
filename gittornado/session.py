"""The access decision every transport asks for: authenticate -> look up -> authorise.

This is the only place 401, 403, 404 and 429 are decided (SPEC "Status codes"),
so HTTP, WebSocket and SSH cannot disagree, and the answer never depends on
whether a repository the requester may not read exists.

The pluggable parts are duck-typed so an embedding app can bring its own:

* an *access* object has ``check(request) -> Grant | (read, write)``, or is
  such a callable; sync or ``async``; it raises ``BadCredentials`` for a wrong
  password;
* a *lookup* object has ``lookup(name) -> path | Repository | None``, or is
  such a callable; sync or ``async``.
"""

from __future__ import annotations

import inspect
import os
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import Forbidden, NotFound, TooManyRequests, Unauthorized
from .repos import Repository, RepositoryLookup, is_git_dir, normalize_name
from .services import READ, WRITE

__all__ = [
    "Credentials", "AccessRequest", "Grant", "Session", "BadCredentials",
    "OpenAccess", "Throttle", "Gate",
]

app_log = logging.getLogger("gittornado.application")


class BadCredentials(Exception):
    """Raised by an access object when a user name/password pair is wrong."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass
class AccessRequest:
    """What a transport asks: may this requester do ``operation`` on ``repo``?"""

    repo: str                            #: canonical public name, no ``.git``
    operation: str                       #: ``services.READ`` or ``services.WRITE``
    credentials: Credentials | None = None
    remote_addr: str = ""
    transport: str = "http"
    user: str | None = None              #: already authenticated (SSH forced command)
    native_request: Any = None           #: the transport's own request, for adapters


@dataclass(frozen=True)
class Grant:
    """An access object's answer for one requester on one repository name."""

    user: str | None
    read: bool
    write: bool
    #: False when no credentials could change the answer (no access file at all):
    #: denials are then 403/404, never a pointless password prompt.
    ask_credentials: bool = True
    #: Where the repository really is: a name for the lookup (API path mapping)...
    real_name: str | None = None
    #: ...or a path on disk the access object resolved itself (legacy ``gitlookup``).
    path: str | None = None
    #: Extra environment for git and its hooks (custom hook paths, ...).
    env: dict[str, str] = field(default_factory=dict)
    rule: str | None = None              #: which rule granted it, for logs/check-access


@dataclass(frozen=True)
class Session:
    """A decided request: who, on which repository on disk, allowed to do what."""

    user: str | None
    repo: Repository
    operation: str
    env: dict[str, str]


class OpenAccess:
    """The policy with no access file: everyone reads, nobody pushes (credentials ignored)."""

    def check(self, request: AccessRequest) -> Grant:
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


async def call_hook(obj: Any, method: str, *args: Any) -> Any:
    """``obj.method(*args)``, or ``obj(*args)`` if it has no such method; awaited if async.

    How every pluggable part (access, lookup, legacy callables) is called.
    """
    fn = getattr(obj, method, None) or obj
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Gate:
    """``decide(request) -> Session`` or raise the error whose status SPEC prescribes."""

    def __init__(self, access: Any = None, lookup: Any = None, *, gitbase: str = ".",
                 throttle: Throttle | None = None) -> None:
        self.access = access if access is not None else OpenAccess()
        self.lookup = lookup if lookup is not None else RepositoryLookup(gitbase)
        self.throttle = throttle

    async def _grant(self, request: AccessRequest) -> Grant:
        addr = request.remote_addr
        if request.credentials is not None and self.throttle is not None:
            wait = self.throttle.retry_after(addr)
            if wait is not None:
                raise TooManyRequests(wait)
        try:
            answer = await call_hook(self.access, "check", request)
        except BadCredentials:
            if self.throttle is not None and self.throttle.failure(addr):
                app_log.warning("too many failed logins from %s: refusing logins for %ds",
                                addr, int(self.throttle.block))
            raise Unauthorized("invalid username or password") from None
        if isinstance(answer, Grant):
            return answer
        read, write = answer
        # A bare (read, write) answer never vouched for the user name the client
        # sent, so that name does not reach hooks or logs; but credentials it
        # did not refuse were accepted, so asking for them again cannot help.
        return Grant(user=request.user, read=bool(read), write=bool(write),
                     ask_credentials=request.user is None and request.credentials is None)

    async def _find(self, name: str) -> Repository | None:
        found = await call_hook(self.lookup, "lookup", name)
        if found is None or isinstance(found, Repository):
            return found
        return Repository(name, str(found))

    async def decide(self, request: AccessRequest) -> Session:
        name = normalize_name(request.repo)
        if name is None:
            raise NotFound()
        request.repo = name
        grant = await self._grant(request)
        # Look the repository up whatever the grant says, so the time taken does
        # not tell a reader without rights whether it exists.
        if grant.path is not None:
            # A path chosen by the access object (legacy gitlookup) must still
            # be a git directory: anything else is as missing as no repository.
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

        Wrong credentials raise ``Unauthorized`` (or ``TooManyRequests``) as for
        any other request; a missing or unreadable repository is just left out.
        """
        out = []
        for name in names:
            request.repo, request.operation = name, READ
            if (await self._grant(request)).read:
                out.append(name)
        return out
