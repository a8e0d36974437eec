"""The scenarios: each attacks a running server and returns its figures, with ``problems`` listed.

A scenario never asserts: it counts (tries, statuses, 5xx answers, what was
left behind) and lists anything that must not happen in ``problems``, so the
long form can print every figure and the CI test can assert on the list.
Sizes are parameters; the loops are bounded by them and by deadlines.
"""

from __future__ import annotations

import collections
import gzip
import os
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress.client import (
    Answer,
    basic,
    build_root,
    burst,
    git,
    gzip_bomb,
    http_request,
    pkt,
    raw,
    request,
    rev,
)
from stress.server import Server, git_processes, quarantines, start_server

__all__ = [
    "Target",
    "Figures",
    "setup_target",
    "push_kills",
    "concurrent_pushes",
    "mixed_clients",
    "slowloris",
    "idle_keepalive",
    "header_bombs",
    "gzip_bombs",
    "bad_pktlines",
    "guessing",
    "path_tricks",
    "fd_exhaustion",
    "server_kills",
    "PASSWORDS",
]

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
UPLOAD_REQ = "application/x-git-upload-pack-request"
RECEIVE_REQ = "application/x-git-receive-pack-request"


class Figures(dict):
    """A scenario's figures; ``problems`` lists what must not happen (empty: passed)."""

    def __init__(self, name: str) -> None:
        super().__init__(scenario=name, problems=[])

    def problem(self, text: str) -> None:
        if len(self["problems"]) < 50:
            self["problems"].append(text)

    @property
    def problems(self) -> list[str]:
        return self["problems"]


