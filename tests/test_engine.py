"""The engine end to end: caps, timers, the audit result and resources on every exit path.

Each test drives a real server (``serve``) with real git or a raw socket that
misbehaves the way real clients and networks do: a body over the cap, a client
that hangs up mid-body or mid-clone, a client that stops reading, a gzip bomb.
What is checked is what an operator sees: the status and reason the client
reads, which git processes are left, the audit line's ``result=`` and level,
the log, and the server's open file descriptors. Timers are shortened through
``make_app`` keyword arguments; nothing sleeps for a fixed time, every wait
polls with a deadline.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import stat
import threading
import time
import zlib
from pathlib import Path

import pytest
from conftest import AllowAll, git, git_processes, refs, rev, wait_for
from test_contract import _partial_pack

from gittornado.protocol import pktline

UPLOAD_REQ = "application/x-git-upload-pack-request"
RECEIVE_REQ = "application/x-git-receive-pack-request"
REQUEST_TYPES = {"git-upload-pack": UPLOAD_REQ, "git-receive-pack": RECEIVE_REQ}
LS_REFS_V2 = pktline.encode(b"command=ls-refs\n") + pktline.DELIM + pktline.encode(b"peel\n") + pktline.FLUSH
BIG_MIB = 12  # random, so the pack is as big: more than every socket and pipe buffer together


# -- helpers -----------------------------------------------------------------------------------


def _fd_count() -> int:
    """Open descriptors of this process; the server runs in it, on a thread."""
    return len(os.listdir("/proc/self/fd"))


def _wait_fds(baseline: int, margin: int = 10, timeout: float = 15.0) -> None:
    """Poll until the fd count is back within ``margin`` of ``baseline``."""
    deadline = time.monotonic() + timeout
    while (count := _fd_count()) > baseline + margin:
        if time.monotonic() > deadline:
            raise AssertionError(f"open fds {count} did not return near the baseline {baseline}")
        time.sleep(0.05)


def _never(predicate, seconds: float, message: str) -> None:
    """Fail as soon as ``predicate`` holds within ``seconds`` (asserting an absence)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            raise AssertionError(message)
        time.sleep(0.05)


def _audit(log_watch, service: str) -> list:
    return [
        r
        for r in log_watch.records
        if r.name == "gittornado.audit" and f"service={service}" in r.getMessage()
    ]


def _result(record) -> str | None:
    match = re.search(r"\bresult=(\w+)", record.getMessage())
    return match.group(1) if match else None


def _git_wrapper(tmp_path: Path, rpc: str, *, service: str = "receive-pack") -> tuple[str, Path]:
    """An executable standing in for git: logs each argv, runs ``rpc`` (sh) before the
    RPC of ``service`` (not its advertisement), otherwise execs the real git.

    Returns (wrapper path, invocation log). The log proves which git runs started.
    """
    real = shutil.which("git")
    calls = tmp_path / "git-calls.log"
    script = tmp_path / "git-wrapper"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        f'REAL_GIT="{real}"\n'
        'case " $* " in\n'
        "  *' --advertise-refs '*) ;;\n"
        f"  *' {service} '*)\n{rpc}\n    ;;\n"
        "esac\n"
        'exec "$REAL_GIT" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script), calls


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body.

    A reset after the whole answer arrived is fine; before it, the client could
    not read the answer, and that is the failure.
    """
    data = b""

    def more() -> bytes:
        try:
            return sock.recv(65536)
        except ConnectionResetError:
            return b""

    while b"\r\n\r\n" not in data:
        chunk = more()
        if not chunk:
            raise AssertionError(f"connection ended before a complete status and headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = more()
            if not chunk:
                raise AssertionError(f"connection ended inside the body: {status} {body!r}")
            body += chunk
        return status, headers, body[:length]
    if headers.get("transfer-encoding") == "chunked":
        raw, body = body, b""
        while True:
            while b"\r\n" not in raw:
                chunk = more()
                if not chunk:
                    raise AssertionError(f"connection ended inside a chunked body: {status} {body!r}")
                raw += chunk
            size_line, _, raw = raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(raw) < size + 2:
                chunk = more()
                if not chunk:
                    raise AssertionError(f"connection ended inside a chunk: {status} {body!r}")
                raw += chunk
            if size == 0:
                return status, headers, body
            body += raw[:size]
            raw = raw[size + 2 :]
    while chunk := more():  # close-delimited
        body += chunk
    return status, headers, body


def _send_then_read(
    port: int, head: bytes, body: bytes, step: int = 16384, timeout: float = 20
) -> tuple[int, dict, bytes]:
    """Send ``head`` and then as much of ``body`` as the server takes, then read the answer.

    Sending stops as soon as the server answers or stops reading (a client
    like curl sends the body without waiting for ``100 Continue``); errors on
    send are tolerated: what matters is whether the answer can be read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        view = memoryview(body)
        pos = 0
        deadline = time.monotonic() + timeout
        while pos < len(view) and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break
            if not writable:
                continue
            try:
                pos += sock.send(view[pos : pos + step])
            except BlockingIOError:
                continue
            except OSError:
                break
        sock.settimeout(timeout)
        return _read_response(sock)


