"""ws:// and wss:// beyond the contract suite: the wire, TLS, credentials, refusals, bad frames.

The contract rows (clone, fetch, push, refusals, interrupted push) run over
ws:// in ``test_contract.py`` (``TestWSv0``, ``TestWSv2``). Here: what only this
transport has. Real git runs the installed ``git-remote-ws``; misbehaving
clients are a raw socket speaking RFC 6455 by hand (``RawWebSocket``), so
nothing in between tidies up what they send. No fixed sleeps: every wait polls
with a deadline.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tarfile
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import AllowAll, ServerThread, git, git_processes, refs, rev, wait_for
from test_contract import _partial_pack, config_env, ws_env

import gittornado
from gittornado.client import remote_helper
from gittornado.protocol import pktline

# -- a raw client --------------------------------------------------------------------------


class RawWebSocket:
    """RFC 6455 by hand over a blocking socket: sends exactly what a test says."""

    def __init__(
        self, port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 20.0
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed during the handshake: {data!r}")
            data += chunk
        head, _, self._buf = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        self.body = self._buf if self.status != 101 else b""

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def send(self, payload: bytes, opcode: int = 2, *, length: int | None = None) -> None:
        """One masked frame; ``length`` overrides the length the header claims."""
        n = len(payload) if length is None else length
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        key = (mask * (len(payload) // 4 + 1))[: len(payload)]
        masked = (
            bytes(a ^ b for a, b in zip(payload, key, strict=True))
            if len(payload) < 4096
            else (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")
        )
        self.sock.sendall(header + mask + masked)

    def recv(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def read_until(self, marker: bytes) -> bytes:
        """Binary payloads until their data ends with ``marker``."""
        data = b""
        while not data.endswith(marker):
            opcode, payload = self.recv()
            assert opcode == 2, (opcode, payload)
            data += payload
        return data

    def until_close(self) -> tuple[bytes, int | None, str]:
        """Everything until the close frame: (data, close code, reason)."""
        data = b""
        while True:
            try:
                opcode, payload = self.recv()
            except (EOFError, ConnectionResetError):
                return data, None, ""
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return data, code, payload[2:].decode("utf-8", "replace")
            if opcode == 2:
                data += payload

    def vanish(self) -> None:
        """Hang up without a close frame, as a killed client does."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def ws_interrupt_push(port: int, path: str, old: str, repo_dir: Path) -> None:
    """A push's commands and half its pack over ws://, then gone (for the contract row)."""
    ws = RawWebSocket(port, f"{path}/git-receive-pack")
    assert ws.status == 101, ws.status
    ws.read_until(pktline.FLUSH)  # the advertisement
    commands = pktline.encode(f"{old} {'1' * 40} refs/heads/main\0report-status\n".encode())
    ws.send(commands + pktline.FLUSH)
    pack = _partial_pack()
    for i in range(0, len(pack), 65536):
        ws.send(pack[i : i + 65536])
    # receive-pack has quarantined what came: now the client dies mid-pack.
    wait_for(
        lambda: [d for d in os.listdir(repo_dir / "objects") if "incoming-" in d],
        message="the push's quarantine",
    )
    ws.vanish()


# -- fixtures ------------------------------------------------------------------------------


def _ws(server, repo: str, userinfo: str = "") -> str:
    return f"ws://{userinfo}127.0.0.1:{server.port}/{repo}"


def _audit(log_watch, service: str) -> list[str]:
    return [
        r.getMessage()
        for r in log_watch.records
        if r.name == "gittornado.audit" and f"service={service}" in r.getMessage()
    ]


def _no_traceback(stderr: bytes) -> None:
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


@pytest.fixture
def open_server(serve):
    return serve(access=AllowAll())


