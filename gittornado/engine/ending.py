"""How a git run ends: drain or kill decided once, everything released, the audit line.

``GitRun``'s ending side (``gittornado.engine.run``). One rule for every
transport: a push whose input is whole finishes (``must_finish``); anything
else loses its input first (a push then removes its own quarantine) and is
signalled after a grace period; git reading the peer's own fd sees the peer
leave itself. Whatever the path, ``_finish`` runs once: pipes closed, git
reaped, the audit line written, the engine told (slot, registry, observers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from ..protocol.services import WRITE
from .pipes import CHUNK_SIZE, read_some

if TYPE_CHECKING:
    from .run import GitRun

__all__ = ["EndingMixin"]

app_log = logging.getLogger("gittornado.application")
audit_log = logging.getLogger("gittornado.audit")

#: Grace git gets after losing its input/output before SIGTERM, then as long before SIGKILL.
_GRACE = 2.0


class EndingMixin:
    """``GitRun``'s end: ``peer_gone``, ``abort``, ``close`` and what they lead to."""

    def peer_gone(self: GitRun) -> None:
        """The client went away: stop or finish git as the service and input allow."""
        if self.done or self._stopping:
            return
        self._peer_left = True
        self._stop()

    def abort(self: GitRun, reason: str) -> None:
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

    def close(self: GitRun, reason: str | None = None) -> None:
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

    def _stop(self: GitRun) -> None:
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

    async def _stop_git(self: GitRun) -> None:
        child = self._child
        if child is None:
            await self._finish()
            return
        # git reading the peer's own fd sees the peer leave first-hand, and with its
        # output drained ends by itself (the run cannot tell whether input was whole).
        keep = self.abort_reason is None and (self.must_finish or self._wired)
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

    async def _discard_output(self: GitRun) -> None:
        # A push told its input ended reports "early EOF" and removes its
        # quarantine only if it can write that report somewhere.
        async with self._out_lock:
            fd = self._stdout()
            while fd is not None and await read_some(fd, CHUNK_SIZE):
                pass
            self._close_stdout()

    def _signal(self: GitRun, sig: int) -> None:
        """Signal git's whole process group (pack-objects, index-pack, hooks)."""
        if self._child is not None and not self._exited.done() and self._child.proc.poll() is None:
            try:
                os.killpg(self._child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    async def _finish(self: GitRun) -> None:
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
                if task is not asyncio.current_task() and task is not self._stderr_task:
                    task.cancel()
            self._audit()
        finally:
            self.engine.run_ended(self)
            if not self._done.done():
                self._done.set_result(None)

    @property
    def result(self: GitRun) -> str:
        """``ok``, ``cached`` (from the advertisement cache), ``failed`` (git exited
        non-zero) or ``aborted`` (the peer left or was dropped)."""
        if self.abort_reason is not None:
            return "aborted"
        if self.cached is not None:
            return "cached"
        if self._peer_left and not self._wired and not (self.must_finish and self.exit_status == 0):
            return "aborted"
        if self._child is None:
            return "aborted"
        return "ok" if self.exit_status == 0 else "failed"

    def _audit(self: GitRun) -> None:
        op = self.op
        result = self.result
        log = audit_log.info if result in ("ok", "cached") else audit_log.warning
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
