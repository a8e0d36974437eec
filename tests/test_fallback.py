"""The fallback route: one WSGI container (and one thread pool) per fallback, not per request."""

from __future__ import annotations

import http.client
import threading

import tornado.web
import tornado.wsgi

from gittornado.fallback import FallbackHandler
from gittornado.repos import RepositoryLookup

#: ``wsgi_container``'s default pool size.
MAX_WORKERS = 8


def get(server, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wsgi_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gittornado-wsgi")]


class RecordingLookup(RepositoryLookup):
    """The default lookup, noting which thread walks the tree for the index page."""

    def __init__(self, gitbase: str) -> None:
        super().__init__(gitbase)
        self.threads: list[threading.Thread] = []   # kept alive: no identity is reused

    def names(self, max_depth: int = 4) -> list[str]:
        self.threads.append(threading.current_thread())
        return super().names(max_depth)


def distinct(threads: list[threading.Thread]) -> int:
    return len({id(t) for t in threads})


def test_index_requests_reuse_one_thread_pool(serve, gitbase):
    lookup = RecordingLookup(str(gitbase))
    before = len(wsgi_threads())
    server = serve(lookup=lookup)
    assert [get(server) for _ in range(20)] == [200] * 20
    assert all(t.name.startswith("gittornado-wsgi") for t in lookup.threads)
    assert distinct(lookup.threads) <= MAX_WORKERS
    assert len(wsgi_threads()) - before <= MAX_WORKERS, [t.name for t in wsgi_threads()]


def test_a_wsgi_fallback_runs_in_one_pool(serve):
    """A plain WSGI callable passed as ``fallback`` is wrapped once, and not on the event loop."""
    seen: list[threading.Thread] = []

    def app(environ, start_response):
        seen.append(threading.current_thread())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    before = len(wsgi_threads())
    server = serve(fallback=app)
    assert [get(server, f"/page/{i}") for i in range(20)] == [200] * 20
    assert all(t.name.startswith("gittornado-wsgi") for t in seen), seen
    assert distinct(seen) <= MAX_WORKERS
    assert len(wsgi_threads()) - before <= MAX_WORKERS


def test_containers_and_applications_are_passed_through():
    container = tornado.wsgi.WSGIContainer(lambda environ, start_response: [])
    nested = tornado.web.Application()
    for fallback in (container, nested):
        assert FallbackHandler._container_for(tornado.web.Application(), fallback) is fallback
