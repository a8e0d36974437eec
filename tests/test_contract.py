"""One transport-neutral contract suite: what every way of reaching a repository must do.

A transport supplies only ``url(repo)`` (and, when it can, ``interrupt_push``);
the tests are the same for smart HTTP with protocol v0, v1 and v2 and for dumb
HTTP (reads only). The WebSocket and SSH transports join by adding a subclass.
"""

from __future__ import annotations

import os
import socket
import zlib

import pytest

from gittornado import pktline
from conftest import AllowAll, git, git_processes, refs, rev, wait_for


class ContractTests:
    """Mixin: subclasses set ``protocol`` and implement ``make_server``/``url``."""

    protocol: int | None = 0
    can_push = True

    @pytest.fixture(autouse=True)
    def _server(self, serve, gitbase, tmp_path):
        self.gitbase = gitbase
        self.tmp = tmp_path
        self.server = serve(access=AllowAll())
        self.readonly = serve()  # the default policy: everyone reads, nobody pushes

    def url(self, repo: str, server=None) -> str:
        raise NotImplementedError

    def git_c(self) -> list[str]:
        return ["-c", f"protocol.version={self.protocol}"] if self.protocol is not None else []

    def client(self, *args, **kw):
        return git(*self.git_c(), *args, **kw)

    # -- reads ---------------------------------------------------------------------
    def test_clone(self):
        dest = self.tmp / "clone"
        self.client("clone", "-q", self.url("app"), str(dest))
        assert rev(dest, "HEAD") == rev(self.gitbase / "app.git", "main")
        assert (dest / "hello.txt").read_text() == "hello again\n"
        assert rev(dest, "v1.0^{}") == rev(self.gitbase / "app.git", "main")

    def test_clone_nested_and_work_tree(self):
        self.client("clone", "-q", self.url("team/app.git"), str(self.tmp / "nested"))
        self.client("clone", "-q", self.url("w"), str(self.tmp / "wt"))
        assert rev(self.tmp / "wt", "HEAD") == rev(self.gitbase / "w", "HEAD")

    def test_ls_remote(self):
        out = self.client("ls-remote", self.url("app")).stdout.decode()
        listed = {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines()}
        assert listed["refs/heads/main"] == rev(self.gitbase / "app.git", "main")
        assert listed["refs/heads/feature"] == rev(self.gitbase / "app.git", "feature")
        assert "refs/tags/v1.0" in listed

    def test_fetch_new_commits(self):
        dest = self.tmp / "clone"
        self.client("clone", "-q", self.url("app"), str(dest))
        upstream = self.gitbase / "app.git"
        work = self.tmp / "up"
        git("clone", "-q", str(upstream), str(work))
        (work / "new.txt").write_text("new\n")
        git("add", "new.txt", cwd=work)
        git("commit", "-qm", "new", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        self.client("fetch", "-q", "origin", cwd=dest)
        assert rev(dest, "origin/main") == rev(upstream, "main")

    def test_shallow_clone(self):
        if not self.smart:
            pytest.skip("dumb HTTP cannot do shallow clones")
        dest = self.tmp / "shallow"
        self.client("clone", "-q", "--depth", "1", self.url("app"), str(dest))
        assert git("rev-list", "--count", "HEAD", cwd=dest).stdout.strip() == b"1"
        assert (dest / ".git" / "shallow").exists()

    def test_partial_clone_fetches_blobs_lazily(self):
        if not self.smart:
            pytest.skip("dumb HTTP has no partial clone")
        dest = self.tmp / "partial"
        self.client("clone", "-q", "--filter=blob:none", "--no-checkout", self.url("app"), str(dest))
        missing = git("rev-list", "--objects", "--missing=print", "HEAD", cwd=dest).stdout.decode()
        assert any(line.startswith("?") for line in missing.splitlines()), "blobs were not filtered"
        # Checking out makes git fetch the missing blobs from the server on demand.
        git(*self.git_c(), "checkout", "-q", "main", cwd=dest)
        assert (dest / "hello.txt").read_text() == "hello again\n"
        assert git(*self.git_c(), "show", "HEAD~1:hello.txt", cwd=dest).stdout == b"hello\n"

    def test_missing_repository(self):
        proc = self.client("ls-remote", self.url("nope"), check=False)
        assert proc.returncode != 0
        assert b"not found" in proc.stderr.lower() or b"404" in proc.stderr

    # -- pushes ----------------------------------------------------------------------
    def _commit_on_clone(self, name="pushed.txt") -> os.PathLike:
        dest = self.tmp / f"work-{name}"
        git("clone", "-q", str(self.gitbase / "app.git"), str(dest))
        (dest / name).write_text("pushed\n")
        git("add", name, cwd=dest)
        git("commit", "-qm", f"add {name}", cwd=dest)
        return dest

    def test_push(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        work = self._commit_on_clone()
        self.client("push", "-q", self.url("app"), "main", "main:refs/heads/topic", cwd=work)
        upstream = self.gitbase / "app.git"
        assert rev(upstream, "main") == rev(work, "HEAD")
        assert rev(upstream, "topic") == rev(work, "HEAD")
        # and a deletion
        self.client("push", "-q", self.url("app"), ":refs/heads/topic", cwd=work)
        assert "refs/heads/topic" not in refs(upstream)

    def test_push_with_push_options_reaching_hooks(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        hook = upstream / "hooks" / "pre-receive"
        seen = self.tmp / "hook-env"
        hook.write_text("#!/bin/sh\nenv > '%s'\nexit 0\n" % seen)
        hook.chmod(0o755)
        work = self._commit_on_clone()
        self.client("push", "-q", "-o", "ci.skip", self.url("app"), "main", cwd=work)
        env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
        assert env["GIT_PUSH_OPTION_0"] == "ci.skip"
        assert env["GITTORNADO_REPO"] == "app"
        assert env["GITTORNADO_TRANSPORT"] == self.transport
        assert "REMOTE_ADDR" in env

    def test_refused_push_changes_nothing(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        before = refs(upstream)
        work = self._commit_on_clone()
        proc = self.client("push", self.url("app", self.readonly), "main", cwd=work, check=False)
        assert proc.returncode != 0
        assert b"403" in proc.stderr or b"may not push" in proc.stderr
        assert refs(upstream) == before

    def test_push_rejected_by_hook_changes_nothing(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        hook = upstream / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'no pushes on Fridays' >&2\nexit 1\n")
        hook.chmod(0o755)
        before = refs(upstream)
        work = self._commit_on_clone()
        proc = self.client("push", self.url("app"), "main", cwd=work, check=False)
        assert proc.returncode != 0
        assert b"no pushes on Fridays" in proc.stderr
        assert refs(upstream) == before

    def test_interrupted_push_leaves_refs_unchanged(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        before = refs(upstream)
        objects_before = sorted(os.listdir(upstream / "objects"))
        self.interrupt_push("app", rev(upstream, "main"))
        wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to exit")
        assert refs(upstream) == before
        wait_for(lambda: not [d for d in os.listdir(upstream / "objects") if "incoming-" in d],
                 message="quarantine to be removed")
        assert sorted(os.listdir(upstream / "objects")) == objects_before

    def interrupt_push(self, repo: str, old: str) -> None:
        raise NotImplementedError


def _partial_pack(blob_size: int = 50_000_000, sent: int = 200_000) -> bytes:
    """The first bytes of a valid pack holding one big blob: git waits for the rest."""
    header = b"PACK" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big")
    size = blob_size
    obj = bytearray([0x80 | (3 << 4) | (size & 0x0F)])
    size >>= 4
    while size:
        obj.append((0x80 if size >> 7 else 0) | (size & 0x7F))
        size >>= 7
    z = zlib.compressobj()
    data = z.compress(os.urandom(sent)) + z.flush(zlib.Z_SYNC_FLUSH)
    return header + bytes(obj) + data


def _http_interrupt_push(port: int, path: str, old: str) -> None:
    """Send a push's commands and half a pack over raw HTTP, then hang up."""
    new = "1" * 40
    commands = pktline.encode(f"{old} {new} refs/heads/main\0report-status\n".encode()) + pktline.FLUSH
    partial_pack = _partial_pack()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST {path}/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-git-receive-pack-request\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode())
        body = commands + partial_pack
        sock.sendall(b"%x\r\n%s\r\n" % (len(body), body))
        # git must have started (and quarantined) before we vanish
        wait_for(lambda: git_processes("receive-pack"), message="receive-pack to start")
        sock.shutdown(socket.SHUT_RDWR)


class SmartHTTP(ContractTests):
    smart = True
    transport = "http"

    def url(self, repo, server=None):
        return f"{(server or self.server).url}/{repo}"

    def interrupt_push(self, repo, old):
        _http_interrupt_push(self.server.port, f"/{repo}", old)


class TestSmartHTTPv0(SmartHTTP):
    protocol = 0


class TestSmartHTTPv1(SmartHTTP):
    protocol = 1


class TestSmartHTTPv2(SmartHTTP):
    protocol = 2


class TestSmartHTTPv2Piped(SmartHTTP):
    """Fetch answers relayed through pipes (the TLS path) instead of written to the socket by git."""

    protocol = 2

    @pytest.fixture(autouse=True)
    def _server(self, serve, gitbase, tmp_path):
        self.gitbase = gitbase
        self.tmp = tmp_path
        self.server = serve(access=AllowAll(), direct_output=False)
        self.readonly = serve(direct_output=False)


class TestDumbHTTP(ContractTests):
    """``GIT_SMART_HTTP=0``: what a client without smart HTTP can do (read only)."""

    smart = False
    can_push = False
    transport = "http"
    protocol = None

    def url(self, repo, server=None):
        return f"{(server or self.server).url}/{repo}"

    def client(self, *args, **kw):
        env = dict(kw.pop("env", None) or {})
        env["GIT_SMART_HTTP"] = "0"
        return git(*args, env=env, **kw)
