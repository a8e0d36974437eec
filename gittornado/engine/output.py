"""git's answer to the peer: the ``Wire`` a transport supplies, the ``Outcome`` it gets back.

One loop for every transport (smart HTTP, WebSocket, SSH, whatever comes
next): the first bytes wait for git (so a git that fails before saying
anything still gets a real answer), the answer is relayed through Python or
spliced by the kernel where the wire allows, the late error is placed where
the answer stands, and the transport learns how it ended as data, mapping it
to its own ending (HTTP finish or abandon, a WebSocket close code, an SSH exit
status). A transport that needs its own relay loop is a sign this is missing
something.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .pipes import CHUNK_SIZE, fd_ready, pending, read_some
from .splice import BULK_AFTER, PeerGone, SplicePump

if TYPE_CHECKING:
    from .run import GitRun

__all__ = ["Wire", "Splice", "Outcome"]


@dataclass
class Splice:
    """Where the kernel may move git's output: a plain socket and the wire's framing.

    Each frame is ``frame(n)`` + n bytes + ``tail`` (HTTP chunks, WebSocket
    frames); ``release`` runs once the splice is over, on every path.
    """

    sock: socket.socket
    frame: Callable[[int], bytes]
    tail: bytes = b""
    release: Callable[[], None] | None = None


class Wire(Protocol):
    """What a transport supplies to ``GitRun.answer``.

    ``send`` starts sending at once and returns an awaitable that is done when
    the wire may take more (backpressure: the bytes are flushed, or those of
    the send before are: one piece in flight); ``send(b"")`` sends nothing and
    is done when everything sent before is out. When the peer is gone it fails with
    ``PeerGone`` or one of ``closed_errors`` (the transport's own vocabulary,
    declared once as data). ``last=True`` marks the whole answer in one piece
    (a cache hit: HTTP sends it with a Content-Length). ``splice_target`` is
    asked right before the pack flows: a ``Splice``, or None to relay.
    """

    closed_errors: tuple[type[BaseException], ...]

    def send(self, data: bytes, last: bool = False) -> Awaitable[None]: ...

    def splice_target(self) -> Splice | None: ...


@dataclass(frozen=True)
class Outcome:
    """How a run's answer ended, for the transport to map to its own ending.

    :arg exit_status: git's, None if git never ran (a cache hit, a refusal).
    :arg abort_reason: the run gave up on the peer (an idle timer, the cap).
    :arg peer_gone: the peer left or was dropped: nothing more can reach it.
    :arg cut_short: git failed where no in-band error could be placed: the
        answer must end so the client cannot take it for complete.
    :arg cached: answered from the advertisement cache.
    """

    exit_status: int | None
    abort_reason: str | None = None
    peer_gone: bool = False
    cut_short: bool = False
    cached: bool = False


class OutputMixin:
    """``GitRun``'s output side: the answer loop, reads and the splice."""

    async def answer(self: GitRun, wire: Wire, preamble: bytes = b"") -> Outcome:
        """Send git's whole answer over ``wire``; the run is over when this returns
        (when the peer left, git is being stopped in the background: ``wait`` for it).

        ``preamble`` goes first once git said something (HTTP's ``# service=``
        line). Raises ``GitAccessError`` (503) only before anything was sent:
        git could not start, or no process slot freed in time.
        """
        try:
            await self._launch()
        except BaseException as exc:
            self.close(reason=f"refused: {getattr(exc, 'status', 500)} {exc}")
            raise
        gone = (PeerGone, *wire.closed_errors)
        try:
            if self.cached is not None:
                await wire.send(self.cached, last=True)
                await self.wait()
                return Outcome(None, cached=True)
            await self.output_ready()
            if self.output_ended():
                preamble = b""
            kept: list[bytes] | None = None
            if self.ticket is not None:
                # A cache miss that may be kept: relayed through Python, whole.
                kept = [preamble]
                await self._relay(wire, preamble, until_pack=False, kept=kept)
            else:
                more = True
                if self._duplex:
                    # Full duplex (ws, SSH): the small answers go through Python even on
                    # a plain socket, because the pump sends with MSG_MORE, and a last
                    # piece corked with nothing else in flight waits for the kernel's
                    # 200 ms timer (one stall per round trip). The pack is spliced.
                    more = await self._relay(wire, preamble, until_pack=True, kept=None)
                    preamble = b""
                if more:
                    await self._send_rest(wire, preamble)
            # The late error goes out as soon as git exited: a child git left behind
            # (a hook's, in the background) may hold its stderr for a while.
            status = await self.exited()
            trailer = self.trailer()
            if trailer:
                await wire.send(trailer)
            await self.wait()
            if kept is not None:
                self.engine.advert_store(self, kept)
            return Outcome(status, self.abort_reason, cut_short=trailer is None)
        except gone:
            self.peer_gone()
            return Outcome(self.exit_status, self.abort_reason, peer_gone=True)
        finally:
            self.close()  # a no-op once git is reaped; otherwise it stops git

    async def _send_rest(self: GitRun, wire: Wire, preamble: bytes) -> None:
        """The rest of the answer: spliced where the wire allows, else relayed.

        Before the kernel takes over, the wire sends what is left, the preamble
        or nothing, and that send's end means everything before it is out
        (HTTP's status and headers; the WebSocket's last relayed frame).
        """
        target = wire.splice_target() if self.engine.direct_output and hasattr(os, "splice") else None
        if target is None:
            await self._relay(wire, preamble, until_pack=False, kept=None)
            return
        try:
            await wire.send(preamble)
            await self.splice_into(target.sock, target.frame, target.tail)
        finally:
            if target.release is not None:
                target.release()

    async def _relay(
        self: GitRun, wire: Wire, preamble: bytes, *, until_pack: bool, kept: list | None
    ) -> bool:
        """git's output -> ``wire.send``, each send awaited before the next read.

        With ``until_pack`` only until the pack flows (the splice pump takes over
        there). True if output is left.
        """
        state = self.answer_state
        while not (until_pack and state.sideband and state.seen >= BULK_AFTER):
            chunk = await self.read()
            if not chunk:
                return False
            if kept is not None:
                kept.append(chunk)
            await wire.send(preamble + chunk if preamble else chunk)
            preamble = b""
        return True

    async def read(self: GitRun, size: int = CHUNK_SIZE) -> bytes:
        """The next chunk of git's answer, ``b""`` at its end.

        Calling ``read`` again is what tells the run the previous chunk reached
        the peer: the time in between counts against the send timeout.
        """
        self._peer_wait_since = None
        async with self._out_lock:
            fd = self._stdout()
            if fd is None:
                return b""
            chunk = await self._wait(read_some(fd, size))
            if not chunk:
                self._close_stdout()
                return b""
        self.answer_state.feed(chunk)
        self.op.bytes_out += len(chunk)
        self._peer_wait_since = self._last_output = asyncio.get_running_loop().time()
        return chunk

    async def output_ready(self: GitRun) -> None:
        """Wait until git has said something, or ended its output."""
        async with self._out_lock:
            fd = self._stdout()
            if fd is not None:
                await self._wait(fd_ready(fd))

    def output_ended(self: GitRun) -> bool:
        """git's output is over with nothing (more) to read (after ``output_ready``)."""
        fd = self._stdout()
        if fd is None:
            return True
        try:
            # Readable with nothing to read: the writing end is closed.
            return bool(select.select([fd], [], [], 0)[0]) and pending(fd) == 0
        except OSError:
            return True

    async def splice_into(
        self: GitRun, sock: socket.socket, frame: Callable[[int], bytes], tail: bytes = b""
    ) -> None:
        """Move the rest of git's answer into ``sock`` (plain, non-blocking), framed.

        Payloads move pipe -> socket inside the kernel (``os.splice``); only
        pkt-line headers and small packets pass through Python, which is what
        the answer state needs to place a late error. Raises ``PeerGone`` when
        the socket fails or the run is stopped.
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
                    SplicePump(self, fd, own, frame, tail, wake_r).run()
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

    async def _wait(self: GitRun, awaitable) -> object:
        """Await ``awaitable`` unless the run is stopped meanwhile (then ``PeerGone``)."""
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


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and getattr(task, "cancelling", lambda: 0)())
