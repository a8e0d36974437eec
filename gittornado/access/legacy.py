"""Adapters from the older access shapes to the ``rights`` protocols.

Two shapes predate ``Authenticator``/``Authorizer`` and embedding apps still
pass them, so the gate turns them into an ``Authorizer`` once, at start-up:

* the original GitTornado's ``auth(request) -> (read, write)`` and
  ``gitlookup(request) -> path`` callables, which see Tornado's request;
* duck-typed access objects, ``check(request) -> Grant | (read, write)``, or
  such a plain callable, sync or ``async``. They authenticate on their own:
  the gate hands them the unverified credentials in ``request.credentials``
  and counts a ``BadCredentials`` they raise as a failed login.
"""

from __future__ import annotations

import inspect
from typing import Any

from .rights import AccessRequest, Authenticator, Authorizer, Grant

__all__ = ["call_hook", "CheckAdapter", "legacy_access", "adapt"]


async def call_hook(obj: Any, method: str, *args: Any) -> Any:
    """``obj.method(*args)``, or ``obj(*args)`` if it has no such method; awaited if async.

    How every duck-typed pluggable part (these access shapes, the repository
    lookup) is called, so each may be sync or async, an object or a function.
    """
    fn = getattr(obj, method, None) or obj
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class CheckAdapter:
    """An ``Authorizer`` over a ``check(request)`` object or a plain callable.

    A ``Grant`` answer is passed through: the object authenticated the user it
    names. A bare ``(read, write)`` answer never vouched for the user name the
    client sent, so that name does not reach hooks or logs; but credentials it
    did not refuse were accepted, so asking for them again could not help.
    """

    def __init__(self, access: Any) -> None:
        if not callable(getattr(access, "check", None)) and not callable(access):
            raise TypeError(
                f"{access!r} is not an access object: it needs authorize(), check() or to be callable"
            )
        self.access = access

    async def authorize(self, request: AccessRequest) -> Grant:
        answer = await call_hook(self.access, "check", request)
        if isinstance(answer, Grant):
            return answer
        try:
            read, write = answer
        except (TypeError, ValueError):
            raise TypeError(f"access check returned {answer!r}, not a Grant or (read, write)") from None
        return Grant(
            user=request.user,
            read=bool(read),
            write=bool(write),
            ask_credentials=request.user is None and request.credentials is None,
        )

    def __repr__(self) -> str:
        return f"CheckAdapter({self.access!r})"


class _LegacyAccess:
    """An ``Authorizer`` over the original GitTornado's ``auth`` and ``gitlookup`` callables.

    Both take Tornado's request (``request.native_request``); ``gitlookup``
    answers a path on disk (the gate still checks it is a git directory) or
    None for no repository.
    """

    def __init__(self, auth: Any = None, gitlookup: Any = None) -> None:
        self.auth, self.gitlookup = auth, gitlookup

    async def authorize(self, request: AccessRequest) -> Grant:
        http = request.native_request
        read, write = (True, False) if self.auth is None else await call_hook(self.auth, "__call__", http)
        path = None
        if self.gitlookup is not None:
            path = await call_hook(self.gitlookup, "__call__", http)
            if path is None:
                read = write = False
        # auth() never said who the user is: no unverified name from the
        # Authorization header reaches hooks or logs.
        return Grant(
            user=None,
            read=bool(read),
            write=bool(write),
            path=path,
            ask_credentials=self.auth is not None and request.credentials is None,
        )


def legacy_access(auth: Any = None, gitlookup: Any = None) -> Authorizer:
    """An access object from the original GitTornado's ``auth``/``gitlookup`` callables."""
    return _LegacyAccess(auth, gitlookup)


def _require_async(access: Any, name: str) -> None:
    method = getattr(access, name)
    if not (
        inspect.iscoroutinefunction(method)
        or callable(method)
        and inspect.iscoroutinefunction(method.__call__)
    ):
        raise TypeError(
            f"{type(access).__name__}.{name} must be a coroutine function (async def): the gate awaits it"
        )


def adapt(access: Any) -> tuple[Authenticator | None, Authorizer]:
    """The (authenticator, authorizer) pair for any accepted access shape.

    An object with ``authorize`` is used as is, and as its own authenticator
    when it has ``authenticate``; one without ``authenticate`` is never given
    credentials to verify (the open policy, ``legacy_access``). Anything else
    is a ``check`` object or callable, wrapped in ``CheckAdapter``. Checked
    here, at start-up, so a wrong shape fails before the first request.
    """
    if callable(getattr(access, "authorize", None)):
        _require_async(access, "authorize")
        if callable(getattr(access, "authenticate", None)):
            _require_async(access, "authenticate")
            return access, access
        return None, access
    return None, CheckAdapter(access)
