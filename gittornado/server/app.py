"""Composition root: options -> the route table -> a Tornado ``Application``.

The CLI, ``server.py`` and the tests all build their app here, so option
combinations are validated once, with clear errors.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import tornado.routing
import tornado.web

from ..access.accessfile import AccessFile
from ..access.authapi import AuthAPI
from ..access.gate import Throttle
from ..engine.advertcache import AdvertCache
from ..engine.packcache import PackCache
from ..transports.dumbhttp import FileHandler
from ..transports.httpbase import GitConfig, config_for
from ..transports.smarthttp import InfoRefsHandler, RPCHandler
from ..transports.websocket import GitWebSocketHandler, WebSocketUpgrade
from ..web.ops import Metrics, ops_routes
from ..web.site import make_fallback
from ..web.wsgi import FallbackHandler
from .settings import Settings

__all__ = ["routes", "make_app", "build_config"]

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


def routes(prefix: Settings | str = "", fallback: Any = None, **handler_kwargs: Any) -> list:
    """The URL table for the git handlers under ``prefix``, plus a catch-all fallback.

    ``routes(settings)`` takes everything from a ``Settings`` (its prefix and
    fallback too) and builds the same gate and engine as ``make_app``, with
    the same defaults (the login throttle and the advertisement cache on).
    Otherwise ``handler_kwargs`` are the git handlers' options (``access``,
    ``lookup``, ``gitbase``, ``realm``, ...; see ``GitConfig.build``, with the
    same defaults), validated here once into one ``GitConfig`` every route and
    request shares. ``fallback`` is a WSGI app (or a Tornado app) for every
    other URL; None adds no catch-all.
    """
    if isinstance(prefix, Settings):
        if handler_kwargs or fallback is not None:
            raise TypeError("give either a Settings or options, not both")
        settings = prefix
        prefix, fallback = settings.prefix, settings.fallback
        handler_kwargs = {"config": build_config(settings)}
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


def build_config(
    settings: Settings, *, throttle: Any = True, pack_cache: Any = None, advert_cache: Any = True
) -> GitConfig:
    """The gate and the engine ``settings`` describe: what ``make_app`` and ``routes`` share.

    The live objects may be given instead of built: ``throttle`` (True: from
    the ``login_*`` settings; a ``Throttle``; False/None: off),
    ``pack_cache`` (None: from ``pack_cache_path``/``pack_cache_size``),
    ``advert_cache`` (True: ``advert_cache_size``; an ``AdvertCache``; False/None: off).
    """
    access = settings.access
    if settings.accessfile:
        access = AccessFile(settings.accessfile)
    elif settings.auth_api:
        access = AuthAPI(settings.auth_api, timeout=settings.auth_api_timeout)
    if throttle is True:
        throttle = (
            Throttle(limit=settings.login_failures, window=settings.login_window, block=settings.login_block)
            if settings.throttled
            else None
        )
    if pack_cache is None and settings.pack_cache_path:
        pack_cache = PackCache(settings.pack_cache_path, max_bytes=settings.pack_cache_size)
    if advert_cache is True:
        advert_cache = AdvertCache(settings.advert_cache_size) if settings.advert_cache_size else None
    return GitConfig.build(
        access=access,
        lookup=settings.lookup,
        gitbase=settings.gitbase,
        allow_external_links=settings.allow_external_links,
        throttle=throttle or None,
        realm=settings.realm,
        git=settings.git,
        upload_pack_limit=settings.upload_pack_limit,
        receive_pack_limit=settings.receive_pack_limit,
        direct_output=settings.direct_output,
        body_idle_timeout=settings.body_idle_timeout,
        send_timeout=settings.send_timeout,
        pack_cache=pack_cache,
        advert_cache=advert_cache or None,
        max_git_processes=settings.max_git_processes,
        git_queue=settings.git_queue,
        git_queue_timeout=settings.git_queue_timeout,
    )


_SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))


def make_app(
    settings: Settings | str = ".",
    /,
    *,
    throttle: Throttle | bool | None = True,
    pack_cache: PackCache | None = None,
    advert_cache: AdvertCache | bool | None = True,
    **options: Any,
) -> tornado.web.Application:
    """Build the gittornado ``Application`` from ``Settings`` (or its fields as keywords).

    ``make_app(Settings(gitbase="/srv/git", accessfile=...))`` or
    ``make_app("/srv/git", accessfile=...)``: keywords that are ``Settings``
    fields build the settings (see ``gittornado.server.settings`` for each);
    any other keyword is passed to ``tornado.web.Application``. The live
    objects ``throttle``, ``pack_cache`` and ``advert_cache`` may be given
    (see ``build_config``). ``routes(settings)`` builds the same gate and
    engine with the same defaults, for an app of your own.

    The app carries ``gate``, ``engine`` (every git run, on every transport:
    ``max_git_processes`` caps them all) and ``metrics``.
    """
    app_settings = {k: options.pop(k) for k in list(options) if k not in _SETTINGS_FIELDS}
    if not isinstance(settings, Settings):
        if "gitbase" in options and settings != ".":
            raise TypeError("give gitbase once, as the first argument or as a keyword")
        options.setdefault("gitbase", settings)
        settings = Settings(**options)
    elif options:
        raise TypeError("give either a Settings or its fields as keywords, not both")
    prefix = _validate_prefix(settings.prefix)
    config = build_config(settings, throttle=throttle, pack_cache=pack_cache, advert_cache=advert_cache)
    gate, engine = config.gate, config.engine
    fallback = settings.fallback
    if fallback is None and (settings.index or settings.web):
        fallback = make_fallback(
            gate,
            gate.lookup,
            prefix=prefix,
            realm=settings.realm,
            index=settings.index,
            web=settings.web,
            ssh_url=settings.ssh_url,
            git=settings.git,
        )
    table = routes(prefix, fallback=fallback, config=config)
    metrics = None
    if settings.ops:  # /-/health, /-/metrics: before the git routes, never a repository
        metrics = Metrics(engine)
        table = ops_routes(prefix, gitbase=settings.gitbase, metrics=metrics) + table
    if settings.web:  # the code browser's CSS/JS under the server's own /-/ (before ops' catch-all)
        table.insert(
            0,
            tornado.web.url(re.escape(prefix) + r"/-/web/static/.*", FallbackHandler, {"fallback": fallback}),
        )
    log_function = app_settings.setdefault("log_function", _log_request)
    if metrics is not None:
        app_settings["log_function"] = lambda handler: (metrics.count_request(handler), log_function(handler))
    app = tornado.web.Application(table, **app_settings)
    app.gate = gate  # type: ignore[attr-defined]
    app.engine = engine  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    app.git_limit = engine.slots  # type: ignore[attr-defined]
    app.settings_object = settings  # type: ignore[attr-defined]
    return app
