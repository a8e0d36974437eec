"""Everything that is not a git URL is served by a WSGI app: the container it runs in.

The WSGI app always runs in a thread pool (``WSGIContainer`` with an
executor): on the event loop it would stall every git transfer. There is one
such container per fallback, not per request: Tornado builds a handler for
every request, and a pool per handler is a thread per request.

This module is also the WSGI side of the access seam, shared by the index
page (``web.index``) and the code browser (``web.browse``): a WSGI app asks
the same ``Gate`` the git handlers ask, on the event loop that owns it, and
maps its refusals to the statuses SPEC prescribes. It imports neither of
them; the app built from both is ``web.site.make_fallback``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import tornado.web
import tornado.wsgi

from ..access.gate import AccessRequest
from ..errors import GitAccessError
from ..protocol.services import READ
from ..transports.httpbase import parse_basic_auth

__all__ = [
    "FallbackHandler",
    "wsgi_container",
    "run_on_loop",
    "access_request",
    "refuse",
    "respond",
]

#: The event loop that serves the request (and owns the gate), in the WSGI environ.
LOOP_KEY = "gittornado.loop"
#: The request path as the client sent it, still percent-encoded.
RAW_PATH_KEY = "gittornado.raw_path"
access_log = logging.getLogger("gittornado.access")

_T = TypeVar("_T")


def _whole_answer(app: Callable) -> Callable:
    """``app`` run to the end in one call: its body read, joined and closed in the WSGI thread.

    ``WSGIContainer`` keeps the whole body anyway, but it fetches each chunk
    with a trip through the pool, calls ``close()`` on the event loop, and
    sends a HEAD answer's body (Tornado then drops the connection). Here the
    chunks are read (which also runs an app that calls ``start_response``
    lazily), joined and closed in the WSGI thread; the answer gets its length,
    and a HEAD answer no body.
    """

    def whole(environ: dict, start_response: Callable) -> list[bytes]:
        started: list = []
        written: list[bytes] = []  # the legacy write() callable's data comes first

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [status, headers, exc_info]
            return written.append

        result = app(environ, capture)
        try:
            body = b"".join(written) + b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError(f"WSGI app {app!r} did not call start_response")
        status, headers, exc_info = started
        if not any(k.lower() == "content-length" for k, _ in headers) and status[:3] not in ("204", "304"):
            headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(status, headers, exc_info)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return whole


class _Container(tornado.wsgi.WSGIContainer):
    def __init__(self, app: Callable, executor: concurrent.futures.Executor) -> None:
        super().__init__(_whole_answer(app), executor=executor)

    def environ(self, request):  # runs on the event loop thread
        env = super().environ(request)
        env[LOOP_KEY] = asyncio.get_running_loop()
        env[RAW_PATH_KEY] = request.path
        return env

    def _log(self, status_code, request):
        log = access_log.info if status_code < 400 else access_log.warning
        log(
            "%s %s %s %d %.1fms",
            request.remote_ip,
            request.method,
            request.uri,
            status_code,
            1000.0 * request.request_time(),
        )


def wsgi_container(
    app: Callable, executor: concurrent.futures.Executor | None = None, max_workers: int = 8
) -> tornado.wsgi.WSGIContainer:
    """Wrap a WSGI app for ``FallbackHandler``, always with a thread pool."""
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="gittornado-wsgi"
        )
    return _Container(app, executor=executor)


class FallbackHandler(tornado.web.FallbackHandler):
    """Tornado's ``FallbackHandler``; a bare WSGI callable is wrapped with a thread pool.

    The wrapper is made once per (application, fallback) and kept as long as
    the application lives, so its pool goes away with the application.
    """

    _containers: weakref.WeakKeyDictionary[tornado.web.Application, dict[int, tuple[Any, Any]]] = (
        weakref.WeakKeyDictionary()
    )

    def initialize(self, fallback: Any) -> None:
        super().initialize(self._container_for(self.application, fallback))

    @classmethod
    def _container_for(cls, application: tornado.web.Application, fallback: Any) -> Any:
        passed_through = (tornado.wsgi.WSGIContainer, tornado.web.Application)
        if isinstance(fallback, passed_through) or not callable(fallback):
            return fallback
        # Keyed by id: a WSGI callable need not be hashable. The entry holds the
        # callable itself, so the id cannot be reused while the entry exists.
        per_app = cls._containers.setdefault(application, {})
        entry = per_app.get(id(fallback))
        if entry is None or entry[0] is not fallback:
            entry = per_app[id(fallback)] = (fallback, wsgi_container(fallback))
        return entry[1]


# -- the access seam, WSGI side -------------------------------------------------------------


def run_on_loop(environ: dict, coro: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
    """Run a gate coroutine on the event loop serving this request; block this WSGI thread.

    The gate (its login throttle, the access file's password pool) belongs to
    that loop. A WSGI app served elsewhere (no loop in the environ) gets a
    private loop for the call.
    """
    loop = environ.get(LOOP_KEY)
    if loop is None:
        return asyncio.run(coro)
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def access_request(environ: dict, repo: str = "", operation: str = READ) -> AccessRequest:
    """The gate's question for a WSGI request; a broken ``Authorization`` raises (400/401)."""
    return AccessRequest(
        repo=repo,
        operation=operation,
        credentials=parse_basic_auth(environ.get("HTTP_AUTHORIZATION")),
        remote_addr=environ.get("REMOTE_ADDR", ""),
        transport="http",
    )


def respond(
    start_response: Callable,
    status: int,
    body: str | bytes,
    ctype: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    """A whole (small) answer: status line, length, no caching."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    start_response(
        f"{status} {http.HTTPStatus(status).phrase}",
        [("Content-Type", ctype), ("Content-Length", str(len(data))), ("Cache-Control", "no-cache")]
        + (headers or []),
    )
    return [data]


def refuse(start_response: Callable, exc: GitAccessError, realm: str) -> list[bytes]:
    """The gate's refusal as the git handlers give it: 401 asks for Basic credentials."""
    headers = []
    if exc.status == 401:
        headers.append(("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'))
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers.append(("Retry-After", str(retry)))
    try:
        status = http.HTTPStatus(exc.status).value
    except ValueError:
        status = 500
    return respond(start_response, status, f"{exc}\n", headers=headers)
