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

from ..access.accessfile import AccessFile
from ..access.authapi import AuthAPI
from ..access.gate import Gate, Throttle
from ..access.repos import RepositoryLookup
from ..engine.advertcache import AdvertCache
from ..engine.packcache import PackCache
from ..engine.slots import GitProcessLimit, limited
from ..transports.dumbhttp import FileHandler
from ..transports.httpbase import GitConfig, config_for
from ..transports.smarthttp import InfoRefsHandler, RPCHandler
from ..transports.websocket import GitWebSocketHandler, WebSocketUpgrade
from ..web.ops import count_request, ops_routes
from ..web.site import make_fallback
from ..web.wsgi import FallbackHandler

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
    log = (
        access_log.info
        if (status < 400 or status == 401) and not aborted
        else access_log.warning
        if status < 500
        else access_log.error
    )
    session = getattr(handler, "session", None)
    user = getattr(session, "user", None) or "-"
    req = handler.request
    log(
        "%s %s %s %d %.1fms user=%s%s",
        req.remote_ip,
        req.method,
        req.uri,
        status,
        1000.0 * req.request_time(),
        user,
        " aborted" if aborted else "",
    )


def make_app(
    gitbase: str = ".",
    *,
    accessfile: str | None = None,
    access: Any = None,
    lookup: Any = None,
    realm: str = "gittornado",
    prefix: str = "",
    fallback: Any = None,
    index: bool = True,
    throttle: Throttle | bool | None = True,
    git: str = "git",
    upload_pack_limit: int = 64 * 1024 * 1024,
    receive_pack_limit: int | None = None,
    direct_output: bool = True,
    body_idle_timeout: float | None = 600.0,
    send_timeout: float | None = 600.0,
    auth_api: str | None = None,
    allow_external_links: bool = False,
    web: bool = False,
    ssh_url: str | None = None,
    ops: bool = True,
    max_git_processes: int | None = None,
    git_queue: int = 100,
    git_queue_timeout: float = 30.0,
    pack_cache: PackCache | None = None,
    advert_cache: AdvertCache | bool | None = True,
    **settings: Any,
) -> tornado.web.Application:
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
    :arg web: serve the code browser (klaus, the ``[web]`` extra) on the repositories'
        own URLs, behind the same access rules (``gittornado.browse``).
    :arg ssh_url: the index page shows SSH clone URLs as ``ssh_url + name + '.git'``
        (e.g. ``git@host:``).
    :arg max_git_processes: smart-HTTP requests running git at once (None: no cap); the
        excess waits, at most ``git_queue`` of them for ``git_queue_timeout`` seconds,
        then gets 503 with ``Retry-After`` (``gittornado.gitqueue``).
    :arg pack_cache: a ``PackCache`` (``gittornado.packcache``): identical fetches share
        one pack-objects run, later ones are served from its file (default None: off).
    :arg advert_cache: ``info/refs`` and v2 ``ls-refs`` answered from memory while the
        repository's refs are unchanged (``gittornado.advertcache``): True (default,
        64 MiB per process), an ``AdvertCache``, or False/None.
    :arg ops: serve ``/-/health`` and ``/-/metrics`` under the prefix (``gittornado.ops``).
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
    repo_lookup = (
        lookup if lookup is not None else RepositoryLookup(gitbase, allow_external_links=allow_external_links)
    )
    if throttle is True:
        throttle = Throttle()
    gate = Gate(access, repo_lookup, throttle=throttle or None)
    if web and fallback is not None:
        raise ValueError("give either web or fallback, not both")
    if fallback is None and (index or web):
        fallback = make_fallback(
            gate, repo_lookup, prefix=prefix, realm=realm, index=index, web=web, ssh_url=ssh_url, git=git
        )
    if advert_cache is True:
        advert_cache = AdvertCache()
    elif advert_cache is False:
        advert_cache = None
    config = GitConfig.build(
        gate=gate,
        realm=realm,
        git=git,
        upload_pack_limit=upload_pack_limit,
        receive_pack_limit=receive_pack_limit,
        direct_output=direct_output,
        body_idle_timeout=body_idle_timeout,
        send_timeout=send_timeout,
        pack_cache=pack_cache,
        advert_cache=advert_cache,
    )
    table = routes(prefix, fallback=fallback, config=config)
    limit = None
    if max_git_processes:
        limit = GitProcessLimit(max_git_processes, git_queue, git_queue_timeout)
        for rule in table:
            if rule.target in (InfoRefsHandler, RPCHandler):
                rule.target = limited(rule.target, limit)
    if ops:  # /-/health, /-/metrics: before the git routes, never a repository
        table = (
            ops_routes(prefix, gitbase=gitbase, git=git, advert_cache=advert_cache, pack_cache=pack_cache)
            + table
        )
    if web:  # the code browser's CSS/JS under the server's own /-/ (before ops' catch-all)
        table.insert(
            0,
            tornado.web.url(re.escape(prefix) + r"/-/web/static/.*", FallbackHandler, {"fallback": fallback}),
        )
    log_function = settings.setdefault("log_function", _log_request)
    if ops:
        settings["log_function"] = lambda handler: (count_request(handler), log_function(handler))
    app = tornado.web.Application(table, **settings)
    app.gate = gate  # type: ignore[attr-defined]
    app.git_limit = limit  # type: ignore[attr-defined]
    return app
