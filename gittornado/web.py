"""Tornado glue shared by the HTTP handlers: configuration, credentials, error mapping.

A transport translates; this module is the HTTP side of that translation. It
turns ``Authorization`` headers into ``Credentials``, hands the gate an
``AccessRequest`` and turns the gate's errors into statuses (401 with
``WWW-Authenticate``, 429 with ``Retry-After``), always as short plain text.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import tornado.web

from . import pktline
from .errors import BadRequest, GitAccessError, NotFound, Unauthorized
from .repos import RepositoryLookup, has_encoded_separator
from .session import AccessRequest, Credentials, Gate, Grant, Session, Throttle, call_hook

__all__ = ["GitHandler", "parse_basic_auth", "NO_CACHE", "legacy_access", "make_gate"]

app_log = logging.getLogger("gittornado.application")

#: The headers git http-backend sends on anything that must not be cached.
NO_CACHE = {
    "Expires": "Fri, 01 Jan 1980 00:00:00 GMT",
    "Pragma": "no-cache",
    "Cache-Control": "no-cache, max-age=0, must-revalidate",
}

_MAX_AUTH_HEADER = 4096


def parse_basic_auth(header: str | None) -> Credentials | None:
    """``Authorization: Basic ...`` -> Credentials; None when absent (RFC 7617).

    The password may contain ``:`` (only the first one separates). A header
    that is not Basic asks for credentials (401); a broken Basic one is a 400.
    """
    if header is None:
        return None
    if len(header) > _MAX_AUTH_HEADER:
        raise BadRequest("Authorization header too long")
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("only Basic authentication is supported")
    try:
        raw = base64.b64decode(param.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadRequest("malformed Basic credentials") from None
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise BadRequest("malformed Basic credentials")
    return Credentials(username, password)


class _LegacyAccess:
    """Adapts the original GitTornado's ``auth(request) -> (read, write)`` and
    ``gitlookup(request) -> path`` callables to the access protocol."""

    def __init__(self, auth: Any = None, gitlookup: Any = None) -> None:
        self.auth, self.gitlookup = auth, gitlookup

    async def check(self, request: AccessRequest):
        http = request.native_request
        read, write = (True, False) if self.auth is None else await call_hook(self.auth, "__call__", http)
        path = None
        if self.gitlookup is not None:
            path = await call_hook(self.gitlookup, "__call__", http)
            if path is None:
                read = write = False
        # The original auth() never said who the user is, so no unverified name
        # from the Authorization header reaches hooks or logs.
        return Grant(user=None, read=bool(read), write=bool(write), path=path,
                     ask_credentials=self.auth is not None and request.credentials is None)


def legacy_access(auth: Any = None, gitlookup: Any = None) -> _LegacyAccess:
    """An access object from the original GitTornado's ``auth``/``gitlookup`` callables."""
    return _LegacyAccess(auth, gitlookup)


def make_gate(access: Any = None, lookup: Any = None, gitbase: str = ".",
              throttle: Throttle | None = None, auth: Any = None, gitlookup: Any = None) -> Gate:
    """The gate for handler keyword arguments (the original config-dict keys included)."""
    if access is None and (auth is not None or gitlookup is not None):
        access = legacy_access(auth, gitlookup)
    return Gate(access, lookup if lookup is not None else RepositoryLookup(gitbase),
                throttle=throttle)


class GitHandler(tornado.web.RequestHandler):
    """Base of the git handlers: configured only through ``initialize(**kwargs)``.

    :arg access: access object or callable (see ``gittornado.session``); default
        everyone reads, nobody pushes.
    :arg lookup: repository lookup object or callable; default ``RepositoryLookup(gitbase)``.
    :arg gitbase: root of the repositories when no ``lookup`` is given.
    :arg realm: Basic auth realm.
    :arg throttle: a shared ``Throttle`` for failed logins (None: no throttling).
    :arg git: the git executable.
    :arg upload_pack_limit: cap on an inflated upload-pack request (413 beyond).
    :arg receive_pack_limit: cap on a push body, None for unbounded.
    :arg direct_output: let git write fetch answers straight to plain-HTTP
        sockets (default; see ``RPCHandler._answer_directly``).
    :arg body_idle_timeout: seconds a request body may stall before the
        connection is dropped and git stopped (None: never).
    :arg auth, gitlookup, gitcommand: the original GitTornado's config keys, still honoured.
    """

    gate: Gate

    def initialize(self, access: Any = None, lookup: Any = None, gitbase: str = ".",
                   realm: str = "gittornado", throttle: Throttle | None = None,
                   git: str = "git", upload_pack_limit: int = 64 * 1024 * 1024,
                   receive_pack_limit: int | None = None, gate: Gate | None = None,
                   auth: Any = None, gitlookup: Any = None, gitcommand: str | None = None,
                   auth_failed: Any = None, direct_output: bool = True,
                   body_idle_timeout: float | None = 600.0) -> None:
        if gate is None:
            gate = make_gate(access=access, lookup=lookup, gitbase=gitbase, throttle=throttle,
                             auth=auth, gitlookup=gitlookup)
        self.gate = gate
        self.realm = realm
        self.git = gitcommand or git
        self.upload_pack_limit = upload_pack_limit
        self.receive_pack_limit = receive_pack_limit
        self.direct_output = direct_output
        self.body_idle_timeout = body_idle_timeout

    # -- requests -> the gate ------------------------------------------------------
    async def decide(self, repo: str, operation: str) -> Session:
        if has_encoded_separator(self.request.path):
            raise NotFound()
        request = AccessRequest(
            repo=repo, operation=operation,
            credentials=parse_basic_auth(self.request.headers.get("Authorization")),
            remote_addr=self.request.remote_ip or "", transport="http",
            native_request=self.request,
        )
        return await self.gate.decide(request)

    # -- errors -> statuses --------------------------------------------------------
    def refuse(self, exc: GitAccessError) -> None:
        """Answer with ``exc``'s status and message and end the request."""
        if self._finished:
            return
        if self._headers_written:
            # Too late for a status: git reads this as "remote error: ...".
            app_log.warning("%s after the response started: %s", type(exc).__name__, exc)
            self.finish(pktline.error_line(str(exc)))
            return
        self.clear()
        self.set_status(exc.status)
        if exc.status == 401:
            self.set_header("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"')
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            self.set_header("Retry-After", str(retry))
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        if exc.log_message:
            app_log.info("%s %s: %s", exc.status, self.request.path, exc.log_message)
        self.finish(f"{exc}\n")

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, GitAccessError):
            self.refuse(e)
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if status_code == 405:
            self.set_header("Allow", ", ".join(m for m in self.ALLOWED))
        self.finish(f"{status_code} {self._reason}\n")

    ALLOWED: tuple[str, ...] = ("GET", "HEAD")

    def set_default_headers(self) -> None:
        self.set_header("Server", "gittornado")