@pytest.fixture
def tls_server(gitbase, tmp_path):
    """A wss:// server with a self-signed certificate for 127.0.0.1 made here (``.cert``)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    server = ServerThread(gittornado.make_app(gitbase=str(gitbase), access=AllowAll()), ssl_options=ctx)
    server.cert = cert
    yield server
    server.stop()


# -- the wire: protocol versions, archive, end of input ---------------------------------------


@pytest.mark.parametrize("version", [0, 2])
def test_protocol_version_is_the_users(open_server, gitbase, tmp_path, log_watch, version):
    """git gives a connect helper no GIT_PROTOCOL: the helper asks for ``protocol.version``
    and git takes what the server answers (``GIT_TRACE_PACKET`` shows ``version 2``)."""
    dest = tmp_path / "clone"
    proc = git(
        "-c",
        f"protocol.version={version}",
        "clone",
        _ws(open_server, "app"),
        str(dest),
        env={**ws_env(), "GIT_TRACE_PACKET": "1"},
    )
    assert rev(dest, "HEAD") == rev(gitbase / "app.git", "main")
    said_v2 = re.search(rb"packet: +\S+< version 2", proc.stderr) is not None
    assert said_v2 == (version == 2), proc.stderr.decode(errors="replace")[-2000:]
    audit = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")
    assert f"protocol=v{version} transport=ws" in audit[-1], audit[-1]
    assert "result=ok" in audit[-1], audit[-1]


def test_push_asks_for_v0_and_reaches_hooks_as_ws(open_server, gitbase, tmp_path, log_watch):
    work = tmp_path / "work"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "new.txt").write_text("new\n")
    git("add", "new.txt", cwd=work)
    git("commit", "-qm", "new", cwd=work)
    git("-c", "protocol.version=2", "push", "-q", _ws(open_server, "app"), "main", cwd=work, env=ws_env())
    assert rev(gitbase / "app.git", "main") == rev(work, "HEAD")
    audit = wait_for(lambda: _audit(log_watch, "git-receive-pack"), message="the audit line")
    assert "protocol=v0 transport=ws" in audit[-1] and "result=ok" in audit[-1], audit[-1]


def test_git_archive_remote(open_server, tmp_path):
    """``git archive --remote=ws://...`` runs git-upload-archive through ``connect``."""
    proc = git(
        "archive", f"--remote={_ws(open_server, 'app')}", "--format=tar", "HEAD", "hello.txt", env=ws_env()
    )
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.extractfile("hello.txt").read() == b"hello again\n"


def test_empty_frame_is_end_of_input(open_server):
    """The client's half-close: git's stdin ends, git exits, the server closes with 1000."""
    ws = RawWebSocket(open_server.port, "/app/git-upload-pack")
    assert ws.status == 101
    ws.read_until(pktline.FLUSH)
    ws.send(pktline.FLUSH)  # no wants: upload-pack is done
    ws.send(b"")
    data, code, _ = ws.until_close()
    assert (data, code) == (b"", 1000)
    ws.close()


# -- wss:// ------------------------------------------------------------------------------------


def test_wss_verifies_the_certificate(tls_server, tmp_path, gitbase):
    url = f"wss://127.0.0.1:{tls_server.port}/app"
    refused = git("ls-remote", url, check=False, env=ws_env())
    assert refused.returncode != 0
    assert b"fatal: unable to access 'wss://127.0.0.1" in refused.stderr, refused.stderr
    assert b"certificate verify failed: self" in refused.stderr, refused.stderr  # self(-)signed
    assert b"GIT_SSL_CAINFO" in refused.stderr, refused.stderr
    _no_traceback(refused.stderr)

    dest = tmp_path / "clone"
    git("clone", "-q", url, str(dest), env={**ws_env(), "GIT_SSL_CAINFO": str(tls_server.cert)})
    assert rev(dest, "HEAD") == rev(gitbase / "app.git", "main")
    (dest / "tls.txt").write_text("over TLS\n")
    git("add", "tls.txt", cwd=dest)
    git("commit", "-qm", "tls", cwd=dest)
    git(
        "-c",
        f"http.sslCAInfo={tls_server.cert}",
        "push",
        "-q",
        "origin",
        "main",
        cwd=dest,
        env={**ws_env(), "GIT_SSL_CAINFO": ""},
    )
    assert rev(gitbase / "app.git", "main") == rev(dest, "HEAD")


@pytest.mark.parametrize("how", ["GIT_SSL_NO_VERIFY", "http.sslVerify"])
def test_wss_verification_can_be_turned_off(tls_server, how):
    env = ws_env()
    if how == "GIT_SSL_NO_VERIFY":
        env["GIT_SSL_NO_VERIFY"] = "1"
    else:
        env.update(config_env(("http.sslVerify", "false")))
    out = git("ls-remote", f"wss://127.0.0.1:{tls_server.port}/app", env=env).stdout
    assert b"refs/heads/main" in out


