"""The splice pump: git's output moved pipe -> socket by the kernel, framed by the transport.

It runs on a thread of its own with blocking waits (git writes a pack in
pieces as it makes it, and an event-loop turn per piece cost ten times the
CPU). Contract with the run, whose fields it writes from that thread: it
updates ``run.answer_state`` (the answer state), ``run.op.bytes_out`` and
``run._peer_wait_since`` (the send clock) and nothing else; the loop reads
them only once the pump has ended, or (the clock) as a plain float.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .pipes import CHUNK_SIZE, pending

if TYPE_CHECKING:
    from .run import GitRun

__all__ = ["SplicePump", "PeerGone", "BULK_AFTER"]

_SPLICE_MORE = getattr(os, "SPLICE_F_MORE", 4)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2) | _SPLICE_MORE
#: After this much of a multiplexed answer, the rest (the pack) is spliced unseen.
BULK_AFTER = 256 * 1024
#: A frame of the pack waits for at least this much in the pipe...
_COALESCE = 256 * 1024
#: ...or this long (seconds), whichever comes first.
_COALESCE_WAIT = 0.004


class PeerGone(Exception):
    """The client went away or was dropped: the one signal every transport's wire maps to."""


class SplicePump:
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
        state = run.answer_state
        carry = b""
        # Until the pack flows, every byte passes through Python and the answer's
        # state is exact (small: acknowledgements, sections, ref lists, reports).
        while not (state.sideband and state.seen >= BULK_AFTER):
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
            self._send(carry + frame(len(data)) + data, more=pending(fd) > 0)
            carry = tail
        # The pack: git (2.39) writes it in 8 KiB packets, and a Python step per
        # packet cost 0.3 s of CPU per 300 MiB. So from here the kernel moves
        # whatever the pipe holds, in frames of up to the pipe's size, unseen.
        while True:
            hup = self._wait(pipe=True)
            n = pending(fd)
            if n < _COALESCE and not hup:
                # Let git write more before the next frame (it does not wait for us:
                # the pipe holds a megabyte).
                hup = self._pause(_COALESCE_WAIT)
                n = pending(fd)
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
        flags = _SPLICE_FLAGS if pending(self.fd) > n else _SPLICE_FLAGS & ~_SPLICE_MORE
        while n:
            try:
                moved = os.splice(self.fd, self.sfd, n, flags=flags)
            except BlockingIOError:
                self._wait(sock=True)
                continue
            if moved == 0:
                raise PeerGone("git's output shrank")  # cannot happen: the bytes were there
            n -= moved
            run.answer_state.skipped_unseen(moved)
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
