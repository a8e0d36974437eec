"""The engine: the one place git is spawned and its bytes pumped, for every transport.

A transport hands over a decided session, the service and the wire's protocol
version and gets a ``GitRun``: it feeds it (awaited writes: backpressure), ends
its input, drains its output (bounded reads, or a kernel-side splice into a
socket with the transport's framing), says when the peer went away, and asks
for the bytes of a late error. The run decides everything else in one place:
drain or kill, the idle timers in both directions, cleanup on every path, and
the audit line. argv and env are built by pure functions.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from tornado.iostream import PipeIOStream, StreamClosedError

from ..access.gate import Session
from ..errors import PayloadTooLarge, ServiceUnavailable
from ..protocol import pktline
from ..protocol.answer import AnswerState, expect_from_request
from ..protocol.services import WRITE, Service, protocol_version

__all__ = ["GitRun", "PeerGone", "git_argv", "git_env", "git_output", "GIT_OPTIONS", "CHUNK_SIZE"]

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
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PROTOCOL",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_QUARANTINE_PATH",
)


def git_argv(
    service: Service,
    repo_path: str,
    *,
    stateless: bool = True,
    advertise: bool = False,
    git: str = "git",
    options: tuple[str, ...] = GIT_OPTIONS,
) -> list[str]:
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


def git_env(
    base: dict[str, str],
    *,
    user: str | None,
    repo: str,
    transport: str,
    remote_addr: str,
    git_protocol: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
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


#: Pipe buffer for git's output: fewer wakeups per clone (Linux caps it at pipe-max-size).
_PIPE_SIZE = 1024 * 1024
_SPLICE_MORE = getattr(os, "SPLICE_F_MORE", 4)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2) | _SPLICE_MORE
#: After this much of a multiplexed answer, the rest (the pack) is spliced unseen.
_BULK_AFTER = 256 * 1024
#: A frame of the pack waits for at least this much in the pipe...
_COALESCE = 256 * 1024
#: ...or this long (seconds), whichever comes first.
_COALESCE_WAIT = 0.004
#: errno values that mean "the machine is busy", answered 503 rather than 500.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM)
#: Grace git gets after losing its input/output before SIGTERM, then as long before SIGKILL.
_GRACE = 2.0


class PeerGone(Exception):
    """The client went away or was dropped: the one signal a transport maps its own to."""


#: Every run of this process not yet done: a graceful shutdown waits for them and
#: then stops the rest; metrics count them. Runs add and remove themselves.
_RUNNING: set[GitRun] = set()
#: Called with each run once it is done (after its audit line): the metrics.
_RUN_OBSERVERS: list[Callable[[GitRun], None]] = []


def running_runs() -> list[GitRun]:
    """The runs of this process that are not done yet (any transport)."""
    return list(_RUNNING)


def add_run_observer(observer: Callable[[GitRun], None]) -> None:
    """Have ``observer(run)`` called as each run ends (it must not raise; errors are logged)."""
    if observer not in _RUN_OBSERVERS:
        _RUN_OBSERVERS.append(observer)


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


#: After git's stdin pipe filled up, wait this long past its first free page before
#: writing again (seconds): see ``_InputPipe``.
_REFILL_WAIT = 0.001


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _InputPipe:
    """git's stdin, written so that a push costs a loop turn per pipeful, not per page.

    index-pack and unpack-objects read 4 KiB at a time, and the kernel wakes a
    writer as soon as a full pipe has one free page: written as soon as it is
    writable (as ``PipeIOStream`` does), a push took a wakeup and a write per
    4 KiB git read. Here a write that found the pipe full waits for a free page
    (no wakeups while git reads nothing) and then a millisecond more, in which
    git empties a good part of the megabyte pipe.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._waiter: asyncio.Future | None = None
        os.set_blocking(fd, False)

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while True:
            fd = self._fd
            if fd is None:
                raise StreamClosedError()
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: git stopped reading
                self.close()
                raise StreamClosedError() from None
            if not len(view):
                return
            self._waiter = waiter = loop.create_future()
            loop.add_writer(fd, _set_done, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._fd is None:
                    raise StreamClosedError() from None
                raise
            finally:
                self._waiter = None
                if self._fd is not None:
                    loop.remove_writer(fd)
            await asyncio.sleep(_REFILL_WAIT)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._waiter is not None:
            asyncio.get_running_loop().remove_writer(fd)
            self._waiter.cancel()
        os.close(fd)


@dataclass
class _Child:
    proc: subprocess.Popen
    stdin: _InputPipe | None
    stdout: int | None  #: raw non-blocking fd (read or spliced by GitRun)
    stderr: PipeIOStream | None

    @property
    def pid(self) -> int:
        return self.proc.pid


def _spawn(
    argv: list[str],
    *,
    env: dict[str, str] | None,
    cwd: str,
    stdin: bool | int = True,
    stdout: bool = True,
    stderr: bool = True,
) -> _Child:
    """Start ``argv``; stdin is an async pipe (True) or a given fd, stdout a raw pipe.

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
        for name in ("stdin", "stdout"):
            if name in parent_ends:
                try:
                    fcntl.fcntl(parent_ends[name], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
                except (OSError, AttributeError):
                    pass
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            **{
                name: child_ends.get(name, subprocess.DEVNULL if value is False else value)
                for name, value in given.items()
            },
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in child_ends.values():
        os.close(fd)
    out = parent_ends.get("stdout")
    if out is not None:
        os.set_blocking(out, False)
    return _Child(
        proc,
        _InputPipe(parent_ends["stdin"]) if "stdin" in parent_ends else None,
        out,
        PipeIOStream(parent_ends["stderr"]) if "stderr" in parent_ends else None,
    )


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


def _pending(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


async def _fd_ready(fd: int, *, write: bool = False) -> None:
    """Wait until ``fd`` is readable (or writable); cancellable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)


