"""The hostile suite, short form: what an attacker tries, against the real server, within a minute.

The scenarios live in ``stress/`` (``python -m stress`` runs them at full
size and prints their figures); here they run small, and each test asserts
that its scenario listed no problem. One server (the ``gittornado`` command,
``--xheaders`` so guesses can come from many addresses) serves most of them;
descriptor exhaustion gets servers of its own. Connection limits are also
tested in process, on ``GitHTTPServer`` itself.

Every loop is bounded in count and time; every connection stays on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import tornado.netutil
from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gittornado  # noqa: E402
from gittornado.server.httpserver import GitHTTPServer, default_max_connections  # noqa: E402
from stress import attacks  # noqa: E402
from stress.client import basic, pkt, raw, request, rev  # noqa: E402
from stress.server import git_processes  # noqa: E402


def passed(fig: attacks.Figures) -> None:
    assert not fig.problems, "\n".join([*fig.problems, repr(dict(fig))])


@pytest.fixture(scope="module")
def target(tmp_path_factory, hermetic_git):
    t = attacks.setup_target(
        tmp_path_factory.mktemp("hostile"), "--header-timeout", "1", "--idle-timeout", "2", xheaders=True
    )
    yield t
    code = t.server.stop()
    log = t.server.log()
    assert code == 0, log[-2000:]
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    assert not re.search(r" (ERROR|CRITICAL) ", log), re.findall(r".* (?:ERROR|CRITICAL) .*", log)[:5]


# -- git's own operations, interrupted or crowded ---------------------------------------------


def test_client_killed_at_random_points_of_a_push(target):
    """Ten pushes (real git killed, or a raw body cut at a random byte): main old or new, fsck
    clean, no quarantine, no git left."""
    fig = attacks.push_kills(target, 10, seed=1, size=512 * 1024)
    passed(fig)
    assert fig["refs_unchanged"] + fig["refs_whole"] == 10


def test_concurrent_pushes_to_one_branch_and_to_many(target):
    passed(attacks.concurrent_pushes(target, 6))


def test_mixed_clients_leave_nothing_behind(target):
    """50 clients at once, of every kind: 0 errors, then threads and fds back to their idle level."""
    fig = attacks.mixed_clients(target, 50)
    passed(fig)
    assert fig["errors"] == 0


# -- connections that never finish ------------------------------------------------------------


def test_slowloris_connections_are_closed_after_the_header_timeout(target):
    """60 connections that never finish their headers (half trickle, half silent) are closed
    after --header-timeout (1 s here); before, Tornado kept them for an hour."""
    passed(attacks.slowloris(target, 60, header_timeout=1))


def test_idle_keepalive_connection_is_closed_after_the_idle_timeout(target):
    passed(attacks.idle_keepalive(target, idle_timeout=2))


def test_header_bombs_are_refused(target):
    passed(attacks.header_bombs(target))


# -- bodies that lie ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [name for name, *_ in attacks.GZIP_CASES])
def test_gzip_bomb_on_every_endpoint(target, case):
    """A few KB inflating to 16 MiB (4 MiB of tiny pkt-lines), per endpoint: never a 5xx, and
    a probe on another connection keeps getting answers within 50 ms (median)."""
    size = 4 << 20 if "pkt-lines" in case else 16 << 20
    passed(attacks.gzip_bombs(target, size, names=[case]))


def test_bad_pktlines_are_400_and_leave_no_git(target):
    passed(attacks.bad_pktlines(target))


# -- access --------------------------------------------------------------------------------------


def test_parallel_password_guessing(target):
    fig = attacks.guessing(target, 100)
    passed(fig)
    assert fig["checked"] <= 12 and fig["refused_429"] >= 88


def test_path_tricks(target):
    """..'s, encodings, NUL, backslashes, symlinked repositories and parts: nothing outside served."""
    fig = attacks.path_tricks(target)
    passed(fig)
    assert fig["leaks"] == 0 and fig["5xx"] == 0


# -- what the logs say (finding 5) ------------------------------------------------------------


def _access_lines(target, needle: str) -> list[str]:
    return [
        line for line in target.server.log().splitlines() if "gittornado.access" in line and needle in line
    ]


def test_an_aborted_push_has_one_access_line_and_an_aborted_audit(target):
    """A push cut mid-body: one access line for the request and ``result=aborted`` in the audit
    (before: no access line at all, and an audit that looked like success)."""
    marker = f"/app/git-receive-pack?cut={time.monotonic_ns()}"
    old = rev(target.base / "app.git", "main")
    body = pkt(f"{old} {'1' * 40} refs/heads/main\0report-status\n") + b"0000PACK\0\0\0\2\0\0\0\1"
    head = (
        f"POST {marker} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-receive-pack-request\r\n"
        f"Authorization: {basic('alice', 'alice-pw')}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", target.port)) as sock:
        sock.sendall(head + body)
        wait_for(lambda: git_processes(str(target.base / "app.git")), message="receive-pack")
    lines = wait_for(lambda: _access_lines(target, marker), message="the access line")
    assert len(lines) == 1 and "user=alice" in lines[0], lines
    # The run's audit line: the only receive-pack that took exactly these bytes.
    audit = wait_for(
        lambda: [
            x
            for x in target.server.log().splitlines()
            if "gittornado.audit" in x and "service=git-receive-pack" in x and f" in={len(body)} " in x
        ],
        message="the audit line",
    )
    assert len(audit) == 1 and "result=aborted" in audit[0], audit
    assert len(_access_lines(target, marker)) == 1