# -- credentials -------------------------------------------------------------------------------


def test_credentials_from_the_url(acl_server, tmp_path):
    dest = tmp_path / "clone"
    git("clone", "-q", _ws(acl_server, "private", "bob:bob-pw@"), str(dest), env=ws_env())
    assert (dest / "hello.txt").exists()
    wrong = git("ls-remote", _ws(acl_server, "private", "bob:not-the-password@"), check=False, env=ws_env())
    assert wrong.returncode != 0
    assert f"fatal: Authentication failed for '{_ws(acl_server, 'private')}'".encode() in wrong.stderr
    assert b"not-the-password" not in wrong.stderr
    _no_traceback(wrong.stderr)


def _logging_credential_helper(log: Path, user: str, password: str) -> tuple[str, str]:
    """A credential helper that records each call and what git asked, and answers ``get``."""
    script = (
        f'!f() {{ {{ echo "== $1"; cat; }} >> "{log}"; test "$1" = get || exit 0; '
        f"echo username={user}; echo password={password}; }}; f"
    )
    return ("credential.helper", script)


@pytest.mark.parametrize(("password", "verdict"), [("bob-pw", "store"), ("wrong", "erase")])
def test_credential_helper_is_asked_after_a_401(acl_server, tmp_path, password, verdict):
    """A 401 before the upgrade makes the helper ask git's credential helpers (as https
    of the same host), then tell them whether the password worked."""
    log = tmp_path / "credential.log"
    env = ws_env(_logging_credential_helper(log, "bob", password))
    proc = git("ls-remote", _ws(acl_server, "private"), check=False, env=env)
    assert (proc.returncode == 0) == (verdict == "store"), proc.stderr
    calls = log.read_text()
    assert calls.startswith("== get\n"), calls
    assert f"protocol=http\nhost=127.0.0.1:{acl_server.port}\n" in calls, calls
    assert f"== {verdict}\n" in calls, calls
    if verdict == "erase":
        assert b"fatal: Authentication failed for 'ws://127.0.0.1" in proc.stderr, proc.stderr
        _no_traceback(proc.stderr)


# -- refusals and failures the user reads -------------------------------------------------------


def test_denied_push_is_one_readable_line(acl_server, gitbase, tmp_path):
    work = tmp_path / "work"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    before = refs(gitbase / "app.git")
    proc = git(
        "push",
        _ws(acl_server, "app", "bob:bob-pw@"),
        "main:refs/heads/x",
        cwd=work,
        check=False,
        env=ws_env(),
    )
    assert proc.returncode != 0
    line = (
        f"fatal: unable to access '{_ws(acl_server, 'app')}': you may not push to this repository (HTTP 403)"
    ).encode()
    assert line in proc.stderr, proc.stderr
    assert b"bob-pw" not in proc.stderr
    _no_traceback(proc.stderr)
    assert refs(gitbase / "app.git") == before


def test_unreachable_server_is_one_fatal_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    proc = git("ls-remote", f"ws://127.0.0.1:{port}/app", check=False, env=ws_env())
    assert proc.returncode != 0
    assert f"fatal: unable to access 'ws://127.0.0.1:{port}/app': ".encode() in proc.stderr
    assert b"refused" in proc.stderr.lower(), proc.stderr
    _no_traceback(proc.stderr)


def test_git_failing_on_the_server_closes_with_its_reason(open_server, gitbase, log_watch):
    """git fails: the late error goes in-band (git shows it), the close code says it too,
    and git's own stderr stays in the server's log."""
    git("config", "core.repositoryformatversion", "99", cwd=gitbase / "app.git")
    proc = git("ls-remote", _ws(open_server, "app"), check=False, env=ws_env())
    assert proc.returncode != 0
    assert b"git-upload-pack failed on the server (see its log)" in proc.stderr, proc.stderr
    assert b"websocket close 4500" in proc.stderr, proc.stderr
    assert b"repositoryformatversion" not in proc.stderr.lower()
    _no_traceback(proc.stderr)
    audit = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")
    assert "result=failed" in audit[-1], audit[-1]


