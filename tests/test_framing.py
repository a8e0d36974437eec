"""HTTP message framing, read off a raw socket: every answer ends where its headers say.

Clients differ in what they forgive. git's curl reads a close-delimited body;
libgit2 >= 1.9.3 reads one as empty, and a proxy pooling connections may not
notice the end at all. So the contract (SPEC, "URLs") is that every HTTP/1.1
answer carries ``Content-Length`` or ``Transfer-Encoding: chunked`` and leaves
the connection open for the next request; only an HTTP/1.0 client, or one that
said ``Connection: close``, may see the connection end.

These tests speak HTTP through ``socket`` with a deliberately strict little
reader: an HTTP library would quietly accept a close-delimited body and
reconnect, which is exactly what must be caught here. Each kind of answer the
server gives (smart advertisement v0/v2, upload-pack v0/v2, receive-pack,
dumb files, errors, the index page) is read by its framing, then a second
request on the same socket must get a complete answer too.
"""

from __future__ import annotations

import hashlib
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import AllowAll, git, refs, rev

from gittornado.protocol import pktline

TIMEOUT = 30


# -- a strict HTTP/1.x reader -----------------------------------------------------------------


@dataclass
class Response:
    version: str
    status: int
    headers: dict[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes = field(repr=False)
    framing: str  # "content-length", "chunked" or "close"

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for t in self.headers.get("connection", "").split(",") if t.strip()}


