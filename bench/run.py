#!/usr/bin/env python3
"""gittornado benchmark: clone speed against git's own transports, server memory on big pushes.

One run does everything and prints one table (also written to
``bench/results/latest.json``):

* a ~300 MiB bare repository (random blobs over a few hundred commits plus a
  text history with real deltas), generated once with ``git fast-import`` and
  cached under ``bench/work/``, fully repacked;
* ``git clone --bare`` of it, protocol v2 and v0, through

  - ``file://`` with ``--no-local`` (the *floor*: upload-pack straight into the client),
  - gittornado, started as a real ``gittornado`` subprocess,
  - ``git http-backend`` behind nginx + fcgiwrap (the *peer*), when those are
    installed (installed with apt-get if missing, unless ``--no-install``);

  each timed ``--reps`` times (default 7; median), interleaved in a rotating
  order after an untimed warm-up, cloning into ``/dev/shm`` when it is a roomy
  tmpfs (disk writeback otherwise adds most of the noise);
* the resident memory of the gittornado server process itself (not its git
  children: VmRSS of the server pid sampled every 20 ms, plus VmHWM at the
  end) while pushing 512 MiB and then 1 GiB of new random data (chunked bodies,
  default ``http.postBuffer``) with write access granted through an
  ``--accessfile``; the same pushes to a ``file://`` repository give the push
  time a floor too (informational).

Everything git runs hermetically: a throwaway ``HOME``, ``GIT_CONFIG_NOSYSTEM=1``,
``GIT_TERMINAL_PROMPT=0`` and identity given with ``-c``.

    python bench/run.py            # full run (a few minutes; first run also builds the repo)
    python bench/run.py --quick    # ~1 minute smoke run (30 MiB repo, 64/128 MiB pushes)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(BENCH_DIR)
WORK_DIR = os.path.join(BENCH_DIR, "work")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

#: Bump when the generated repository's recipe changes (invalidates the cache).
REPO_RECIPE = 1

MiB = 1024 * 1024
CLONE_TARGET = 1.10          #: clone time <= 1.10x the floor
RSS_LIMIT_MIB = 60.0         #: server peak RSS during a push
RSS_GROWTH_TOL_MIB = 4.0     #: peak RSS of the biggest push <= smallest push's peak + this

GIT_IDENTITY = ["-c", "user.name=gittornado bench", "-c", "user.email=bench@example.invalid"]
PUSH_USER, PUSH_PASSWORD = "bench", "benchpw"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- hermetic git ----------------------------------------------------------------------------

class Env:
    """The environment every git (client and server) runs in."""

    def __init__(self, home: str) -> None:
        os.makedirs(home, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GIT_") and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")}
        env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false",
                   SSH_ASKPASS="/bin/false", LC_ALL="C", LANG="C", TZ="UTC")
        self.home = home
        self.env = env

    def git(self, *args: str, cwd: str | None = None, check: bool = True, capture: bool = True,
            input: bytes | None = None, timeout: float | None = 3600) -> subprocess.CompletedProcess:
        argv = ["git", *GIT_IDENTITY, *args]
        res = subprocess.run(argv, cwd=cwd, env=self.env, input=input, timeout=timeout,
                             stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        if check and res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"git {' '.join(args)} failed ({res.returncode}): {err[-2000:]}")
        return res

    def out(self, *args: str, cwd: str | None = None) -> str:
        return self.git(*args, cwd=cwd).stdout.decode().strip()


# -- the test repository ---------------------------------------------------------------------

_WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
          "sigma tau upsilon phi chi psi omega request response handler stream chunk buffer socket "
          "repository commit object blob tree tag branch merge rebase fetch push clone pack index "
          "delta window depth server client tornado async await yield return raise except finally "
          "self value result error status header body length offset size limit count total").split()


def _text_line(rng: random.Random) -> str:
    indent = "    " * rng.randint(0, 3)
    return indent + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + "\n"


def generate_repo(env: Env, path: str, size_mib: int, commits: int, seed: int = 1) -> None:
    """A bare repo of ~``size_mib`` MiB packed: random blobs plus an evolving text tree."""
    rng = random.Random(seed)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    env.git("init", "-q", "--bare", "--initial-branch=main", tmp)
    # Random blobs never delta against each other: do not make repack -f try (generation
    # speed only; the attribute file is removed again before the repository is used).
    with open(os.path.join(tmp, "info", "attributes"), "w") as fh:
        fh.write("*.bin -delta\n")

    text_budget = max(1, size_mib // 40) * MiB           # ~2.5% text (as packed, it shrinks a lot)
    bin_budget = size_mib * MiB - text_budget
    # Blob sizes: log-uniform 8 KiB .. 4 MiB, scaled to the budget.
    sizes = []
    while sum(sizes) < bin_budget:
        sizes.append(int(2 ** rng.uniform(13, 22)))
    per_commit: list[list[int]] = [[] for _ in range(commits)]
    for s in sizes:
        per_commit[rng.randrange(commits)].append(s)

    n_text = 24
    text_files = {f"src/module_{i:02d}.py": [_text_line(rng) for _ in range(rng.randint(400, 1600))]
                  for i in range(n_text)}
    bin_paths: list[str] = []

    proc = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=tmp, env=env.env,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    w = proc.stdin.write
    t0 = 1_600_000_000
    try:
        for c in range(commits):
            msg = f"commit {c}: update {len(per_commit[c])} data files\n".encode()
            when = t0 + c * 3600
            w(b"commit refs/heads/main\n")
            w(f"author Bench Author <author@example.invalid> {when} +0000\n".encode())
            w(f"committer Bench Committer <committer@example.invalid> {when} +0000\n".encode())
            w(b"data %d\n%s\n" % (len(msg), msg))
            changed = text_files.keys() if c == 0 else rng.sample(sorted(text_files), 3)
            for name in changed:
                lines = text_files[name]
                if c:
                    for _ in range(rng.randint(2, 12)):
                        lines[rng.randrange(len(lines))] = _text_line(rng)
                    for _ in range(rng.randint(1, 8)):
                        lines.insert(rng.randrange(len(lines) + 1), _text_line(rng))
                data = "".join(lines).encode()
                w(b"M 100644 inline %s\ndata %d\n" % (name.encode(), len(data)))
                w(data)
                w(b"\n")
            for size in per_commit[c]:
                if bin_paths and rng.random() < 0.3:
                    name = rng.choice(bin_paths)          # rewrite an existing binary
                else:
                    name = f"assets/{c // 50:02d}/blob_{c:04d}_{len(bin_paths):05d}.bin"
                    bin_paths.append(name)
                w(b"M 100644 inline %s\ndata %d\n" % (name.encode(), size))
                w(os.urandom(size))
                w(b"\n")
            w(b"\n")
            if c and c % 50 == 0:
                w(b"tag v%d\nfrom refs/heads/main\n" % (c // 50))
                w(b"tagger Bench Tagger <tagger@example.invalid> %d +0000\n" % when)
                tag_msg = f"release {c // 50}\n".encode()
                w(b"data %d\n%s\n" % (len(tag_msg), tag_msg))
        w(b"done\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        raise RuntimeError(f"git fast-import failed: {err.decode(errors='replace')}")
    env.git("-C", tmp, "symbolic-ref", "HEAD", "refs/heads/main")
    env.git("-C", tmp, "-c", "pack.threads=0", "repack", "-a", "-d", "-f", "-q",
            "--write-bitmap-index", timeout=7200)
    env.git("-C", tmp, "pack-refs", "--all")
    env.git("-C", tmp, "prune", "--expire=now")
    os.unlink(os.path.join(tmp, "info", "attributes"))
    env.git("-C", tmp, "fsck", "--connectivity-only", "--no-dangling", "--no-progress")
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


def ensure_repo(env: Env, size_mib: int, commits: int, regen: bool) -> str:
    repos = os.path.join(WORK_DIR, "repos")
    os.makedirs(repos, exist_ok=True)
    name = f"bench-{size_mib}m.git"
    path = os.path.join(repos, name)
    stamp = os.path.join(path, "bench-stamp.json")
    want = {"recipe": REPO_RECIPE, "size_mib": size_mib, "commits": commits}
    if not regen and os.path.exists(stamp):
        try:
            with open(stamp) as fh:
                if json.load(fh) == want:
                    log(f"using cached repository {os.path.relpath(path, ROOT_DIR)}")
                    return path
        except (OSError, ValueError):
            pass
    log(f"generating a ~{size_mib} MiB repository with {commits} commits (once; cached in "
        f"{os.path.relpath(repos, ROOT_DIR)}) ...")
    t = time.perf_counter()
    generate_repo(env, path, size_mib, commits)
    with open(stamp, "w") as fh:
        json.dump(want, fh)
    log(f"generated in {time.perf_counter() - t:.1f}s")
    return path


def pack_bytes(repo: str) -> int:
    d = os.path.join(repo, "objects", "pack")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".pack"))


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


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15,
         group: bool = False) -> None:
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


def gittornado_argv() -> list[str]:
    exe = shutil.which("gittornado")
    if exe is None:
        candidate = os.path.join(os.path.dirname(sys.executable), "gittornado")
        exe = candidate if os.path.exists(candidate) else None
    return [exe] if exe else [sys.executable, "-m", "gittornado"]


class GitTornado:
    """A ``gittornado`` server subprocess on 127.0.0.1, port chosen by the kernel."""

    def __init__(self, env: Env, gitbase: str, logfile: str, accessfile: str | None = None) -> None:
        self.env, self.logfile, self.accessfile = env, logfile, accessfile
        self.gitbase = os.path.abspath(gitbase)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "GitTornado":
        argv = gittornado_argv() + ["--port", "0", "--address", "127.0.0.1", "--gitbase", self.gitbase]
        if self.accessfile:
            argv += ["--accessfile", self.accessfile]
        self._log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(argv, env=self.env.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.env.home)
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


PEER_NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
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


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


def git_exec_path(env: Env) -> str:
    return env.out("--exec-path")


def ensure_peer_tools(allow_install: bool) -> tuple[str, str]:
    """``("ok", "")``, or ``("skip", why)`` when nginx/fcgiwrap are not (and cannot be) installed."""
    if find_tool("nginx") and find_tool("fcgiwrap"):
        return "ok", ""
    if not allow_install:
        return "skip", "nginx/fcgiwrap not installed (--no-install)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "skip", "nginx/fcgiwrap not installed and cannot apt-get install them"
    log("nginx and/or fcgiwrap missing: installing the Debian packages 'nginx fcgiwrap' with "
        "apt-get for the git http-backend comparison (pass --no-install to skip that row)")
    aptenv = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx", "fcgiwrap"]):
        try:
            res = subprocess.run(argv, env=aptenv, timeout=900, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except (subprocess.SubprocessError, OSError) as exc:
            return "skip", f"{' '.join(argv)} failed: {exc}"
        if res.returncode != 0:
            tail = res.stdout.decode(errors="replace").strip().splitlines()[-3:]
            return "skip", f"{' '.join(argv)} failed ({res.returncode}): {' / '.join(tail)}"
    if find_tool("nginx") and find_tool("fcgiwrap"):
        return "ok", ""
    return "skip", "nginx/fcgiwrap still missing after apt-get install"


class Peer:
    """``git http-backend`` via fcgiwrap behind nginx, all on 127.0.0.1 under a temp dir."""

    def __init__(self, env: Env, project_root: str, workdir: str) -> None:
        self.env, self.root, self.dir = env, project_root, workdir
        self.fcgi: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "Peer":
        d = self.dir
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        sock = os.path.join(d, "fcgiwrap.sock")
        backend = os.path.join(git_exec_path(self.env), "git-http-backend")
        try:
            self._log = open(os.path.join(d, "peer.log"), "ab")
            # One process (no -c N prefork: its preforked children outlive a SIGTERM to the
            # parent). Clones are one request at a time, so it never queues anything here.
            self.fcgi = subprocess.Popen([find_tool("fcgiwrap"), "-c", "1", "-s", f"unix:{sock}"],
                                         env=self.env.env, stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if self.fcgi.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("fcgiwrap did not create its socket")
                time.sleep(0.05)
            self.port = free_port()
            conf = os.path.join(d, "nginx.conf")
            user = "user root root;" if os.geteuid() == 0 else ""
            with open(conf, "w") as fh:
                fh.write(PEER_NGINX_CONF.format(d=d, port=self.port, sock=sock, backend=backend,
                                                root=self.root, home=self.env.home, user=user))
            self.nginx = subprocess.Popen([find_tool("nginx"), "-p", d, "-c", conf, "-e",
                                           os.path.join(d, "error.log")],
                                          env=self.env.env, stdin=subprocess.DEVNULL,
                                          stdout=self._log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            wait_port(self.port, self.nginx, "nginx")
        except BaseException:
            self.__exit__()
            raise
        return self

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def __exit__(self, *exc: object) -> None:
        stop(self.nginx, signal.SIGQUIT, group=True)
        stop(self.fcgi, group=True)
        if hasattr(self, "_log"):
            self._log.close()


# -- memory sampling -------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM etc. of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Vm"):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (``/proc/stat``): client, server and git together."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class RSSSampler(threading.Thread):
    """Max VmRSS (MiB) of one pid (that process only, not its children), every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = proc_status(self.pid).get("VmRSS", 0)
            except (OSError, ValueError):
                break
            self.max_kib = max(self.max_kib, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()

    @property
    def max_mib(self) -> float:
        return self.max_kib / 1024


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    return proc_status(pid)[key] / 1024


# -- measurements ----------------------------------------------------------------------------

@dataclass
class CloneCase:
    name: str
    url: str
    protocol: int
    extra: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    server_pid: int | None = None
    server_cpu: list[float] = field(default_factory=list)
    server_peak_rss: float = 0.0
    machine_cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def timed_clone(env: Env, case: CloneCase, dest: str, expect_head: str) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    argv = ["-c", f"protocol.version={case.protocol}", "clone", "--bare", "-q", *case.extra,
            case.url, dest]
    cpu0 = proc_cpu_seconds(case.server_pid) if case.server_pid else 0.0
    sampler = RSSSampler(case.server_pid) if case.server_pid else None
    if sampler:
        sampler.start()
    try:
        busy0 = machine_busy_seconds()
        t = time.perf_counter()
        env.git(*argv, capture=False)
        elapsed = time.perf_counter() - t
        case.machine_cpu.append(machine_busy_seconds() - busy0)
    finally:
        if sampler:
            sampler.__exit__()
    if sampler:
        case.server_cpu.append(proc_cpu_seconds(case.server_pid) - cpu0)
        case.server_peak_rss = max(case.server_peak_rss, sampler.max_mib)
    head = env.out("--git-dir", dest, "rev-parse", "refs/heads/main")
    if head != expect_head:
        raise RuntimeError(f"{case.name}: cloned main is {head}, expected {expect_head}")
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed


def write_random_files(directory: str, total: int, chunk: int = 64 * MiB) -> None:
    os.makedirs(directory, exist_ok=True)
    i = 0
    while total > 0:
        n = min(chunk, total)
        with open(os.path.join(directory, f"random_{i:03d}.bin"), "wb") as fh:
            for off in range(0, n, 8 * MiB):
                fh.write(os.urandom(min(8 * MiB, n - off)))
        total -= n
        i += 1


# -- results ---------------------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    value: float | None
    unit: str
    reference: float | None = None
    ref_label: str = ""
    ratio: float | None = None
    target: str = "info"
    result: str = "info"        # PASS / MISS / info / skipped / ERROR
    note: str = ""

    def cells(self) -> list[str]:
        def num(v: float | None, unit: str) -> str:
            if v is None:
                return "-"
            return f"{v:.3f} {unit}" if unit == "s" else f"{v:.1f} {unit}"
        ref = num(self.reference, self.unit)
        if self.ref_label and self.reference is not None:
            ref = f"{ref} ({self.ref_label})"
        value = num(self.value, self.unit) if self.result != "skipped" else "skipped"
        ratio = f"{self.ratio:.3f}x" if self.ratio is not None else "-"
        return [self.metric, value, ref, ratio, self.target, self.result]


def print_table(rows: list[Row]) -> None:
    header = ["metric", "value", "reference", "ratio", "target", "result"]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    sep = "-+-".join("-" * w for w in widths)
    print()
    for j, line in enumerate(table):
        print(" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if j == 0:
            print(sep)
    for r in rows:
        if r.note:
            print(f"  note: {r.metric}: {r.note}")
    print()


def pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- the run ---------------------------------------------------------------------------------

def run_clones(env: Env, args: argparse.Namespace, tmp: str, rows: list[Row], raw: dict) -> None:
    repo = ensure_repo(env, args.size_mib, args.commits, args.regen)
    nobj = env.out("--git-dir", repo, "count-objects", "-v")
    raw["repo"] = {"path": os.path.relpath(repo, ROOT_DIR), "pack_mib": round(pack_bytes(repo) / MiB, 1),
                   "commits": int(env.out("--git-dir", repo, "rev-list", "--count", "--all")),
                   "count_objects": dict(l.split(": ", 1) for l in nobj.splitlines())}
    log(f"repository: {raw['repo']['pack_mib']} MiB packed, {raw['repo']['commits']} commits")

    clone_root = args.clone_dir or _default_clone_dir(args.size_mib)
    clone_tmp = tempfile.mkdtemp(prefix="gittornado-bench-", dir=clone_root)
    dest = os.path.join(clone_tmp, "clone.git")
    log(f"clones are written under {clone_tmp}")
    try:
        _run_clones(env, args, tmp, rows, raw, repo, dest)
    finally:
        shutil.rmtree(clone_tmp, ignore_errors=True)


def _default_clone_dir(size_mib: int) -> str:
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and shutil.disk_usage(shm).free > 3 * size_mib * MiB + 512 * MiB \
                and os.access(shm, os.W_OK):
            return shm
    except OSError:
        pass
    return WORK_DIR


def _spread(times: list[float]) -> str:
    return f"{min(times):.2f}..{max(times):.2f}s"


def _paired(a: CloneCase, b: CloneCase) -> float:
    """Median of a/b over the reps: each pair ran back to back, so slow drift cancels."""
    return statistics.median(x / y for x, y in zip(a.times, b.times))


def _run_clones(env: Env, args: argparse.Namespace, tmp: str, rows: list[Row], raw: dict,
                repo: str, dest: str) -> None:
    repos_dir = os.path.dirname(repo)
    name = os.path.basename(repo)
    head = env.out("--git-dir", repo, "rev-parse", "refs/heads/main")
    peer_status, peer_why = ("skip", "--no-peer") if args.no_peer else ensure_peer_tools(not args.no_install)
    if peer_status != "ok":
        log(f"peer (git http-backend behind nginx) skipped: {peer_why}")
    srv_log = os.path.join(tmp, "gittornado-clone.log")
    with contextlib.ExitStack() as stack:
        gt = stack.enter_context(GitTornado(env, repos_dir, srv_log))
        log(f"gittornado pid {gt.pid} serving on port {gt.port}")
        baseline = rss_mib(gt.pid)
        peer = None
        if peer_status == "ok":
            try:
                peer = stack.enter_context(Peer(env, repos_dir, os.path.join(tmp, "peer")))
                log(f"peer (git http-backend, fcgiwrap, nginx) on port {peer.port}")
            except Exception as exc:  # noqa: BLE001 - the row says why
                log(f"peer failed to start: {exc}")
                peer_why = f"failed to start: {exc}"
        cases: list[CloneCase] = []
        for proto in (2, 0):
            cases.append(CloneCase(f"floor v{proto}", f"file://{repo}", proto, ["--no-local"]))
            cases.append(CloneCase(f"gittornado v{proto}", gt.url(name), proto, server_pid=gt.pid))
            if peer is not None:
                cases.append(CloneCase(f"peer v{proto}", peer.url(name), proto))
        case_ = {c.name: c for c in cases}
        log("warm-up (untimed): one file:// clone for the page cache, ls-remote on each server ...")
        timed_clone(env, cases[0], dest, head)
        for case in cases[1:]:
            env.git("ls-remote", case.url)
        for rep in range(args.reps):
            k = rep % len(cases)                   # rotate the order: no case always goes first
            for case in cases[k:] + cases[:k]:
                case.times.append(timed_clone(env, case, dest, head))
            log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))
        hwm = rss_mib(gt.pid, "VmHWM")

    raw["clone"] = {c.name: {"times_s": [round(t, 4) for t in c.times], "median_s": round(c.median, 4),
                             "min_s": round(min(c.times), 4),
                             "machine_cpu_s": [round(x, 2) for x in c.machine_cpu],
                             **({"server_cpu_s": [round(x, 3) for x in c.server_cpu]} if c.server_cpu else {})}
                    for c in cases}
    for proto in (2, 0):
        floor, gt_case = case_[f"floor v{proto}"], case_[f"gittornado v{proto}"]
        ratio = gt_case.median / floor.median
        rows.append(Row(f"clone {raw['repo']['pack_mib']:.0f} MiB, protocol v{proto}: gittornado vs floor",
                        gt_case.median, "s", floor.median, "file:// --no-local", ratio,
                        f"<= {CLONE_TARGET:.2f}x", pf(ratio <= CLONE_TARGET),
                        note=f"median of {len(gt_case.times)}; gittornado {_spread(gt_case.times)}, "
                             f"floor {_spread(floor.times)}; best/best "
                             f"{min(gt_case.times) / min(floor.times):.3f}x, median of paired "
                             f"ratios {_paired(gt_case, floor):.3f}x"))
    for proto in (2, 0):
        gt_case = case_[f"gittornado v{proto}"]
        peer_case = case_.get(f"peer v{proto}")
        metric = f"clone protocol v{proto}: gittornado vs git http-backend+nginx"
        if peer_case is None:
            rows.append(Row(metric, None, "s", result="skipped", note=peer_why))
        else:
            rows.append(Row(metric, gt_case.median, "s", peer_case.median, "peer",
                            gt_case.median / peer_case.median,
                            note=f"peer {_spread(peer_case.times)}"))
    for proto in (2, 0):
        floor, gt_case = case_[f"floor v{proto}"], case_[f"gittornado v{proto}"]
        a, b = statistics.median(gt_case.machine_cpu), statistics.median(floor.machine_cpu)
        rows.append(Row(f"machine CPU per clone v{proto} (all processes): gittornado vs floor", a, "s",
                        b, "file://", a / b if b else None,
                        note=f"the floor keeps {b / floor.median:.1f} of {os.cpu_count()} CPUs busy: "
                             "extra server CPU shows up as wall time"
                        if b > 0.75 * (os.cpu_count() or 1) * floor.median else ""))
    gt2 = case_["gittornado v2"]
    rows.append(Row("gittornado server CPU per v2 clone (python process only)",
                    statistics.median(gt2.server_cpu), "s", gt2.median, "clone wall time",
                    statistics.median(gt2.server_cpu) / gt2.median))
    peak = max(gt2.server_peak_rss, case_["gittornado v0"].server_peak_rss)
    rows.append(Row("gittornado peak RSS during clones", peak, "MiB", baseline, "RSS at start",
                    peak / baseline))
    raw["clone_server_rss"] = {"baseline_mib": round(baseline, 1), "peak_mib": round(peak, 1),
                               "vmhwm_mib": round(hwm, 1)}


