"""The one place git is spawned: argv/env built by pure functions, bytes pumped async.

Every transport runs git through ``GitProcess``: it writes with backpressure
(each write is awaited until the pipe took it), reads in bounded chunks, logs
git's stderr (never sends it to the client) and always kills and reaps the
child, whatever happened to the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from tornado.iostream import PipeIOStream, StreamClosedError

from .services import Service, protocol_version
from .session import Session

__all__ = ["GitProcess", "start_service", "git_argv", "git_env", "GIT_OPTIONS", "CHUNK_SIZE"]

app_log = logging.getLogger("gittornado.application")
audit_log = logging.getLogger("gittornado.audit")

#: Bytes read from git per chunk; also the most one response write holds.
CHUNK_SIZE = 64 * 1024

#: Features on by default without touching the repository's own config:
#: partial clone (filter, plus reachable-object wants for the lazy blob fetches
#: of a partial clone over v0/v1) and push options reaching hooks.
GIT_OPTIONS = (
    "uploadpack.allowFilter=true",
    "uploadpack.allowReachableSHA1InWant=true",
    "receive.advertisePushOptions=true",
)

#: Environment a server's git must not inherit from whoever started the server:
#: they would point git at another repository or change what it writes.
_SCRUBBED_ENV = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PROTOCOL",
    "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_QUARANTINE_PATH",
)


def git_argv(service: Service, repo_path: str, *, stateless: bool = True,
             advertise: bool = False, git: str = "git",
             options: tuple[str, ...] = GIT_OPTIONS) -> list[str]:
    """The argv that serves ``service`` on ``repo_path``.

    ``stateless`` is HTTP's ``--stateless-rpc`` (``gitprotocol-http``);
    ``advertise`` adds ``--advertise-refs`` for the ``info/refs`` answer.
    ``upload-archive`` takes neither.
    """
    argv = [git]
    for opt in options:
        argv += ["-c", opt]
    argv.append(service.subcommand)
    if service.subcommand != "upload-archive":
        if stateless:
            argv.append("--stateless-rpc")
        if advertise:
            argv.append("--advertise-refs")
    argv.append(repo_path)
    return argv


def git_env(base: dict[str, str], *, user: str | None, repo: str, transport: str,
            remote_addr: str, git_protocol: str | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment git and its hooks see (SPEC "Hooks see").

    Like ``git http-backend``, the pusher becomes the committer identity of
    reflog entries unless the server's environment already set one.
    """
    env = {k: v for k, v in base.items() if k not in _SCRUBBED_ENV}
    name = user or ""
    env.update(
        REMOTE_USER=name,
        GITTORNADO_USER=name,
        GITTORNADO_REPO=repo,
        GITTORNADO_TRANSPORT=transport,
        REMOTE_ADDR=remote_addr or "",
    )
    env.setdefault("GIT_COMMITTER_NAME", name or "anonymous")
    env.setdefault("GIT_COMMITTER_EMAIL", f"{name or 'anonymous'}@{transport}.{remote_addr or 'unknown'}")
    if git_protocol:
        env["GIT_PROTOCOL"] = git_protocol
    if extra:
        env.update(extra)
    return env


@dataclass
class Operation:
    """What the audit line reports about one git run."""

    user: str | None
    remote_addr: str
    repo: str
    service: str
    protocol: int
    transport: str
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Child:
    proc: subprocess.Popen
    stdin: PipeIOStream | None
    stdout: PipeIOStream | None
    stderr: PipeIOStream | None

    @property
    def pid(self) -> int:
        return self.proc.pid