def _post_head(path: str, service: str, *, length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path}/{service} HTTP/1.1\r\nHost: x\r\nContent-Type: {REQUEST_TYPES[service]}\r\n"
        f"{framing}{extra}\r\n"
    ).encode()


def _chunked(data: bytes, size: int = 16384) -> bytes:
    return b"".join(
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)
    )


def _push_commands(old: str) -> bytes:
    return pktline.encode(f"{old} {'1' * 40} refs/heads/main\0report-status\n".encode()) + pktline.FLUSH


def _fetch_request(oid: str) -> bytes:
    return (
        pktline.encode(b"command=fetch\n")
        + pktline.DELIM
        + pktline.encode(b"no-progress\n")
        + pktline.encode(f"want {oid}\n".encode())
        + pktline.encode(b"done\n")
        + pktline.FLUSH
    )


def _quarantines(repo: Path) -> list[str]:
    return [d for d in os.listdir(repo / "objects") if "incoming-" in d]


def _one_line_reason(status: int, headers: dict, body: bytes) -> None:
    assert status == 413, f"expected 413 with a reason, got {status} {body[:200]!r}"
    assert headers.get("content-type", "").startswith("text/plain"), headers
    text = body.decode("utf-8", "replace").strip()
    assert text and "\n" not in text, f"the reason is not one line: {body!r}"


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory, fixture_repo) -> tuple[Path, str]:
    """The fixture repository plus one commit with a BIG_MIB random blob, built once."""
    path = tmp_path_factory.mktemp("big") / "big.git"
    shutil.copytree(fixture_repo, path)
    blob = os.urandom(BIG_MIB * 1024 * 1024)
    stream = (
        b"blob\nmark :1\ndata %d\n%s\n" % (len(blob), blob) + b"commit refs/heads/main\nmark :2\n"
        b"committer Big <big@example.com> 1700001000 +0000\ndata 4\nbig\n"
        b"from refs/heads/main^0\nM 100644 :1 big.bin\n\n"
    )
    git("fast-import", "--quiet", cwd=path, input=stream)
    return path, rev(path, "main")


@pytest.fixture
def big(gitbase, big_repo) -> tuple[Path, str]:
    """big.git in this test's gitbase: (path, tip)."""
    path, tip = big_repo
    shutil.copytree(path, gitbase / "big.git")
    return gitbase / "big.git", tip