def test_debug_output(open_server):
    proc = git("ls-remote", _ws(open_server, "app"), env={**ws_env(), "GITTORNADO_WS_DEBUG": "1"})
    assert b"git-remote-ws: connecting to ws://127.0.0.1" in proc.stderr, proc.stderr
    assert b"code=1000" in proc.stderr, proc.stderr


# -- before the upgrade: the same decisions as HTTP ---------------------------------------------


def test_refusals_before_the_upgrade(acl_server, open_server, gitbase):
    anonymous = RawWebSocket(acl_server.port, "/private/git-upload-pack")
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="gittornado"')
    token = base64.b64encode(b"carol:carol-pw").decode()
    carol = RawWebSocket(acl_server.port, "/private/git-upload-pack", {"Authorization": f"Basic {token}"})
    assert carol.status == 404
    bad = [
        RawWebSocket(open_server.port, path, headers)
        for path, headers in (
            ("/app/git-frobnicate", {}),
            ("/app/git-upload-pack", {"Git-Protocol": "version=2;rm -rf"}),
        )
    ]
    assert [ws.status for ws in bad] == [400, 400]
    # A page on another site cannot use a browser's cached credentials to push.
    foreign = RawWebSocket(open_server.port, "/app/git-receive-pack", {"Origin": "https://evil.example"})
    assert foreign.status == 403
    for ws in (anonymous, carol, *bad, foreign):
        ws.close()
    assert not git_processes(str(gitbase / "app.git")) and not git_processes(str(gitbase / "private.git"))


# -- malformed frames and idle clients: a clean close with a reason, nothing half-done ----------


def _raw_push_start(server) -> RawWebSocket:
    ws = RawWebSocket(server.port, "/app/git-receive-pack")
    assert ws.status == 101
    ws.read_until(pktline.FLUSH)
    return ws


def test_text_frame_closes_with_a_reason(open_server, gitbase):
    before = refs(gitbase / "app.git")
    ws = _raw_push_start(open_server)
    ws.send(b"0000", opcode=1)
    data, code, reason = ws.until_close()
    ws.close()
    assert code == 4400 and "text frame" in reason, (code, reason)
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="receive-pack to exit")
    assert refs(gitbase / "app.git") == before


def test_oversized_frame_closes_with_a_reason(open_server, gitbase):
    before = refs(gitbase / "app.git")
    ws = _raw_push_start(open_server)
    ws.send(b"", length=64 * 1024 * 1024)  # the header alone: refused before any payload
    _, code, reason = ws.until_close()
    ws.close()
    assert code == 1009 and "too big" in reason, (code, reason)
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="receive-pack to exit")
    assert refs(gitbase / "app.git") == before


def test_input_over_the_cap_closes_with_a_reason(serve, gitbase):
    server = serve(access=AllowAll(), upload_pack_limit=4096)
    ws = RawWebSocket(server.port, "/app/git-upload-pack")
    ws.read_until(pktline.FLUSH)
    have = pktline.encode(b"have " + b"1" * 40 + b"\n")
    ws.send(pktline.encode(b"want " + rev(gitbase / "app.git", "main").encode() + b"\n") + pktline.FLUSH)
    ws.send(have * 100)
    _, code, reason = ws.until_close()
    ws.close()
    assert code == 4413 and "larger than 4096 bytes" in reason, (code, reason)
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="upload-pack to exit")


def test_idle_client_is_closed_with_a_reason(serve, gitbase, log_watch):
    """git waiting for a client that sends nothing: the engine's idle timer, told in the close."""
    server = serve(access=AllowAll(), body_idle_timeout=0.3)
    ws = RawWebSocket(server.port, "/app/git-upload-pack")
    ws.read_until(pktline.FLUSH)
    _, code, reason = ws.until_close()
    ws.close()
    assert code == 4408 and "no request data" in reason, (code, reason)
    audit = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")
    assert "result=aborted" in audit[-1], audit[-1]
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="upload-pack to exit")


