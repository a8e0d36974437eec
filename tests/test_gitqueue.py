"""``--max-git-processes``: excess requests wait in a bounded queue, then get 503 + Retry-After."""

from __future__ import annotations

import http.client
import socket
import threading
import time

from conftest import AllowAll, git, git_processes, rev, wait_for


def _hold_a_push(port: int) -> socket.socket:
    """A push that starts (receive-pack running) and then sends nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /app/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return sock


def _advertise(port: int) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/app/info/refs?service=git-upload-pack")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, resp.headers.get("Retry-After")


def _pushing(gitbase) -> bool:
    return any("--advertise-refs" not in cmd for cmd in git_processes(str(gitbase)))


def test_excess_requests_wait_then_run(serve, gitbase, tmp_path):
    server = serve(access=AllowAll(), max_git_processes=1, git_queue=1, git_queue_timeout=30)
    held = _hold_a_push(server.port)
    try:
        wait_for(lambda: _pushing(gitbase), message="the held push")
        queued: list = []
        waiter = threading.Thread(target=lambda: queued.append(_advertise(server.port)))
        waiter.start()
        wait_for(lambda: server.app.git_limit.waiting == 1, message="a queued request")
        # The queue (of one) is full: the next request is turned away at once.
        assert _advertise(server.port) == (503, "5")
        assert not queued
    finally:
        held.close()  # the slot frees: the queued request runs
    waiter.join(30)
    assert queued == [(200, None)]
    git("clone", "-q", f"{server.url}/app", str(tmp_path / "c"))
    assert rev(tmp_path / "c", "HEAD") == rev(gitbase / "app.git", "main")
    assert server.app.git_limit.active == 0


def test_queued_request_times_out_with_503(serve, gitbase):
    server = serve(access=AllowAll(), max_git_processes=1, git_queue=5, git_queue_timeout=0.5)
    held = _hold_a_push(server.port)
    try:
        wait_for(lambda: _pushing(gitbase), message="the held push")
        started = time.monotonic()
        assert _advertise(server.port) == (503, "5")
        assert 0.4 <= time.monotonic() - started < 10
    finally:
        held.close()
    wait_for(lambda: server.app.git_limit.active == 0, message="the slot back")