def _spawn(argv: list[str], *, env: dict[str, str] | None, cwd: str, stdin: bool | int = True,
           stdout: bool | int = True, stderr: bool = True) -> _Child:
    """Start ``argv``; each of stdin/stdout is an async pipe (True) or a given fd.

    Like ``tornado.process.Subprocess``, but the streams are made only once
    the process exists: Subprocess wraps the pipes first and, when Popen
    fails, closes the raw fds under the streams, which close them a second
    time later, by then another connection's fd. Its ``wait_for_exit`` also
    needs a SIGCHLD handler on the main thread; ``reap`` does not.
    """
    fds: list[int] = []
    child_ends: dict[str, int] = {}
    parent_ends: dict[str, int] = {}
    given = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    try:
        for name, child_reads in (("stdin", True), ("stdout", False), ("stderr", False)):
            if given[name] is True:
                r, w = os.pipe()
                fds += (r, w)
                child_ends[name], parent_ends[name] = (r, w) if child_reads else (w, r)
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, close_fds=True, start_new_session=True,
            **{name: child_ends.get(name, subprocess.DEVNULL if value is False else value)
               for name, value in given.items()})
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in child_ends.values():
        os.close(fd)
    streams = {name: PipeIOStream(fd) for name, fd in parent_ends.items()}
    return _Child(proc, streams.get("stdin"), streams.get("stdout"), streams.get("stderr"))


async def reap(popen: subprocess.Popen) -> int:
    """Wait for ``popen`` to exit without blocking the loop; returns its status.

    Uses a pidfd (Linux >= 5.3), else a worker thread. Not Tornado's
    ``wait_for_exit``: its SIGCHLD handler only works on the main thread's
    loop, and an embedding app may run Tornado on any thread.
    """
    if popen.poll() is not None:
        return popen.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        return await loop.run_in_executor(None, popen.wait)
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return popen.wait()


