"""The server under attack: the real ``gittornado`` command, its log in a file, its resources in /proc.

Started as users start it (a subprocess, optionally with a lower open-file
limit), stopped by its own pid only. The figures the suite reports come from
here: open descriptors and threads of the server processes, git processes
still running for a repository, quarantine directories, the log's size.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Server", "start_server", "git_processes", "quarantines", "wait_until"]


def wait_until(predicate, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns something true (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def git_processes(fragment: str) -> list[str]:
    """Command lines of git service processes (zombies included) whose argv mentions ``fragment``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = b" ".join(fh.read().split(b"\0")).decode(errors="replace")
        except OSError:
            continue
        if (
            "receive-pack" in cmd or "upload-pack" in cmd or "index-pack" in cmd or "pack-objects" in cmd
        ) and fragment in cmd:
            found.append(cmd)
    return found


def quarantines(repo: str | os.PathLike) -> list[str]:
    """Quarantine directories a push left in ``repo`` (``objects/incoming-*``, ``objects/tmp_objdir-*``)."""
    try:
        names = os.listdir(os.path.join(repo, "objects"))
    except OSError:
        return []
    return [n for n in names if n.startswith(("incoming-", "tmp_objdir-"))]


@dataclass
class Server:
    """A running ``gittornado`` process (a supervisor with workers when ``--processes`` != 1)."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)
    #: Sockets the server holds with no client connected (listener, event loop pipes).
    base_sockets: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def forked(self) -> bool:
        args = " ".join(self.args)
        return "--processes" in args and not re.search(r"--processes[= ]1\b", args)

    def pids(self) -> list[int]:
        """The processes serving requests: the workers, or the one process."""
        if self.forked:
            return _children(self.proc.pid)
        return [self.proc.pid]

    def fds(self) -> int:
        """Open descriptors of the serving processes together."""
        return sum(_count(f"/proc/{pid}/fd") for pid in self.pids())

    def threads(self) -> int:
        return sum(_count(f"/proc/{pid}/task") for pid in self.pids())

    def sockets(self) -> int:
        """Sockets among the serving processes' descriptors (listener and internal pipes included)."""
        n = 0
        for pid in self.pids():
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
                    except OSError:
                        pass
            except OSError:
                pass
        return n

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the serving processes so far."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    gitbase: str | os.PathLike,
    *args: str,
    log_path: str | os.PathLike,
    nofile: int | None = None,
    env: dict | None = None,
    timeout: float = 20,
) -> Server:
    """Start ``gittornado`` on 127.0.0.1 (an ephemeral port) serving ``gitbase``.

    ``nofile`` lowers the open-file limit of the server (soft and hard) before
    it starts. Returns once the server logged its "serving" line.
    """
    log_path = Path(log_path)
    limit = None if nofile is None else (nofile, nofile)

    def preexec() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)

    argv = [
        sys.executable,
        "-m",
        "gittornado",
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "--gitbase",
        str(gitbase),
        *args,
    ]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )

    def port() -> int | None:
        if proc.poll() is not None:
            raise AssertionError(f"gittornado exited ({proc.returncode}):\n{log_path.read_text()}")
        m = re.search(r"serving .* on https?://127\.0\.0\.1:(\d+)/", log_path.read_text(errors="replace"))
        return int(m.group(1)) if m else None

    server = Server(
        proc, wait_until(port, timeout, message="the server's 'serving' line"), log_path, list(args)
    )
    server.base_sockets = server.sockets()
    return server
