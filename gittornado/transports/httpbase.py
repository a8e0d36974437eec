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
import threading
from dataclasses import dataclass
from typing import Any

import tornado.web

from ..access.gate import Gate, Session, Throttle
from ..access.legacy import legacy_access
from ..access.repos import RepositoryLookup, has_encoded_separator
from ..access.rights import AccessRequest, Credentials
from ..errors import BadRequest, GitAccessError, NotFound, Unauthorized
from ..protocol import pktline

__all__ = [
    "GitHandler",
    "GitConfig",
    "config_for",
    "parse_basic_auth",
    "NO_CACHE",
    "legacy_access",
    "make_gate",
]

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


def make_gate(
    access: Any = None,
    lookup: Any = None,
    gitbase: str = ".",
    throttle: Throttle | None = None,
    auth: Any = None,
    gitlookup: Any = None,
) -> Gate:
    """The gate for handler keyword arguments (the original config-dict keys included)."""
    if access is None and (auth is not None or gitlookup is not None):
        access = legacy_access(auth, gitlookup)
    return Gate(access, lookup if lookup is not None else RepositoryLookup(gitbase), throttle=throttle)


@dataclass(frozen=True)
class GitConfig:
    """Everything a git handler needs, validated once (by ``routes()``/``make_app``).

    :arg gate: the access decision (``Gate``); built from the access keywords
        by ``GitConfig.build``.
    :arg realm: Basic auth realm.
    :arg git: the git executable.
    :arg upload_pack_limit: cap on an inflated upload-pack request (413 beyond).
    :arg receive_pack_limit: cap on a push body, None for unbounded.
    :arg direct_output: let the kernel move fetch answers from git's pipe into
        plain-HTTP sockets (``os.splice``); False relays them through Python.
    :arg body_idle_timeout: seconds git may wait for request data that does not
        come before the request is dropped (None: never).
    :arg send_timeout: seconds a client may take no answer data before git is
        stopped and the connection dropped (None: never).
    :arg pack_cache: a ``packcache.PackCache``: fetches of the same objects share
        one pack-objects run and are served from its file (None: off).
    :arg advert_cache: an ``advertcache.AdvertCache``: ref advertisements served
        from memory while the repository's refs are unchanged (None: off).
    """

    gate: Gate
    realm: str = "gittornado"
    git: str = "git"
    upload_pack_limit: int | None = 64 * 1024 * 1024
    receive_pack_limit: int | None = None
    direct_output: bool = True
    body_idle_timeout: float | None = 600.0
    send_timeout: float | None = 600.0
    pack_cache: Any = None
    advert_cache: Any = None

    def git_options(self, service: Any) -> tuple[str, ...]:
        """The extra ``-c`` settings a run of ``service`` gets (the pack cache's hook)."""
        if self.pack_cache is not None and service.subcommand == "upload-pack":
            return tuple(self.pack_cache.git_options())
        return ()

    @classmethod
    def build(
        cls,
        *,
        access: Any = None,
        lookup: Any = None,
        gitbase: str = ".",
        throttle: Throttle | None = None,
        gate: Gate | None = None,
        auth: Any = None,
        gitlookup: Any = None,
        gitcommand: str | None = None,
        auth_failed: Any = None,
        git: str = "git",
        **options: Any,
    ) -> GitConfig:
        """The config for handler keyword arguments (the original GitTornado keys included:
        ``auth``, ``gitlookup``, ``gitcommand``; ``auth_failed`` is accepted and unused)."""
        del auth_failed
        if gate is None:
            gate = make_gate(
                access=access,
                lookup=lookup,
                gitbase=gitbase,
                throttle=throttle,
                auth=auth,
                gitlookup=gitlookup,
            )
        config = cls(gate=gate, git=gitcommand or git, **options)
        for name in ("upload_pack_limit", "receive_pack_limit"):
            value = getattr(config, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        for name in ("body_idle_timeout", "send_timeout"):
            value = getattr(config, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")
        return config


#: Configs built from hand-written routes' keyword arguments, keyed by the
#: identity of each value: Tornado passes the same objects on every request,
#: so a route's gate (and its login throttle) is built once, not per request.
_CONFIGS: dict[tuple, tuple[GitConfig, tuple]] = {}
_CONFIGS_LOCK = threading.Lock()


def config_for(kwargs: dict[str, Any]) -> GitConfig:
    """The ``GitConfig`` for a route's ``initialize`` keywords, built once per route."""
    config = kwargs.get("config")
    if config is not None:
        if len(kwargs) > 1:
            raise TypeError("give either config= or the individual options, not both")
        return config
    key = tuple(sorted((k, id(v)) for k, v in kwargs.items()))
    with _CONFIGS_LOCK:
        hit = _CONFIGS.get(key)
        if hit is None:
            # The values are kept alive with the entry, so their ids stay theirs.
            hit = _CONFIGS[key] = (GitConfig.build(**kwargs), tuple(kwargs.values()))
    return hit[0]


class GitHandler(tornado.web.RequestHandler):
    """Base of the git handlers: configured only through ``initialize(**kwargs)``.

    Pass ``config=GitConfig(...)`` (what ``routes()`` does), or the options
    themselves as keywords (hand-written routes): ``access``, ``lookup``,
    ``gitbase``, ``throttle``, ``gate`` and the fields of ``GitConfig``; the
    original GitTornado keys ``auth``, ``gitlookup`` and ``gitcommand`` are
    still honoured. An unknown keyword is a ``TypeError``, not ignored.
    """

    config: GitConfig
    #: What the access policy, hooks (``GITTORNADO_TRANSPORT``) and logs are told.
    transport = "http"

    def initialize(self, **kwargs: Any) -> None:
        self.config = config = config_for(kwargs)
        self.gate = config.gate
        self.realm = config.realm
        self.git = config.git

    # -- requests -> the gate ------------------------------------------------------
    async def decide(self, repo: str, operation: str) -> Session:
        if has_encoded_separator(self.request.path):
            raise NotFound()
        request = AccessRequest(
            repo=repo,
            operation=operation,
            credentials=parse_basic_auth(self.request.headers.get("Authorization")),
            remote_addr=self.request.remote_ip or "",
            transport=self.transport,
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
        if self._body_unread():
            # Tornado hangs up after an answer given before the body was read:
            # say so, so a client does not send its next request into a closing socket.
            self.set_header("Connection", "close")
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

    #: The client left (or was dropped) before the answer ended; the access line says so.
    aborted = False

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if not self._finished:
            # Tornado logs a request only when it finishes: one that ends with the
            # connection would leave no access line at all.
            self.aborted = True
            self._log()

    def _log(self) -> None:
        if not getattr(self, "_logged", False):
            self._logged = True
            super()._log()

    def _body_unread(self) -> bool:
        """True while a request body is still to be read (see ``RPCHandler``)."""
        return False

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, GitAccessError):
            self.refuse(e)
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if self._body_unread():
            self.set_header("Connection", "close")
        if status_code == 405:
            self.set_header("Allow", ", ".join(m for m in self.ALLOWED))
        self.finish(f"{status_code} {self._reason}\n")

    ALLOWED: tuple[str, ...] = ("GET", "HEAD")

    def set_default_headers(self) -> None:
        self.set_header("Server", "gittornado")