def run_pushes(env: Env, args: argparse.Namespace, tmp: str, rows: list[Row], raw: dict) -> None:
    from gittornado.access import hash_password

    root = os.path.join(tmp, "pushroot")
    os.makedirs(root)
    target = os.path.join(root, "target.git")
    env.git("init", "-q", "--bare", "--initial-branch=main", target)
    floor_target = os.path.join(tmp, "push-floor.git")
    if not args.no_push_floor:
        env.git("init", "-q", "--bare", "--initial-branch=main", floor_target)
    accessfile = os.path.join(tmp, "access.ini")
    with open(accessfile, "w") as fh:
        fh.write(f"[users]\n{PUSH_USER} = {hash_password(PUSH_PASSWORD)}\n[access]\n{PUSH_USER} = **=rw\n")
    work = os.path.join(tmp, "pushsrc")
    env.git("init", "-q", "--initial-branch=main", work)
    # Objects above bigFileThreshold go straight into a pack at `git add` and are then reused
    # verbatim by the push; level 0 keeps the client from spending minutes deflating noise
    # (and makes it send as fast as the server will take it: the harder case for buffering).
    fast = ["-c", "core.bigFileThreshold=1m", "-c", "core.compression=0", "-c", "pack.compression=0"]
    with open(os.path.join(work, "README"), "w") as fh:
        fh.write("push target\n")
    env.git("add", "README", cwd=work)
    env.git("commit", "-q", "-m", "initial", cwd=work)

    srv_log = os.path.join(tmp, "gittornado-push.log")
    push_raw: dict = {}
    peaks: dict[int, float] = {}
    with GitTornado(env, root, srv_log, accessfile=accessfile) as gt:
        url = gt.url("target.git", auth=f"{PUSH_USER}:{PUSH_PASSWORD}@")
        log(f"push server pid {gt.pid} on port {gt.port}; warm-up push")
        env.git("push", "-q", url, "HEAD:refs/heads/main", cwd=work)     # imports, bcrypt, etc.
        if not args.no_push_floor:
            env.git("push", "-q", f"file://{floor_target}", "HEAD:refs/heads/main", cwd=work)
        start_rss = rss_mib(gt.pid)
        for size_mib in args.push_mib:
            data_dir = os.path.join(work, f"data_{size_mib}m")
            log(f"writing {size_mib} MiB of random data and committing it ...")
            write_random_files(data_dir, size_mib * MiB)
            env.git(*fast, "add", os.path.relpath(data_dir, work), cwd=work)
            env.git(*fast, "commit", "-q", "-m", f"{size_mib} MiB of random data", cwd=work)
            shutil.rmtree(data_dir)                   # the objects are in the repository now
            head = env.out("rev-parse", "HEAD", cwd=work)
            floor_s = None
            if not args.no_push_floor:
                log(f"pushing {size_mib} MiB to file:// (the floor) ...")
                t = time.perf_counter()
                env.git(*fast, "push", "-q", f"file://{floor_target}", "HEAD:refs/heads/main",
                        cwd=work, capture=False)
                floor_s = time.perf_counter() - t
            before = rss_mib(gt.pid)
            log(f"pushing {size_mib} MiB through gittornado (server RSS before: {before:.1f} MiB) ...")
            cpu0 = proc_cpu_seconds(gt.pid)
            with RSSSampler(gt.pid) as sampler:
                t = time.perf_counter()
                env.git(*fast, "push", "-q", url, "HEAD:refs/heads/main", cwd=work, capture=False)
                elapsed = time.perf_counter() - t
            cpu = proc_cpu_seconds(gt.pid) - cpu0
            after = rss_mib(gt.pid)
            got = env.out("--git-dir", target, "rev-parse", "refs/heads/main")
            if got != head:
                raise RuntimeError(f"push of {size_mib} MiB: server has {got}, expected {head}")
            peak = max(sampler.max_mib, before, after)
            peaks[size_mib] = peak
            push_raw[f"{size_mib}MiB"] = {
                "seconds": round(elapsed, 3), "MiB_per_s": round(size_mib / elapsed, 1),
                "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak, 1),
                "rss_after_mib": round(after, 1), "growth_mib": round(peak - before, 1),
                "samples": sampler.samples, "server_cpu_s": round(cpu, 2),
                "floor_seconds": None if floor_s is None else round(floor_s, 3)}
            log(f"pushed {size_mib} MiB in {elapsed:.1f}s ({size_mib / elapsed:.0f} MiB/s); "
                f"server RSS peak {peak:.1f} MiB (+{peak - before:.1f}), {sampler.samples} samples")
            rows.append(Row(f"server peak RSS, push {_size(size_mib)}", peak, "MiB", before,
                            "RSS before push", peak / before, f"<= {RSS_LIMIT_MIB:.0f} MiB",
                            pf(peak <= RSS_LIMIT_MIB), note=""))
            rows.append(Row(f"push {_size(size_mib)}: gittornado vs floor", elapsed, "s", floor_s,
                            "file://" if floor_s is not None else "",
                            elapsed / floor_s if floor_s else None,
                            note=f"{size_mib / elapsed:.0f} MiB/s; server python CPU {cpu:.1f}s"))
        hwm = rss_mib(gt.pid, "VmHWM")
    smallest, biggest = min(args.push_mib), max(args.push_mib)
    if biggest != smallest:
        limit = peaks[smallest] + RSS_GROWTH_TOL_MIB
        rows.append(Row(f"server peak RSS, push {_size(biggest)} vs {_size(smallest)}", peaks[biggest],
                        "MiB", peaks[smallest], f"peak at {_size(smallest)}",
                        peaks[biggest] / peaks[smallest],
                        f"<= ref + {RSS_GROWTH_TOL_MIB:.0f} MiB (no growth)",
                        pf(peaks[biggest] <= limit)))
    rows.append(Row("server VmHWM after all pushes", hwm, "MiB", start_rss, "RSS after warm-up push",
                    hwm / start_rss, f"<= {RSS_LIMIT_MIB:.0f} MiB", pf(hwm <= RSS_LIMIT_MIB)))
    raw["push"] = {"per_push": push_raw, "rss_after_warmup_mib": round(start_rss, 1),
                   "vmhwm_end_mib": round(hwm, 1)}


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def environment_info(env: Env) -> dict:
    info = {"when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": env.out("--version"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import tornado
        info["tornado"] = tornado.version
    except ImportError:
        pass
    try:
        info["gittornado_commit"] = env.out("rev-parse", "HEAD", cwd=ROOT_DIR)
        info["gittornado_dirty"] = bool(env.out("status", "--porcelain", "--", "gittornado", cwd=ROOT_DIR))
    except RuntimeError:
        pass
    for tool in ("nginx", "fcgiwrap"):
        info[tool] = find_tool(tool)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 30 MiB repo, 64 and 128 MiB pushes")
    p.add_argument("--size-mib", type=int, help="repository size (default 300; --quick 30)")
    p.add_argument("--commits", type=int, help="commits in the repository (default 300; --quick 60)")
    p.add_argument("--push-mib", type=int, nargs="+",
                   help="push sizes in MiB, in order (default 512 1024; --quick 64 128)")
    p.add_argument("--reps", type=int, help="timed clones per case (median; default 7, --quick 5)")
    p.add_argument("--clone-dir", help="where clones are written (default: /dev/shm when it is a "
                                       "roomy tmpfs, so disk writeback does not add noise; else bench/work)")
    p.add_argument("--no-peer", action="store_true", help="skip the git http-backend + nginx row")
    p.add_argument("--no-install", action="store_true",
                   help="never apt-get install nginx/fcgiwrap (skip the peer if missing)")
    p.add_argument("--no-clone", action="store_true", help="skip the clone measurements")
    p.add_argument("--no-push", action="store_true", help="skip the push memory measurements")
    p.add_argument("--no-push-floor", action="store_true",
                   help="do not time the same pushes to a file:// repository")
    p.add_argument("--regen", action="store_true", help="regenerate the cached repository")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, repos)")
    p.add_argument("--json", default=os.path.join(RESULTS_DIR, "latest.json"), help="results file")
    a = p.parse_args(argv)
    a.size_mib = a.size_mib or (30 if a.quick else 300)
    a.commits = a.commits or (60 if a.quick else 300)
    a.reps = a.reps or (5 if a.quick else 7)
    a.push_mib = a.push_mib or ([64, 128] if a.quick else [512, 1024])
    if a.reps < 1 or a.size_mib < 1 or a.commits < 1 or min(a.push_mib) < 1:
        p.error("sizes, commits and reps must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does: every finally block stops its servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("git") is None:
        print("bench: git not found", file=sys.stderr)
        return 2
    os.makedirs(WORK_DIR, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="run-", dir=WORK_DIR)
    env = Env(os.path.join(tmp, "home"))
    rows: list[Row] = []
    raw: dict = {}
    errors: list[str] = []
    t_start = time.perf_counter()
    info = environment_info(env)
    log(f"gittornado benchmark ({'quick' if args.quick else 'full'}); temp dir {os.path.relpath(tmp, ROOT_DIR)}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(f"warning: load average {load1:.2f} before starting: other work on this machine "
            "will make the timings noisy")
    need = (args.size_mib * 3 + sum(args.push_mib) * 3) * MiB
    free = shutil.disk_usage(WORK_DIR).free
    if free < need:
        log(f"warning: {free / 2**30:.1f} GiB free under bench/work, this run wants ~{need / 2**30:.1f} GiB")
    try:
        for name, fn, skip in (("clone", run_clones, args.no_clone), ("push", run_pushes, args.no_push)):
            if skip:
                continue
            try:
                fn(env, args, tmp, rows, raw)
            except Exception as exc:  # noqa: BLE001 - reported as a row, the run goes on
                log(f"{name} benchmark failed: {exc}")
                errors.append(f"{name}: {exc}")
                rows.append(Row(f"{name} benchmark", None, "", result="ERROR", note=str(exc)[:500]))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    info.update({tool: find_tool(tool) for tool in ("nginx", "fcgiwrap")})
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows)
    verdict = [r.result for r in rows if r.result in ("PASS", "MISS", "ERROR")]
    summary = (f"{verdict.count('PASS')} PASS, {verdict.count('MISS')} MISS"
               + (f", {verdict.count('ERROR')} ERROR" if errors else "") + f"; total {total:.0f}s")
    print(summary)
    result = {
        "mode": "quick" if args.quick else "full",
        "params": {"size_mib": args.size_mib, "commits": args.commits, "push_mib": args.push_mib,
                   "reps": args.reps},
        "targets": {"clone_vs_floor_max": CLONE_TARGET, "push_peak_rss_max_mib": RSS_LIMIT_MIB,
                    "push_rss_growth_tolerance_mib": RSS_GROWTH_TOL_MIB},
        "environment": info,
        "rows": [{"metric": r.metric, "value": r.value, "unit": r.unit, "reference": r.reference,
                  "reference_label": r.ref_label, "ratio": r.ratio, "target": r.target,
                  "result": r.result, "note": r.note} for r in rows],
        "raw": raw, "errors": errors, "total_seconds": round(total, 1), "summary": summary,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    log(f"wrote {os.path.relpath(os.path.abspath(args.json), ROOT_DIR)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