class GitProcess:
    """One running git service with async, backpressured pipes.

    Use as ``proc = GitProcess(argv, env, cwd, op); await proc.write(...)``,
    ``await proc.close_stdin()``, ``while (chunk := await proc.read()): ...``,
    and always ``await proc.finish()`` (in ``finally``) to reap it.
    """

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, op: Operation, *,
                 stdin: bool | int = True, stdout: bool | int = True) -> None:
        """``stdin``/``stdout``: True for an async pipe, or an fd git uses directly
        (a spooled request file; the client's socket, see ``smarthttp``)."""
        self.op = op
        self._proc = _spawn(argv, env=env, cwd=cwd, stdin=stdin, stdout=stdout)
        self._stderr_task = asyncio.ensure_future(self._log_stderr())
        self._exit: int | None = None
        self._finished = False
        #: Counts git's output when it goes to an fd we do not read (None: we read it).
        self.output_counter: Callable[[], int] | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def write(self, data: bytes) -> None:
        """Hand ``data`` to git; returns once the pipe accepted it (backpressure).

        Raises ``BrokenPipeError`` when git stopped reading (it exited).
        """
        if not data:
            return
        try:
            await self._proc.stdin.write(data)
        except StreamClosedError as exc:
            raise BrokenPipeError("git closed its input") from exc
        self.op.bytes_in += len(data)

    def close_stdin(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed():
            self._proc.stdin.close()

    async def read(self, size: int = CHUNK_SIZE) -> bytes:
        """The next chunk git wrote, or ``b""`` at end of output."""
        if self._proc.stdout is None:
            return b""
        try:
            chunk = await self._proc.stdout.read_bytes(size, partial=True)
        except StreamClosedError:
            return b""
        self.op.bytes_out += len(chunk)
        return chunk

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Signal git's whole process group (pack-objects, index-pack, hooks).

        The last resort of ``finish(kill=True)``: closing git's input first is
        what lets a push clean up its quarantine.
        """
        if self._exit is None and self._proc.proc.poll() is None:
            try:
                os.killpg(self._proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    async def finish(self, *, kill: bool = False, grace: float = 2.0) -> int:
        """Close the pipes, reap git, log the audit line; returns git's exit status.

        With ``kill`` (the client went away) git loses its input. A push then
        ends as git's own "early EOF": git removes its quarantine and exits, as
        long as its output is still read (and thrown away), so it is. A fetch
        loses its output pipe too and dies writing to it. A git still there
        after ``grace`` seconds gets SIGTERM, and after as long again SIGKILL.
        """
        if self._finished:
            return self._exit if self._exit is not None else -1
        self._finished = True
        self.close_stdin()
        drain = kill and self.op.service == "git-receive-pack"
        if kill and not drain:
            self._close_stdout()
        try:
            if not kill:
                self._exit = await reap(self._proc.proc)
            else:
                for sig in (signal.SIGTERM, signal.SIGKILL, None):
                    try:
                        self._exit = await asyncio.wait_for(self._drain_and_reap(drain), grace)
                        break
                    except asyncio.TimeoutError:
                        if sig is None:
                            raise
                        self.kill(sig)
        finally:
            self._close_stdout()
            try:
                # A hook's background child may hold stderr open long after git
                # exited: log what came, but do not wait for it.
                await asyncio.wait_for(self._stderr_task, 5.0)
            except asyncio.TimeoutError:
                pass
            self._proc.stderr.close()
        if self.output_counter is not None:
            self.op.bytes_out = self.output_counter()
        op = self.op
        audit_log.info(
            "user=%s addr=%s repo=%s service=%s protocol=v%d transport=%s "
            "in=%d out=%d duration=%.3fs exit=%s",
            op.user or "-", op.remote_addr or "-", op.repo, op.service, op.protocol,
            op.transport, op.bytes_in, op.bytes_out, time.monotonic() - op.started,
            self._exit,
        )
        return self._exit

    def _close_stdout(self) -> None:
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    async def _drain_and_reap(self, drain: bool) -> int:
        while drain and await self.read():
            pass
        return await reap(self._proc.proc)

    async def _log_stderr(self) -> None:
        # Always drained, so a chatty git never blocks on a full stderr pipe.
        pending = b""
        while True:
            try:
                chunk = await self._proc.stderr.read_bytes(8192, partial=True)
            except StreamClosedError:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log_line(line)
            if len(pending) > 8192:
                self._log_line(pending)
                pending = b""
        self._log_line(pending)

    def _log_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            op = self.op
            app_log.warning("git %s repo=%s user=%s: %s", op.service, op.repo, op.user or "-", text)


async def git_output(argv: list[str], cwd: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """Run a short git query (dumb-HTTP ref listing) without blocking the loop.

    Returns its stdout; raises ``RuntimeError`` if git fails or says too much.
    """
    proc = _spawn(argv, env=None, cwd=cwd, stdin=False, stderr=False)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            try:
                chunk = await proc.stdout.read_bytes(CHUNK_SIZE, partial=True)
            except StreamClosedError:
                break
            size += len(chunk)
            if size > max_bytes:
                proc.proc.kill()
                raise RuntimeError(f"{argv[1:3]} wrote more than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        proc.stdout.close()
        status = await reap(proc.proc)
    if status != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} exited with status {status}")
    return b"".join(chunks)


def start_service(session: Session, service: Service, *, transport: str, remote_addr: str,
                  git_protocol: str | None = None, advertise: bool = False,
                  stateless: bool = True, stdin: bool | int = True, stdout: bool | int = True,
                  git: str = "git") -> GitProcess:
    """Run ``service`` for a decided session: the one way every transport starts git."""
    repo = session.repo
    argv = git_argv(service, repo.path, stateless=stateless, advertise=advertise, git=git)
    env = git_env(os.environ, user=session.user, repo=repo.name, transport=transport,
                  remote_addr=remote_addr, git_protocol=git_protocol, extra=session.env)
    op = Operation(user=session.user, remote_addr=remote_addr, repo=repo.name,
                   service=service.name, protocol=protocol_version(git_protocol),
                   transport=transport)
    return GitProcess(argv, env, repo.path, op, stdin=stdin, stdout=stdout)