@pytest.fixture
def big_repo(gitbase) -> Path:
    """``big.git``: one commit with an 8 MiB random blob, so its pack outgrows every buffer."""
    big = gitbase / "big.git"
    git("init", "-q", "--bare", str(big))
    blob = os.urandom(8 * 1024 * 1024)
    stream = (
        b"blob\nmark :1\ndata %d\n%s\ncommit refs/heads/main\n"
        b"committer A <a@example.com> 1700000000 +0000\ndata 2\nc\nM 100644 :1 big.bin\n\n"
        % (len(blob), blob)
    )
    git("fast-import", "--quiet", cwd=big, input=stream)
    return big


def _start_fetch(ws: RawWebSocket) -> None:
    """A v0 fetch of main (side-band-64k), as git would send it over ws://."""
    advert = ws.read_until(pktline.FLUSH)
    oid = advert[4:44].decode()
    ws.send(
        pktline.encode(f"want {oid} side-band-64k\n".encode()) + pktline.FLUSH + pktline.encode(b"done\n")
    )


def _pack_from(answer: bytes) -> bytes:
    """Band 1 of a side-band answer (after its NAK), up to the flush."""
    pos, pack = 0, bytearray()
    while True:
        n = int(answer[pos : pos + 4], 16)
        if n == 0:
            return bytes(pack)
        payload = answer[pos + 4 : pos + n]
        if payload[:1] == b"\x01":
            pack += payload[1:]
        pos += n


@pytest.mark.parametrize("direct", [True, False], ids=["spliced", "relayed"])
def test_ping_during_a_clone_is_answered_between_frames(serve, big_repo, direct):
    """A pong Tornado owes mid-answer goes out between two frames, never inside one."""
    server = serve(access=AllowAll(), direct_output=direct)
    ws = RawWebSocket(server.port, "/big/git-upload-pack")
    _start_fetch(ws)
    ws.send(b"are you there", opcode=9)
    answer, pongs = b"", []
    while True:
        opcode, payload = ws.recv()
        if opcode == 8:
            break
        if opcode == 10:
            pongs.append(payload)
        else:
            assert opcode == 2, opcode
            answer += payload
    ws.close()
    assert pongs == [b"are you there"]
    assert struct.unpack("!H", payload[:2])[0] == 1000
    pack = _pack_from(answer[answer.index(b"0008NAK\n") + 8 :])
    assert pack[:4] == b"PACK" and len(pack) > 8 * 1024 * 1024
    assert hashlib.sha1(pack[:-20]).digest() == pack[-20:], "the pack arrived corrupted"


def test_small_answers_are_not_held_back(open_server):
    """Each answer of a v2 session (the capability advertisement, ls-refs) reaches the
    client at once: nothing of it waits in the kernel for more (a piece sent with
    ``MSG_MORE`` and nothing else in flight waits for the 200 ms probe timer). The
    fastest of several round trips is taken, so a loaded machine does not fail this."""
    ws = RawWebSocket(open_server.port, "/app/git-upload-pack", {"Git-Protocol": "version=2"})
    assert ws.status == 101
    start = time.monotonic()
    assert b"version 2" in ws.read_until(pktline.FLUSH)
    times = [time.monotonic() - start]
    for _ in range(5):
        start = time.monotonic()
        ws.send(pktline.encode(b"command=ls-refs\n") + pktline.DELIM + pktline.FLUSH)
        assert b"refs/heads/main" in ws.read_until(pktline.FLUSH)
        times.append(time.monotonic() - start)
    ws.close()
    assert min(times) < 0.15, times


@pytest.mark.parametrize("direct", [True, False], ids=["spliced", "relayed"])
def test_client_that_stops_reading_is_dropped(serve, big_repo, log_watch, direct):
    """Output backpressure: git's answer is read only as fast as the socket drains, and a
    client that takes nothing is dropped after ``send_timeout`` (nothing piles up)."""
    server = serve(access=AllowAll(), send_timeout=0.5, direct_output=direct)
    ws = RawWebSocket(server.port, "/big/git-upload-pack")
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _start_fetch(ws)
    audit = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")
    assert "result=aborted" in audit[-1] and "client took no data" in audit[-1], audit[-1]
    wait_for(lambda: not git_processes(str(big_repo)), message="upload-pack to exit")
    ws.close()


