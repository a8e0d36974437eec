"""The servers under test: gittornado, and ``git http-backend`` behind nginx + fcgiwrap (the peer).

The floor (``file://`` with ``--no-local``) needs no server: upload-pack runs straight into
the client.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from bench.common import ROOT_DIR, Env, log

# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stop(
    proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15, group: bool = False
) -> None:
    """Stop a process we started (by its pid; ``group``: then anything left in its session)."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    if group:
        # Started with start_new_session=True, so the group id is the pid: only ours.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- which gittornado ------------------------------------------------------------------------


class ServerCode:
    """The gittornado a server runs: the package found under ``path`` (put first on PYTHONPATH).

    By default that is the checkout this bench lives in; ``--server-python-path`` points it at
    another tree (a ``git worktree`` of an older commit, for before/after figures). Whatever
    is installed in site-packages (an editable install of some other checkout, say) is not
    used: :meth:`check` makes sure of that.
    """

    def __init__(self, env: Env, path: str = ROOT_DIR) -> None:
        self.path = os.path.abspath(path)
        self.home = env.home
        extra = os.environ.get("PYTHONPATH")
        self.env = dict(env.env, PYTHONPATH=os.pathsep.join([self.path, *([extra] if extra else [])]))
        self.version = ""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gittornado"]

    def python(self, code: str, *args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"python -c {code!r} failed: {res.stderr.decode(errors='replace')[-1500:]}")
        return res.stdout.decode().strip()

    def check(self) -> str:
        """Import gittornado as the server will; fail unless it comes from ``self.path``."""
        where, self.version = self.python(
            "import gittornado; print(gittornado.__file__); print(gittornado.__version__)"
        ).splitlines()
        if not os.path.abspath(where).startswith(self.path + os.sep):
            raise RuntimeError(f"gittornado imports from {where}, not from {self.path}")
        return where

    def hash_password(self, password: str) -> str:
        """A hash the server's own ``gittornado.hash_password`` makes (its code, not the bench's)."""
        return self.python(
            "import sys; from gittornado import hash_password; print(hash_password(sys.argv[1]))",
            password,
        )

    def describe(self, env: Env) -> dict:
        info: dict = {"path": self.path, "version": self.version}
        try:
            info["commit"] = env.out("rev-parse", "HEAD", cwd=self.path)
            info["dirty"] = bool(env.out("status", "--porcelain", "--", "gittornado", cwd=self.path))
        except RuntimeError:
            pass
        return info


