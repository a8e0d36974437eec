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
    "make_app": "server.app",
    "routes": "server.app",
    "Settings": "server.settings",
    "Engine": "engine.engine",
    "InfoRefsHandler": "transports.smarthttp",
    "RPCHandler": "transports.smarthttp",
    "FileHandler": "transports.dumbhttp",
    "FallbackHandler": "web.wsgi",
    "IndexApp": "web.index",
    "wsgi_container": "web.wsgi",
    "BrowseApp": "web.browse",
    "GitWebSocketHandler": "transports.websocket",
    "GitConfig": "transports.httpbase",
    "GitRun": "engine.run",
    "PeerGone": "engine.run",
    "legacy_access": "access.legacy",
    "adapt": "access.legacy",
    "AccessFile": "access.accessfile",
    "AccessFileError": "access.accessrules",
    "parse_access_file": "access.accessrules",
    "hash_password": "access.accessrules",
    "AuthAPI": "access.authapi",
    "AuthAPIUnavailable": "access.authapi",
    "Repository": "access.repos",
    "RepositoryLookup": "access.repos",
    "AccessRequest": "access.rights",
    "Authenticator": "access.rights",
    "Authorizer": "access.rights",
    "BadCredentials": "access.rights",
    "Credentials": "access.rights",
    "Grant": "access.rights",
    "Gate": "access.gate",
    "OpenAccess": "access.gate",
    "Session": "access.gate",
    "Throttle": "access.gate",
    "SQLiteStore": "access.throttlestore",
    "GitHTTPServer": "server.httpserver",
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
    from .access.accessfile import AccessFile, AccessFileError, hash_password, parse_access_file  # noqa: F401
    from .access.authapi import AuthAPI, AuthAPIUnavailable  # noqa: F401
    from .access.gate import Gate, OpenAccess, Session, Throttle  # noqa: F401
    from .access.legacy import adapt, legacy_access  # noqa: F401
    from .access.repos import Repository, RepositoryLookup  # noqa: F401
    from .access.rights import (  # noqa: F401
        AccessRequest,
        Authenticator,
        Authorizer,
        BadCredentials,
        Credentials,
        Grant,
    )
    from .access.throttle import SQLiteStore  # noqa: F401
    from .engine.engine import Engine  # noqa: F401
    from .engine.run import GitRun, PeerGone  # noqa: F401
    from .errors import BadRequest, Forbidden, GitAccessError, NotFound, Unauthorized  # noqa: F401
    from .server.app import make_app, routes  # noqa: F401
    from .server.httpserver import GitHTTPServer  # noqa: F401
    from .server.settings import Settings  # noqa: F401
    from .transports.dumbhttp import FileHandler  # noqa: F401
    from .transports.httpbase import GitConfig  # noqa: F401
    from .transports.smarthttp import InfoRefsHandler, RPCHandler  # noqa: F401
    from .transports.websocket import GitWebSocketHandler  # noqa: F401
    from .web.browse import BrowseApp  # noqa: F401
    from .web.index import IndexApp  # noqa: F401
    from .web.wsgi import FallbackHandler, wsgi_container  # noqa: F401
