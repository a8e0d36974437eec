"""Shared fixtures: hermetic git, fixture repositories built from text, real servers on port 0.

Every test runs real git against a real gittornado on 127.0.0.1 with an
ephemeral port; the server runs on its own event loop in a thread so the test
can block on git. Any traceback or ERROR logged by the server fails the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.netutil

import gittornado
from gittornado.server.httpserver import GitHTTPServer

FIXTURE_STREAM = """\
blob
mark :1
data 6
hello

blob
mark :2
data <<EOT
# Project
A README for the fixture repository.
EOT

commit refs/heads/main
mark :10
author Alice <alice@example.com> 1700000000 +0000
committer Alice <alice@example.com> 1700000000 +0000
data 6
first
M 100644 :1 hello.txt
M 100644 :2 README.md

blob
mark :3
data 12
hello again

commit refs/heads/main
mark :11
author Bob <bob@example.com> 1700000100 +0000
committer Bob <bob@example.com> 1700000100 +0000
data 7
second
from :10
M 100644 :3 hello.txt

commit refs/heads/feature
mark :12
author Bob <bob@example.com> 1700000200 +0000
committer Bob <bob@example.com> 1700000200 +0000
data 8
feature
from :11
M 100644 :1 feature.txt

tag v1.0
from :11
tagger Alice <alice@example.com> 1700000300 +0000
data 8
release

"""


def git(
    *args: str,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    env: dict | None = None,
    input: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Run git; on failure the assertion shows its stderr."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, capture_output=True, input=input, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def rev(repo: str | os.PathLike, ref: str) -> str:
    return git("rev-parse", ref, cwd=repo).stdout.decode().strip()


def refs(repo: str | os.PathLike) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(refname) %(objectname)", cwd=repo).stdout.decode()
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.fixture(scope="session", autouse=True)
def hermetic_git(tmp_path_factory):
    """No user or system git config, no prompts: a wrong password fails, never blocks."""
    home = tmp_path_factory.mktemp("home")
    config = home / "gitconfig"
    config.write_text(
        "[user]\n\tname = Test\n\temail = test@example.com\n"
        "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
        "[protocol]\n\tallow = always\n"
    )
    saved = dict(os.environ)
    os.environ.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(config),
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        LC_ALL="C",
        GIT_PROTOCOL_FROM_USER="1",
    )
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_PROTOCOL", "GIT_CONFIG_PARAMETERS"):
        os.environ.pop(var, None)
    yield home
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def fixture_repo(tmp_path_factory, hermetic_git) -> Path:
    """The fixture repository, built once from a fast-import stream."""
    path = tmp_path_factory.mktemp("fixture") / "app.git"
    git("init", "--bare", "-q", str(path))
    git("fast-import", "--quiet", cwd=path, input=FIXTURE_STREAM.encode())
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=path)
    git("repack", "-adqn", cwd=path)  # -n: no update-server-info
    return path


@pytest.fixture
def gitbase(tmp_path, fixture_repo) -> Path:
    """A fresh root: app.git, team/app.git, private.git (bare copies) and a work tree w."""
    base = tmp_path / "repos"
    base.mkdir()
    for name in ("app.git", "team/app.git", "private.git", "public/lib.git"):
        shutil.copytree(fixture_repo, base / name)
    git("clone", "-q", str(fixture_repo), str(base / "w"))
    return base


class LogWatch(logging.Handler):
    """Collects records; the autouse fixture fails a test that logged a traceback or ERROR."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture(autouse=True)
def log_watch(request):
    watch = LogWatch()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(watch)
    yield watch
    root.removeHandler(watch)
    root.setLevel(old_level)
    if request.node.get_closest_marker("allow_errors"):
        return
    bad = [
        r
        for r in watch.records
        if r.exc_info or r.levelno >= logging.ERROR and not r.name.startswith("gittornado.access")
    ]
    if bad:
        details = "\n".join(logging.Formatter("%(name)s %(levelname)s %(message)s").format(r) for r in bad)
        pytest.fail(f"unexpected error or traceback logged:\n{details}")