async def _read_some(fd: int, size: int) -> bytes:
    """One read from a non-blocking fd, waiting for data; ``b""`` at end of file."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await _fd_ready(fd)


class GitRun:
    """One git service run for one decided session, whatever the wire.

    The transport's side of the contract:

    * ``await feed(data)`` for each piece of input (returns once git's pipe
      took it: backpressure; False once git stopped reading), then
      ``end_input()``. With ``spool=True`` (a stateless fetch: small, and
      answered only once whole) input goes to a temporary file and git starts
      at ``end_input()``, reading it.
    * ``await read()`` until ``b""``, or ``await splice_into(sock, frame, tail)``
      to let the kernel move the output into a plain socket.
    * ``await wait()`` for git's exit status, then ``trailer()``: the bytes of a
      late error to append when git failed after its answer began.
    * ``peer_gone()`` when the client left; ``close()`` from the transport's
      last cleanup (safe to call always, and twice).
    * Or, with ``input_fd=fd``, no feeding: git reads the peer straight from
      that fd (an SSH forced command's stdin *is* the session: a pump would
      only copy bytes; the audit line then says ``in=-``). The output is still
      drained through the run: git must always have somewhere to write its
      last words (a failed push reports, then removes its quarantine; killed
      by SIGPIPE instead, it leaves the quarantine behind).

    The run decides, from the service's right and whether the input arrived
    whole: a push with complete input finishes (killing receive-pack between
    its pack check and its ref updates helps nobody); anything else loses its
    input first (a push then removes its own quarantine) and is signalled
    after a grace period. It watches the peer both ways: no input for
    ``input_idle`` seconds while git waits for it, or no progress handing
    output to the peer for ``output_idle`` seconds, aborts the run and calls
    ``on_abort(reason)`` so the transport can drop its connection.
    """

    def __init__(
        self,
        session: Session,
        service: Service,
        *,
        transport: str,
        remote_addr: str,
        git_protocol: str | None = None,
        advertise: bool = False,
        stateless: bool = True,
        spool: bool = False,
        git: str = "git",
        input_limit: int | None = None,
        input_idle: float | None = None,
        output_idle: float | None = None,
        on_abort: Callable[[str], None] | None = None,
        input_fd: int | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        if input_fd is not None and (spool or advertise or input_idle):
            raise ValueError(
                "git reading the peer's own fd cannot be spooled, advertise or "
                "have its input watched: no input passes through the run"
            )
        #: git reads the peer's fd itself (see the class docstring).
        self._wired = input_fd is not None
        self.service = service
        self.protocol = protocol_version(git_protocol)
        repo = session.repo
        #: The repository's real directory (caches key on it).
        self.repo_path = repo.path
        self._argv = git_argv(
            service,
            repo.path,
            stateless=stateless,
            advertise=advertise,
            git=git,
            options=GIT_OPTIONS + tuple(options),
        )
        self._env = git_env(
            os.environ,
            user=session.user,
            repo=repo.name,
            transport=transport,
            remote_addr=remote_addr,
            git_protocol=git_protocol,
            extra=session.env,
        )
        self._cwd = repo.path
        self.op = Operation(
            user=session.user,
            remote_addr=remote_addr,
            repo=repo.name,
            service=service.name,
            protocol=self.protocol,
            transport=transport,
        )
        #: Where the answer stands (pkt boundary, side-band), for ``trailer``/``late_error``.
        self.answer = AnswerState()
        self.input_limit = input_limit
        self._on_abort = on_abort
        self._input_idle, self._output_idle = input_idle, output_idle
        self._child: _Child | None = None
        self._spool: IO[bytes] | None = None
        self._accepting = True
        self.input_complete = advertise
        self._writing = False
        loop = asyncio.get_running_loop()
        self._last_input = loop.time()
        #: Full duplex (``stateless=False``: WebSocket, SSH): the client speaks in
        #: answer to git, so git's output restarts the client's input clock too
        #: (a long pack generation is git's silence, not the client's).
        self._duplex = not stateless
        self._last_output = self._last_input
        self._peer_wait_since: float | None = None
        self._peer_left = False
        self.abort_reason: str | None = None
        self.exit_status: int | None = None
        self._exited: asyncio.Future[int] = loop.create_future()
        self._tasks: set[asyncio.Task] = set()
        self._waiters: set[asyncio.Future] = set()
        self._stopping = False
        self._closed = False
        #: Held by whoever reads git's output, so stopping never closes the pipe under them.
        self._out_lock = asyncio.Lock()
        self._pump_wake: int | None = None
        self._done = loop.create_future()
        if spool:
            try:
                self._spool = tempfile.TemporaryFile(prefix="gittornado-")
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                raise ServiceUnavailable("the server is out of resources; try again later") from None
        elif input_fd is not None:
            self._start(stdin=input_fd)
        else:
            self._start(stdin=True)
            if advertise:
                self.end_input()  # --advertise-refs reads nothing
        if input_idle or output_idle:
            self._task(self._watch())
        _RUNNING.add(self)

    # -- lifecycle -------------------------------------------------------------------
    def _task(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start(self, stdin: bool | int) -> None:
        try:
            self._child = _spawn(self._argv, env=self._env, cwd=self._cwd, stdin=stdin)
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise
            # Out of descriptors or processes: a busy server, not a broken request.
            # The transport answers 503 (it has sent nothing yet); logged once per run.
            self.abort_reason = f"cannot start git: {exc.strerror}"
            app_log.warning(
                "git %s repo=%s: cannot start git: %s", self.service.name, self.op.repo, exc.strerror
            )
            raise ServiceUnavailable("the server is out of resources to run git; try again later") from None
        self._task(self._reap())
        self._stderr_task = self._task(self._log_stderr())

    async def _reap(self) -> None:
        assert self._child is not None
        status = await reap(self._child.proc)
        self.exit_status = status
        if not self._exited.done():
            self._exited.set_result(status)

    @property
    def started(self) -> bool:
        return self._child is not None

    @property
    def done(self) -> bool:
        """The run is over: git reaped (or never started), pipes closed, audit written."""
        return self._done.done()

    # -- input -----------------------------------------------------------------------
    async def feed(self, data: bytes) -> bool:
        """Give git ``data``; True once taken, False when git no longer reads its input.

        Raises ``PayloadTooLarge`` past ``input_limit`` (the input is then refused
        whole: git, if running, loses its input and cleans up).
        """
        loop = asyncio.get_running_loop()
        self._last_input = loop.time()
        if not data:
            return self._accepting
        self.op.bytes_in += len(data)
        if self.input_limit is not None and self.op.bytes_in > self.input_limit:
            self._accepting = False
            raise PayloadTooLarge(f"{self.service.name} request larger than {self.input_limit} bytes")
        if not self._accepting:
            return False
        if self._spool is not None:
            self._spool.write(data)
            return True
        assert self._child is not None and self._child.stdin is not None
        self._writing = True
        try:
            await self._child.stdin.write(data)
        except StreamClosedError:
            self._accepting = False
            return False
        finally:
            self._writing = False
            self._last_input = loop.time()
        return True

    def note_request(self, first_line: bytes | None) -> None:
        """The client's first request line (capabilities decide the answer's framing)."""
        expect_from_request(self.answer, self.service.name, self.protocol, first_line)

    def end_input(self) -> None:
        """All input is in: git sees end of file (or starts now on the spooled request)."""
        self.input_complete = True
        if self._spool is not None:
            spool, self._spool = self._spool, None
            with spool:
                spool.flush()
                spool.seek(0)
                self._start(stdin=spool.fileno())
            return
        if self._child is not None and self._child.stdin is not None:
            self._child.stdin.close()

    # -- output ----------------------------------------------------------------------
    async def read(self, size: int = CHUNK_SIZE) -> bytes:
        """The next chunk of git's answer, ``b""`` at its end.

        Calling ``read`` again is what tells the run the previous chunk reached
        the peer: the time in between counts against ``output_idle``.
        """
        self._peer_wait_since = None
        async with self._out_lock:
            fd = self._stdout()
            if fd is None:
                return b""
            chunk = await self._wait(_read_some(fd, size))
            if not chunk:
                self._close_stdout()
                return b""
        self.answer.feed(chunk)
        self.op.bytes_out += len(chunk)
        self._peer_wait_since = self._last_output = asyncio.get_running_loop().time()
        return chunk

    async def output_ready(self) -> None:
        """Wait until git has said something, or ended its output."""
        async with self._out_lock:
            fd = self._stdout()
            if fd is not None:
                await self._wait(_fd_ready(fd))

    def output_ended(self) -> bool:
        """git's output is over with nothing (more) to read (after ``output_ready``)."""
        fd = self._stdout()
        if fd is None:
            return True
        try:
            # Readable with nothing to read: the writing end is closed.
            return bool(select.select([fd], [], [], 0)[0]) and _pending(fd) == 0
        except OSError:
            return True

    async def splice_into(
        self, sock: socket.socket, frame: Callable[[int], bytes], tail: bytes = b""
    ) -> None:
        """Move git's whole answer into ``sock`` (plain, non-blocking), framed.

        Each frame is ``frame(n)`` + n bytes + ``tail`` (HTTP chunks; WebSocket
        frames). Payloads move pipe -> socket inside the kernel (``os.splice``);
        only pkt-line headers and small packets pass through Python, which is
        what ``answer`` needs to place a late error. The pump runs on a thread
        of its own with blocking waits: git writes a pack in pieces as it makes
        it, and an event-loop turn per piece cost ten times the CPU. Raises
        ``PeerGone`` when the socket fails or the run is stopped.
        """
        async with self._out_lock:
            fd = self._stdout()
            if fd is None:
                return
            loop = asyncio.get_running_loop()
            done: asyncio.Future = loop.create_future()
            wake_r, wake_w = os.pipe()
            self._pump_wake = wake_w
            # The pump gets a socket of its own (a dup): the transport may close
            # its fd at any moment (the client hung up), and a number closed
            # under a running thread can be reused by another connection.
            own = socket.socket(fileno=os.dup(sock.fileno()))

            def settle(exc: BaseException | None) -> None:
                if not done.done():
                    done.set_exception(exc) if exc is not None else done.set_result(None)

            finished = threading.Event()

            def run() -> None:
                error: BaseException | None = None
                try:
                    _SplicePump(self, fd, own, frame, tail, wake_r).run()
                except BaseException as exc:  # handed to the loop, raised there
                    error = exc
                finally:
                    # Released before the loop hears of the end, so the coroutine
                    # never has to wait for the thread (that wait is for cancellation).
                    own.close()
                    os.close(wake_r)
                    finished.set()
                loop.call_soon_threadsafe(settle, error)

            threading.Thread(target=run, name="gittornado-splice", daemon=True).start()
            try:
                if self.abort_reason is not None or self._stopping:
                    os.write(wake_w, b"x")
                # Not cancellable from outside: the thread must be out before the
                # pipe may be closed; stopping the run wakes it instead.
                await asyncio.shield(done)
            finally:
                self._pump_wake = None
                os.close(wake_w)  # wakes the pump if it still runs (cancelled here)
                if not finished.is_set():
                    await loop.run_in_executor(None, finished.wait, 30.0)
                self._peer_wait_since = None
            self._close_stdout()

    async def _wait(self, awaitable) -> object:
        """Await ``awaitable`` unless the run is aborted meanwhile (then ``PeerGone``)."""
        if self.abort_reason is not None or self._stopping:
            awaitable.close()
            raise PeerGone(self.abort_reason or "client went away")
        task = asyncio.ensure_future(awaitable)
        self._waiters.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            if (self.abort_reason is not None or self._stopping) and not _current_task_cancelling():
                raise PeerGone(self.abort_reason or "client went away") from None
            raise
        finally:
            self._waiters.discard(task)

    def _stdout(self) -> int | None:
        return self._child.stdout if self._child is not None else None

    def _close_stdout(self) -> None:
        if self._child is not None and self._child.stdout is not None:
            os.close(self._child.stdout)
            self._child.stdout = None

    # -- the end ---------------------------------------------------------------------
    async def wait(self) -> int:
        """git's exit status once its answer was read; the run is then over."""
        if self._child is None:
            await self._finish()
            return -1
        status = await self._exited
        await self._finish()
        return status

    def trailer(self) -> bytes | None:
        """What to append after git's answer: a late error if git failed, else nothing.

        None when git failed where no in-band error can be placed (the pack's
        boundaries were not tracked): the transport must cut its answer short.
        """
        if self.exit_status in (0, None) and self.abort_reason is None:
            return b""
        if self.answer.seen == 0:
            return pktline.error_line(f"{self.service.name} failed on the server (see its log)")
        return self.answer.late_error(f"{self.service.name} died on the server (see its log)") or None

    def peer_gone(self) -> None:
        """The client went away: stop or finish git as the service and input allow."""
        if self.done or self._stopping:
            return
        self._peer_left = True
        self._stop()

    def abort(self, reason: str) -> None:
        """Give up on the peer (a timeout, an over-size body): stop git, tell the transport."""
        if self.done or self.abort_reason is not None:
            return
        self.abort_reason = reason
        app_log.warning(
            "git %s repo=%s user=%s: %s", self.service.name, self.op.repo, self.op.user or "-", reason
        )
        if self._on_abort is not None:
            self._on_abort(reason)
        self._stop()

    def close(self, reason: str | None = None) -> None:
        """The transport is done with the run, on whatever path: nothing may be left behind.

        ``reason`` (the transport refused the request) makes the audit say so.
        """
        if reason and self.abort_reason is None and not self._exited.done():
            self.abort_reason = reason
        if self.done or self._stopping:
            return
        if self._child is not None and self._exited.done():
            self._task(self._finish())
        else:
            self.peer_gone()

    def _stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for waiter in list(self._waiters):
            waiter.cancel()  # whoever waits on the peer or git's output gets PeerGone
        if self._pump_wake is not None:
            try:
                os.write(self._pump_wake, b"x")
            except OSError:
                pass
        self._task(self._stop_git())

    async def _stop_git(self) -> None:
        child = self._child
        if child is None:
            await self._finish()
            return
        keep = self.service.right == WRITE and self.input_complete and self.abort_reason is None
        if self._wired and self.abort_reason is None:
            # git reads the peer's own fd: it sees the peer leave first-hand, and
            # with its output drained it ends by itself (a push with all its input
            # finishes; the run cannot tell whether it had all of it).
            keep = True
        if child.stdin is not None:
            child.stdin.close()
        drain = self.service.right == WRITE
        if not drain:
            async with self._out_lock:
                self._close_stdout()  # a fetch dies writing to a closed pipe
        drainer = self._task(self._discard_output()) if drain else None
        try:
            if keep:
                await asyncio.shield(self._exited)
            else:
                for sig in (signal.SIGTERM, signal.SIGKILL, None):
                    try:
                        await asyncio.wait_for(asyncio.shield(self._exited), _GRACE)
                        break
                    except asyncio.TimeoutError:
                        if sig is None:
                            raise
                        self._signal(sig)
        finally:
            if drainer is not None:
                drainer.cancel()
            await self._finish()

    async def _discard_output(self) -> None:
        # Read and throw away: a push told its input ended reports "early EOF" and
        # removes its quarantine only if it can write that report somewhere.
        async with self._out_lock:
            fd = self._stdout()
            while fd is not None and await _read_some(fd, CHUNK_SIZE):
                pass
            self._close_stdout()

    def _signal(self, sig: int) -> None:
        """Signal git's whole process group (pack-objects, index-pack, hooks)."""
        if self._child is not None and not self._exited.done() and self._child.proc.poll() is None:
            try:
                os.killpg(self._child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    async def _finish(self) -> None:
        """Release everything the run holds, once, and write the audit line."""
        if self._closed:
            await asyncio.shield(self._done)
            return
        self._closed = True
        try:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            child = self._child
            if child is not None:
                if child.stdin is not None:
                    child.stdin.close()
                if not self._exited.done():
                    await asyncio.shield(self._exited)
                async with self._out_lock:
                    self._close_stdout()
                try:
                    # A hook's background child may hold stderr open long after git
                    # exited: log what came, but do not wait for it.
                    await asyncio.wait_for(asyncio.shield(self._stderr_task), 5.0)
                except asyncio.TimeoutError:
                    pass
                if child.stderr is not None:
                    child.stderr.close()
            for task in list(self._tasks):
                if task is not asyncio.current_task() and task is not getattr(self, "_stderr_task", None):
                    task.cancel()
            self._audit()
            for observer in list(_RUN_OBSERVERS):
                try:
                    observer(self)
                except Exception:
                    app_log.exception("run observer %r failed", observer)
        finally:
            _RUNNING.discard(self)
            if not self._done.done():
                self._done.set_result(None)

    @property
    def result(self) -> str:
        """``ok``, ``failed`` (git exited non-zero) or ``aborted`` (the peer left or was dropped)."""
        if self.abort_reason is not None:
            return "aborted"
        if (
            self._peer_left
            and not self._wired
            and not (self.service.right == WRITE and self.input_complete and self.exit_status == 0)
        ):
            return "aborted"
        if self._child is None:
            return "aborted"
        return "ok" if self.exit_status == 0 else "failed"

    def _audit(self) -> None:
        op = self.op
        result = self.result
        log = audit_log.info if result == "ok" else audit_log.warning
        log(
            "user=%s addr=%s repo=%s service=%s protocol=v%d transport=%s "
            "in=%s out=%s duration=%.3fs exit=%s result=%s%s",
            op.user or "-",
            op.remote_addr or "-",
            op.repo,
            op.service,
            op.protocol,
            op.transport,
            "-" if self._wired else op.bytes_in,
            op.bytes_out,
            time.monotonic() - op.started,
            self.exit_status if self._child is not None else "-",
            result,
            f" reason={self.abort_reason!r}" if self.abort_reason else "",
        )

    # -- the peer's clock ------------------------------------------------------------
    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        limits = [t for t in (self._input_idle, self._output_idle) if t]
        step = max(0.05, min(limits) / 4)
        while not self._closed:
            await asyncio.sleep(step)
            now = loop.time()
            last = max(self._last_input, self._last_output) if self._duplex else self._last_input
            if (
                self._input_idle
                and not self.input_complete
                and not self._writing
                and now - last >= self._input_idle
            ):
                self.abort(f"no request data for {now - last:.0f}s")
                return
            since = self._peer_wait_since
            if self._output_idle and since is not None and now - since >= self._output_idle:
                self.abort(f"client took no data for {now - since:.0f}s")
                return

    async def _log_stderr(self) -> None:
        # Always drained, so a chatty git never blocks on a full stderr pipe.
        assert self._child is not None and self._child.stderr is not None
        stream = self._child.stderr
        pending = b""
        while True:
            try:
                chunk = await stream.read_bytes(8192, partial=True)
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


class _SplicePump:
    """The blocking loop behind ``GitRun.splice_into``, on its own thread."""

    def __init__(
        self, run: GitRun, fd: int, sock: socket.socket, frame: Callable[[int], bytes], tail: bytes, wake: int
    ) -> None:
        self.git_run, self.fd, self.sock, self.sfd = run, fd, sock, sock.fileno()
        self.frame, self.tail, self.wake = frame, tail, wake

    def run(self) -> None:
        try:
            self._pump()
        except OSError as exc:
            raise PeerGone(f"client connection failed: {exc.strerror or exc}") from None

    def _pump(self) -> None:
        run, fd, frame, tail = self.git_run, self.fd, self.frame, self.tail
        state = run.answer
        carry = b""
        # Until the pack flows, every byte passes through Python and the answer's
        # state is exact (small: acknowledgements, sections, ref lists, reports).
        while not (state.sideband and state.seen >= _BULK_AFTER):
            try:
                data = os.read(fd, CHUNK_SIZE)
            except BlockingIOError:
                self._wait(pipe=True)
                continue
            if not data:
                if carry:
                    self._send(carry)
                return
            state.feed(data)
            run.op.bytes_out += len(data)
            # MSG_MORE only while git has more waiting: a last small piece sent
            # with it sits in the kernel until its 200 ms timer fires.
            self._send(carry + frame(len(data)) + data, more=_pending(fd) > 0)
            carry = tail
        # The pack: git (2.39) writes it in 8 KiB packets, and a Python step per
        # packet cost 0.3 s of CPU per 300 MiB. So from here the kernel moves
        # whatever the pipe holds, in frames of up to the pipe's size, unseen.
        while True:
            hup = self._wait(pipe=True)
            n = _pending(fd)
            if n < _COALESCE and not hup:
                # Let git write more before the next frame (it does not wait for us:
                # the pipe holds a megabyte).
                hup = self._pause(_COALESCE_WAIT)
                n = _pending(fd)
            if n == 0:
                if hup:
                    break
                continue
            self._send(carry + frame(n), more=True)
            carry = tail
            self._splice(n)
        if carry:
            self._send(carry)

    def _splice(self, n: int) -> None:
        """Move exactly ``n`` bytes that are already in the pipe into the socket."""
        run = self.git_run
        # SPLICE_F_MORE only when git already wrote more than this frame (see _send).
        flags = _SPLICE_FLAGS if _pending(self.fd) > n else _SPLICE_FLAGS & ~_SPLICE_MORE
        while n:
            try:
                moved = os.splice(self.fd, self.sfd, n, flags=flags)
            except BlockingIOError:
                self._wait(sock=True)
                continue
            if moved == 0:
                raise PeerGone("git's output shrank")  # cannot happen: the bytes were there
            n -= moved
            run.answer.skipped_unseen(moved)
            run.op.bytes_out += moved

    def _send(self, data: bytes | bytearray, more: bool = False) -> None:
        view = memoryview(data)
        flags = socket.MSG_MORE if more else 0
        while view:
            try:
                view = view[self.sock.send(view, flags) :]
            except BlockingIOError:
                self._wait(sock=True)

    def _pause(self, seconds: float) -> bool:
        """Sleep unless woken (then ``PeerGone``); True if git's output has ended."""
        poller = select.poll()
        poller.register(self.wake, select.POLLIN)
        if poller.poll(int(seconds * 1000)):
            raise PeerGone(self.git_run.abort_reason or "client went away")
        check = select.poll()
        check.register(self.fd, select.POLLIN)
        return bool(dict(check.poll(0)).get(self.fd, 0) & select.POLLHUP)

    def _wait(self, *, pipe: bool = False, sock: bool = False, timeout: float | None = None) -> bool:
        """Block until git wrote more (or ended: returns True) or the client took more."""
        run = self.git_run
        poller = select.poll()
        poller.register(self.wake, select.POLLIN)
        if pipe:
            poller.register(self.fd, select.POLLIN)
        if sock:
            poller.register(self.sfd, select.POLLOUT)
            if run._peer_wait_since is None:
                run._peer_wait_since = time.monotonic()
        else:
            run._peer_wait_since = None
        events = dict(poller.poll(None if timeout is None else int(timeout * 1000)))
        if self.wake in events:
            raise PeerGone(run.abort_reason or "client went away")
        if events.get(self.sfd, 0) & (select.POLLERR | select.POLLHUP):
            raise PeerGone("client connection closed")
        if not sock or events.get(self.sfd, 0) & select.POLLOUT:
            run._peer_wait_since = None
        return bool(events.get(self.fd, 0) & select.POLLHUP)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())


async def git_output(argv: list[str], cwd: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """Run a short git query (dumb-HTTP ref listing) without blocking the loop.

    Returns its stdout; raises ``RuntimeError`` if git fails or says too much.
    """
    proc = _spawn(argv, env=None, cwd=cwd, stdin=False, stderr=False)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await _read_some(proc.stdout, CHUNK_SIZE):
            size += len(chunk)
            if size > max_bytes:
                proc.proc.kill()
                raise RuntimeError(f"{argv[1:3]} wrote more than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        os.close(proc.stdout)
        status = await reap(proc.proc)
    if status != 0:
        raise RuntimeError(f"{' '.join(argv[1:3])} exited with status {status}")
    return b"".join(chunks)