def _start_fetch_and_stop_reading(port: int, oid: str, repo: Path) -> socket.socket:
    """A fetch request for ``oid``, the status line read, then nothing more read."""
    body = _fetch_request(oid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        _post_head("/big", "git-upload-pack", length=len(body), extra="Git-Protocol: version=2\r\n") + body
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    wait_for(lambda: git_processes(str(repo)), message="upload-pack to start")
    return sock


# -- finding 2: a body over the cap is a readable 413 with a reason, refused before git runs --


@pytest.mark.parametrize("service", ["git-receive-pack", "git-upload-pack"])
def test_body_over_the_cap_with_content_length_is_413_before_git_starts(serve, gitbase, tmp_path, service):
    """A known Content-Length over the cap is refused in prepare(): the user reads the
    README's 413 and its reason (not Tornado's empty 400), and no git process is spawned
    only to be killed. The client sends its body like curl (no ``Expect``) and must still
    be able to read the answer."""
    wrapper, calls = _git_wrapper(tmp_path, "    :")
    cap = 64 * 1024
    server = serve(access=AllowAll(), git=wrapper, receive_pack_limit=cap, upload_pack_limit=cap)
    body = os.urandom(1024 * 1024)
    status, headers, text = _send_then_read(server.port, _post_head("/app", service, length=len(body)), body)
    _one_line_reason(status, headers, text)
    # A git the server does run (the advertisement) marks the log: an RPC started by the
    # refused request would have been logged before it.
    adv = _send_then_read(
        server.port, f"GET /app/info/refs?service={service} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b""
    )
    assert adv[0] == 200
    wait_for(lambda: calls.exists() and "--advertise-refs" in calls.read_text(), message="advertisement run")
    short = service.removeprefix("git-")
    rpcs = [
        line for line in calls.read_text().splitlines() if short in line and "--advertise-refs" not in line
    ]
    assert rpcs == [], f"git started for a refused request: {rpcs}"


def test_chunked_push_growing_over_the_cap_is_413_and_changes_nothing(serve, gitbase):
    """A chunked push has no length up front: the body pump counts it and refuses with the
    413 and its reason the moment it passes the cap (not Tornado's empty 400); git, already
    running, is stopped with its input closed, so it removes its quarantine."""
    cap = 256 * 1024
    server = serve(access=AllowAll(), receive_pack_limit=cap)
    upstream = gitbase / "app.git"
    before = refs(upstream)
    body = _push_commands(rev(upstream, "main")) + _partial_pack(sent=4 * cap)
    status, headers, text = _send_then_read(
        server.port, _post_head("/app", "git-receive-pack"), _chunked(body) + b"0\r\n\r\n"
    )
    _one_line_reason(status, headers, text)
    wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to exit")
    wait_for(lambda: not _quarantines(upstream), message="quarantine to be removed")
    assert refs(upstream) == before


# -- finding 4: the body-idle watchdog ends with the request, and only counts the client -------


def test_push_dropped_mid_body_ends_at_once_without_a_false_idle_warning(serve, gitbase, log_watch):
    """A client that hangs up mid-push is gone: git is stopped at once and the watchdog
    ends with the request, instead of keeping the handler for the whole idle timeout and
    then warning about a client that stopped sending."""
    server = serve(access=AllowAll(), body_idle_timeout=3)
    upstream = gitbase / "app.git"
    before = refs(upstream)
    body = _push_commands(rev(upstream, "main")) + _partial_pack()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_post_head("/app", "git-receive-pack") + b"%x\r\n%s\r\n" % (len(body), body))
        wait_for(lambda: git_processes(str(upstream)), message="receive-pack to start")
        sock.shutdown(socket.SHUT_RDWR)
    wait_for(
        lambda: not git_processes(str(upstream)), timeout=3, message="receive-pack to exit after the hang-up"
    )
    _never(
        lambda: any("no request data" in r.getMessage() for r in log_watch.records),
        4,
        "'no request data' logged for a client that had already hung up",
    )
    assert refs(upstream) == before
    assert not _quarantines(upstream)


def test_time_waiting_on_a_slow_git_is_not_client_idleness(serve, gitbase, tmp_path):
    """While git is slow to read the body, the server stops reading the client (that is
    backpressure), so the client is not idle: a push into a receive-pack that takes 3 s
    to start reading must succeed with a 2 s body-idle timeout."""
    wrapper, _ = _git_wrapper(tmp_path, "    sleep 3")
    server = serve(access=AllowAll(), git=wrapper, body_idle_timeout=2)
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "blob.bin").write_bytes(os.urandom(1024 * 1024))  # more than the pipe holds
    git("add", "blob.bin", cwd=work)
    git("commit", "-qm", "blob", cwd=work)
    # One Content-Length body: no probe, so one slow receive-pack.
    git("-c", "http.postBuffer=16777216", "push", f"{server.url}/app", "main", cwd=work)
    assert rev(gitbase / "app.git", "main") == rev(work, "HEAD")


# -- finding 5: the audit line says how the git run ended ----------------------------------------


