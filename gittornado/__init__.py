"""gittornado: a git hosting gateway on Tornado (smart and dumb HTTP, with access control).

The public API: build a whole app with ``make_app``, or put the handlers into
your own Tornado app with ``routes`` (or the handler classes directly).
"""

from .access import AccessFile, AccessFileError, hash_password, parse_access_file
from .app import make_app, routes
from .dumbhttp import FileHandler
from .errors import BadRequest, Forbidden, GitAccessError, NotFound, Unauthorized
from .fallback import FallbackHandler, IndexApp, wsgi_container
from .repos import Repository, RepositoryLookup
from .gitproc import GitRun, PeerGone
from .legacy import adapt, legacy_access
from .rights import (AccessRequest, Authenticator, Authorizer, BadCredentials, Credentials,
                     Grant)
from .session import Gate, OpenAccess, Session, Throttle
from .smarthttp import InfoRefsHandler, RPCHandler
from .web import GitConfig

__version__ = "0.2.0"

__all__ = [
    "__version__", "make_app", "routes",
    "InfoRefsHandler", "RPCHandler", "FileHandler", "FallbackHandler", "IndexApp",
    "GitConfig", "wsgi_container", "legacy_access", "adapt", "GitRun", "PeerGone",
    "AccessFile", "AccessFileError", "parse_access_file", "hash_password",
    "Repository", "RepositoryLookup",
    "AccessRequest", "Authenticator", "Authorizer", "BadCredentials", "Credentials", "Gate",
    "Grant", "OpenAccess", "Session", "Throttle",
    "GitAccessError", "BadRequest", "Forbidden", "NotFound", "Unauthorized",
]
