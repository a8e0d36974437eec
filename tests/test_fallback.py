"""The fallback route: one WSGI container (and one thread pool) per fallback, not per request."""

from __future__ import annotations

import http.client
import threading

import pytest
import tornado.web
import tornado.wsgi
from conftest import git

from gittornado.access.repos import RepositoryLookup
from gittornado.web.wsgi import FallbackHandler

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
        self.threads: list[threading.Thread] = []  # kept alive: no identity is reused

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


def test_the_code_browser_shares_one_pool_across_its_routes(serve):
    """--web routes repository pages and /-/web/static/ to one fallback: one container, one pool."""
    pytest.importorskip("klaus", reason="the [web] extra (klaus) is not installed")
    before = len(wsgi_threads())
    server = serve(web=True)
    paths = ["/", "/app.git/", "/-/web/static/klaus.css", "/team/app.git/blob/main/hello.txt"] * 5
    assert [get(server, p) for p in paths] == [200] * len(paths)
    assert len(wsgi_threads()) - before <= MAX_WORKERS, [t.name for t in wsgi_threads()]


def test_a_slow_page_does_not_stall_git(serve):
    """While the WSGI app holds a request, git is still served (the app runs off the loop)."""
    entered, release = threading.Event(), threading.Event()

    def slow(environ, start_response):
        entered.set()
        release.wait(30)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    server = serve(fallback=slow)
    statuses: list[int] = []
    waiting = threading.Thread(target=lambda: statuses.append(get(server, "/slow")))
    waiting.start()
    try:
        assert entered.wait(10)
        git("ls-remote", f"{server.url}/app")
        assert not statuses  # the page is still held
    finally:
        release.set()
        waiting.join(30)
    assert statuses == [200]


def test_head_and_lazy_apps_are_framed(serve):
    """HEAD gets the headers only (and the connection stays usable); an app that starts its
    answer lazily (a generator) or never says its length still gets a framed answer."""

    def lazy(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"chunk one, "
        yield b"chunk two"

    server = serve(fallback=lazy)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for method in ("HEAD", "GET", "HEAD", "GET"):
            conn.request(method, "/page")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and resp.headers["Content-Length"] == "20"
            assert body == (b"" if method == "HEAD" else b"chunk one, chunk two")
    finally:
        conn.close()
