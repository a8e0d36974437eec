"""Composition root: options -> the route table -> a Tornado ``Application``.

The CLI, ``server.py`` and the tests all build their app here, so option
combinations are validated once, with clear errors.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import tornado.routing
import tornado.web

from .access import AccessFile
from .authapi import AuthAPI
from .dumbhttp import FileHandler
from .fallback import FallbackHandler, IndexApp
from .repos import RepositoryLookup
from .session import Gate, Throttle
from .smarthttp import InfoRefsHandler, RPCHandler
from .web import GitConfig, config_for
from .websocket import GitWebSocketHandler, WebSocketUpgrade

__all__ = ["routes", "make_app"]

access_log = logging.getLogger("gittornado.access")

# Route patterns (Tornado appends "$"; \Z also refuses a trailing newline).
# The repository part is matched loosely here and checked strictly by the
# gate (normalize_name + realpath containment): routing is not a security check.
_INFO_REFS = r"/(?P<repo>.+)/info/refs\Z"
_RPC = r"/(?P<repo>.+)/(?P<service>git-[a-z-]+)\Z"
_FILES = (
    r"/(?P<repo>.+?)/(?P<path>HEAD|objects/"
    r"(?:info/[a-z-]+|[0-9a-f]{2}/[0-9a-f]+|pack/pack-[0-9a-f]+\.(?:pack|idx)))\Z"
)


def _validate_prefix(prefix: str) -> str:
    prefix = prefix or ""
    if prefix and (not prefix.startswith("/") or "//" in prefix or re.search(r"[?#%\s]", prefix)):
        raise ValueError(f"prefix must be a plain absolute path like /git, not {prefix!r}")
    return prefix.rstrip("/")


def routes(prefix: str = "", fallback: Any = None, **handler_kwargs: Any) -> list:
    """The URL table for the git handlers under ``prefix``, plus a catch-all fallback.

    ``handler_kwargs`` are the git handlers' options (``access``, ``lookup``,
    ``gitbase``, ``realm``, ...; see ``GitConfig``), validated here once into
    one ``GitConfig`` every route and request shares (one gate, one login
    throttle). ``fallback`` is a WSGI app (or a Tornado app) for every other
    URL; None adds no catch-all.
    """
    p = re.escape(_validate_prefix(prefix))
    config = config_for(handler_kwargs)
    kwargs = {"config": config}
    table = [
        tornado.web.url(p + _INFO_REFS, InfoRefsHandler, kwargs, name="info_refs"),
        # ws://: the same URLs, only for a GET asking to upgrade (so before "rpc").
        tornado.routing.Rule(WebSocketUpgrade(p + _RPC), GitWebSocketHandler, kwargs, name="ws"),
        tornado.web.url(p + _RPC, RPCHandler, kwargs, name="rpc"),
        tornado.web.url(p + _FILES, FileHandler, kwargs, name="files"),
    ]
    if fallback is not None:
        table.append(tornado.web.url(r".*", FallbackHandler, {"fallback": fallback}))
    return table


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    aborted = getattr(handler, "aborted", False)
    # 401 is how every authenticated git session starts (git asks without a password first).
    log = access_log.info if (status < 400 or status == 401) and not aborted else \
        access_log.warning if status < 500 else access_log.error
    session = getattr(handler, "session", None)
    user = getattr(session, "user", None) or "-"
    req = handler.request
    log("%s %s %s %d %.1fms user=%s%s", req.remote_ip, req.method, req.uri, status,
        1000.0 * req.request_time(), user, " aborted" if aborted else "")


def make_app(gitbase: str = ".", *, accessfile: str | None = None, access: Any = None,
             lookup: Any = None, realm: str = "gittornado", prefix: str = "",
             fallback: Any = None, index: bool = True, throttle: Throttle | bool | None = True,
             git: str = "git", upload_pack_limit: int = 64 * 1024 * 1024,
             receive_pack_limit: int | None = None, direct_output: bool = True,
             body_idle_timeout: float | None = 600.0, send_timeout: float | None = 600.0,
             auth_api: str | None = None, allow_external_links: bool = False,
             **settings: Any) -> tornado.web.Application:
    """Build the gittornado ``Application``.

    :arg gitbase: directory holding the repositories (default lookup's root).
    :arg accessfile: INI access file path; exclusive with ``access``.
    :arg access: an access object or callable (see ``gittornado.session``).
    :arg auth_api: URL of a Gitorious-style authorization API (``gittornado.authapi``);
        exclusive with ``accessfile`` and ``access``.
    :arg lookup: a repository lookup object or callable.
    :arg prefix: mount point when a proxy forwards ``/prefix/...`` unchanged.
    :arg fallback: WSGI app for non-git URLs; default the built-in index page
        (``index=False`` for none: plain 404s).
    :arg throttle: brute-force protection: True (10 failures/minute/address),
        a ``Throttle``, or False/None.
    :arg direct_output: the kernel moves answers from git's pipe into plain-HTTP
        client sockets (``os.splice``, no per-byte work in Python); False relays
        them through Python.
    :arg body_idle_timeout: seconds git may wait for request data that does not
        come before the connection is dropped and git stopped (default 600; None: never).
    :arg send_timeout: seconds a client may take none of an answer before git is
        stopped and the connection dropped (default 600; None: never).
    :arg allow_external_links: the default lookup serves repositories whose
        directory, ``objects/``, ``refs/`` (or alternates) resolve outside
        ``gitbase`` (default False: such a repository is not found).
    :arg settings: passed to ``tornado.web.Application``.
    """
    if allow_external_links and lookup is not None:
        raise ValueError("allow_external_links is for the default lookup; give either, not both")
    if accessfile and access is not None:
        raise ValueError("give either accessfile or access, not both")
    if auth_api and (accessfile or access is not None):
        raise ValueError("give either auth_api or accessfile/access, not both")
    prefix = _validate_prefix(prefix)
    if accessfile:
        access = AccessFile(accessfile)
    if auth_api:
        access = AuthAPI(auth_api)
    repo_lookup = lookup if lookup is not None else RepositoryLookup(
        gitbase, allow_external_links=allow_external_links)
    if throttle is True:
        throttle = Throttle()
    gate = Gate(access, repo_lookup, throttle=throttle or None)
    if fallback is None and index:
        if not hasattr(repo_lookup, "names"):
            raise ValueError("the index page needs a lookup with names(); pass index=False")
        fallback = IndexApp(gate, repo_lookup.names, prefix=prefix, realm=realm)
    config = GitConfig.build(gate=gate, realm=realm, git=git, upload_pack_limit=upload_pack_limit,
                             receive_pack_limit=receive_pack_limit, direct_output=direct_output,
                             body_idle_timeout=body_idle_timeout, send_timeout=send_timeout)
    table = routes(prefix, fallback=fallback, config=config)
    settings.setdefault("log_function", _log_request)
    app = tornado.web.Application(table, **settings)
    app.gate = gate  # type: ignore[attr-defined]
    return app
