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
from dataclasses import dataclass
from typing import Any

import tornado.web

from ..access.gate import Gate, Session, Throttle
from ..access.legacy import legacy_access
from ..access.repos import RepositoryLookup, has_encoded_separator
from ..access.rights import AccessRequest, Credentials
from ..engine.advertcache import AdvertCache
from ..engine.engine import Engine
from ..engine.slots import GitProcessLimit
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
    throttle: Throttle | bool | None = True,
    auth: Any = None,
    gitlookup: Any = None,
    allow_external_links: bool = False,
) -> Gate:
    """The gate for handler keyword arguments (the original config-dict keys included).

    ``throttle=True`` (the default, as in ``make_app``) is brute-force
    protection: 10 failures a minute per address.
    """
    if access is None and (auth is not None or gitlookup is not None):
        access = legacy_access(auth, gitlookup)
    if lookup is None:
        lookup = RepositoryLookup(gitbase, allow_external_links=allow_external_links)
    elif allow_external_links:
        raise ValueError("allow_external_links is for the default lookup; give either, not both")
    if throttle is True:
        throttle = Throttle()
    return Gate(access, lookup, throttle=throttle or None)


@dataclass(frozen=True)
class GitConfig:
    """Everything a git handler needs, built once per app (by ``routes()``/``make_app``).

    :arg gate: the access decision (``Gate``).
    :arg engine: the ``Engine`` that runs git for every transport of the app.
    :arg realm: Basic auth realm.

    ``GitConfig.build(**options)`` makes both from keyword options, with the
    same defaults whoever calls it: the login throttle and the advertisement
    cache on, no cap on git processes.
    """

    gate: Gate
    engine: Engine
    realm: str = "gittornado"

    @property
    def git(self) -> str:
        return self.engine.git

    @classmethod
    def build(
        cls,
        *,
        access: Any = None,
        lookup: Any = None,
        gitbase: str = ".",
        throttle: Throttle | bool | None = True,
        gate: Gate | None = None,
        auth: Any = None,
        gitlookup: Any = None,
        gitcommand: str | None = None,
        git: str = "git",
        realm: str = "gittornado",
        allow_external_links: bool = False,
        upload_pack_limit: int | None = 64 * 1024 * 1024,
        receive_pack_limit: int | None = None,
        direct_output: bool = True,
        body_idle_timeout: float | None = 600.0,
        send_timeout: float | None = 600.0,
        pack_cache: Any = None,
        advert_cache: AdvertCache | bool | None = True,
        max_git_processes: int | None = None,
        git_queue: int = 100,
        git_queue_timeout: float = 30.0,
    ) -> GitConfig:
        """The config for keyword options (the original GitTornado keys included:
        ``auth``, ``gitlookup``, ``gitcommand``)."""
        if gate is None:
            gate = make_gate(
                access=access,
                lookup=lookup,
                gitbase=gitbase,
                throttle=throttle,
                auth=auth,
                gitlookup=gitlookup,
                allow_external_links=allow_external_links,
            )
        if advert_cache is True:
            advert_cache = AdvertCache()
        engine = Engine(
            git=gitcommand or git,
            upload_pack_limit=upload_pack_limit,
            receive_pack_limit=receive_pack_limit,
            input_idle=body_idle_timeout,
            output_idle=send_timeout,
            direct_output=direct_output,
            slots=GitProcessLimit(max_git_processes, git_queue, git_queue_timeout)
            if max_git_processes
            else None,
            pack_cache=pack_cache,
            advert_cache=advert_cache or None,
        )
        return cls(gate=gate, engine=engine, realm=realm)


#: Where an application keeps the configs of its hand-written routes.
_APP_CONFIGS = "_gittornado_route_configs"


def config_for(kwargs: dict[str, Any], application: Any = None) -> GitConfig:
    """The ``GitConfig`` for a route's ``initialize`` keywords, built once per route and app.

    Tornado passes a route's same keyword objects on every request, so a
    hand-written route's gate (and its login throttle) is built on its first
    request and kept on the application, keyed by the identity of each value
    (kept alive with it): nothing is shared between two applications.
    """
    config = kwargs.get("config")
    if config is not None:
        if len(kwargs) > 1:
            raise TypeError("give either config= or the individual options, not both")
        return config
    if application is None:
        return GitConfig.build(**kwargs)
    configs = application.__dict__.setdefault(_APP_CONFIGS, {})
    key = tuple(sorted((k, id(v)) for k, v in kwargs.items()))
    hit = configs.get(key)
    if hit is None:
        hit = configs[key] = (GitConfig.build(**kwargs), tuple(kwargs.values()))
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
        self.config = config = config_for(kwargs, self.application)
        self.gate = config.gate
        self.engine = config.engine
        self.realm = config.realm
        self.git = config.engine.git

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