class ServerThread:
    """A gittornado app served on 127.0.0.1:<ephemeral> from its own loop in a thread."""

    def __init__(self, app, xheaders: bool = False, ssl_options=None) -> None:
        """``ssl_options`` (an ``ssl.SSLContext``) serves HTTPS, and so wss://."""
        self.app = app
        self._ssl_options = ssl_options
        (sock,) = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._xheaders = xheaders
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "server did not start"

    def _run(self) -> None:
        async def main():
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            # The server the CLI runs (its chunked-body reader included), without its caps.
            server = GitHTTPServer(self.app, xheaders=self._xheaders, ssl_options=self._ssl_options)
            server.add_sockets([self._sock])
            self._ready.set()
            await self._stop.wait()
            server.stop()
            await server.close_all_connections()

        asyncio.run(main())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro_fn, timeout: float = 30):
        """Run ``coro_fn()`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def serve(gitbase):
    """``serve(**make_app_kwargs) -> ServerThread``; every server started is stopped."""
    servers: list[ServerThread] = []

    def start(xheaders: bool = False, **kwargs) -> ServerThread:
        kwargs.setdefault("gitbase", str(gitbase))
        server = ServerThread(gittornado.make_app(**kwargs), xheaders=xheaders)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class AllowAll:
    """Access object for contract tests: everyone reads and pushes everything."""

    def check(self, request):
        return gittornado.Grant(user=None, read=True, write=True, ask_credentials=False)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until true (returning its value) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def wait_settled(cache, repos, git: str = "git") -> None:
    """Wait until an advertisement cache may store answers about ``repos``.

    It stores an answer only once every timestamp in the repository's key is
    older than its margin (the racy rule), and the fixture repositories were
    copied a moment ago.
    """
    from gittornado.engine.advertcache import settled

    def ready() -> bool:
        for repo in repos:
            state = cache.state(str(repo), git, {})
            if state is None or not settled(state, time.time_ns(), cache.margin_ns):
                return False
        return True

    wait_for(ready, interval=0.01, message="the repositories' timestamps to settle")


def git_processes(path_fragment: str) -> list[str]:
    """Command lines of running git processes whose argv mentions ``path_fragment``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        cmd = b" ".join(argv).decode(errors="replace")
        del state  # zombies count: an unreaped child is a process left behind
        if ("receive-pack" in cmd or "upload-pack" in cmd) and path_fragment in cmd:
            found.append(cmd)
    return found


def write_access_file(path: str | os.PathLike, passwords: dict[str, str], rules: str) -> str:
    """Write an INI access file: ``passwords`` (user -> password) hashed, then ``[access]`` ``rules``.

    bcrypt at 4 rounds: a real hash the server must verify, yet fast enough to
    build one file per test.
    """
    from passlib.hash import bcrypt

    fast = bcrypt.using(rounds=4)
    users = "".join(f"{user} = {fast.hash(password)}\n" for user, password in passwords.items())
    Path(path).write_text(f"[users]\n{users}[access]\n{rules}", encoding="utf-8")
    return str(path)


@pytest.fixture
def acl_server(serve, tmp_path):
    """A server under an access file; ``.passwords`` maps each user to its password.

    alice reads and pushes everything, bob reads ``app`` and ``private``, carol
    is a valid user with no rights, and anyone (anonymous included) reads ``public/*``.
    ``.accessfile`` is the file's path, for another server under the same rules.
    """
    passwords = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
    path = write_access_file(
        tmp_path / "acl.ini", passwords, "alice = **=rw\nbob = app=r, private=r\n* = public/*=r\n"
    )
    server = serve(accessfile=path)
    server.passwords = passwords
    server.accessfile = path
    return server
