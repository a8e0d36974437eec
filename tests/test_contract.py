"""One transport-neutral contract suite: what every way of reaching a repository must do.

A test never builds a URL. It asks the transport for a ``Remote``: the URL of a
repository under one of three access *policies* (``OPEN``: everyone reads and
pushes; ``DEFAULT``: no access configuration, everyone reads, nobody pushes;
``ACL``: the access file of conftest's ``acl_server``, with users alice, bob and
carol), optionally as a user, plus the environment git needs to get there.
``client()`` runs git with both. So the rows are the same for smart HTTP with
protocol v0, v1 and v2 (spliced and relayed), for dumb HTTP (reads only), for
ws:// (the ``git-remote-ws`` helper, protocol v0 and v2) and for ssh:// (a real
sshd whose forced command is ``gittornado-shell``; over SSH the key picks the
user, so rows with an anonymous user or a wrong password skip).

The engine's rows (a git dying mid-answer, the input cap, the process cap, a
git that cannot start) run over every transport too: a transport supplies
``engine_remote(repo, **make_app_keywords)`` and ``starved_remote(repo)``, or
the row skips saying why.

A subclass sets ``transport`` (what hooks see in ``GITTORNADO_TRANSPORT``),
``smart`` and ``can_push``, implements ``remote()`` and, when it can,
``interrupt_push()`` and ``malformed_remote()``; rows that cannot apply skip.
"""

from __future__ import annotations

import os
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from conftest import AllowAll, git, git_processes, refs, rev, wait_for

from gittornado.protocol import pktline

#: Access policies a transport must offer (see the module docstring).
OPEN, DEFAULT, ACL = "open", "default", "acl"


@dataclass(frozen=True)
class Remote:
    """What git needs to reach one repository: a URL and extra environment.

    The environment carries what is not in the URL: ``GIT_SMART_HTTP=0`` for
    dumb HTTP, ``GIT_SSH_COMMAND`` for SSH, credential helpers or extra
    headers as ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``.
    """

    url: str
    env: Mapping[str, str] = field(default_factory=dict)


def config_env(*pairs: tuple[str, str]) -> dict[str, str]:
    """git configuration as environment (``GIT_CONFIG_COUNT``), so a ``Remote`` can carry it."""
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def credential_helper(user: str, password: str) -> tuple[tuple[str, str], ...]:
    """A credential helper answering ``get`` with this user and password (and nothing else)."""
    quote = lambda s: "'" + s.replace("'", "'\\''") + "'"  # noqa: E731
    script = (
        f'!f() {{ test "$1" = get || exit 0; echo username={quote(user)}; '
        f"echo password={quote(password)}; }}; f"
    )
    return (("credential.helper", ""), ("credential.helper", script))


def _said(stderr: bytes, *markers: bytes) -> bool:
    low = stderr.lower()
    return any(m.lower() in low for m in markers)


#: How git reports a refusal that asks for credentials (HTTP 401) on any transport.
AUTH_FAILED = (b"Authentication failed", b"could not read Username", b"error: 401")
#: ... one that says the repository is not there for this user (HTTP 404).
NOT_FOUND = (b"not found", b"error: 404")


