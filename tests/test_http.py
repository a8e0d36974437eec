"""Smart and dumb HTTP at the byte level: what raw clients send, what comes back.

Every malformed request must get a clear 4xx (never a 500 or a traceback, which
the log watcher in conftest turns into a failure).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import re
import zlib

import pytest
from conftest import AllowAll, git, git_processes, refs, rev, wait_for

from gittornado.protocol import pktline

UPLOAD_REQ = "application/x-git-upload-pack-request"
RECEIVE_REQ = "application/x-git-receive-pack-request"
LS_REFS_V2 = pktline.encode(b"command=ls-refs\n") + pktline.DELIM + pktline.encode(b"peel\n") + pktline.FLUSH


def request(server, method, path, body=None, headers=None, chunks=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        if chunks is not None:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


@pytest.fixture
def server(serve):
    return serve()


@pytest.fixture
def rw_server(serve):
    return serve(access=AllowAll())


# -- the advertisement ----------------------------------------------------------------------


def test_v0_advertisement_has_service_preamble_and_no_cache(server):
    status, headers, body = request(server, "GET", "/app/info/refs?service=git-upload-pack")
    assert status == 200
    assert headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
    assert headers["Cache-Control"] == "no-cache, max-age=0, must-revalidate"
    assert headers["Expires"] == "Fri, 01 Jan 1980 00:00:00 GMT"
    assert body.startswith(b"001e# service=git-upload-pack\n0000")
    assert b"refs/heads/main" in body


def test_v2_advertisement_has_no_preamble(server):
    status, _, body = request(
        server, "GET", "/app.git/info/refs?service=git-upload-pack", headers={"Git-Protocol": "version=2"}
    )
    assert status == 200
    assert body.startswith(b"000eversion 2\n")
    assert b"ls-refs" in body and b"fetch=" in body


def test_unknown_protocol_version_falls_back_to_v0(server):
    status, _, body = request(
        server, "GET", "/app/info/refs?service=git-upload-pack", headers={"Git-Protocol": "version=9"}
    )
    assert status == 200 and body.startswith(b"001e# service=git-upload-pack\n")


@pytest.mark.parametrize("value", ["version=2;id", "version==2", "version=2 x", "a:"])
def test_malformed_git_protocol_is_400(server, value):
    status, _, body = request(
        server, "GET", "/app/info/refs?service=git-upload-pack", headers={"Git-Protocol": value}
    )
    assert status == 400 and b"Git-Protocol" in body


@pytest.mark.parametrize(
    "path",
    [
        "/app/info/refs?service=git-shell",
        "/app/info/refs?service=git-upload-archive",
        "/app/info/refs?service=",
    ],
)
def test_unknown_service_is_400(server, path):
    assert request(server, "GET", path)[0] == 400


def test_receive_pack_advertisement_refused_without_access_file(server):
    status, headers, body = request(server, "GET", "/app/info/refs?service=git-receive-pack")
    assert status == 403 and b"may not push" in body
    assert "WWW-Authenticate" not in headers


def test_git_failing_before_output_reaches_client_as_err_line(server, gitbase):
    git("config", "core.repositoryformatversion", "99", cwd=gitbase / "app.git")
    status, _, body = request(server, "GET", "/app/info/refs?service=git-upload-pack")
    assert status == 200
    assert body.startswith(b"00") and b"ERR git-upload-pack failed on the server" in body
    proc = git("ls-remote", f"{server.url}/app", check=False)
    assert proc.returncode != 0 and b"remote error: git-upload-pack failed" in proc.stderr


# -- the RPC ---------------------------------------------------------------------------------


def test_get_on_rpc_url_is_405(server):
    status, headers, _ = request(server, "GET", "/app/git-upload-pack")
    assert status == 405 and headers["Allow"] == "POST"


def test_wrong_content_type_is_400(server):
    status, _, body = request(
        server,
        "POST",
        "/app/git-upload-pack",
        body=LS_REFS_V2,
        headers={"Content-Type": "text/plain", "Git-Protocol": "version=2"},
    )
    assert status == 400 and UPLOAD_REQ.encode() in body


def test_unknown_rpc_service_is_400(server):
    assert (
        request(
            server,
            "POST",
            "/app/git-frobnicate",
            body=b"0000",
            headers={"Content-Type": "application/x-git-frobnicate-request"},
        )[0]
        == 400
    )


def _ls_refs(server, body, extra=None, chunks=None):
    headers = {"Content-Type": UPLOAD_REQ, "Git-Protocol": "version=2", **(extra or {})}
    return request(server, "POST", "/app/git-upload-pack", body=body, headers=headers, chunks=chunks)


def test_plain_v2_ls_refs(server, gitbase):
    status, headers, body = _ls_refs(server, LS_REFS_V2)
    assert status == 200
    assert headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert f"{rev(gitbase / 'app.git', 'main')} refs/heads/main".encode() in body
    assert body.endswith(pktline.FLUSH)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
def test_gzip_request_body(server, encoding):
    status, _, body = _ls_refs(server, gzip.compress(LS_REFS_V2), {"Content-Encoding": encoding})
    assert status == 200 and b"refs/heads/main" in body


def test_chunked_request_body_in_tiny_chunks(server):
    data = gzip.compress(LS_REFS_V2)
    status, _, body = _ls_refs(
        server, None, {"Content-Encoding": "gzip"}, chunks=[data[i : i + 3] for i in range(0, len(data), 3)]
    )
    assert status == 200 and b"refs/heads/main" in body


def test_bad_gzip_is_400(server):
    status, _, body = _ls_refs(server, b"\x1f\x8bthis is not gzip at all", {"Content-Encoding": "gzip"})
    assert status == 400 and b"gzip" in body


def test_truncated_gzip_is_400(server):
    data = gzip.compress(LS_REFS_V2 * 20)
    status, _, body = _ls_refs(server, data[:-10], {"Content-Encoding": "gzip"})
    assert status == 400 and b"gzip" in body


def test_unknown_content_encoding_is_400(server):
    assert _ls_refs(server, LS_REFS_V2, {"Content-Encoding": "br"})[0] == 400


def test_gzip_bomb_is_413(serve):
    server = serve(upload_pack_limit=1024 * 1024)
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = z.compress(b"0004" * (16 * 1024 * 1024)) + z.flush()  # 64 MiB inflated, ~64 KiB sent
    status, _, body = _ls_refs(server, bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and b"larger than" in body


@pytest.mark.parametrize("body", [b"zzzz", b"0003", b"0032too short", b"0006a\n00"])
def test_malformed_pkt_lines_are_400(server, body):
    status, _, text = _ls_refs(server, body)
    assert status == 400 and b"pkt-line" in text


def test_push_probe_is_answered(rw_server, server):
    """git POSTs a 4-byte flush before a large chunked push (to meet a 401 early)."""
    status, headers, body = request(
        rw_server, "POST", "/app/git-receive-pack", body=b"0000", headers={"Content-Type": RECEIVE_REQ}
    )
    assert status == 200 and body == b""
    assert headers["Content-Type"] == "application/x-git-receive-pack-result"
    assert (
        request(server, "POST", "/app/git-receive-pack", body=b"0000", headers={"Content-Type": RECEIVE_REQ})[
            0
        ]
        == 403
    )


def test_large_chunked_push_with_real_git(rw_server, tmp_path, gitbase):
    """Bigger than http.postBuffer, so git probes with 0000 and then sends it chunked."""
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    git("add", "big.bin", cwd=work)
    git("commit", "-qm", "big", cwd=work)
    proc = git(
        "-c",
        "http.postBuffer=65536",
        "push",
        f"{rw_server.url}/app",
        "main",
        cwd=work,
        env={"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
    )
    assert b"Transfer-Encoding: chunked" in proc.stderr
    assert rev(gitbase / "app.git", "main") == rev(work, "HEAD")


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/%2e%2e/repos/app/info/refs?service=git-upload-pack",
        "/../app/info/refs?service=git-upload-pack",
        "/team/..%2fapp/info/refs?service=git-upload-pack",
        "/team%2fapp/info/refs?service=git-upload-pack",
        "/team/%2e%2e/app/info/refs?service=git-upload-pack",
        "/app%00/info/refs?service=git-upload-pack",
        "/app%5c/info/refs?service=git-upload-pack",
        "/-app/info/refs?service=git-upload-pack",
        "/team/%2e%2e/%2e%2e/HEAD",
        "/nope/info/refs?service=git-upload-pack",
    ],
)
def test_escapes_and_missing_are_404(server, path):
    assert request(server, "GET", path)[0] == 404


def test_symlink_out_of_root_is_404(server, gitbase, tmp_path, fixture_repo):
    git("clone", "-q", "--bare", str(fixture_repo), str(tmp_path / "outside.git"))
    (gitbase / "evil.git").symlink_to(tmp_path / "outside.git")
    assert request(server, "GET", "/evil/info/refs?service=git-upload-pack")[0] == 404
    assert request(server, "GET", "/evil/HEAD")[0] == 404


def test_non_utf8_path_is_400(server):
    assert request(server, "GET", "/%ff%fe/info/refs?service=git-upload-pack")[0] == 400


# -- dumb HTTP ----------------------------------------------------------------------------------


def test_dumb_info_refs_generated_without_update_server_info(server, gitbase):
    repo = gitbase / "app.git"
    assert not (repo / "info" / "refs").exists()
    status, headers, body = request(server, "GET", "/app/info/refs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Cache-Control"] == "no-cache, max-age=0, must-revalidate"
    git("update-server-info", cwd=repo)
    assert body == (repo / "info" / "refs").read_bytes()


def test_dumb_head_and_packs(server, gitbase):
    status, headers, body = request(server, "GET", "/app/HEAD")
    assert (status, body) == (200, b"ref: refs/heads/main\n")
    assert headers["Content-Type"] == "text/plain" and headers["Pragma"] == "no-cache"
    status, _, body = request(server, "GET", "/app/objects/info/packs")
    packs = sorted(n for n in os.listdir(gitbase / "app.git" / "objects" / "pack") if n.endswith(".pack"))
    assert status == 200 and body == b"".join(b"P %s\n" % p.encode() for p in packs) + b"\n"


def test_dumb_pack_and_idx_are_immutable(server, gitbase):
    pack = next(n for n in os.listdir(gitbase / "app.git" / "objects" / "pack") if n.endswith(".pack"))
    status, headers, body = request(server, "GET", f"/app/objects/pack/{pack}")
    assert status == 200
    assert headers["Content-Type"] == "application/x-git-packed-objects"
    assert "max-age=31536000" in headers["Cache-Control"] and "public" in headers["Cache-Control"]
    assert "Pragma" not in headers and "Last-Modified" in headers and "Expires" in headers
    assert body == (gitbase / "app.git" / "objects" / "pack" / pack).read_bytes()
    idx = pack[:-5] + ".idx"
    status, headers, _ = request(server, "GET", f"/app/objects/pack/{idx}")
    assert status == 200 and headers["Content-Type"] == "application/x-git-packed-objects-toc"


def test_dumb_loose_object(server, gitbase, tmp_path):
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    git("commit", "-q", "--allow-empty", "-m", "loose", cwd=work)
    git("push", "-q", "origin", "main", "--no-thin", cwd=work)
    git(
        "unpack-objects",
        "-q",
        cwd=gitbase / "app.git",
        input=git(
            "pack-objects", "--stdout", "-q", cwd=work, input=rev(work, "HEAD").encode() + b"\n"
        ).stdout,
    )
    oid = rev(work, "HEAD")
    path = f"/app/objects/{oid[:2]}/{oid[2:]}"
    status, headers, body = request(server, "GET", path)
    assert status == 200 and headers["Content-Type"] == "application/x-git-loose-object"
    assert zlib.decompress(body).startswith(b"commit ")
    status, headers, body = request(server, "HEAD", path)
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    "path",
    [
        "/app/config",
        "/app/description",
        "/app/hooks/pre-receive.sample",
        "/app/objects/info/../../config",
        "/app/info/exclude",
        "/app/objects/pack/pack-zz.pack",
        "/app/packed-refs",
        "/app/objects/info/nothing",
    ],
)
def test_dumb_serves_nothing_else(server, path):
    assert request(server, "GET", path)[0] == 404


# -- fallback -----------------------------------------------------------------------------------


def test_index_page_lists_repositories_with_clone_urls(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in (b"app", b"team/app", b"public/lib", b"w"):
        assert b"<td>" + name + b"</td>" in body
    assert f"git clone {server.url}/team/app.git".encode() in body


def test_unknown_urls_are_404_from_the_fallback(server):
    assert request(server, "GET", "/no/such/page")[0] == 404


def test_prefix(serve):
    server = serve(prefix="/git")
    assert request(server, "GET", "/git/app/info/refs?service=git-upload-pack")[0] == 200
    assert request(server, "GET", "/app/info/refs?service=git-upload-pack")[0] == 404
    status, _, body = request(server, "GET", "/git/")
    assert status == 200 and f"{server.url}/git/app.git".encode() in body
    git("ls-remote", f"{server.url}/git/team/app.git")


def test_push_beyond_tornados_100_mb_default_with_content_length(rw_server, tmp_path, gitbase):
    """A large postBuffer makes git send one Content-Length body instead of chunks."""
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    with open(work / "huge.bin", "wb") as fh:
        for _ in range(105):
            fh.write(os.urandom(1024 * 1024))
    fast = ["-c", "core.compression=0", "-c", "pack.compression=0"]
    git(*fast, "add", "huge.bin", cwd=work)
    git(*fast, "commit", "-qm", "huge", cwd=work)
    proc = git(
        *fast,
        "-c",
        "http.postBuffer=209715200",
        "push",
        f"{rw_server.url}/app",
        "main",
        cwd=work,
        env={"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
        timeout=300,
    )
    lengths = [int(x) for x in re.findall(rb"Content-Length: (\d+)", proc.stderr)]
    assert max(lengths) > 100 * 1024 * 1024
    assert rev(gitbase / "app.git", "main") == rev(work, "HEAD")


def test_dumb_symlinked_file_out_of_the_repository_is_404(server, gitbase, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    pack_dir = gitbase / "app.git" / "objects" / "pack"
    (pack_dir / ("pack-" + "a" * 40 + ".pack")).symlink_to(secret)
    status, _, body = request(server, "GET", "/app/objects/pack/pack-" + "a" * 40 + ".pack")
    assert status == 404 and b"top secret" not in body


# -- fetch answers spliced from git's pipe into the socket ------------------------------------


def _big_repo(gitbase, tmp_path, mib=8):
    work = tmp_path / "big"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "big.bin").write_bytes(os.urandom(mib * 1024 * 1024))
    git("add", "big.bin", cwd=work)
    git("commit", "-qm", "big", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return rev(work, "HEAD")


def _fetch_request(oid):
    return (
        pktline.encode(b"command=fetch\n")
        + pktline.DELIM
        + pktline.encode(b"no-progress\n")
        + pktline.encode(f"want {oid}\n".encode())
        + pktline.encode(b"done\n")
        + pktline.FLUSH
    )


@pytest.mark.parametrize("direct", [True, False])
def test_fetch_answer_is_chunked_and_audited(serve, gitbase, tmp_path, log_watch, direct):
    server = serve(direct_output=direct)
    oid = _big_repo(gitbase, tmp_path, mib=2)
    status, headers, body = _ls_refs(server, _fetch_request(oid))
    assert status == 200 and headers.get("Connection") != "close"
    assert headers["Content-Type"] == "application/x-git-upload-pack-result"
    assert headers["Transfer-Encoding"] == "chunked"
    assert b"packfile\n" in body and len(body) > 2 * 1024 * 1024
    records = [r for r in log_watch.records if r.name == "gittornado.audit"]
    audit = records[-1].getMessage()
    assert " result=ok" in audit and records[-1].levelno == logging.INFO
    out = int(re.search(r" out=(\d+)", audit).group(1))
    assert out == len(body), (out, len(body))
    assert re.search(r" in=(\d+)", audit).group(1) == str(len(_fetch_request(oid)))


def test_direct_answer_git_failure_is_an_err_line(server, gitbase):
    git("config", "core.repositoryformatversion", "99", cwd=gitbase / "app.git")
    status, _, body = _ls_refs(server, LS_REFS_V2)
    assert status == 200 and b"ERR git-upload-pack failed on the server" in body


@pytest.mark.parametrize("direct", [True, False])
def test_client_vanishing_mid_clone_leaves_no_git_behind(serve, gitbase, tmp_path, direct):
    server = serve(direct_output=direct)
    oid = _big_repo(gitbase, tmp_path, mib=24)
    body = _fetch_request(oid)
    import socket as socketlib

    with socketlib.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
        sock.sendall(
            f"POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: {UPLOAD_REQ}\r\n"
            f"Git-Protocol: version=2\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        # git is now blocked on a client that stopped reading
        wait_for(lambda: git_processes(str(gitbase / "app.git")), message="upload-pack running")
    wait_for(lambda: not git_processes(str(gitbase / "app.git")), message="upload-pack to exit")


def test_wsgi_fallback_runs_off_the_event_loop(serve, gitbase):
    import threading

    seen = {}

    def wsgi_app(environ, start_response):
        seen["thread"] = threading.current_thread().name
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"web ui at " + environ["PATH_INFO"].encode()]

    server = serve(fallback=wsgi_app)
    status, _, body = request(server, "GET", "/some/page")
    assert (status, body) == (200, b"web ui at /some/page")
    assert seen["thread"].startswith("gittornado-wsgi")
    assert request(server, "GET", "/app/info/refs?service=git-upload-pack")[0] == 200
    git("ls-remote", f"{server.url}/app")


def test_stalled_push_body_is_dropped_and_changes_nothing(serve, gitbase, log_watch):
    from test_contract import _partial_pack

    server = serve(access=AllowAll(), body_idle_timeout=0.5)
    upstream = gitbase / "app.git"
    before = refs(upstream)
    old = rev(upstream, "main")
    commands = pktline.encode(f"{old} {'1' * 40} refs/heads/main\0report-status\n".encode()) + pktline.FLUSH
    import socket as socketlib

    with socketlib.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            f"POST /app/git-receive-pack HTTP/1.1\r\nHost: x\r\nContent-Type: {RECEIVE_REQ}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        body = commands + _partial_pack()
        sock.sendall(b"%x\r\n%s\r\n" % (len(body), body))
        sock.settimeout(20)
        assert sock.recv(1024) == b""  # the server hung up on the stalled body
    wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to exit")
    assert refs(upstream) == before
    assert not [d for d in os.listdir(upstream / "objects") if "incoming-" in d]
    assert any("no request data" in r.getMessage() for r in log_watch.records)


def test_push_over_the_size_cap_is_413_and_leaves_nothing(serve, gitbase, tmp_path):
    server = serve(access=AllowAll(), receive_pack_limit=1024 * 1024)
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / "b").write_bytes(os.urandom(3 * 1024 * 1024))
    git("add", "b", cwd=work)
    git("commit", "-qm", "b", cwd=work)
    upstream = gitbase / "app.git"
    before = refs(upstream)
    proc = git("-c", "http.postBuffer=65536", "push", f"{server.url}/app", "main", cwd=work, check=False)
    assert proc.returncode != 0  # curl often sees a reset before it reads the 413
    wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to exit")
    wait_for(
        lambda: not [d for d in os.listdir(upstream / "objects") if "incoming-" in d],
        message="quarantine to be removed",
    )
    assert refs(upstream) == before
