"""``GitRun``: one git service run for one decided session, whatever the wire.

Built only by ``Engine.start`` (``gittornado.engine.engine``), which has taken
its process slot, chosen its input cap and git options. The transport feeds it
(``feed``: awaited, backpressure; ``end_input``) and hands it its wire
(``answer(wire)``); the run does the rest in one place: the answer relayed or
spliced, the late error placed, drain or kill decided (``must_finish``), the
idle timers both ways, cleanup on every path, and the audit line. ``answer``
returns an ``Outcome`` the transport maps to its own ending.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from tornado.iostream import StreamClosedError

from ..errors import PayloadTooLarge, ServiceUnavailable
from ..protocol import pktline
from ..protocol.answer import AnswerState, expect_from_request
from ..protocol.services import WRITE, Service, protocol_version
from .ending import EndingMixin
from .gitargs import git_argv, git_env
from .output import OutputMixin
from .pipes import OUT_OF_RESOURCES, Child, reap, spawn
from .splice import PeerGone

if TYPE_CHECKING:
    from ..access.gate import Session
    from .engine import Engine

__all__ = ["GitRun", "Operation", "PeerGone"]

app_log = logging.getLogger("gittornado.application")

#: A spooled request this small stays in memory until git starts (or the cache answers it).
_SPOOL_IN_MEMORY = 64 * 1024


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


class GitRun(EndingMixin, OutputMixin):
    """One git run: see the module docstring; built by ``Engine.start``.

    With ``input_fd`` git reads the peer straight from that fd (an SSH
    session's channel: a pump would only copy bytes; the audit says ``in=-``).
    Its output still passes through the run, so git always has somewhere to
    write its last words (a failed push reports, then removes its quarantine).
    With a spooled input (a stateless fetch: small, answered only once whole)
    git starts when the answer is asked for, reading the spooled request.
    """

    def __init__(
        self,
        engine: Engine,
        session: Session,
        service: Service,
        *,
        transport: str,
        remote_addr: str,
        git_protocol: str | None,
        stateless: bool,
        advertise: bool,
        spool: bool,
        input_fd: int | None,
        input_limit: int | None,
        options: tuple[str, ...],
        on_abort: Callable[[str], None] | None,
    ) -> None:
        self.engine = engine
        self._wired = input_fd is not None
        self._input_fd = input_fd
        self.service = service
        self.session = session
        self.git_protocol = git_protocol
        self.protocol = protocol_version(git_protocol)
        self.stateless = stateless
        self.advertise = advertise
        #: The repository's real directory (caches key on it).
        self.repo_path = session.repo.path
        self.options = options
        self.op = Operation(
            session.user, remote_addr, session.repo.name, service.name, self.protocol, transport
        )
        #: Where the answer stands (pkt boundary, side-band), for the late error.
        self.answer_state = AnswerState()
        self.input_limit = input_limit
        self._on_abort = on_abort
        self._input_idle = None if self._wired else engine.input_idle
        self._output_idle = engine.output_idle
        self._child: Child | None = None
        self._spool: IO[bytes] | None = None
        self._spooled = spool
        self._accepting = True
        self.input_complete = advertise
        self._writing = False
        loop = asyncio.get_running_loop()
        self._last_input = self._last_output = loop.time()
        #: Full duplex (WebSocket, SSH): the client speaks in answer to git, so git's
        #: output restarts the input clock too (a long pack generation is git's silence).
        self._duplex = not stateless
        self._peer_wait_since: float | None = None
        self._peer_left = False
        self.abort_reason: str | None = None
        self.exit_status: int | None = None
        #: An answer from the advertisement cache: no git runs at all.
        self.cached: bytes | None = None
        #: Set on a cache miss that may store git's answer (``advertcache.Ticket``).
        self.ticket = None
        self._slot = False
        self._exited: asyncio.Future[int] = loop.create_future()
        self._tasks: set[asyncio.Task] = set()
        self._waiters: set[asyncio.Future] = set()
        self._stopping = False
        self._closed = False
        self._stderr_task: asyncio.Task | None = None
        #: Held by whoever reads git's output, so stopping never closes the pipe under them.
        self._out_lock = asyncio.Lock()
        self._pump_wake: int | None = None
        self._done = loop.create_future()

    # -- the start (Engine.start) -----------------------------------------------------
    async def _begin(self) -> None:
        """Answer from the cache, or spool, or take a slot and start git."""
        self.engine.runs.add(self)
        try:
            if self.advertise and self.engine.advert_lookup(self, None):
                return
            if self._spooled:
                try:
                    self._spool = tempfile.SpooledTemporaryFile(_SPOOL_IN_MEMORY, prefix="gittornado-")
                except OSError as exc:
                    if exc.errno not in OUT_OF_RESOURCES:
                        raise
                    raise ServiceUnavailable("the server is out of resources; try again later") from None
            else:
                await self._spawn(self._input_fd if self._wired else True)
                if self.advertise:
                    self.end_input()  # --advertise-refs reads nothing
        except BaseException as exc:
            self.close(reason=f"refused: {getattr(exc, 'status', 500)} {exc}")
            raise
        if self._input_idle or self._output_idle:
            self._task(self._watch())

    async def _launch(self) -> None:
        """A spooled request is whole: answer it from the cache, or start git on it."""
        spool, self._spool = self._spool, None
        if spool is None:
            return
        with spool:
            spool.seek(0)
            if self.engine.advert_cacheable(self) and self.op.bytes_in <= _SPOOL_IN_MEMORY:
                body = spool.read()
                if self.engine.advert_lookup(self, body):
                    return
                spool.seek(0)
            await self._spawn(spool.fileno())

    async def _spawn(self, stdin: bool | int) -> None:
        await self.engine.take_slot(self)
        try:
            self._child = spawn(self._argv(), env=self._env(), cwd=self.repo_path, stdin=stdin)
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            # Out of descriptors or processes: a busy server, not a broken request.
            app_log.warning(
                "git %s repo=%s: cannot start git: %s", self.service.name, self.op.repo, exc.strerror
            )
            raise ServiceUnavailable("the server is out of resources to run git; try again later") from None
        self._task(self._reap())
        self._stderr_task = self._task(self._log_stderr())

    # argv and env are built only when git starts: a cache hit never needs them.
    def _argv(self) -> list[str]:
        return git_argv(
            self.service,
            self.repo_path,
            stateless=self.stateless,
            advertise=self.advertise,
            git=self.engine.git,
            options=self.options,
        )

    def _env(self) -> dict[str, str]:
        op = self.op
        return git_env(
            os.environ,
            user=op.user,
            repo=op.repo,
            transport=op.transport,
            remote_addr=op.remote_addr,
            git_protocol=self.git_protocol,
            extra=self.session.env,
        )

    def _task(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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

    @property
    def must_finish(self) -> bool:
        """A push whose input is whole: killing receive-pack between its pack check and its
        ref updates helps nobody, so it is let finish whatever happens to the peer."""
        return self.service.right == WRITE and self.input_complete and self.started

    # -- input -----------------------------------------------------------------------
    async def feed(self, data: bytes) -> bool:
        """Give git ``data``; True once taken, False when git no longer reads its input.

        Raises ``PayloadTooLarge`` past the input cap (the input is then refused
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
        if self._child is None or self._child.stdin is None:
            return False
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
        expect_from_request(self.answer_state, self.service, self.protocol, first_line)

    def end_input(self) -> None:
        """All input is in: git sees end of file (a spooled request starts at ``answer``)."""
        self.input_complete = True
        if self._child is not None and self._child.stdin is not None:
            self._child.stdin.close()

    # -- the end ---------------------------------------------------------------------
    async def exited(self) -> int:
        """git's exit status once it exited (-1 if it never ran); the run may still be closing."""
        if self._child is None:
            return -1
        return await asyncio.shield(self._exited)

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
        boundaries went by unseen): the transport must cut its answer short.
        """
        if self.exit_status in (0, None) and self.abort_reason is None:
            return b""
        name = self.service.name
        if self.answer_state.seen == 0:
            return pktline.error_line(f"{name} failed on the server (see its log)")
        return self.answer_state.late_error(f"{name} died on the server (see its log)") or None

    # -- the peer's clock ------------------------------------------------------------
    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        step = max(0.05, min(t for t in (self._input_idle, self._output_idle) if t) / 4)
        while not self._closed:
            await asyncio.sleep(step)
            now = loop.time()
            last = max(self._last_input, self._last_output) if self._duplex else self._last_input
            idle = self._input_idle
            if idle and not self.input_complete and not self._writing and now - last >= idle:
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

    def _stdout(self) -> int | None:
        return self._child.stdout if self._child is not None else None

    def _close_stdout(self) -> None:
        if self._child is not None and self._child.stdout is not None:
            os.close(self._child.stdout)
            self._child.stdout = None