@dataclass
class Conn:
    """One TCP connection; requests are written by hand and answers read by their framing."""

    port: int
    sock: socket.socket = field(init=False)
    buf: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def send(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        version: str = "HTTP/1.1",
    ) -> None:
        lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        version: str = "HTTP/1.1",
    ) -> Response:
        self.send(method, path, headers, body, version)
        return self.read_response(method)

    # -- reading ---------------------------------------------------------------------------
    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before {sep!r}; got {self.buf[:200]!r}")
        out, self.buf = self.buf.split(sep, 1)
        return out

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed {n - len(self.buf)} bytes short of the body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _chunked(self) -> bytes:
        """RFC 9112 7.1: hex size (extensions ignored), CRLF, data, CRLF; 0 ends; trailers."""
        body = bytearray()
        while True:
            size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
            if size == 0:
                while self._until(b"\r\n"):  # trailer fields, then the empty line
                    pass
                return bytes(body)
            body += self._exact(size)
            assert self._exact(2) == b"\r\n", "chunk data not followed by CRLF"

    def read_response(self, method: str = "GET") -> Response:
        head = self._until(b"\r\n\r\n").decode("latin-1")
        status_line, *fields = head.split("\r\n")
        version, status, _ = (status_line.split(" ", 2) + [""])[:3]
        headers: dict[str, str] = {}
        for line in fields:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
        code = int(status)
        assert not ("content-length" in headers and "transfer-encoding" in headers), headers
        if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
            return Response(version, code, headers, b"", "content-length")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Response(version, code, headers, self._chunked(), "chunked")
        if "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
            return Response(version, code, headers, body, "content-length")
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return Response(version, code, headers, body, "close")

    def peer_closed(self) -> bool:
        """True once the server has closed its side (and sent nothing more)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def assert_framed_keep_alive(resp: Response) -> None:
    assert resp.framing in ("content-length", "chunked"), (
        f"{resp.status} answer is close-delimited (headers {resp.headers})"
    )
    assert "close" not in resp.connection_tokens(), f"{resp.status} answer closes: {resp.headers}"


def assert_next_request_served(conn: Conn, after: Response | None = None) -> None:
    """The connection is still usable: a second request gets a whole, framed answer.

    ``public/lib`` is readable by anyone on every test server, access file or not.
    """
    try:
        resp = conn.request("GET", "/public/lib/info/refs?service=git-upload-pack")
    except (EOFError, OSError) as exc:
        what = f"a {after.status} answer {after.headers}" if after else "the last answer"
        raise AssertionError(
            f"server closed the connection after {what} without Connection: close ({exc!r})"
        ) from None
    assert resp.status == 200
    assert_framed_keep_alive(resp)
    assert b"# service=git-upload-pack\n" in resp.body and b"refs/heads/main" in resp.body
    assert resp.body.endswith(pktline.FLUSH)


# -- pkt-lines and packs ------------------------------------------------------------------------


def pkt_lines(data: bytes) -> list[bytes | int]:
    """Split pkt-lines: data payloads as bytes, the special packets 0000/0001/0002 as ints."""
    out: list[bytes | int] = []
    pos = 0
    while pos < len(data):
        n = int(data[pos : pos + 4], 16)
        if n < 4:
            out.append(n)
            pos += 4
            continue
        out.append(data[pos + 4 : pos + n])
        pos += n
    assert pos == len(data), "answer ends inside a pkt-line"
    return out


def assert_valid_pack(pack: bytes) -> int:
    """A whole pack: signature, version, and the trailing SHA-1 over everything before it."""
    assert pack[:4] == b"PACK", pack[:40]
    assert int.from_bytes(pack[4:8], "big") in (2, 3)
    count = int.from_bytes(pack[8:12], "big")
    assert count > 0
    assert hashlib.sha1(pack[:-20]).digest() == pack[-20:], "pack checksum mismatch (truncated?)"
    return count


def v2_pack(body: bytes) -> bytes:
    """The pack in a v2 fetch answer: band 1 of the ``packfile`` section, up to the flush."""
    lines = pkt_lines(body)
    assert b"packfile\n" in lines, lines[:5]
    pack = bytearray()
    for item in lines[lines.index(b"packfile\n") + 1 :]:
        if item == 0:
            break
        assert isinstance(item, bytes)
        if item[0] == 3:
            raise AssertionError(f"server error: {item[1:]!r}")
        if item[0] == 1:
            pack += item[1:]
    else:
        raise AssertionError("packfile section not ended by a flush")
    return bytes(pack)


V2 = {"Git-Protocol": "version=2"}
UPLOAD = {"Content-Type": "application/x-git-upload-pack-request"}
RECEIVE = {"Content-Type": "application/x-git-receive-pack-request"}


def ls_refs_v2() -> bytes:
    return (
        pktline.encode(b"command=ls-refs\n")
        + pktline.DELIM
        + pktline.encode(b"peel\n")
        + pktline.encode(b"symrefs\n")
        + pktline.FLUSH
    )


def fetch_v2(oid: str) -> bytes:
    return (
        pktline.encode(b"command=fetch\n")
        + pktline.DELIM
        + pktline.encode(b"ofs-delta\n")
        + pktline.encode(b"no-progress\n")
        + pktline.encode(f"want {oid}\n".encode())
        + pktline.encode(b"done\n")
        + pktline.FLUSH
    )


def fetch_v0(oid: str) -> bytes:
    """want/done without side-band: the answer is ``NAK`` then the raw pack."""
    return pktline.encode(f"want {oid} ofs-delta\n".encode()) + pktline.FLUSH + pktline.encode(b"done\n")


def push_body(gitbase, tmp_path, ref: str = "refs/heads/main") -> tuple[bytes, str]:
    """A real push request: the command for ``ref`` and a pack built by git pack-objects."""
    upstream = gitbase / "app.git"
    work = tmp_path / "push-work"
    git("clone", "-q", "--bare", str(upstream), str(work))
    old = rev(upstream, "main")
    tree = git("rev-parse", "main^{tree}", cwd=work).stdout.decode().strip()
    new = git("commit-tree", tree, "-p", old, "-m", "pushed", cwd=work).stdout.decode().strip()
    pack = git("pack-objects", "--stdout", "--revs", "-q", cwd=work, input=f"{new}\n^{old}\n".encode()).stdout
    command = pktline.encode(f"{old} {new} {ref}\0report-status\n".encode()) + pktline.FLUSH
    return command + pack, new


# -- every kind of answer is framed and keeps the connection ------------------------------------


@dataclass
class Case:
    """One request and the status it must get."""

    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    server: str = "open"  # "open" (AllowAll), "acl" (access file), "capped" (64 KiB fetch cap)


def _gzip(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


def _main(gitbase) -> str:
    return rev(gitbase / "app.git", "main")


def _pack_name(gitbase) -> str:
    return next((gitbase / "app.git" / "objects" / "pack").glob("*.pack")).name


_REFS = "/app/info/refs?service=git-upload-pack"
_UPLOAD_V2 = {**UPLOAD, **V2}

#: Every kind of answer, built lazily from (gitbase, tmp_path): a real pack costs a git run.
CASES: dict[str, Callable[[Path, Path], Case]] = {
    "advertisement-v0": lambda g, t: Case("GET", _REFS, 200),
    "advertisement-v2": lambda g, t: Case("GET", _REFS, 200, V2),
    "receive-pack-advertisement": lambda g, t: Case("GET", "/app/info/refs?service=git-receive-pack", 200),
    "upload-pack-v0": lambda g, t: Case("POST", "/app/git-upload-pack", 200, UPLOAD, fetch_v0(_main(g))),
    "ls-refs-v2": lambda g, t: Case("POST", "/app/git-upload-pack", 200, _UPLOAD_V2, ls_refs_v2()),
    "fetch-v2": lambda g, t: Case("POST", "/app/git-upload-pack", 200, _UPLOAD_V2, fetch_v2(_main(g))),
    "receive-pack": lambda g, t: Case("POST", "/app/git-receive-pack", 200, RECEIVE, push_body(g, t)[0]),
    "dumb-HEAD": lambda g, t: Case("GET", "/app/HEAD", 200),
    "dumb-info-refs": lambda g, t: Case("GET", "/app/info/refs", 200),
    "dumb-packs": lambda g, t: Case("GET", "/app/objects/info/packs", 200),
    "dumb-pack": lambda g, t: Case("GET", f"/app/objects/pack/{_pack_name(g)}", 200),
    "index": lambda g, t: Case("GET", "/", 200),
    "401-anonymous-private": lambda g, t: Case(
        "GET", "/private/info/refs?service=git-upload-pack", 401, server="acl"
    ),
    # Refused before the body is read: the client has sent it already (it is
    # small), so the server reads past it and the connection stays usable.
    "401-post-private": lambda g, t: Case(
        "POST", "/private/git-upload-pack", 401, _UPLOAD_V2, ls_refs_v2(), server="acl"
    ),
    "404-missing": lambda g, t: Case("GET", "/nope/info/refs?service=git-upload-pack", 404),
    "404-post-missing": lambda g, t: Case("POST", "/nope/git-upload-pack", 404, _UPLOAD_V2, ls_refs_v2()),
    "404-dumb-config": lambda g, t: Case("GET", "/app/config", 404),
    "404-fallback": lambda g, t: Case("GET", "/no/such/page", 404),
    "405-get-rpc": lambda g, t: Case("GET", "/app/git-upload-pack", 405),
    "400-git-protocol": lambda g, t: Case("GET", _REFS, 400, {"Git-Protocol": "bad value!"}),
    "400-service": lambda g, t: Case("GET", "/app/info/refs?service=git-frobnicate", 400),
    "400-content-type": lambda g, t: Case(
        "POST", "/app/git-upload-pack", 400, {"Content-Type": "text/plain", **V2}, ls_refs_v2()
    ),
    # Refusals found while reading the body.
    "400-pkt-line": lambda g, t: Case("POST", "/app/git-upload-pack", 400, UPLOAD, b"zzzz"),
    "400-bad-gzip": lambda g, t: Case(
        "POST", "/app/git-upload-pack", 400, {**UPLOAD, "Content-Encoding": "gzip"}, b"not gzip at all"
    ),
    # 1 MiB of flush packets inflates past the 64 KiB cap from ~1 KiB on the wire.
    "413-inflated": lambda g, t: Case(
        "POST",
        "/app/git-upload-pack",
        413,
        {**UPLOAD, "Content-Encoding": "gzip"},
        _gzip(pktline.FLUSH * (256 * 1024)),
        server="capped",
    ),
}


@pytest.fixture
def servers(serve, acl_server):
    """The servers a case may need, started once per test."""
    started: dict[str, object] = {"acl": acl_server}

    def get(kind: str):
        if kind not in started:
            kwargs = {
                "open": {"access": AllowAll()},
                "capped": {"access": AllowAll(), "upload_pack_limit": 64 * 1024},
            }[kind]
            started[kind] = serve(**kwargs)
        return started[kind]

    return get


def _check_body(name: str, resp: Response, gitbase) -> None:
    """What each answer must contain: proof the body read by its framing is the whole body."""
    main = rev(gitbase / "app.git", "main")
    if name.startswith("advertisement") or name == "receive-pack-advertisement":
        assert resp.body.endswith(pktline.FLUSH)
        assert b"refs/heads/main" in resp.body or b"version 2" in resp.body
    elif name == "upload-pack-v0":
        assert resp.body[:8] == pktline.encode(b"NAK\n")
        assert_valid_pack(resp.body[8:])
    elif name == "ls-refs-v2":
        lines = pkt_lines(resp.body)
        assert lines[-1] == 0 and f"{main} refs/heads/main".encode() in b"".join(
            x for x in lines if isinstance(x, bytes)
        )
    elif name == "fetch-v2":
        assert_valid_pack(v2_pack(resp.body))
    elif name == "receive-pack":
        lines = pkt_lines(resp.body)
        assert lines == [b"unpack ok\n", b"ok refs/heads/main\n", 0], lines
    elif name == "dumb-HEAD":
        assert resp.body == b"ref: refs/heads/main\n"
    elif name == "dumb-info-refs":
        assert f"{main}\trefs/heads/main\n".encode() in resp.body
    elif name == "dumb-packs":
        assert resp.body.startswith(b"P pack-") and resp.body.endswith(b"\n\n")
    elif name == "dumb-pack":
        assert_valid_pack(resp.body)
    elif name == "index":
        assert b"app" in resp.body and b"</html>" in resp.body.lower()
    elif name.startswith("401"):
        assert resp.headers["www-authenticate"].startswith("Basic realm=")
    elif name.startswith("413"):
        assert resp.body.strip() and resp.body.count(b"\n") <= 1, resp.body  # a one-line reason


@pytest.mark.parametrize("name", list(CASES))
def test_answer_is_framed_and_connection_reused(name, servers, gitbase, tmp_path):
    """Each kind of answer ends where its framing says, and the connection serves another."""
    case = CASES[name](gitbase, tmp_path)
    conn = Conn(servers(case.server).port)
    try:
        resp = conn.request(case.method, case.path, case.headers, case.body)
        assert resp.status == case.status, (resp.status, resp.body[:300])
        assert resp.version == "HTTP/1.1"
        assert_framed_keep_alive(resp)
        _check_body(name, resp, gitbase)
        assert_next_request_served(conn, resp)
    finally:
        conn.close()


def test_push_on_a_reused_connection_lands(servers, gitbase, tmp_path):
    """A push answered framed is also complete on disk: the ref moved, the repo is sound."""
    body, new = push_body(gitbase, tmp_path)
    conn = Conn(servers("open").port)
    try:
        assert_next_request_served(conn)  # the push is the second request on this connection
        resp = conn.request("POST", "/app/git-receive-pack", RECEIVE, body)
        assert resp.status == 200 and pkt_lines(resp.body)[:2] == [b"unpack ok\n", b"ok refs/heads/main\n"]
        assert_framed_keep_alive(resp)
        assert refs(gitbase / "app.git")["refs/heads/main"] == new
        assert_next_request_served(conn)
    finally:
        conn.close()
    git("fsck", "--strict", cwd=gitbase / "app.git")


def test_v2_ls_refs_then_fetch_on_one_connection(servers, gitbase):
    """What a v2 client does: advertisement, ls-refs, fetch, all down one socket."""
    conn = Conn(servers("open").port)
    try:
        caps = conn.request("GET", "/app/info/refs?service=git-upload-pack", V2)
        assert caps.status == 200 and b"version 2" in caps.body
        assert_framed_keep_alive(caps)

        listed = conn.request("POST", "/app/git-upload-pack", {**UPLOAD, **V2}, ls_refs_v2())
        assert listed.status == 200
        assert_framed_keep_alive(listed)
        advertised = dict(
            reversed(line.rstrip(b"\n").split(b" ")[:2])
            for line in pkt_lines(listed.body)
            if isinstance(line, bytes)
        )
        main = advertised[b"refs/heads/main"].decode()
        assert main == rev(gitbase / "app.git", "main")

        fetched = conn.request("POST", "/app/git-upload-pack", {**UPLOAD, **V2}, fetch_v2(main))
        assert fetched.status == 200
        assert_framed_keep_alive(fetched)
        assert pkt_lines(fetched.body)[-1] == 0
        count = assert_valid_pack(v2_pack(fetched.body))
        reachable = git("rev-list", "--objects", "main", cwd=gitbase / "app.git").stdout.splitlines()
        assert count == len(reachable)  # a full clone's pack: everything main reaches

        assert_next_request_served(conn)
    finally:
        conn.close()


# -- HTTP/1.0 and Connection: close ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["advertisement", "fetch-v0"])
def test_http10_client_gets_a_complete_answer(kind, servers, gitbase):
    """HTTP/1.0 has no chunking: a close-delimited body is allowed, but it must be whole."""
    conn = Conn(servers("open").port)
    try:
        if kind == "advertisement":
            resp = conn.request("GET", "/app/info/refs?service=git-upload-pack", version="HTTP/1.0")
            assert resp.status == 200 and resp.body.endswith(pktline.FLUSH)
            assert b"refs/heads/main" in resp.body
        else:
            main = rev(gitbase / "app.git", "main")
            resp = conn.request("POST", "/app/git-upload-pack", UPLOAD, fetch_v0(main), version="HTTP/1.0")
            assert resp.status == 200 and resp.body[:8] == pktline.encode(b"NAK\n")
            assert_valid_pack(resp.body[8:])
        assert resp.framing != "chunked", "chunked is not HTTP/1.0"
        if resp.framing == "close":
            assert conn.peer_closed()
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["advertisement", "fetch-v2", "error"])
def test_connection_close_request_gets_answer_then_close(kind, servers, gitbase):
    """A client that says ``Connection: close`` gets its whole answer, then the server hangs up."""
    conn = Conn(servers("open").port)
    close = {"Connection": "close"}
    try:
        if kind == "advertisement":
            resp = conn.request("GET", "/app/info/refs?service=git-upload-pack", close)
            assert resp.status == 200 and resp.body.endswith(pktline.FLUSH)
        elif kind == "fetch-v2":
            main = rev(gitbase / "app.git", "main")
            resp = conn.request("POST", "/app/git-upload-pack", {**UPLOAD, **V2, **close}, fetch_v2(main))
            assert resp.status == 200
            assert_valid_pack(v2_pack(resp.body))
        else:
            resp = conn.request("GET", "/nope/info/refs?service=git-upload-pack", close)
            assert resp.status == 404
        assert conn.peer_closed(), "server kept a connection the client asked to close"
    finally:
        conn.close()


def test_push_declared_over_the_cap_is_a_framed_413(serve):
    """A push whose Content-Length exceeds --max-push-size is refused before its body.

    The server need not read a body it refuses, so it may close; but the 413
    must still be a framed answer (the reason is shown to the user), and a
    server that closes says ``Connection: close`` first.
    """
    server = serve(access=AllowAll(), receive_pack_limit=64 * 1024)
    conn = Conn(server.port)
    try:
        conn.sock.sendall(
            b"POST /app/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-git-receive-pack-request\r\n"
            b"Content-Length: 1048576\r\n\r\n"
        )
        resp = conn.read_response("POST")
        assert resp.status == 413, (resp.status, resp.headers, resp.body[:200])
        assert resp.framing in ("content-length", "chunked"), resp.headers
        assert resp.body.strip(), "413 without a reason"
        if "close" not in resp.connection_tokens():
            # Kept open: the server reads (and drops) the body it refused.
            try:
                conn.sock.sendall(b"\0" * 1048576)
            except OSError as exc:
                raise AssertionError(
                    f"server closed after {resp.headers} without Connection: close ({exc!r})"
                ) from None
            assert_next_request_served(conn, resp)
    finally:
        conn.close()