def test_audit_result_ok_for_a_good_clone_and_push(serve, gitbase, tmp_path, log_watch):
    """A successful run is one INFO audit line with ``result=ok``."""
    server = serve(access=AllowAll())
    work = tmp_path / "w"
    git("clone", "-q", f"{server.url}/app", str(work))
    git("commit", "-q", "--allow-empty", "-m", "more", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    for service in ("git-upload-pack", "git-receive-pack"):
        records = wait_for(lambda service=service: _audit(log_watch, service), message=f"{service} audit")
        for record in records:
            assert _result(record) == "ok", f"audit line without result=ok: {record.getMessage()}"
            assert record.levelname == "INFO", record.getMessage()


@pytest.mark.parametrize("direct", [True, False])
def test_audit_result_aborted_when_the_client_vanishes_mid_clone(serve, big, log_watch, direct):
    """git killed by SIGPIPE or by us because the client left is not a good clone: the
    audit line says ``result=aborted`` at WARNING, though the status went out as 200."""
    repo, tip = big
    server = serve(direct_output=direct)
    sock = _start_fetch_and_stop_reading(server.port, tip, repo)
    sock.close()
    wait_for(lambda: not git_processes(str(repo)), message="upload-pack to exit")
    record = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")[-1]
    assert _result(record) == "aborted", f"audit line without result=aborted: {record.getMessage()}"
    assert record.levelname == "WARNING", record.getMessage()


def test_audit_result_failed_when_git_dies_mid_answer(serve, gitbase, tmp_path, log_watch):
    """git killed mid-answer with the client still reading (OOM killer, an admin) is a
    failed run, not a client gone: ``result=failed`` at WARNING."""
    wrapper, _ = _git_wrapper(
        tmp_path, '    "$REAL_GIT" "$@" | head -c 64\n    kill -KILL $$', service="upload-pack"
    )
    server = serve(git=wrapper)
    proc = git(
        "-c", "protocol.version=0", "clone", "-q", f"{server.url}/app", str(tmp_path / "w"), check=False
    )
    assert proc.returncode != 0
    records = wait_for(
        lambda: [r for r in _audit(log_watch, "git-upload-pack") if "exit=0" not in r.getMessage()],
        message="the failed run's audit line",
    )
    assert _result(records[-1]) == "failed", f"audit line without result=failed: {records[-1].getMessage()}"
    assert records[-1].levelname == "WARNING", records[-1].getMessage()


def test_audit_result_failed_when_git_fails_before_answering(serve, gitbase, log_watch):
    """A git that refuses the repository (here: an unknown repository format) failed."""
    git("config", "core.repositoryformatversion", "99", cwd=gitbase / "app.git")
    server = serve()
    assert git("ls-remote", f"{server.url}/app", check=False).returncode != 0
    record = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")[-1]
    assert _result(record) == "failed", f"audit line without result=failed: {record.getMessage()}"
    assert record.levelname == "WARNING", record.getMessage()


# -- finding 6: a client that stops reading does not hold git until TCP gives up --------------


@pytest.mark.parametrize("direct", [True, False])
def test_client_that_stops_reading_a_clone_is_dropped_after_send_timeout(serve, big, log_watch, direct):
    """A connected client that never reads keeps TCP alive (zero-window probes are
    answered), so only a send timeout frees git: after ``send_timeout`` seconds without
    progress git is stopped, the connection dropped, and the audit says aborted."""
    repo, tip = big
    server = serve(direct_output=direct, send_timeout=2)
    sock = _start_fetch_and_stop_reading(server.port, tip, repo)
    with sock:
        wait_for(
            lambda: not git_processes(str(repo)),
            timeout=15,
            message="upload-pack stopped by the send timeout",
        )
        record = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")[-1]
        assert _result(record) == "aborted", f"audit line without result=aborted: {record.getMessage()}"
        # The connection is dropped: what was queued drains, then EOF (or a reset).
        try:
            while sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError("git was stopped but the connection was left open") from None


# -- finding 7: a gzip bomb does not freeze the server ---------------------------------------------


def test_gzip_bomb_of_flush_packets_does_not_freeze_the_server(serve):
    """65 KB of gzip inflating to 64 MiB of '0' (16 M flush packets) must be inflated and
    checked in steps that let the event loop serve others; the bomb itself ends as 413 or
    400, never a 500. Before the fix one data_received call parsed it all (15-20 s frozen here)."""
    server = serve()
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = z.compress(b"0" * (64 * 1024 * 1024 + 4)) + z.flush()  # one flush packet over the default cap
    head = _post_head("/app", "git-upload-pack", length=len(bomb), extra="Content-Encoding: gzip\r\n")
    outcome: dict = {}

    def send_bomb() -> None:
        try:
            outcome["answer"] = _send_then_read(server.port, head, bomb, step=65536, timeout=90)
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=send_bomb, daemon=True)
    thread.start()
    latencies = []
    deadline = time.monotonic() + 60
    while True:
        started = time.monotonic()
        status, _, _ = _send_then_read(
            server.port, b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n", b"", timeout=90
        )
        latencies.append(time.monotonic() - started)
        assert status == 200
        if not thread.is_alive() or time.monotonic() > deadline:
            break
    thread.join(90)
    assert "error" not in outcome, outcome.get("error")
    assert max(latencies) < 1.5, f"the server froze for {max(latencies):.1f}s while inflating the bomb"
    assert outcome["answer"][0] in (400, 413), outcome["answer"]


# -- finding 8 (and pushes): every resource is released when the client hangs up mid-body -----