def test_client_vanishing_mid_clone_stops_git(serve, big_repo, log_watch):
    server = serve(access=AllowAll())
    ws = RawWebSocket(server.port, "/big/git-upload-pack")
    _start_fetch(ws)
    ws.recv()
    ws.vanish()
    audit = wait_for(lambda: _audit(log_watch, "git-upload-pack"), message="the audit line")
    assert "result=aborted" in audit[-1], audit[-1]
    wait_for(lambda: not git_processes(str(big_repo)), message="upload-pack to exit")


def test_submodule_fetches_need_protocol_ws_allow(open_server):
    """What the docs tell submodule users: git refuses a helper transport it was not told
    to allow when the command is not the user's own (``GIT_PROTOCOL_FROM_USER=0``)."""
    env = {**ws_env(), "GIT_PROTOCOL_FROM_USER": "0"}
    url = _ws(open_server, "app")
    refused = git("-c", "protocol.allow=user", "ls-remote", url, check=False, env=env)
    assert refused.returncode != 0 and b"transport 'ws' not allowed" in refused.stderr, refused.stderr
    allowed = git("-c", "protocol.allow=user", "-c", "protocol.ws.allow=always", "ls-remote", url, env=env)
    assert b"refs/heads/main" in allowed.stdout


# -- the helper's plain ws:// reader: frames by hand, payloads spliced into git's pipe ---------


def _server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, length_form: int = 0) -> bytes:
    """An unmasked frame as a server sends it; ``length_form`` 126/127 forces a longer length."""
    n = len(payload)
    form = length_form or (n if n < 126 else 126 if n < 65536 else 127)
    header = bytes([(0x80 if fin else 0) | opcode, form])
    if form == 126:
        header += struct.pack("!H", n)
    elif form == 127:
        header += struct.pack("!Q", n)
    return header + payload


def _close_frame(code: int, reason: str = "") -> bytes:
    return _server_frame(8, struct.pack("!H", code) + reason.encode())


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(client, server): two ends of a loopback TCP connection, as the helper has."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _client_frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """The helper's frames as the server reads them (unmasked), up to its close frame or EOF."""
    frames, buf = [], b""

    def read(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        data, buf = buf[:n], buf[n:]
        return data

    try:
        while True:
            b0, b1 = read(2)
            assert b1 & 0x80, "a client frame must be masked"
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read(8))[0]
            key = read(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(read(n)))
            frames.append((b0 & 0x0F, payload))
            if b0 & 0x0F == 8:
                return frames
    except (EOFError, ConnectionResetError):
        return frames