class ContractTests:
    """Mixin: subclasses set ``protocol``/``transport``/``smart``/``can_push``, implement ``remote``."""

    protocol: int | None = 0
    can_push = True
    smart = True
    transport = ""

    @pytest.fixture(autouse=True)
    def _server(self, serve, acl_server, gitbase, tmp_path):
        self.gitbase = gitbase
        self.tmp = tmp_path
        self.serve = serve
        self.passwords = acl_server.passwords
        self.servers = {OPEN: serve(access=AllowAll()), DEFAULT: serve(), ACL: acl_server}

    @pytest.fixture(autouse=True)
    def _cleanups(self):
        self.cleanups: list = []
        yield
        for cleanup in reversed(self.cleanups):
            cleanup()

    # -- what a transport supplies -------------------------------------------------------
    def remote(
        self, repo: str, *, policy: str = OPEN, user: str | None = None, password: str | None = None
    ) -> Remote:
        """``repo`` under ``policy``, as ``user`` (password: the user's own unless given)."""
        raise NotImplementedError

    def malformed_remote(self, repo: str) -> Remote | None:
        """A remote through which git sends input the server must refuse as malformed."""
        return None

    def interrupt_push(self, repo: str, old: str) -> None:
        """Start a push of ``repo``'s main from ``old`` and vanish mid-pack."""
        raise NotImplementedError

    # -- running git -------------------------------------------------------------------------
    def git_c(self) -> list[str]:
        return ["-c", f"protocol.version={self.protocol}"] if self.protocol is not None else []

    def client(self, *args, remote: Remote | None = None, **kw):
        """git with ``Remote`` arguments turned into URLs and their environment applied.

        ``remote=`` gives the environment for commands that name no URL
        (``fetch origin``, a lazy fetch in a partial clone).
        """
        argv, env = self._resolve(args, remote)
        env.update(kw.pop("env", None) or {})
        return git(*self.git_c(), *argv, env=env, **kw)

    def _resolve(self, args, remote: Remote | None) -> tuple[list[str], dict[str, str]]:
        """``Remote`` arguments as URLs, and the environment they (and ``remote``) need."""
        env: dict[str, str] = {}
        argv = []
        for arg in args:
            if isinstance(arg, Remote):
                env.update(arg.env)
                arg = arg.url
            argv.append(arg)
        if remote is not None:
            env.update(remote.env)
        return argv, env

    # -- reads ---------------------------------------------------------------------
    def test_clone(self):
        dest = self.tmp / "clone"
        self.client("clone", "-q", self.remote("app"), str(dest))
        assert rev(dest, "HEAD") == rev(self.gitbase / "app.git", "main")
        assert (dest / "hello.txt").read_text() == "hello again\n"
        assert rev(dest, "v1.0^{}") == rev(self.gitbase / "app.git", "main")

    def test_clone_nested_and_work_tree(self):
        self.client("clone", "-q", self.remote("team/app.git"), str(self.tmp / "nested"))
        self.client("clone", "-q", self.remote("w"), str(self.tmp / "wt"))
        assert rev(self.tmp / "wt", "HEAD") == rev(self.gitbase / "w", "HEAD")

    def test_ls_remote(self):
        out = self.client("ls-remote", self.remote("app")).stdout.decode()
        listed = {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines()}
        assert listed["refs/heads/main"] == rev(self.gitbase / "app.git", "main")
        assert listed["refs/heads/feature"] == rev(self.gitbase / "app.git", "feature")
        assert "refs/tags/v1.0" in listed

    def test_fetch_new_commits(self):
        dest = self.tmp / "clone"
        remote = self.remote("app")
        self.client("clone", "-q", remote, str(dest))
        upstream = self.gitbase / "app.git"
        work = self.tmp / "up"
        git("clone", "-q", str(upstream), str(work))
        (work / "new.txt").write_text("new\n")
        git("add", "new.txt", cwd=work)
        git("commit", "-qm", "new", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        self.client("fetch", "-q", "origin", cwd=dest, remote=remote)
        assert rev(dest, "origin/main") == rev(upstream, "main")

    def test_shallow_clone(self):
        if not self.smart:
            pytest.skip("dumb HTTP cannot do shallow clones")
        dest = self.tmp / "shallow"
        self.client("clone", "-q", "--depth", "1", self.remote("app"), str(dest))
        assert git("rev-list", "--count", "HEAD", cwd=dest).stdout.strip() == b"1"
        assert (dest / ".git" / "shallow").exists()

    def test_partial_clone_fetches_blobs_lazily(self):
        if not self.smart:
            pytest.skip("dumb HTTP has no partial clone")
        dest = self.tmp / "partial"
        remote = self.remote("app")
        self.client("clone", "-q", "--filter=blob:none", "--no-checkout", remote, str(dest))
        missing = git("rev-list", "--objects", "--missing=print", "HEAD", cwd=dest).stdout.decode()
        assert any(line.startswith("?") for line in missing.splitlines()), "blobs were not filtered"
        # Checking out makes git fetch the missing blobs from the server on demand.
        self.client("checkout", "-q", "main", cwd=dest, remote=remote)
        assert (dest / "hello.txt").read_text() == "hello again\n"
        assert self.client("show", "HEAD~1:hello.txt", cwd=dest, remote=remote).stdout == b"hello\n"

    def test_missing_repository(self):
        proc = self.client("ls-remote", self.remote("nope"), check=False)
        assert proc.returncode != 0
        assert b"not found" in proc.stderr.lower() or b"error: 404" in proc.stderr

    # -- access and malformed input (the same decision on every transport) -------------
    def test_authenticated_clone_of_private_repo(self):
        """The positive case the refusals below are measured against: credentials get through."""
        dest = self.tmp / "private"
        self.client("clone", "-q", self.remote("private", policy=ACL, user="bob"), str(dest))
        assert rev(dest, "HEAD") == rev(self.gitbase / "private.git", "main")

    def test_anonymous_read_of_private_repo_asks_for_credentials(self):
        """401, not 404: git must learn that credentials could help (and ask for them)."""
        proc = self.client("ls-remote", self.remote("private", policy=ACL), check=False)
        assert proc.returncode != 0
        assert _said(proc.stderr, *AUTH_FAILED), proc.stderr
        assert not _said(proc.stderr, *NOT_FOUND), proc.stderr

    def test_wrong_password_is_refused(self):
        proc = self.client(
            "ls-remote",
            self.remote("private", policy=ACL, user="bob", password="not-bobs-password"),
            check=False,
        )
        assert proc.returncode != 0
        assert _said(proc.stderr, *AUTH_FAILED), proc.stderr

    def test_user_without_rights_sees_not_found(self):
        """Authenticated but not allowed reads as missing: no leak of which repositories exist."""
        refused = self.client("ls-remote", self.remote("private", policy=ACL, user="carol"), check=False)
        missing = self.client("ls-remote", self.remote("nope", policy=ACL, user="carol"), check=False)
        for proc in (refused, missing):
            assert proc.returncode != 0
            assert _said(proc.stderr, *NOT_FOUND), proc.stderr
            assert not _said(proc.stderr, *AUTH_FAILED), proc.stderr
        assert refused.stderr.replace(b"private", b"nope") == missing.stderr

    def test_reader_push_is_forbidden_and_changes_nothing(self):
        """An authenticated reader pushing gets 403: other credentials would not help."""
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        before = refs(upstream)
        work = self._commit_on_clone()
        proc = self.client("push", self.remote("app", policy=ACL, user="bob"), "main", cwd=work, check=False)
        assert proc.returncode != 0
        assert _said(proc.stderr, b"error: 403", b"may not push"), proc.stderr
        assert refs(upstream) == before

    def test_malformed_request_is_a_bad_request(self):
        """Malformed input is a 400 (SPEC: status codes), whatever transport carries it."""
        remote = self.malformed_remote("app")
        if remote is None:
            pytest.skip("no malformed input this transport can carry")
        proc = self.client("ls-remote", remote, check=False)
        assert proc.returncode != 0
        assert _said(proc.stderr, b"error: 400", b"malformed"), proc.stderr

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
        self.client("push", "-q", self.remote("app"), "main", "main:refs/heads/topic", cwd=work)
        upstream = self.gitbase / "app.git"
        assert rev(upstream, "main") == rev(work, "HEAD")
        assert rev(upstream, "topic") == rev(work, "HEAD")
        # and a deletion
        self.client("push", "-q", self.remote("app"), ":refs/heads/topic", cwd=work)
        assert "refs/heads/topic" not in refs(upstream)

    def test_push_with_push_options_reaching_hooks(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        hook = upstream / "hooks" / "pre-receive"
        seen = self.tmp / "hook-env"
        hook.write_text(f"#!/bin/sh\nenv > '{seen}'\nexit 0\n")
        hook.chmod(0o755)
        work = self._commit_on_clone()
        self.client("push", "-q", "-o", "ci.skip", self.remote("app"), "main", cwd=work)
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
        proc = self.client("push", self.remote("app", policy=DEFAULT), "main", cwd=work, check=False)
        assert proc.returncode != 0
        assert b"error: 403" in proc.stderr or b"may not push" in proc.stderr
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
        proc = self.client("push", self.remote("app"), "main", cwd=work, check=False)
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
        wait_for(
            lambda: not [d for d in os.listdir(upstream / "objects") if "incoming-" in d],
            message="quarantine to be removed",
        )
        assert sorted(os.listdir(upstream / "objects")) == objects_before

    # -- the engine's policy: one engine under every transport ---------------------------------
    def engine_remote(self, repo: str, **options) -> Remote:
        """``repo`` on a server open to everyone whose engine has ``options`` (``make_app``
        keywords: ``git``, ``receive_pack_limit``, ``max_git_processes``, ``git_queue``)."""
        pytest.skip("no git service runs over this transport")

    def starved_remote(self, repo: str) -> Remote:
        """``repo`` on a server with no file descriptors left to start git with."""
        pytest.skip("no git service runs over this transport")

    def stall(self, repo: str, idle: float) -> str:
        """Start a push of ``repo`` on a server whose input idle timeout is ``idle`` seconds,
        send part of it and go quiet; return what the transport said when it hung up."""
        pytest.skip("no git service runs over this transport")

    def test_idle_client_is_dropped_and_git_stopped(self):
        """A client that goes quiet mid-request is dropped after the idle timeout, git with it."""
        upstream = self.gitbase / "app.git"
        before = refs(upstream)
        said = self.stall("app", idle=0.5)
        assert "no request data" in said or said == "closed", said
        wait_for(lambda: not git_processes(str(upstream)), message="receive-pack to be stopped")
        assert refs(upstream) == before

    def test_git_dying_mid_answer_reads_as_remote_error(self):
        """git killed after 64 bytes of its answer: the user reads why, not a bare "early EOF".

        (The killed git's own upload-pack lives on, waiting for the client, as a
        hook's child may: the late error must not wait for it.)"""
        remote = self.engine_remote(
            "app",
            git=git_wrapper(self.tmp, "upload-pack", '"$REAL_GIT" "$@" | { head -c 64; kill -KILL $$; }'),
        )
        proc = self.client("clone", "-q", remote, str(self.tmp / "w"), check=False)
        assert proc.returncode != 0
        assert b"git-upload-pack died on the server" in proc.stderr, proc.stderr

    def test_push_over_the_input_cap_is_refused_and_changes_nothing(self):
        if not self.can_push:
            pytest.skip("read-only transport")
        upstream = self.gitbase / "app.git"
        before = refs(upstream)
        work = self.tmp / "big"
        self.client("clone", "-q", self.remote("app"), str(work))
        (work / "noise.bin").write_bytes(os.urandom(300_000))
        git("-C", str(work), "add", "noise.bin")
        git("-C", str(work), "commit", "-q", "-m", "too big")
        remote = self.engine_remote("app", receive_pack_limit=100_000)
        proc = self.client("-C", str(work), "push", remote, "HEAD:main", check=False)
        assert proc.returncode != 0, proc.stderr
        assert refs(upstream) == before
        wait_for(lambda: not quarantines(upstream), message="the quarantine to be removed")

    def test_process_cap_queues_then_refuses(self):
        """One git at a time: a second clone waits its turn; with no room to wait, it is refused."""
        runs = self.tmp / "runs.log"
        slow = git_wrapper(
            self.tmp,
            "upload-pack",
            f'echo start >> "{runs}"; sleep 1.5; "$REAL_GIT" "$@"; s=$?; echo end >> "{runs}"; exit $s',
        )
        queued = self.engine_remote("app", git=slow, max_git_processes=1, git_queue=5)
        first = self.client_async("clone", "-q", queued, str(self.tmp / "q1"))
        wait_for(lambda: self._slow_git_runs(), message="the first git to run")
        second = self.client("clone", "-q", queued, str(self.tmp / "q2"), check=False)
        assert first.wait(60) == 0 and second.returncode == 0, second.stderr
        # The second waited for the first's slot: the runs never overlapped.
        words = runs.read_text().split()
        assert len(words) >= 4 and words == ["start", "end"] * (len(words) // 2), words
        full = self.engine_remote("app", git=slow, max_git_processes=1, git_queue=0)
        first = self.client_async("clone", "-q", full, str(self.tmp / "f1"))
        wait_for(lambda: self._slow_git_runs(), message="the first git to run")
        refused = self.client("clone", "-q", full, str(self.tmp / "f2"), check=False)
        assert first.wait(60) == 0
        assert refused.returncode != 0
        assert _said(refused.stderr, b"503", b"try again later"), refused.stderr

    def test_git_that_cannot_start_is_a_clear_refusal(self):
        """Out of descriptors: the user reads "try again later" (HTTP 503), never a 500 or a hang."""
        remote = self.starved_remote("app")
        proc = self.client("clone", "-q", remote, str(self.tmp / "starved"), check=False, timeout=60)
        assert proc.returncode != 0
        assert _said(proc.stderr, b"503", b"try again later"), proc.stderr
        assert not _said(proc.stderr, b"500", b"internal error"), proc.stderr

    def _slow_git_runs(self) -> list[str]:
        """upload-pack runs serving a fetch (an HTTP advertisement is quick: not those)."""
        return [c for c in git_processes(str(self.gitbase / "app.git")) if "--advertise-refs" not in c]

    def client_async(self, *args, remote: Remote | None = None):
        """``client`` without waiting: a ``Popen``."""
        import subprocess

        argv, env = self._resolve(args, remote)
        return subprocess.Popen(
            ["git", *self.git_c(), *argv],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )


def git_wrapper(tmp: os.PathLike, service: str, body: str) -> str:
    """An executable standing in for git: runs ``body`` (sh, ``$REAL_GIT`` set) for ``service``
    (not for an HTTP advertisement), and is the real git otherwise."""
    import shutil
    import stat
    from pathlib import Path

    script = Path(tmp) / f"git-{abs(hash(body))}"
    script.write_text(
        "#!/bin/sh\n"
        f'REAL_GIT="{shutil.which("git")}"\n'
        'case " $* " in\n'
        "  *' --advertise-refs '*) ;;\n"
        f"  *' {service} '*)\n    {body}\n    exit $?\n    ;;\n"
        "esac\n"
        'exec "$REAL_GIT" "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


def _shells(fragment: str) -> list[int]:
    """gittornado-shell processes whose command line mentions ``fragment``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("gittornado-shell" in cmd or "gittornado.server.shell" in cmd) and fragment in cmd:
            found.append(int(pid))
    return found


def quarantines(repo: os.PathLike) -> list[str]:
    objects = os.path.join(repo, "objects")
    return [n for n in os.listdir(objects) if n.startswith("tmp_objdir-incoming-")]


def starved_http_server(gitbase, log_dir, nofile: int = 40, spare: int = 3):
    """A ``gittornado`` process whose descriptors are all held by idle connections but ``spare``:
    a request gets in, its git cannot start. Returns (server, held sockets)."""
    from stress.attacks import server_open
    from stress.server import start_server

    server = start_server(
        gitbase,
        "--max-connections",
        "1000",
        "--max-connections-per-ip",
        "0",
        log_path=log_dir / "starved.log",
        nofile=nofile,
    )
    held = []
    for _ in range(max(0, nofile - server.fds() - spare)):
        held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    wait_for(lambda: server_open(server) >= len(held), message="the idle connections to be accepted")
    return server, held


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
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        body = commands + partial_pack
        sock.sendall(b"%x\r\n%s\r\n" % (len(body), body))
        # git must have started (and quarantined) before we vanish
        wait_for(lambda: git_processes("receive-pack"), message="receive-pack to start")
        sock.shutdown(socket.SHUT_RDWR)


class _HTTP(ContractTests):
    """Smart and dumb HTTP: one server per policy; a user's password via a credential helper."""

    transport = "http"
    extra_env: Mapping[str, str] = {}

    def remote(self, repo, *, policy=OPEN, user=None, password=None):
        env = dict(self.extra_env)
        if user is not None:
            password = self.passwords[user] if password is None else password
            env.update(config_env(*credential_helper(user, password)))
        return Remote(f"{self.servers[policy].url}/{repo}", env)


class SmartHTTP(_HTTP):
    smart = True
    #: make_app keywords every server of this class gets.
    app_options: Mapping[str, object] = {}

    def stall(self, repo, idle):
        server = self.serve(access=AllowAll(), body_idle_timeout=idle, **self.app_options)
        head = (
            f"POST /{repo}/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/x-git-receive-pack-request\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=idle * 20) as sock:
            sock.sendall(head + b"2\r\n00\r\n")  # half a pkt-line header, then nothing: git waits
            upstream = str(self.gitbase / f"{repo}.git")
            wait_for(lambda: git_processes(upstream), message="receive-pack to start")
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        return "closed"

    def engine_remote(self, repo, **options):
        server = self.serve(access=AllowAll(), **self.app_options, **options)
        return Remote(f"{server.url}/{repo}", dict(self.extra_env))

    def starved_remote(self, repo):
        server, held = starved_http_server(self.gitbase, self.tmp)
        self.cleanups.append(lambda: ([sock.close() for sock in held], server.stop()))
        return Remote(f"http://127.0.0.1:{server.port}/{repo}", dict(self.extra_env))

    def malformed_remote(self, repo):
        # Not a colon-separated list of key=value items: 400 before git runs.
        # (With protocol v1/v2 git adds its own Git-Protocol header; the
        # two fields together are still malformed.)
        return Remote(
            f"{self.servers[OPEN].url}/{repo}", config_env(("http.extraHeader", "Git-Protocol: bad value!"))
        )

    def interrupt_push(self, repo, old):
        _http_interrupt_push(self.servers[OPEN].port, f"/{repo}", old)


class TestSmartHTTPv0(SmartHTTP):
    protocol = 0


class TestSmartHTTPv1(SmartHTTP):
    protocol = 1


class TestSmartHTTPv2(SmartHTTP):
    protocol = 2


class TestSmartHTTPv2Piped(SmartHTTP):
    """Fetch answers relayed through pipes (the TLS path) instead of written to the socket by git."""

    protocol = 2
    app_options = {"direct_output": False}

    @pytest.fixture(autouse=True)
    def _server(self, serve, acl_server, gitbase, tmp_path):
        self.gitbase = gitbase
        self.tmp = tmp_path
        self.serve = serve
        self.passwords = acl_server.passwords
        acl = serve(accessfile=acl_server.accessfile, direct_output=False)
        self.servers = {
            OPEN: serve(access=AllowAll(), direct_output=False),
            DEFAULT: serve(direct_output=False),
            ACL: acl,
        }


class TestDumbHTTP(_HTTP):
    """``GIT_SMART_HTTP=0``: what a client without smart HTTP can do (read only)."""

    smart = False
    can_push = False
    protocol = None
    extra_env = {"GIT_SMART_HTTP": "0"}


# -- ws:// and wss:// (the git-remote-ws helper) ---------------------------------------------


def ws_helper_dir() -> str:
    """The directory holding the installed ``git-remote-ws`` (``pip install -e .``)."""
    import shutil
    import sys
    import sysconfig

    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        if os.access(os.path.join(directory, "git-remote-ws"), os.X_OK):
            return directory
    found = shutil.which("git-remote-ws")
    if found is None:
        pytest.fail("git-remote-ws is not installed: run `pip install -e .` first")
    return os.path.dirname(found)


def ws_env(*config: tuple[str, str]) -> dict[str, str]:
    """git's environment for ws:// URLs: the helper on ``PATH``, plus ``config``."""
    env = {"PATH": ws_helper_dir() + os.pathsep + os.environ.get("PATH", "")}
    if config:
        env.update(config_env(*config))
    return env


class _WS(ContractTests):
    """ws://: the same server as HTTP; the helper connects to ``<repo>/<service>``.

    ``url_credentials`` chooses where a user's password comes from: the URL
    (``ws://bob:pw@host/...``) or, like HTTP, a credential helper after a 401.
    """

    transport = "ws"
    url_credentials = False

    def _url(self, policy: str, repo: str, userinfo: str = "") -> str:
        return f"ws://{userinfo}127.0.0.1:{self.servers[policy].port}/{repo}"

    def remote(self, repo, *, policy=OPEN, user=None, password=None):
        if user is None:
            return Remote(self._url(policy, repo), ws_env())
        password = self.passwords[user] if password is None else password
        if self.url_credentials:
            from urllib.parse import quote

            return Remote(self._url(policy, repo, f"{quote(user)}:{quote(password, safe='')}@"), ws_env())
        return Remote(self._url(policy, repo), ws_env(*credential_helper(user, password)))

    def engine_remote(self, repo, **options):
        server = self.serve(access=AllowAll(), **options)
        return Remote(f"ws://127.0.0.1:{server.port}/{repo}", ws_env())

    def stall(self, repo, idle):
        from test_websocket import RawWebSocket

        server = self.serve(access=AllowAll(), body_idle_timeout=idle)
        ws = RawWebSocket(server.port, f"/{repo}/git-receive-pack")
        ws.read_until(pktline.FLUSH)  # the advertisement; then nothing from us
        _, code, reason = ws.until_close()
        ws.close()
        assert code == 4408, (code, reason)
        return reason

    def starved_remote(self, repo):
        server, held = starved_http_server(self.gitbase, self.tmp)
        self.cleanups.append(lambda: ([sock.close() for sock in held], server.stop()))
        return Remote(f"ws://127.0.0.1:{server.port}/{repo}", ws_env())

    def malformed_remote(self, repo):
        # The helper sends http.extraHeader lines with the upgrade, as git's http does.
        return Remote(self._url(OPEN, repo), ws_env(("http.extraHeader", "Git-Protocol: bad value!")))

    def interrupt_push(self, repo, old):
        from test_websocket import ws_interrupt_push

        ws_interrupt_push(self.servers[OPEN].port, f"/{repo}", old, self.gitbase / f"{repo}.git")


class TestWSv0(_WS):
    protocol = 0


class TestWSv2(_WS):
    """Protocol v2, a user's password in the URL."""

    protocol = 2
    url_credentials = True


# -- SSH: gittornado-shell as the forced command of a real sshd (tests/sshd_server.py) -------
from sshd_server import sshd  # noqa: E402, F401  (the session's sshd fixture)


class TestSSH(ContractTests):
    """``ssh://`` through OpenSSH: a key per (policy, user), each with its forced command.

    The key is the credential, so there is no anonymous user and no password to
    get wrong: those rows skip. OPEN and DEFAULT connect as a user ``anybody``.
    """

    transport = "ssh"
    protocol = 0

    @pytest.fixture(autouse=True)
    def _server(self, sshd, gitbase, tmp_path):  # noqa: F811
        from conftest import write_access_file

        self.gitbase, self.tmp, self.sshd = gitbase, tmp_path, sshd
        acl = write_access_file(
            tmp_path / "acl.ini", {}, "alice = **=rw\nbob = app=r, private=r\n* = public/*=r\n"
        )
        everyone = write_access_file(tmp_path / "open.ini", {}, "* = **=rw\n")
        base = ["--gitbase", str(gitbase), "--log-file", str(tmp_path / "shell.log")]
        self.keys = {(OPEN, "anybody"): "open", (DEFAULT, "anybody"): "default"}
        commands = {"open": [*base, "--accessfile", everyone, "anybody"], "default": [*base, "anybody"]}
        for user in ("alice", "bob", "carol"):
            self.keys[(ACL, user)] = f"acl-{user}"
            commands[f"acl-{user}"] = [*base, "--accessfile", acl, user]
        sshd.authorize(commands)
        self.base, self.everyone, self.commands, self.wrappers = base, everyone, commands, {}

    def _new_key(self, args: list[str], wrapper: list[str] | None = None) -> str:
        name = f"engine-{len(self.commands)}"
        self.commands[name] = [*self.base, "--accessfile", self.everyone, *args, "anybody"]
        if wrapper:
            self.wrappers[name] = wrapper
        self.sshd.authorize(self.commands, self.wrappers)
        return name

    def engine_remote(self, repo, **options):
        if "max_git_processes" in options:
            pytest.skip("one gittornado-shell per SSH session: a process cap is a server's")
        args = []
        if "git" in options:
            args += ["--git", options.pop("git")]
        if "receive_pack_limit" in options:
            args += ["--max-push-size", str(options.pop("receive_pack_limit"))]
        assert not options, options
        return Remote(self.sshd.url(repo), self.sshd.env(self._new_key(args)))

    def stall(self, repo, idle):
        pytest.skip(
            "git reads the SSH session itself: a quiet client is sshd's to drop (ClientAliveInterval)"
        )

    def starved_remote(self, repo):
        # Ten descriptors: Python and the session fit, git's three pipes do not.
        name = self._new_key([], wrapper=["prlimit", "--nofile=10:10"])
        return Remote(self.sshd.url(repo), self.sshd.env(name))

    def _key(self, policy, user):
        if user is None and policy == ACL:
            pytest.skip("no anonymous user over SSH: sshd authenticated a key")
        return self.keys[(policy, user or "anybody")]

    def remote(self, repo, *, policy=OPEN, user=None, password=None):
        if password is not None:
            pytest.skip("over SSH the key is the credential: no password to get wrong")
        return Remote(self.sshd.url(repo), self.sshd.env(self._key(policy, user)))

    def malformed_remote(self, repo):
        # sshd passes GIT_PROTOCOL (AcceptEnv); one that is not key=value items is refused.
        return Remote(self.sshd.url(repo), self.sshd.env("open", "-o", "SetEnv=GIT_PROTOCOL=version=2;id"))

    def interrupt_push(self, repo, old):
        import subprocess
        import threading

        commands = (
            pktline.encode(f"{old} {'1' * 40} refs/heads/main\0report-status\n".encode()) + pktline.FLUSH
        )
        argv = self.sshd.ssh_argv("open") + [f"{self.sshd.user}@127.0.0.1", f"git-receive-pack '/{repo}.git'"]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def send() -> None:
            try:
                proc.stdin.write(commands + _partial_pack())
                proc.stdin.flush()
            except OSError:
                pass  # killed below, mid-write

        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        try:
            # git must have started (and quarantined) before we vanish
            wait_for(lambda: git_processes(str(self.gitbase)), message="receive-pack to start")
        finally:
            proc.kill()
            proc.wait()
            writer.join(10)
        # ... and the forced command ends too (it once waited forever for an unreaped git).
        wait_for(lambda: not _shells(str(self.tmp)), message="gittornado-shell to exit")