def test_a_413_is_logged_with_its_user(tmp_path, hermetic_git):
    t = attacks.setup_target(tmp_path, "--max-push-size", "1000")
    try:
        head = (
            f"POST /app/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/x-git-receive-pack-request\r\n"
            f"Authorization: {basic('alice', 'alice-pw')}\r\nContent-Length: 5000\r\n\r\n"
        ).encode()
        answer = raw(t.port, head + b"0" * 5000)
        assert answer.status == 413
        line = wait_for(
            lambda: [x for x in t.server.log().splitlines() if " 413 " in x and "access" in x],
            message="the 413's access line",
        )[0]
        assert "user=alice" in line, line
    finally:
        t.server.stop()


# -- descriptors -------------------------------------------------------------------------------


def test_out_of_descriptors_pauses_accepting_and_recovers(tmp_path, hermetic_git):
    """At a 64-descriptor limit with 150 connections: accepting pauses (little CPU, a line or two
    of log, not a traceback per turn), the server serves again once they go; with the default
    connection cap, connections past it get a readable 503 instead."""
    fig = attacks.fd_exhaustion(tmp_path, nofile=64, conns=150, watch=2.0)
    passed(fig)
    assert fig["pause_log_lines"] <= 2


def test_git_that_cannot_be_spawned_for_want_of_descriptors_is_a_503(tmp_path, hermetic_git):
    passed(attacks.git_at_fd_limit(tmp_path, nofile=40, clones=6))


# -- the connection caps, in process ------------------------------------------------------------


class CappedServer:
    """``GitHTTPServer`` on 127.0.0.1:<ephemeral>, on its own loop in a thread."""

    def __init__(self, app, **options) -> None:
        (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                self.stopping = asyncio.Event()
                self.server = GitHTTPServer(app, **options)
                self.server.add_sockets([sock])
                ready.set()
                await self.stopping.wait()
                self.server.stop()
                await self.server.close_all_connections()

            asyncio.run(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture
def capped(gitbase):
    servers = []

    def start(**options) -> CappedServer:
        server = CappedServer(gittornado.make_app(str(gitbase)), **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _hold(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_connections_over_the_caps_get_a_readable_503(capped, log_watch):
    """Per address and in all: the next connection reads a 503 with Retry-After, then the
    server forgets the closed ones. Each episode is logged once, when it starts and ends."""
    server = capped(max_connections=6, max_connections_per_ip=3, header_timeout=30)
    server.server.episode_quiet = 0.5  # (default 10 s)
    held = [_hold(server.port, "127.0.0.2") for _ in range(3)]
    wait_for(lambda: server.server.connections_from("127.0.0.2") == 3, message="three connections")
    over = raw(server.port, b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.2")
    assert over.status == 503 and over.headers["retry-after"] == "5", over
    assert b"too many open connections from your address" in over.body
    assert (
        raw(
            server.port, b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source="127.0.0.3"
        ).status
        == 200
    )
    wait_for(lambda: server.server.open_connections == 3, message="that request's connection to go")
    held += [_hold(server.port, f"127.0.0.{4 + i}") for i in range(3)]
    wait_for(lambda: server.server.open_connections == 6, message="six connections")
    for _ in range(5):
        over = raw(server.port, b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.9")
        assert over.status == 503 and b"too many open connections" in over.body
    for sock in held:
        sock.close()
    wait_for(lambda: server.server.open_connections == 0, message="the held connections to be forgotten")
    assert request(server.port, "GET", "/app/HEAD").status == 200
    wait_for(lambda: server.server.open_connections == 0, message="that one to close too")
    wait_for(
        lambda: any("below the connection cap again" in r.getMessage() for r in log_watch.records),
        message="the episode's end",
    )
    messages = [r.getMessage() for r in log_watch.records if r.name == "gittornado.general"]
    assert sum("connection cap reached" in m for m in messages) == 1, messages
    assert sum("below the connection cap again: 5 connections refused" in m for m in messages) == 1, messages
    assert sum("127.0.0.2 reached its cap" in m for m in messages) == 1, messages


def test_a_detached_connection_still_counts_until_it_closes(capped):
    """A WebSocket leaves the HTTP connection (detach): it must not escape the cap."""
    import tornado.web

    class Detach(tornado.web.RequestHandler):
        def get(self):
            stream = self.detach()
            stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.application.detached.append(stream)

    app = tornado.web.Application([(r"/detach", Detach)])
    app.detached = []
    server = CappedServer(app, max_connections=1)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /detach HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).endswith(b"ok")
        assert raw(server.port, b"GET /detach HTTP/1.1\r\nHost: x\r\n\r\n").status == 503
        server.loop.call_soon_threadsafe(app.detached[0].close)
        sock.close()
        wait_for(lambda: server.server.open_connections == 0, message="the detached stream to be forgotten")
    finally:
        server.stop()


def test_default_connection_cap_leaves_descriptors_for_git():
    assert default_max_connections(1024) == 480
    assert default_max_connections(64) == 8
    assert default_max_connections(1_000_000) == 10_000


def test_header_timeout_counts_from_the_first_byte_of_a_later_request(capped):
    """A keep-alive connection may idle between requests (idle timeout), but once the next
    request starts, its headers get the header timeout."""
    server = capped(header_timeout=0.5, idle_timeout=30)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
        sock.settimeout(1.0)  # idle longer than the header timeout: still open
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        sock.sendall(b"GET /app/HEAD HTTP/1.1\r\n")
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(4096) == b""
        assert time.monotonic() - started < 3