class _Drain(threading.Thread):
    """Reads ``fd`` (git's end of the helper's output) to its end."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, bytearray()
        self.start()

    def run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk
        os.close(self.fd)


class _Pump(threading.Thread):
    """``_Plain.pump`` on a thread; ``error`` is what it raised."""

    def __init__(self, conn, out: int) -> None:
        super().__init__(daemon=True)
        self.conn, self.out, self.error = conn, out, None
        self.start()

    def run(self) -> None:
        try:
            self.conn.pump(self.out)
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(self.out)


def _unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def _mixed_stream() -> tuple[bytes, bytes]:
    """Every kind of frame the reader must handle, and the bytes git must get from them."""
    frames = [
        (_server_frame(2, b"0008NAK\n"), b"0008NAK\n"),
        (_server_frame(9, b"p1"), b""),
        (_server_frame(2, b""), b""),
        (_server_frame(2, b"a" * 300), b"a" * 300),  # 16-bit length
        (_server_frame(2, b"b" * 20, length_form=127), b"b" * 20),  # 64-bit length
        (_server_frame(2, b"frag-1/", fin=False), b"frag-1/"),  # a fragmented message ...
        (_server_frame(9, b"p2"), b""),  # ... with a ping inside it
        (_server_frame(0, b"frag-2/", fin=False), b"frag-2/"),
        (_server_frame(0, b"frag-3"), b"frag-3"),
        (_server_frame(10, b"unasked"), b""),  # a pong nobody asked for is ignored
        (_close_frame(1000, "bye"), b""),
    ]
    return b"".join(f for f, _ in frames), b"".join(d for _, d in frames)


@pytest.mark.parametrize("buffered", [None, 0, 1, 5, 12, 200, -1], ids=lambda b: f"buffered-{b}")
def test_plain_reader_takes_frames_split_anywhere(buffered):
    """Frames split at every byte boundary (each byte taken before the next is sent), or
    the first ``buffered`` bytes already read by the handshake (-1: all of them)."""
    stream, expected = _mixed_stream()
    head = b"" if buffered is None else stream if buffered == -1 else stream[:buffered]
    client, server = _tcp_pair()
    conn = remote_helper._Plain(client, head)
    r, w = os.pipe()
    drain, pump = _Drain(r), _Pump(conn, w)
    rest = stream[len(head) :]
    if buffered is None:
        for i in range(len(rest)):
            server.sendall(rest[i : i + 1])
            wait_for(lambda: _unread(client) == 0, interval=0.0002, message=f"byte {i} to be taken")
    else:
        server.sendall(rest)
    pump.join(15)
    assert not pump.is_alive() and pump.error is None, pump.error
    drain.join(15)
    assert bytes(drain.data) == expected
    assert (conn.close_code, conn.close_reason) == (1000, "bye")
    conn.sender.finish(5.0)
    client.close()
    answers = _client_frames(server)
    server.close()
    # Pongs echo their pings; the close echoes the code and is the last frame.
    assert answers == [(10, b"p1"), (10, b"p2"), (8, struct.pack("!H", 1000))], answers


@pytest.mark.parametrize("out", ["pipe", "socket"])
def test_plain_reader_moves_frames_larger_than_the_pipe(out):
    """A 3 MiB frame into a 64 KiB pipe (git reads slower than the socket fills), a ping
    between two frames of a pack; into something that is no pipe the payload is copied."""
    pack = os.urandom(5 * 1024 * 1024)
    cut = 3 * 1024 * 1024
    stream = _server_frame(2, pack[:cut]) + _server_frame(9, b"mid-pack") + _server_frame(2, pack[cut:])
    stream += _close_frame(1000)
    client, server = _tcp_pair()
    conn = remote_helper._Plain(client, b"")
    if out == "pipe":
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 65536)
    else:
        a, b = socket.socketpair()
        r, w = os.dup(a.fileno()), os.dup(b.fileno())
        a.close(), b.close()
    drain, pump = _Drain(r), _Pump(conn, w)
    sender = threading.Thread(target=server.sendall, args=(stream,), daemon=True)
    sender.start()
    pump.join(60)
    assert not pump.is_alive() and pump.error is None, pump.error
    drain.join(60)
    sender.join(5)
    assert hashlib.sha1(drain.data).digest() == hashlib.sha1(pack).digest(), "the pack arrived corrupted"
    assert conn.received == len(pack)
    assert conn._splice is (out == "pipe")  # spliced into a pipe, copied otherwise
    conn.sender.finish(5.0)
    client.close()
    assert _client_frames(server) == [(10, b"mid-pack"), (8, struct.pack("!H", 1000))]
    server.close()


def test_plain_reader_refuses_what_breaks_the_protocol():
    for bad, code, words in (
        (_server_frame(1, b"text"), 4400, "text frame"),
        (b"\x82\x81abcdx", 1002, "masked"),
        (_server_frame(0, b"orphan"), 1002, "fragmented message"),
        (_server_frame(2, b"x", fin=False) + _server_frame(2, b"y"), 1002, "fragmented message"),
        (_server_frame(9, b"p" * 126), 1002, "control frame"),
        (bytes([0xC2, 0]), 1002, "reserved bits"),
        (_server_frame(3), 1002, "unknown opcode"),
    ):
        client, server = _tcp_pair()
        conn = remote_helper._Plain(client, bad)
        r, w = os.pipe()
        drain, pump = _Drain(r), _Pump(conn, w)
        pump.join(15)
        drain.join(15)
        assert isinstance(pump.error, remote_helper._ProtocolError), (bad, pump.error)
        assert pump.error.code == code and words in str(pump.error), (bad, pump.error)
        client.close(), server.close()


class _FakeWSServer(threading.Thread):
    """Accepts one ws:// upgrade, answers 101 and ``script`` in the same write (so the
    helper's handshake reads past the headers), then records the helper's frames."""

    def __init__(self, script: bytes, *, hang_up: bool = False) -> None:
        super().__init__(daemon=True)
        self.script, self.hang_up = script, hang_up
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request = b""
        self.frames: list[tuple[int, bytes]] = []
        self.start()

    def run(self) -> None:
        sock, _ = self.listener.accept()
        self.listener.close()
        with sock:
            while b"\r\n\r\n" not in self.request:
                self.request += sock.recv(65536)
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", self.request)[1]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.script
            )
            if not self.hang_up:
                self.frames = _client_frames(sock)


def _this_checkout() -> dict[str, str]:
    """``PYTHONPATH`` that makes the installed ``git-remote-ws`` run this checkout's code."""
    root = str(Path(gittornado.__file__).resolve().parent.parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def _helper(port: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """The checkout's helper, as git runs it, asked to connect upload-pack."""
    env = {**os.environ, **_this_checkout(), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        [sys.executable, "-m", "gittornado.client.remote_helper", "origin", f"ws://127.0.0.1:{port}/app"],
        input=b"connect git-upload-pack\n",
        capture_output=True,
        env=env,
        timeout=60,
    )


def test_helper_shows_a_close_reason_that_comes_mid_pack(tmp_path):
    """The server closes inside a pack (a ping before it): what came reached git, the
    reason is one fatal line, and the helper answered the ping and echoed the close."""
    data = os.urandom(300 * 1024)
    script = _server_frame(2, data[:1000]) + _server_frame(9, b"still there?") + _server_frame(2, data[1000:])
    fake = _FakeWSServer(script + _close_frame(4500, "git-upload-pack died on the server"))
    proc = _helper(fake.port, tmp_path)
    fake.join(30)
    assert proc.stdout == b"\n" + data
    lines = proc.stderr.decode().splitlines()
    assert lines == ["fatal: git-upload-pack died on the server (websocket close 4500)"], lines
    assert proc.returncode == 128
    assert b"GET /app/git-upload-pack HTTP/1.1\r\n" in fake.request
    assert (10, b"still there?") in fake.frames
    assert fake.frames[-1] == (8, struct.pack("!H", 4500)), fake.frames


def test_helper_refuses_a_text_frame_with_one_line(tmp_path):
    fake = _FakeWSServer(_server_frame(2, b"0008NAK\n") + _server_frame(1, b"hello"))
    proc = _helper(fake.port, tmp_path)
    fake.join(30)
    assert proc.stdout == b"\n0008NAK\n"
    lines = proc.stderr.decode().splitlines()
    assert lines == ["fatal: protocol error: the server sent a text frame"], lines
    assert proc.returncode == 128
    code = fake.frames[-1][1][:2] if fake.frames and fake.frames[-1][0] == 8 else None
    assert code == struct.pack("!H", 4400), fake.frames


def test_helper_says_when_the_connection_is_lost_inside_a_frame(tmp_path):
    fake = _FakeWSServer(_server_frame(2, b"0008NAK\n") + _server_frame(2, b"x" * 1000)[:500], hang_up=True)
    proc = _helper(fake.port, tmp_path)
    fake.join(30)
    assert proc.stdout.startswith(b"\n0008NAK\n")
    lines = proc.stderr.decode().splitlines()
    assert lines == [f"fatal: the connection to 'ws://127.0.0.1:{fake.port}/app' was lost"], lines
    assert proc.returncode == 128


def test_clone_with_pings_inside_the_pack(serve, big_repo, tmp_path):
    """Real git over the spliced path while the server pings every few milliseconds:
    the pings land between the pack's frames, are answered, and the pack is whole."""
    server = serve(access=AllowAll(), websocket_ping_interval=0.002)
    dest = tmp_path / "clone.git"
    env = {**ws_env(), **_this_checkout(), "GITTORNADO_WS_DEBUG": "1"}
    proc = git("clone", "--bare", "-q", _ws(server, "big"), str(dest), env=env)
    answered = [int(n) for n in re.findall(rb"ping after (\d+) bytes: answered", proc.stderr)]
    assert any(0 < n < 8 * 1024 * 1024 for n in answered), proc.stderr.decode(errors="replace")[-2000:]
    git("--git-dir", str(dest), "fsck", "--strict")
    assert rev(dest, "main") == rev(big_repo, "main")