def test_fetch_posts_dropped_mid_body_leak_no_file_descriptors(serve):
    """The spool file opened in prepare() must be closed on the disconnect path too, or
    every interrupted fetch leaks a descriptor until the process runs out."""
    server = serve()
    status, _, _ = _send_then_read(
        server.port,
        _post_head("/app", "git-upload-pack", length=len(LS_REFS_V2), extra="Git-Protocol: version=2\r\n"),
        LS_REFS_V2,
    )
    assert status == 200  # warm-up: whatever the server opens once is open now
    baseline = _fd_count()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_post_head("/app", "git-upload-pack", length=1000) + b"0" * 10)
    _wait_fds(baseline)


def test_push_posts_dropped_mid_body_release_git_and_descriptors(serve, gitbase):
    """The same for pushes: every receive-pack is stopped and reaped, and its pipes closed."""
    server = serve(access=AllowAll())
    upstream = gitbase / "app.git"
    before = refs(upstream)
    status, _, _ = _send_then_read(server.port, _post_head("/app", "git-receive-pack", length=4), b"0000")
    assert status == 200  # warm-up
    baseline = _fd_count()
    body = _push_commands(rev(upstream, "main")) + _partial_pack(sent=10_000)
    for _ in range(50):
        # One at a time, each dropped while its receive-pack is running and waiting for more.
        wait_for(lambda: not git_processes(str(upstream)), message="the previous receive-pack to exit")
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(_post_head("/app", "git-receive-pack", length=100_000) + body)
            wait_for(lambda: git_processes(str(upstream)), message="receive-pack to start")
    wait_for(lambda: not git_processes(str(upstream)), message="every receive-pack to exit")
    _wait_fds(baseline)
    assert refs(upstream) == before
    wait_for(lambda: not _quarantines(upstream), message="quarantines to be removed")


@pytest.mark.parametrize("direct", [True, False])
def test_git_dying_mid_answer_reaches_the_user_as_a_remote_error(serve, tmp_path, direct):
    """The answer is cut inside a side-band packet: the run pads the packet out and adds a
    band-3 message, so git prints why instead of a bare "early EOF" (spliced or relayed)."""
    wrapper, _ = _git_wrapper(
        tmp_path, '    "$REAL_GIT" "$@" | head -c 64\n    kill -KILL $$', service="upload-pack"
    )
    server = serve(git=wrapper, direct_output=direct)
    proc = git(
        "-c", "protocol.version=0", "clone", "-q", f"{server.url}/app", str(tmp_path / "w"), check=False
    )
    assert proc.returncode != 0
    assert b"git-upload-pack died on the server" in proc.stderr, proc.stderr


# -- logs that tell what happened (hardening finding 5) ------------------------------------


def _access_lines(log_watch) -> list:
    return [r for r in log_watch.records if r.name == "gittornado.access"]


def test_aborted_push_has_an_access_line_and_an_aborted_audit(serve, gitbase, log_watch):
    """A push whose client vanished mid-pack: one access line saying ``aborted``, and an
    audit line that says ``result=aborted`` (receive-pack itself exits 0 after "unpack
    failed", so ``exit=`` alone looks like success)."""
    server = serve(access=AllowAll())
    upstream = gitbase / "app.git"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_post_head("/app", "git-receive-pack"))
        sock.sendall(_chunked(_push_commands(rev(upstream, "main")) + _partial_pack()))
        wait_for(lambda: git_processes(str(upstream)), message="receive-pack to start")
    wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to exit")
    record = wait_for(lambda: _audit(log_watch, "git-receive-pack"), message="the audit line")[-1]
    assert _result(record) == "aborted", record.getMessage()
    lines = wait_for(
        lambda: [r for r in _access_lines(log_watch) if "git-receive-pack" in r.getMessage()],
        message="the access line",
    )
    assert len(lines) == 1 and lines[0].getMessage().endswith(" aborted"), [r.getMessage() for r in lines]
    assert lines[0].levelname == "WARNING"


def test_body_over_the_cap_is_logged_with_its_user(serve, tmp_path, log_watch):
    """A 413 names who sent it (not Tornado's anonymous "Malformed HTTP message")."""
    from conftest import write_access_file

    path = write_access_file(tmp_path / "acl.ini", {"alice": "pw"}, "alice = **=rw\n")
    server = serve(accessfile=path, receive_pack_limit=1000)
    auth = "Authorization: Basic " + __import__("base64").b64encode(b"alice:pw").decode() + "\r\n"
    status, _, _ = _send_then_read(
        server.port, _post_head("/app", "git-receive-pack", length=5000, extra=auth), b"0" * 5000
    )
    assert status == 413
    lines = wait_for(
        lambda: [r for r in _access_lines(log_watch) if " 413 " in r.getMessage()], message="the 413 line"
    )
    assert "user=alice" in lines[-1].getMessage(), lines[-1].getMessage()