class GitTornado:
    """A ``python -m gittornado`` server subprocess on 127.0.0.1, port chosen by the kernel."""

    def __init__(
        self,
        code: ServerCode,
        gitbase: str,
        logfile: str,
        accessfile: str | None = None,
        extra: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.code, self.logfile, self.accessfile = code, logfile, accessfile
        self.extra = list(extra)  #: more command line options (cache settings, say)
        self.gitbase = os.path.abspath(gitbase)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> GitTornado:
        argv = [*self.code.argv(), "--port", "0", "--address", "127.0.0.1", "--gitbase", self.gitbase]
        if self.accessfile:
            argv += ["--accessfile", self.accessfile]
        argv += self.extra
        self._log = open(self.logfile, "ab")  # closed in __exit__
        self._log_start = self._log.tell()  # a reused log file: read only this run's lines
        self.proc = subprocess.Popen(
            argv,
            env=self.code.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.code.home,
        )
        try:
            self.port = self._read_port()
            wait_port(self.port, self.proc, "gittornado")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read_port(self, timeout: float = 30) -> int:
        pat = re.compile(rb"serving .* on https?://[^\s/]*:(\d+)")
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            with open(self.logfile, "rb") as fh:
                fh.seek(self._log_start)
                m = pat.search(fh.read())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"gittornado exited ({self.proc.returncode}) at start; see {self.logfile}")
            time.sleep(0.05)
        raise RuntimeError(f"no 'serving ... on http://...:PORT/' line from gittornado; see {self.logfile}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, repo: str, auth: str = "") -> str:
        return f"http://{auth}127.0.0.1:{self.port}/{repo}"

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
        self._log.close()


# -- the peer: git http-backend behind nginx -------------------------------------------------

PEER_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {access_log};
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            fastcgi_pass unix:{sock};
            fastcgi_request_buffering off;
            fastcgi_buffering off;
            fastcgi_buffer_size 64k;
            fastcgi_buffers 4 64k;
            fastcgi_read_timeout 3600s;
            fastcgi_send_timeout 3600s;
            fastcgi_param SCRIPT_FILENAME {backend};
            fastcgi_param GIT_PROJECT_ROOT {root};
            fastcgi_param GIT_HTTP_EXPORT_ALL 1;
            fastcgi_param HOME {home};
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param SERVER_PORT $server_port;
        }}
    }}
}}
"""

PEER_PACKAGES = ("nginx", "fcgiwrap")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


def missing_peer_tools() -> list[str]:
    return [t for t in PEER_PACKAGES if not find_tool(t)]


def ensure_peer_tools(install: bool) -> tuple[bool, str]:
    """``(True, "")`` when nginx and fcgiwrap are there, else ``(False, why the peer is skipped)``.

    Installing is opt-in (``install``, from ``--install-deps``): the Debian packages, with
    apt-get, as root only.
    """
    missing = missing_peer_tools()
    if not missing:
        return True, ""
    names = " ".join(missing)
    if not install:
        return False, (
            f"{names} not installed; pass --install-deps to apt-get install them "
            f"(root), or run: apt-get install {' '.join(PEER_PACKAGES)}"
        )
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False, f"{names} not installed, and --install-deps needs root and apt-get"
    log(f"--install-deps: apt-get install {' '.join(PEER_PACKAGES)} for the git http-backend comparison")
    aptenv = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PEER_PACKAGES],
    ):
        try:
            res = subprocess.run(
                argv,
                env=aptenv,
                timeout=900,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return False, f"{' '.join(argv)} failed: {exc}"
        if res.returncode != 0:
            tail = res.stdout.decode(errors="replace").strip().splitlines()[-3:]
            return False, f"{' '.join(argv)} failed ({res.returncode}): {' / '.join(tail)}"
    missing = missing_peer_tools()
    if missing:
        return False, f"{' '.join(missing)} still missing after apt-get install"
    return True, ""


class Peer:
    """``git http-backend`` via fcgiwrap behind nginx, all on 127.0.0.1 under a temp dir."""

    def __init__(
        self,
        env: Env,
        project_root: str,
        workdir: str,
        children: int = 1,
        account: bool = False,
        access_log: bool = False,
    ) -> None:
        self.env, self.root, self.dir = env, project_root, workdir
        self.children = children  #: fcgiwrap processes (-c): requests it serves at once
        #: run http-backend under a ``sh`` wrapper that logs its CPU (see :meth:`cpu_seconds`)
        self.account = account
        self.times_log = os.path.join(workdir, "backend-times.log")
        #: nginx writes an access log line per request (as gittornado does by default)
        self.access_log = access_log
        self.fcgi: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Peer:
        d = self.dir
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        sock = os.path.join(d, "fcgiwrap.sock")
        backend = os.path.join(self.env.out("--exec-path"), "git-http-backend")
        if self.account:
            backend = self._wrapper(backend)
        fcgiwrap, nginx = find_tool("fcgiwrap"), find_tool("nginx")
        assert fcgiwrap and nginx, "ensure_peer_tools() first"
        try:
            self._log = open(os.path.join(d, "peer.log"), "ab")  # closed in __exit__
            # One process by default: clones are one request at a time, so it never queues
            # anything. With children > 1 (concurrent clients) its preforked processes
            # outlive a SIGTERM to the parent: stop() kills its whole session.
            self.fcgi = subprocess.Popen(
                [fcgiwrap, "-c", str(self.children), "-s", f"unix:{sock}"],
                env=self.env.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if self.fcgi.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fcgiwrap did not create its socket")
                time.sleep(0.05)
            self.port = free_port()
            conf = os.path.join(d, "nginx.conf")
            user = "user root root;" if os.geteuid() == 0 else ""
            with open(conf, "w") as fh:
                fh.write(
                    PEER_NGINX_CONF.format(
                        d=d, port=self.port, sock=sock, backend=backend, root=self.root,
                        home=self.env.home, user=user,
                        access_log=os.path.join(d, "access.log") if self.access_log else "off",
                    )
                )  # fmt: skip
            self.nginx = subprocess.Popen(
                [nginx, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")],
                env=self.env.env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            wait_port(self.port, self.nginx, "nginx")
        except BaseException:
            self.__exit__()
            raise
        return self

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def _wrapper(self, backend: str) -> str:
        """A ``sh`` script running http-backend and appending its CPU (``times``) to a log.

        fcgiwrap ignores SIGCHLD, so the kernel reaps its CGI children without adding their
        CPU to its cutime/cstime: the process tree alone would miss http-backend and the git
        it runs. The shell waits for http-backend (its rusage includes the git processes it
        waited for) and ``times`` prints it. The wrapper's own CPU is counted nowhere.
        """
        path = os.path.join(self.dir, "http-backend-timed.sh")
        with open(path, "w") as fh:
            fh.write(
                f"#!/bin/sh\n{shlex.quote(backend)}\nrc=$?\ntimes >> {shlex.quote(self.times_log)}\n"
                "exit $rc\n"
            )
        os.chmod(path, 0o755)
        open(self.times_log, "a").close()
        return path

    def backend_cpu_seconds(self) -> float:
        """CPU of every http-backend run so far, git included (the wrappers' log)."""
        total = 0.0
        with open(self.times_log) as fh:
            lines = fh.read().splitlines()
        for line in lines[1::2]:  # each ``times``: the shell's line, then its children's
            for field in line.split():
                m = re.fullmatch(r"(\d+)m([\d.]+)s", field)
                if m:
                    total += int(m.group(1)) * 60 + float(m.group(2))
        return total

    def cpu_seconds(self) -> float:
        """nginx + fcgiwrap (their process trees) + http-backend and its git (needs ``account``)."""
        from bench.measure import tree_cpu_seconds

        assert self.account, "Peer(account=True) to count http-backend's CPU"
        return tree_cpu_seconds(self.pids) + self.backend_cpu_seconds()

    @property
    def pids(self) -> list[int]:
        """The roots of its process trees: nginx's master and fcgiwrap."""
        return [p.pid for p in (self.nginx, self.fcgi) if p is not None]

    def __exit__(self, *exc: object) -> None:
        stop(self.nginx, signal.SIGQUIT, group=True)
        stop(self.fcgi, group=True)
        if hasattr(self, "_log"):
            self._log.close()
