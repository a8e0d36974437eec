"""gittornado: a git hosting gateway on Tornado (smart and dumb HTTP, WebSocket, SSH).

The public API: build a whole app with ``make_app``, or put the handlers into
your own Tornado app with ``routes`` (or the handler classes directly).

Names are imported on first use (PEP 562): the remote helper and the SSH shell
start once per git command, and loading the whole server for them cost each
git command about 50 ms.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: Public name -> the module that owns it.
_EXPORTS = {
    "make_app": "app",
    "routes": "app",
    "InfoRefsHandler": "smarthttp",
    "RPCHandler": "smarthttp",
    "FileHandler": "dumbhttp",
    "FallbackHandler": "fallback",
    "IndexApp": "index",
    "wsgi_container": "fallback",
    "BrowseApp": "browse",
    "GitWebSocketHandler": "websocket",
    "GitConfig": "web",
    "GitRun": "gitproc",
    "PeerGone": "gitproc",
    "legacy_access": "legacy",
    "adapt": "legacy",
    "AccessFile": "access",
    "AccessFileError": "access",
    "parse_access_file": "access",
    "hash_password": "access",
    "AuthAPI": "authapi",
    "AuthAPIUnavailable": "authapi",
    "Repository": "repos",
    "RepositoryLookup": "repos",
    "AccessRequest": "rights",
    "Authenticator": "rights",
    "Authorizer": "rights",
    "BadCredentials": "rights",
    "Credentials": "rights",
    "Grant": "rights",
    "Gate": "session",
    "OpenAccess": "session",
    "Session": "session",
    "Throttle": "session",
    "SQLiteStore": "limits",
    "GitHTTPServer": "serve",
    "GitAccessError": "errors",
    "BadRequest": "errors",
    "Forbidden": "errors",
    "NotFound": "errors",
    "Unauthorized": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gittornado' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .access import AccessFile, AccessFileError, hash_password, parse_access_file  # noqa: F401
    from .app import make_app, routes  # noqa: F401
    from .authapi import AuthAPI, AuthAPIUnavailable  # noqa: F401
    from .browse import BrowseApp  # noqa: F401
    from .dumbhttp import FileHandler  # noqa: F401
    from .errors import BadRequest, Forbidden, GitAccessError, NotFound, Unauthorized  # noqa: F401
    from .fallback import FallbackHandler, wsgi_container  # noqa: F401
    from .gitproc import GitRun, PeerGone  # noqa: F401
    from .index import IndexApp  # noqa: F401
    from .legacy import adapt, legacy_access  # noqa: F401
    from .limits import SQLiteStore  # noqa: F401
    from .repos import Repository, RepositoryLookup  # noqa: F401
    from .rights import (  # noqa: F401
        AccessRequest,
        Authenticator,
        Authorizer,
        BadCredentials,
        Credentials,
        Grant,
    )
    from .serve import GitHTTPServer  # noqa: F401
    from .session import Gate, OpenAccess, Session, Throttle  # noqa: F401
    from .smarthttp import InfoRefsHandler, RPCHandler  # noqa: F401
    from .web import GitConfig  # noqa: F401
    from .websocket import GitWebSocketHandler  # noqa: F401
