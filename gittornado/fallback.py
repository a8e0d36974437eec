"""Everything that is not a git URL: an embedded WSGI app, or the built-in index page.

The WSGI app always runs in a thread pool (``WSGIContainer`` with an
executor): on the event loop it would stall every git transfer. There is one
such container per fallback, not per request: Tornado builds a handler for
every request, and a pool per handler is a thread per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import tornado.web
import tornado.wsgi

from .errors import GitAccessError
from .services import READ
from .session import AccessRequest, Gate
from .web import parse_basic_auth

__all__ = ["FallbackHandler", "IndexApp", "wsgi_container"]

_LOOP_KEY = "gittornado.loop"
access_log = logging.getLogger("gittornado.access")


class _Container(tornado.wsgi.WSGIContainer):
    def environ(self, request):  # runs on the event loop thread
        env = super().environ(request)
        env[_LOOP_KEY] = asyncio.get_running_loop()
        return env

    def _log(self, status_code, request):
        log = access_log.info if status_code < 400 else access_log.warning
        log("%s %s %s %d %.1fms", request.remote_ip, request.method, request.uri, status_code,
            1000.0 * request.request_time())


def wsgi_container(app: Callable, executor: concurrent.futures.Executor | None = None,
                   max_workers: int = 8) -> tornado.wsgi.WSGIContainer:
    """Wrap a WSGI app for ``FallbackHandler``, always with a thread pool."""
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="gittornado-wsgi")
    return _Container(app, executor=executor)


class FallbackHandler(tornado.web.FallbackHandler):
    """Tornado's ``FallbackHandler``; a bare WSGI callable is wrapped with a thread pool.

    The wrapper is made once per (application, fallback) and kept as long as
    the application lives, so its pool goes away with the application.
    """

    _containers: weakref.WeakKeyDictionary[tornado.web.Application, dict[int, tuple[Any, Any]]] \
        = weakref.WeakKeyDictionary()

    def initialize(self, fallback: Any) -> None:
        super().initialize(self._container_for(self.application, fallback))

    @classmethod
    def _container_for(cls, application: tornado.web.Application, fallback: Any) -> Any:
        if isinstance(fallback, (tornado.wsgi.WSGIContainer, tornado.web.Application)) \
                or not callable(fallback):
            return fallback
        # Keyed by id: a WSGI callable need not be hashable. The entry holds the
        # callable itself, so the id cannot be reused while the entry exists.
        per_app = cls._containers.setdefault(application, {})
        entry = per_app.get(id(fallback))
        if entry is None or entry[0] is not fallback:
            entry = per_app[id(fallback)] = (fallback, wsgi_container(fallback))
        return entry[1]


class IndexApp:
    """The default WSGI app: an HTML list of the repositories the requester may read.

    Credentials are honoured when sent (checked once per page, however many
    repositories it lists); a request with wrong ones is asked again (401).
    """

    def __init__(self, gate: Gate, names: Callable[[], Iterable[str]], prefix: str = "",
                 realm: str = "gittornado", title: str = "gittornado") -> None:
        self.gate, self.names, self.prefix = gate, names, prefix.rstrip("/")
        self.realm, self.title = realm, title

    async def _readable(self, environ: dict, names: list[str]) -> list[str]:
        request = AccessRequest(
            repo="", operation=READ,
            credentials=parse_basic_auth(environ.get("HTTP_AUTHORIZATION")),
            remote_addr=environ.get("REMOTE_ADDR", ""), transport="http",
        )
        return await self.gate.readable(names, request)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (self.prefix + "/", self.prefix or "/"):
            return self._answer(start_response, "404 Not Found", "not found\n", "text/plain")
        loop = environ.get(_LOOP_KEY)
        try:
            # Walking the directory tree happens here, in the WSGI thread pool;
            # only the access decisions run on the event loop.
            coro = self._readable(environ, list(self.names()))
            if loop is None:
                names = asyncio.run(coro)
            else:
                names = asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)
        except GitAccessError as exc:
            headers = [("WWW-Authenticate", f'Basic realm="{self.realm}"')] if exc.status == 401 else []
            status = {400: "400 Bad Request", 401: "401 Unauthorized",
                      429: "429 Too Many Requests"}.get(exc.status, "404 Not Found")
            return self._answer(start_response, status, f"{exc}\n", "text/plain", headers)
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "localhost")
        base = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{self.prefix}"
        rows = "\n".join(
            f"<tr><td>{html.escape(n)}</td><td><code>git clone {html.escape(base)}/"
            f"{html.escape(n)}.git</code></td></tr>"
            for n in names
        ) or '<tr><td colspan="2">No repositories you may read.</td></tr>'
        page = (
            f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
            f"</title></head>\n<body><h1>{html.escape(self.title)}</h1>\n<table>\n"
            f"<tr><th>Repository</th><th>Clone</th></tr>\n{rows}\n</table></body></html>\n"
        )
        return self._answer(start_response, "200 OK", page, "text/html; charset=utf-8")

    @staticmethod
    def _answer(start_response: Callable, status: str, body: str, ctype: str,
                headers: list | None = None) -> list[bytes]:
        data = body.encode("utf-8")
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-cache")] + (headers or []))
        return [data]