@dataclass
class Target:
    """The server under attack and what surrounds it."""

    server: Server
    root: Path
    base: Path
    access: Path
    secret: Path
    work: Path
    xheaders: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, repo: str, user: str | None = None) -> str:
        if user is None:
            return f"{self.server.url}/{repo}"
        return f"http://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}/{repo}"

    def scratch(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path


def setup_target(
    root: str | os.PathLike,
    *server_args: str,
    rounds: int = 4,
    xheaders: bool = False,
    nofile: int | None = None,
) -> Target:
    """Build a gitbase under ``root`` and start a server on it."""
    root = Path(root)
    made = build_root(root, PASSWORDS, rounds=rounds)
    args = ["--accessfile", str(made["access"]), *server_args]
    if xheaders:
        args.append("--xheaders")
    server = start_server(made["base"], *args, log_path=root / "server.log", nofile=nofile)
    work = root / "work"
    work.mkdir(exist_ok=True)
    return Target(server, root, made["base"], made["access"], made["secret"], work, xheaders)


# -- shared checks ---------------------------------------------------------------------------


def _settle(target: Target, repo: Path, fig: Figures, timeout: float = 15.0) -> None:
    """Wait (bounded) until the server is done with ``repo``; count what it left.

    Done: no client connection open in the server (a killed client's request
    may still be on its way to spawning git), no git process for ``repo``, no
    quarantine, twice in a row. Only for scenarios with no other clients.
    """
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:
        busy = server_open(target.server) or git_processes(str(repo)) or quarantines(repo)
        quiet = 0 if busy else quiet + 1
        time.sleep(0.05)
    left, dirs = git_processes(str(repo)), quarantines(repo)
    fig["git_left"] = fig.get("git_left", 0) + len(left)
    fig["quarantines_left"] = fig.get("quarantines_left", 0) + len(dirs)
    if left:
        fig.problem(f"git still running for {repo.name} {timeout:.0f}s after its client: {left[:2]}")
    if dirs:
        fig.problem(f"quarantine left in {repo.name}: {dirs[:2]}")


def _fsck(repo: Path, fig: Figures) -> None:
    proc = git("fsck", "--no-progress", "--no-dangling", cwd=repo, check=False)
    if proc.returncode != 0:
        fig["fsck_failures"] = fig.get("fsck_failures", 0) + 1
        fig.problem(f"fsck of {repo.name} failed: {proc.stderr.decode(errors='replace')[:300]}")


def _count_5xx(fig: Figures, statuses: collections.Counter) -> None:
    fig["statuses"] = dict(sorted(statuses.items()))
    fig["5xx"] = sum(n for s, n in statuses.items() if s >= 500)
    if fig["5xx"]:
        fig.problem(f"{fig['5xx']} answers were 5xx")


def _idle_level(target: Target, timeout: float = 10.0) -> tuple[int, int]:
    """The server's (fds, threads) once they stop falling."""
    last = (target.server.fds(), target.server.threads())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = (target.server.fds(), target.server.threads())
        if now == last:
            return now
        last = now
    return last


#: Threads the server's bounded pools may add on first use (WSGI pages 8, password checks 4).
_POOL_THREADS = 12


def _back_to(
    target: Target,
    fig: Figures,
    before: tuple[int, int],
    timeout: float = 20.0,
    fd_margin: int = 2,
    thread_margin: int = 0,
) -> None:
    """Wait (bounded) for fds and threads to return to ``before``; record both."""
    fig["fds_before"], fig["threads_before"] = before
    deadline = time.monotonic() + timeout
    while True:
        fds, threads = target.server.fds(), target.server.threads()
        if fds <= before[0] + fd_margin and threads <= before[1] + thread_margin:
            break
        if time.monotonic() > deadline:
            fig.problem(
                f"fds/threads {fds}/{threads} did not return to {before[0]}/{before[1]} within {timeout:.0f}s"
            )
            break
        time.sleep(0.1)
    fig["fds_after"], fig["threads_after"] = fds, threads


def _warm(target: Target) -> None:
    """Grow every pool the server keeps to what a crowd makes of it, so "idle" means idle after.

    Password checks (overlapping, from several addresses when the server
    trusts X-Forwarded-For), the index page's WSGI threads, git runs.
    """
    procs = []
    for i in range(6):
        dest = target.scratch(f"warm{i}")
        procs.append(
            subprocess.Popen(
                ["git", "clone", "-q", target.url("app"), str(dest)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    reqs = [
        http_request(
            "GET",
            "/private/info/refs?service=git-upload-pack",
            {"Authorization": basic("carol", f"warm-wrong-{i}"), "X-Forwarded-For": f"10.250.{i}.1"},
        )
        for i in range(8)
    ]
    reqs += [http_request("GET", "/") for _ in range(16)]
    burst(target.port, reqs)
    for p in procs:
        p.wait(60)


# -- 1. the client killed mid-push -------------------------------------------------------------


def _push_body(work: Path, old: str, new: str) -> bytes:
    pack = git("pack-objects", "--stdout", "--revs", "-q", cwd=work, input=f"{new}\n^{old}\n".encode()).stdout
    return pkt(f"{old} {new} refs/heads/main\0report-status\n") + b"0000" + pack


def _next_commit(work: Path, rng: random.Random, size: int) -> str:
    (work / "blob.bin").write_bytes(rng.randbytes(size))
    git("add", "blob.bin", cwd=work)
    git("commit", "-qm", f"stress {rng.random()}", cwd=work)
    return rev(work, "HEAD")


def push_kills(
    target: Target, n: int, *, seed: int = 1, size: int = 1 << 20, max_delay: float = 0.4
) -> Figures:
    """Kill the client at random points of a push, ``n`` times (half real git, half a raw body).

    After each: ``main`` is the old or the new commit (never anything else),
    ``fsck`` is clean, no quarantine and no git process remain.
    """
    fig = Figures("push_kills")
    rng = random.Random(seed)
    repo = target.base / "kills.git"
    work = target.scratch("push-kills")
    git("clone", "-q", str(repo), str(work))
    counts = collections.Counter()
    started = time.monotonic()
    for i in range(n):
        git("fetch", "-q", "origin", cwd=work)
        git("reset", "-q", "--hard", "origin/main", cwd=work)
        old = rev(repo, "main")
        new = _next_commit(work, rng, size)
        if i % 2 == 0:
            proc = subprocess.Popen(
                ["git", "push", "-q", target.url("kills", "alice"), "HEAD:main"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                proc.wait(rng.uniform(0, max_delay))  # the kill point: a random moment of the push
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
            counts["git_killed"] += 1
        else:
            body = _push_body(work, old, new)
            cut = len(body) if rng.random() < 0.2 else rng.randrange(0, len(body))
            head = (
                f"POST /kills/git-receive-pack HTTP/1.1\r\nHost: x\r\nContent-Type: {RECEIVE_REQ}\r\n"
                f"Authorization: {basic('alice', 'alice-pw')}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
                try:
                    sock.sendall(head.encode() + body[:cut])
                    if cut == len(body):
                        sock.recv(65536)  # the whole push: wait for the answer to start
                except OSError:
                    pass
                if rng.random() < 0.5:  # a reset rather than a close
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            counts["raw_cut"] += 1
        _settle(target, repo, fig)
        now = rev(repo, "main")
        if now == old:
            counts["refs_unchanged"] += 1
        elif now == new:
            counts["refs_whole"] += 1
        else:
            counts["refs_other"] += 1
            fig.problem(f"try {i}: main is {now}, neither {old} nor {new}")
        _fsck(repo, fig)
    fig.update(tries=n, seconds=round(time.monotonic() - started, 1), **counts)
    fig.setdefault("fsck_failures", 0)
    return fig


# -- 2. concurrent pushes ---------------------------------------------------------------------


def concurrent_pushes(target: Target, n: int) -> Figures:
    """``n`` pushes at once to one branch (exactly one wins), then to ``n`` branches (all win)."""
    fig = Figures("concurrent_pushes")
    repo = target.base / "app.git"
    old = rev(repo, "main")
    clones, commits = [], []
    for i in range(n):
        work = target.scratch(f"cp{i}")
        git("clone", "-q", str(repo), str(work))
        (work / f"file{i}.txt").write_text(f"{i}\n")
        git("add", ".", cwd=work)
        git("commit", "-qm", f"concurrent {i}", cwd=work)
        clones.append(work)
        commits.append(rev(work, "HEAD"))
    started = time.monotonic()

    def push_all(refspec: str) -> list[int]:
        procs = [
            subprocess.Popen(
                ["git", "push", "-q", target.url("app", "alice"), refspec.format(i=i)],
                cwd=w,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i, w in enumerate(clones)
        ]
        codes = []
        for p in procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                fig.problem("a concurrent push took over 120s")
            codes.append(p.returncode)
            p.stderr.close()
        return codes

    codes = push_all("HEAD:main")
    winners = [c for c, code in zip(commits, codes, strict=True) if code == 0]
    final = rev(repo, "main")
    fig["one_branch_ok"] = len(winners)
    if len(winners) != 1 or final != winners[0]:
        fig.problem(f"one branch: {len(winners)} pushes succeeded, main is {final} (was {old})")
    codes = push_all("HEAD:refs/heads/stress-{i}")
    fig["many_branches_ok"] = codes.count(0)
    for i, c in enumerate(commits):
        if codes[i] != 0 or rev(repo, f"stress-{i}") != c:
            fig.problem(f"many branches: push {i} failed or its branch is wrong")
    _settle(target, repo, fig)
    _fsck(repo, fig)
    for i in range(n):
        git("update-ref", "-d", f"refs/heads/stress-{i}", cwd=repo)
    fig.update(pushes=2 * n, seconds=round(time.monotonic() - started, 1))
    fig.setdefault("fsck_failures", 0)
    return fig


# -- 3. many mixed clients ---------------------------------------------------------------------


def mixed_clients(target: Target, n: int, *, seed: int = 2) -> Figures:
    """``n`` clients at once, every kind git users are (and a few refused ones).

    0 unexpected outcomes; afterwards the server's threads and descriptors
    return to their idle level and no git process is left.
    """
    fig = Figures("mixed_clients")
    rng = random.Random(seed)
    repo = target.base / "app.git"
    _warm(target)
    before = _idle_level(target)
    kinds = ["clone-v2", "clone-v0", "dumb-clone", "ls-remote", "push", "anon-private", "fetch", "index"]
    if target.xheaders:
        kinds.append("wrong-password")
    jobs = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        dest = target.scratch(f"mixed{i}")
        cmd: list[str] | None
        env = dict(os.environ)
        expect_ok = True
        if kind in ("push", "fetch"):
            git("clone", "-q", str(repo), str(dest))
            if kind == "push":
                (dest / f"m{i}").write_text(str(rng.random()))
                git("add", ".", cwd=dest)
                git("commit", "-qm", f"mixed {i}", cwd=dest)
                cmd = ["git", "push", "-q", target.url("app", "alice"), f"HEAD:refs/heads/mixed-{i}"]
            else:
                cmd = ["git", "fetch", "-q", target.url("app"), "+refs/heads/*:refs/remotes/x/*"]
        elif kind == "clone-v2":
            cmd = ["git", "-c", "protocol.version=2", "clone", "-q", target.url("app"), str(dest)]
        elif kind == "clone-v0":
            cmd = ["git", "-c", "protocol.version=0", "clone", "-q", target.url("app"), str(dest)]
        elif kind == "dumb-clone":
            env["GIT_SMART_HTTP"] = "0"
            cmd = ["git", "clone", "-q", target.url("public/lib"), str(dest)]
        elif kind == "ls-remote":
            cmd = ["git", "ls-remote", target.url("private", "alice")]
        elif kind == "anon-private":
            cmd = ["git", "ls-remote", target.url("private")]
            expect_ok = False
        elif kind == "wrong-password":
            cmd = [
                "git",
                "-c",
                f"http.extraHeader=X-Forwarded-For: 10.77.{i // 250}.{i % 250}",
                "ls-remote",
                f"http://alice:nope@127.0.0.1:{target.port}/private",
            ]
            expect_ok = False
        else:
            cmd = None
        jobs.append((kind, cmd, dest if kind in ("push", "fetch") else None, env, expect_ok))
    started = time.monotonic()
    outcomes = collections.Counter()
    procs = []
    index_answers: list[Answer] = []

    def index() -> None:
        index_answers.append(request(target.port, "GET", "/", timeout=60))

    threads = []
    for kind, cmd, cwd, env, expect_ok in jobs:
        if cmd is None:
            t = threading.Thread(target=index)
            t.start()
            threads.append(t)
            procs.append((kind, None, expect_ok))
        else:
            procs.append(
                (
                    kind,
                    subprocess.Popen(
                        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                    ),
                    expect_ok,
                )
            )
    for kind, proc, expect_ok in procs:
        if proc is None:
            continue
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            fig.problem(f"a {kind} client took over 180s")
        ok = proc.returncode == 0
        outcomes[f"{kind}:{'ok' if ok else 'refused'}"] += 1
        if ok != expect_ok:
            fig.problem(f"{kind}: exit {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
        elif not ok and b"429" in err:
            fig.problem(f"{kind}: throttled instead of refused: {err[:200]!r}")
    for t in threads:
        t.join(60)
    for answer in index_answers:
        outcomes[f"index:{answer.status}"] += 1
        if answer.status != 200:
            fig.problem(f"index page answered {answer.status}")
    fig["seconds"] = round(time.monotonic() - started, 1)
    _settle(target, repo, fig)
    _back_to(target, fig, before)
    for i in range(n):
        git("update-ref", "-d", f"refs/heads/mixed-{i}", cwd=repo, check=False)
    fig.update(clients=n, errors=len(fig.problems), outcomes=dict(sorted(outcomes.items())))
    return fig


# -- 4. slowloris and idle connections ---------------------------------------------------------


def _probe(
    port: int, stop: threading.Event, out: list[float], path: str = "/app/HEAD", interval: float = 0.01
) -> None:
    """Ask for ``path`` on one keep-alive connection until ``stop``; record each latency."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    try:
        while not stop.is_set():
            t = time.monotonic()
            sock.sendall(data)
            got = b""
            while not got.endswith(b"\n") or b"\r\n\r\n" not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("probe connection closed")
                got += chunk
            out.append(time.monotonic() - t)
            stop.wait(interval)
    except OSError:
        out.append(float("inf"))
    finally:
        sock.close()


def _latency(fig: Figures, latencies: list[float], prefix: str = "probe") -> None:
    finite = sorted(x for x in latencies if x != float("inf"))
    fig[f"{prefix}s"] = len(latencies)
    if not finite:
        fig.problem("no probe answered")
        return
    fig[f"{prefix}_median_ms"] = round(1000 * statistics.median(finite), 1)
    fig[f"{prefix}_p99_ms"] = round(1000 * finite[min(len(finite) - 1, int(0.99 * len(finite)))], 1)
    fig[f"{prefix}_max_ms"] = round(1000 * finite[-1], 1) if len(finite) == len(latencies) else "inf"


def slowloris(target: Target, n: int, header_timeout: float) -> Figures:
    """``n`` connections that never finish their headers (half trickle a byte, half send nothing).

    Each must be closed by the server about ``header_timeout`` s after it
    opened, while others are served; the figures give how long they held on
    (watched with epoll from the moment each is opened, so opening many does
    not delay noticing the first closed).
    """
    fig = Figures("slowloris")
    before = _idle_level(target)
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}

    def notice(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            sock = key.fileobj
            try:
                gone = not sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                gone = True
            if gone:
                closed[sock] = time.monotonic()
                sel.unregister(sock)

    stop = threading.Event()
    latencies: list[float] = []
    prober = threading.Thread(target=_probe, args=(target.port, stop, latencies), daemon=True)
    prober.start()
    trickling = []
    for i in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((f"127.0.{1 + i // 250}.{2 + i % 250}", 0))
        sock.connect(("127.0.0.1", target.port))
        opened[sock] = time.monotonic()
        sock.setblocking(False)
        if i % 2 == 0:
            sock.send(b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n")
            trickling.append(sock)
        sel.register(sock, selectors.EVENT_READ)
        if i % 20 == 0:
            notice(0)
    deadline = time.monotonic() + header_timeout + 10
    next_byte = 0.0
    while time.monotonic() < deadline and len(closed) < n:
        if time.monotonic() >= next_byte:
            for sock in trickling:
                if sock not in closed:
                    try:
                        sock.send(b"X")  # one more byte of a header line that never ends
                    except OSError:
                        pass
            next_byte = time.monotonic() + 0.2
        notice(0.05)
    stop.set()
    prober.join(10)
    now = time.monotonic()
    held = sorted(closed.get(sock, now) - t for sock, t in opened.items())
    for sock in opened:
        sock.close()
    sel.close()
    still_open = n - len(closed)
    fig.update(
        connections=n,
        still_open_at_deadline=still_open,
        median_held_s=round(statistics.median(held), 1),
        max_held_s=round(held[-1], 1),
        min_held_s=round(held[0], 1),
    )
    if still_open:
        fig.problem(f"{still_open} of {n} slow connections still open {header_timeout + 10:.0f}s later")
    if held[-1] > header_timeout + 3:
        fig.problem(f"a slow connection was held {held[-1]:.1f}s (header timeout {header_timeout}s)")
    _latency(fig, latencies)
    if fig.get("probe_max_ms") == "inf":
        fig.problem("the probe connection failed during the attack")
    _back_to(target, fig, before, fd_margin=1)
    return fig


def idle_keepalive(target: Target, idle_timeout: float) -> Figures:
    """A keep-alive connection that asks once and then idles is closed after ``idle_timeout`` s."""
    fig = Figures("idle_keepalive")
    with socket.create_connection(("127.0.0.1", target.port), timeout=idle_timeout + 10) as sock:
        sock.sendall(b"GET /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        opened = time.monotonic()
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
        held = time.monotonic() - opened
    fig["held_s"] = round(held, 1)
    if not idle_timeout - 0.5 <= held <= idle_timeout + 3:
        fig.problem(f"an idle keep-alive connection was closed after {held:.1f}s, not ~{idle_timeout}s")
    return fig


# -- 5. header bombs -----------------------------------------------------------------------------


def header_bombs(target: Target) -> Figures:
    """Requests whose start line or headers are huge, numerous or malformed: refused, never a 5xx."""
    fig = Figures("header_bombs")
    before = _idle_level(target)
    get = "GET /app/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n"
    bombs = {
        "1 MiB of headers": get + "".join(f"X-Pad-{i}: {'a' * 1000}\r\n" for i in range(1024)) + "\r\n",
        "one 200 KiB header": get + "X-Big: " + "b" * 200_000 + "\r\n\r\n",
        "10,000 tiny headers": get + "".join(f"X{i}: y\r\n" for i in range(10_000)) + "\r\n",
        "64 KiB request line": "GET /" + "a" * 65536 + " HTTP/1.1\r\nHost: x\r\n\r\n",
        "header without colon": get + "NoColonHere\r\n\r\n",
        "NUL in a header": get + "X-Nul: a\0b\r\n\r\n",
        "1000 Authorization headers": get
        + "".join(f"Authorization: {basic('alice', str(i))}\r\n" for i in range(1000))
        + "\r\n",
        "both Content-Length and chunked": "POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {UPLOAD_REQ}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0000",
        "two Content-Lengths": "POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {UPLOAD_REQ}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n0000",
        "bad chunk size": "POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {UPLOAD_REQ}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n0000\r\n0\r\n\r\n",
        "huge chunk size": "POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {UPLOAD_REQ}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n00",
        "obsolete line folding": get + "X-Fold: a\r\n b\r\n\r\n",
        "HTTP/0.9": "GET /app/HEAD\r\n\r\n",
        "unknown method": "BREW /app/HEAD HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    statuses = collections.Counter()
    worst = 0.0
    for name, text in bombs.items():
        answer = raw(target.port, text.encode("latin-1"), timeout=10)
        statuses[answer.status] += 1
        worst = max(worst, answer.seconds)
        fig[name] = answer.status
        if answer.status >= 500 or answer.status == 200:
            fig.problem(f"{name}: answered {answer.status}")
    fig.update(tries=len(bombs), slowest_s=round(worst, 2))
    _count_5xx(fig, statuses)
    if request(target.port, "GET", "/app/HEAD").status != 200:
        fig.problem("the server did not serve a plain request after the bombs")
    _back_to(target, fig, before, fd_margin=1)
    return fig


# -- 6. gzip bombs -----------------------------------------------------------------------------


#: (name, method, path, headers, unit the body repeats): every endpoint, with a gzip body.
GZIP_CASES = [
    ("upload-pack flushes", "POST", "/app/git-upload-pack", {"Content-Type": UPLOAD_REQ}, b"0"),
    ("upload-pack pkt-lines", "POST", "/app/git-upload-pack", {"Content-Type": UPLOAD_REQ}, b"0008abcd"),
    (
        "upload-pack v2 pkt-lines",
        "POST",
        "/app/git-upload-pack",
        {"Content-Type": UPLOAD_REQ, "Git-Protocol": "version=2"},
        b"0008abcd",
    ),
    ("upload-pack gzip in gzip", "POST", "/app/git-upload-pack", {"Content-Type": UPLOAD_REQ}, b""),
    (
        "receive-pack",
        "POST",
        "/app/git-receive-pack",
        {"Content-Type": RECEIVE_REQ, "Authorization": basic("alice", "alice-pw")},
        b"0",
    ),
    ("receive-pack anonymous", "POST", "/app/git-receive-pack", {"Content-Type": RECEIVE_REQ}, b"0"),
    ("info/refs", "GET", "/app/info/refs?service=git-upload-pack", {}, b"0"),
    ("dumb HEAD", "GET", "/app/HEAD", {}, b"0"),
    ("dumb packs", "GET", "/app/objects/info/packs", {}, b"0"),
    ("index page", "GET", "/", {}, b"0"),
    ("index POST", "POST", "/", {}, b"0"),
]


def gzip_bombs(target: Target, inflated: int, names: list[str] | None = None) -> Figures:
    """A gzip body inflating to ``inflated`` bytes sent to each endpoint in turn, while a probe
    keeps asking for ``/app/HEAD`` on another connection.

    Per endpoint: the status (never a 5xx) and the probe's latency while the
    bomb was handled (its median must stay under 50 ms: the loop keeps
    serving others).
    """
    fig = Figures("gzip_bombs")
    before = _idle_level(target)
    statuses = collections.Counter()
    started = time.monotonic()
    for name, method, path, headers, unit in GZIP_CASES:
        if names is not None and name not in names:
            continue
        body = gzip.compress(gzip_bomb(inflated)) if not unit else gzip_bomb(inflated, unit)
        stop = threading.Event()
        latencies: list[float] = []
        prober = threading.Thread(target=_probe, args=(target.port, stop, latencies), daemon=True)
        prober.start()
        try:
            answer = request(
                target.port,
                method,
                path,
                headers={**headers, "Content-Encoding": "gzip"},
                body=body,
                timeout=300,
            )
        finally:
            stop.set()
            prober.join(10)
        statuses[answer.status] += 1
        case = Figures(name)
        _latency(case, latencies)
        case.update(status=answer.status, seconds=round(answer.seconds, 2))
        fig[name] = {k: v for k, v in case.items() if k not in ("scenario", "problems")}
        if answer.status == 0 or answer.status >= 500:
            fig.problem(f"{name}: answered {answer.status or 'nothing'}")
        for text in case.problems:
            if answer.seconds > 0.5:  # a quick answer leaves the probe no time to ask
                fig.problem(f"{name}: {text}")
        # A median needs samples: a bomb answered in 70 ms gives the probe one, and one
        # slow sample on a loaded machine is not a frozen loop (the p99 check above is for that).
        if (
            isinstance(case.get("probe_median_ms"), float)
            and case["probe_median_ms"] > 50
            and case.get("probes", 0) >= 3
        ):
            fig.problem(f"{name}: others waited {case['probe_median_ms']} ms (median) while it was handled")
        if case.get("probe_max_ms") == "inf":
            fig.problem(f"{name}: the probe connection failed")
    fig.update(
        tries=sum(statuses.values()),
        inflated_mib=inflated >> 20,
        seconds=round(time.monotonic() - started, 1),
    )
    _count_5xx(fig, statuses)
    _settle(target, target.base / "app.git", fig)
    # Each bomb may be the first request to reach one of the server's bounded thread
    # pools (the WSGI pages, 8; password checks, 4), which start threads on demand and
    # keep them: growth within those bounds is not a leak (the scenarios run once the
    # pools are warm hold threads to their idle level exactly).
    _back_to(target, fig, before, thread_margin=_POOL_THREADS)
    return fig


# -- 7. bad pkt-lines ------------------------------------------------------------------------------


def bad_pktlines(target: Target) -> Figures:
    """Request bodies that are not pkt-lines, or break them: 400, never a 5xx or a stray git."""
    fig = Figures("bad_pktlines")
    before = _idle_level(target)
    zero = "0" * 40
    framing = {
        "not hex": b"zzzz",
        "length 1": b"0001" + b"x",
        "length 3": b"0003",
        "truncated length": b"00",
        "longer than the body": b"0100" + b"want",
        "max length, short body": b"ffff" + b"a" * 100,
        "ends inside a pkt-line": pkt("command=ls-refs\n")[:-3],
        "uppercase hex junk": b"00G0abcd",
    }
    semantic = {
        "want garbage": pkt("want zzz\n") + b"0000" + pkt("done\n"),
        "v2 unknown command": pkt("command=nope\n") + b"0001" + b"0000",
        "v2 no delim": pkt("command=fetch\n") + pkt(f"want {zero}\n") + b"0000",
        "NUL in a command": pkt("command=ls-refs\0evil\n") + b"0000",
        "only flushes": b"0000" * 1000,
        "response-end": b"0002",
    }
    statuses = collections.Counter()
    for service, ctype, auth in (
        ("git-upload-pack", UPLOAD_REQ, None),
        ("git-receive-pack", RECEIVE_REQ, basic("alice", "alice-pw")),
    ):
        for proto in ("version=2", None):
            headers = {"Content-Type": ctype}
            if auth:
                headers["Authorization"] = auth
            if proto:
                headers["Git-Protocol"] = proto
            for name, body in {**framing, **semantic}.items():
                answer = request(target.port, "POST", f"/app/{service}", headers=headers, body=body)
                statuses[answer.status] += 1
                if answer.status == 0 or answer.status >= 500:
                    fig.problem(f"{service} {name}: answered {answer.status or 'nothing'}")
                elif name in framing and service == "git-upload-pack" and answer.status != 400:
                    fig.problem(f"{service} {name}: {answer.status}, not 400")
                elif (
                    name in framing
                    and service == "git-receive-pack"
                    and answer.status == 200
                    and b"ERR" not in answer.body
                    and b"error" not in answer.body
                ):
                    fig.problem(f"{service} {name}: 200 without an error")
    fig["tries"] = sum(statuses.values())
    _count_5xx(fig, statuses)
    _settle(target, target.base / "app.git", fig)
    _back_to(target, fig, before)
    return fig


# -- 8. parallel password guessing ---------------------------------------------------------------


def guessing(target: Target, n: int, limit: int = 10, slack: int = 4) -> Figures:
    """``n`` wrong passwords at once from one address (X-Forwarded-For) while someone else logs in.

    At most ``limit + slack`` are checked (401), the rest refused (429); the
    other login takes about what it takes on an idle server.
    """
    fig = Figures("guessing")
    path = "/app/info/refs?service=git-upload-pack"

    def login(user: str, addr: str) -> float:
        answer = request(
            target.port,
            "GET",
            path,
            timeout=120,
            headers={"Authorization": basic(user, PASSWORDS[user]), "X-Forwarded-For": addr},
        )
        if answer.status != 200:
            fig.problem(f"{user}'s login from {addr} answered {answer.status}")
        return answer.seconds

    baseline = login("bob", "10.88.1.1")  # a first login: a real check, nothing cached
    guesses = [
        http_request(
            "GET", path, {"Authorization": basic("alice", f"guess-{i}"), "X-Forwarded-For": "10.88.0.1"}
        )
        for i in range(n)
    ]
    loaded: list[float] = []
    done = threading.Event()

    def other() -> None:
        time.sleep(0.05)  # let the burst arrive first
        loaded.append(login("carol", "10.88.2.1"))
        done.set()

    t = threading.Thread(target=other)
    t.start()
    results = burst(target.port, guesses, timeout=120)
    t.join(120)
    statuses = collections.Counter(s for s, _ in results)
    fig.update(
        tries=n,
        checked=statuses.get(401, 0),
        refused_429=statuses.get(429, 0),
        login_idle_s=round(baseline, 3),
        login_under_attack_s=round(loaded[0], 3) if loaded else None,
    )
    _count_5xx(fig, statuses)
    if statuses.get(401, 0) > limit + slack:
        fig.problem(f"{statuses[401]} of {n} parallel guesses were checked (limit {limit})")
    if statuses.get(401, 0) + statuses.get(429, 0) != n:
        fig.problem(f"unexpected answers to guesses: {dict(statuses)}")
    if not loaded or loaded[0] > max(5 * baseline, baseline + 1.0):
        fig.problem(
            f"a login from elsewhere took {loaded[0] if loaded else 'forever'}s under attack "
            f"(idle: {baseline:.3f}s)"
        )
    return fig


# -- 9. path tricks ----------------------------------------------------------------------------------


def path_tricks(target: Target) -> Figures:
    """Every way we know to name something outside a repository, or outside the root."""
    fig = Figures("path_tricks")
    adv = "info/refs?service=git-upload-pack"
    escapes = [
        f"/../outside/secret/{adv}",
        f"/%2e%2e/outside/secret/{adv}",
        f"/%2E%2E/outside/secret/{adv}",
        f"/app/../../outside/secret/{adv}",
        f"/app/%2e%2e/%2e%2e/outside/secret/{adv}",
        f"/app%2f..%2f..%2foutside%2fsecret/{adv}",
        f"/..%2foutside%2fsecret/{adv}",
        f"/%252e%252e/outside/secret/{adv}",
        f"/%c0%ae%c0%ae/outside/secret/{adv}",
        f"/.%2e/outside/secret/{adv}",
        f"/app/..%5c..%5coutside%5csecret/{adv}",
        f"/..\\outside\\secret/{adv}",
        f"/app%00/{adv}",
        f"/app%00.git/{adv}",
        f"/evil/{adv}",
        f"/evil.git/{adv}",
        "/evil/HEAD",
        "/evil/objects/info/packs",
        f"/borrow/{adv}",
        "/borrow/HEAD",
        f"/./app/{adv}",
        f"/app/./{adv}",
        f"/-app/{adv}",
        f"/app/.git/{adv}",
        f"/.git/{adv}",
        f"/app.git.git/{adv}",
        f"/{'a/' * 200}x/{adv}",
        f"/{'x' * 5000}/{adv}",
        f"/app%20/{adv}",
        f"/app./{adv}",
        f"/APP/{adv}",
        f"/outside/secret/{adv}",
        f"/../../../../../../etc/{adv}",
        "/app/config",
        "/app/hooks/pre-receive",
        "/app/description",
        "/app/objects/../config",
        "/app/objects/info/../../config",
        "/app/info/refs/../../config",
        "/app/objects/pack/../../config",
        "/app/HEAD/../config",
        "/app/objects/00/../../config",
        "/app/%2e%2e/private/HEAD",
        "/public/lib/../../private/HEAD",
        "/public/%2e%2e/private/HEAD",
        "/public/lib%2f..%2f..%2fprivate/HEAD",
        "/private/HEAD",
        f"/private/{adv}",
        "/app/objects/info/../../../private/HEAD",
        "/app/refs/heads/main",
        "/app/packed-refs",
        "/app/logs/HEAD",
        "/app/objects/pack/pack-zz.pack",
        "/app/objects/ab/" + "c" * 39 + "/../../../config",
        "/%00",
        "/\\",
        "/app/HEAD%00.txt",
    ]
    controls = ["/app/HEAD", f"/app/{adv}", f"/app.git/{adv}", "/public/lib/HEAD"]
    # Other spellings of a readable repository: they may be served, as that repository.
    aliases = [f"//app/{adv}", f"/app//{adv}"]
    statuses = collections.Counter()
    leaks = 0
    for path in escapes + controls + aliases:
        answer = request(target.port, "GET", path)
        statuses[answer.status] += 1
        if path in controls:
            if answer.status != 200:
                fig.problem(f"control {path} answered {answer.status}")
            continue
        if path in aliases:
            if answer.status not in (200, 404) or b"secret-branch" in answer.body:
                fig.problem(f"{path} answered {answer.status}: {answer.body[:80]!r}")
            continue
        if answer.status == 200 or b"secret-branch" in answer.body or b"[core]" in answer.body:
            leaks += 1
            fig.problem(f"{path[:80]} answered {answer.status}: {answer.body[:80]!r}")
        if answer.status == 0 or answer.status >= 500:
            fig.problem(f"{path[:80]} answered {answer.status or 'nothing'}")
    fig.update(tries=len(escapes), leaks=leaks)
    _count_5xx(fig, statuses)
    return fig


# -- 10. descriptor exhaustion -------------------------------------------------------------------


def fd_exhaustion(root: Path, *, nofile: int = 64, conns: int = 150, watch: float = 2.0) -> Figures:
    """A server with ``nofile`` descriptors and ``conns`` idle connections at it.

    With the connection cap lifted (``--max-connections`` far above the
    limit), accepting must pause rather than spin: little CPU and a few log
    lines while the connections stay, then it serves again once they go.
    With the default cap, connections past it get a 503, and the server
    serves again once the header timeout has freed the rest.
    """
    fig = Figures("fd_exhaustion")
    target = setup_target(
        root / "uncapped",
        "--max-connections",
        "1000",
        "--max-connections-per-ip",
        "0",
        "--header-timeout",
        "600",
        nofile=nofile,
    )
    server = target.server
    try:
        clone = target.scratch("before")
        git("clone", "-q", target.url("app"), str(clone))
        socks = []
        for i in range(conns):
            s = socket.socket()
            s.bind((f"127.0.3.{2 + i % 250}", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", target.port))
            except OSError:
                s.close()
                break
            socks.append(s)
        wait = time.monotonic() + 5
        while time.monotonic() < wait and "out of file descriptors" not in server.log():
            time.sleep(0.05)
        cpu0, log0, t0 = server.cpu_seconds(), server.log_size(), time.monotonic()
        time.sleep(watch)  # what the server does, unattended, while the connections stay
        cpu = server.cpu_seconds() - cpu0
        grew = server.log_size() - log0
        elapsed = time.monotonic() - t0
        fig.update(
            nofile=nofile, connections=len(socks), cpu_share=round(cpu / elapsed, 2), log_growth_bytes=grew
        )
        if "out of file descriptors" not in server.log():
            fig.problem("the server never said it ran out of descriptors")
        if cpu / elapsed > 0.25:
            fig.problem(f"the server used {100 * cpu / elapsed:.0f}% CPU while out of descriptors")
        if grew > 2000:
            fig.problem(f"the log grew {grew} bytes in {elapsed:.1f}s while out of descriptors")
        for s in socks:
            s.close()
        clone = target.scratch("after")
        deadline = time.monotonic() + 15
        while True:
            proc = git("clone", "-q", target.url("app"), str(clone), check=False, timeout=30)
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            shutil.rmtree(clone, ignore_errors=True)
            time.sleep(0.2)
        fig["recovered"] = proc.returncode == 0
        if proc.returncode != 0:
            fig.problem(f"no clone after the connections went: {proc.stderr.decode(errors='replace')[:200]}")
        text = server.log()
        fig["pause_log_lines"] = text.count("out of file descriptors")
        fig["log_bytes"] = len(text)
        if "Traceback" in text:
            fig.problem("a traceback in the log")
    finally:
        server.stop()
    # The default cap keeps descriptors for git: connections past it get a readable 503.
    # The header timeout must outlast opening them all (about 1 ms each, 2 s at least).
    held_for = max(2, nofile // 100)
    target = setup_target(
        root / "capped", "--header-timeout", str(held_for), "--max-connections-per-ip", "0", nofile=nofile
    )
    server = target.server
    try:
        cap = int(re.search(r"limits: (\d+) connections", server.log()).group(1))
        socks = [socket.create_connection(("127.0.0.1", target.port), timeout=5) for _ in range(cap)]
        wait = time.monotonic() + held_for / 2
        while time.monotonic() < wait and server_open(server) < cap:
            time.sleep(0.02)
        fig["cap_reached"] = server_open(server) >= cap
        answer = request(target.port, "GET", "/app/HEAD")
        fig.update(
            cap=cap, over_cap_status=answer.status, over_cap_retry_after=answer.headers.get("retry-after")
        )
        if answer.status != 503 or not answer.headers.get("retry-after"):
            fig.problem(f"a connection over the cap of {cap} got {answer.status}, not 503 with Retry-After")
        clone = target.scratch("capped")
        deadline = time.monotonic() + held_for + 10
        while True:  # the held connections time out (no request within the header timeout)
            proc = git("clone", "-q", target.url("app"), str(clone), check=False, timeout=30)
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            shutil.rmtree(clone, ignore_errors=True)
            time.sleep(0.2)
        fig["capped_recovered"] = proc.returncode == 0
        if proc.returncode != 0:
            fig.problem("no clone once the held connections timed out")
        for s in socks:
            s.close()
    finally:
        server.stop()
    return fig


def git_at_fd_limit(root: Path, *, nofile: int = 40, spare: int = 3, clones: int = 6) -> Figures:
    """Clones while idle connections hold all descriptors but ``spare`` (the connection cap lifted).

    Spawning git then fails for want of descriptors; the client must read a
    refusal it understands (503 with Retry-After, or success), never a 500,
    and the log must not get a traceback per request.
    """
    fig = Figures("git_at_fd_limit")
    target = setup_target(root, "--max-connections", "1000", "--max-connections-per-ip", "0", nofile=nofile)
    server = target.server
    held = []
    idle = max(0, nofile - server.fds() - spare)
    try:
        for _ in range(idle):
            held.append(socket.create_connection(("127.0.0.1", target.port), timeout=5))
        wait_until_open = time.monotonic() + 5
        while time.monotonic() < wait_until_open and server_open(server) < idle:
            time.sleep(0.02)
        procs = [
            subprocess.Popen(
                ["git", "clone", "-q", target.url("app"), str(target.scratch(f"c{i}"))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(clones)
        ]
        errors = []
        for p in procs:
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                errors.append(err.decode(errors="replace"))
        fig.update(nofile=nofile, idle=idle, clones=clones, clones_ok=clones - len(errors))
        answered_500 = sum("error: 500" in e for e in errors)
        fig["answered_500"] = answered_500
        if answered_500:
            fig.problem(f"{answered_500} of {clones} clones got a 500 when git could not be spawned")
    finally:
        for sock in held:
            sock.close()
        server.stop()
    tracebacks = server.log().count("Traceback")
    fig["tracebacks"] = tracebacks
    if tracebacks:
        fig.problem(f"{tracebacks} tracebacks in the log")
    return fig


def server_open(server: Server) -> int:
    """Client connections the server process holds: its sockets beyond those it started with."""
    return max(0, server.sockets() - server.base_sockets)


# -- 11. the server killed mid-push (long form) --------------------------------------------------


def server_kills(
    root: Path, n: int, *, seed: int = 3, size: int = 2 << 20, max_delay: float = 0.5
) -> Figures:
    """Kill the server (SIGKILL) at random points of a push, ``n`` times, restarting it each time.

    git keeps running without its server only until it notices; after each
    kill: ``main`` old or new, ``fsck`` clean, no quarantine, no git left.
    """
    fig = Figures("server_kills")
    rng = random.Random(seed)
    target = setup_target(root)
    repo = target.base / "app.git"
    work = target.scratch("server-kills")
    git("clone", "-q", str(repo), str(work))
    counts = collections.Counter()
    started = time.monotonic()
    try:
        for i in range(n):
            git("fetch", "-q", "origin", cwd=work)
            git("reset", "-q", "--hard", "origin/main", cwd=work)
            old = rev(repo, "main")
            new = _next_commit(work, rng, size)
            proc = subprocess.Popen(
                ["git", "push", "-q", target.url("app", "alice"), "HEAD:main"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                proc.wait(rng.uniform(0, max_delay))
            except subprocess.TimeoutExpired:
                pass
            target.server.stop(signal.SIGKILL)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _settle(target, repo, fig, timeout=20)
            now = rev(repo, "main")
            counts["refs_unchanged" if now == old else "refs_whole" if now == new else "refs_other"] += 1
            if now not in (old, new):
                fig.problem(f"try {i}: main is {now}")
            _fsck(repo, fig)
            target.server = start_server(
                target.base, "--accessfile", str(target.access), log_path=target.root / "server.log"
            )
    finally:
        target.server.stop()
    fig.update(tries=n, seconds=round(time.monotonic() - started, 1), **counts)
    fig.setdefault("fsck_failures", 0)
    return fig
