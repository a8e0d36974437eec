"""A cap on concurrent git processes per worker, with a bounded, timed wait queue.

Without it, every request that passes the gate gets its git at once: 200
stalled pushes held 400 git processes and 1.86 GiB until their idle timeout.
With ``--max-git-processes N``, the smart-HTTP requests that run git take a
slot before anything else (before the gate, before git starts, before their
body is read: Tornado does not read a streamed body while ``prepare`` waits);
the excess waits in a queue of bounded length for a bounded time, and beyond
either the answer is 503 with ``Retry-After``, never a crash and never an
unbounded pile of processes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ..errors import ServiceUnavailable

__all__ = ["GitProcessLimit", "limited"]


class GitProcessLimit:
    """At most ``limit`` holders at once; up to ``queue`` more wait up to ``timeout`` seconds."""

    def __init__(self, limit: int, queue: int = 100, timeout: float = 30.0, retry_after: int = 5) -> None:
        if limit < 1 or queue < 0 or timeout < 0:
            raise ValueError("max_git_processes must be >= 1, its queue and timeout >= 0")
        self.limit, self.queue, self.timeout, self.retry_after = limit, queue, timeout, retry_after
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Take a slot, waiting in line if need be; ``ServiceUnavailable`` when full or too long."""
        if self.active < self.limit and not self.waiting:
            self.active += 1
            return
        if self.waiting >= self.queue:
            raise ServiceUnavailable(
                "the server is running all the git processes it may; try again later",
                retry_after=self.retry_after,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # handed a slot at the last moment: keep it
            waiter.cancel()
            raise ServiceUnavailable(
                "the server stayed busy too long; try again later", retry_after=self.retry_after
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            waiter.cancel()
            raise

    def release(self) -> None:
        """Give the slot to the first in line, or back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: ``active`` stays
                return
        self.active = max(0, self.active - 1)


async def _maybe_await(result: Any) -> None:
    """A handler's ``prepare`` may be a coroutine or a plain method."""
    if result is not None:
        await result


def limited(handler_class: type, limit: GitProcessLimit) -> type:
    """``handler_class`` taking a slot of ``limit`` before its own ``prepare``, until it ends."""

    class Limited(handler_class):  # type: ignore[misc, valid-type]
        _slot = False
        _slot_task: asyncio.Task | None = None

        async def prepare(self) -> None:
            if self.request.method not in ("GET", "POST"):
                return await _maybe_await(super().prepare())
            self._slot_task = asyncio.ensure_future(limit.acquire())
            try:
                await self._slot_task
            except asyncio.CancelledError:
                raise ServiceUnavailable("client went away while queued") from None
            finally:
                self._slot_task = None
            self._slot = True
            if self.request.connection.stream.closed():
                raise ServiceUnavailable("client went away while queued")
            return await _maybe_await(super().prepare())

        def _release_slot(self) -> None:
            if self._slot:
                self._slot = False
                limit.release()

        def on_finish(self) -> None:
            self._release_slot()
            super().on_finish()

        def on_connection_close(self) -> None:
            if self._slot_task is not None:
                self._slot_task.cancel()
            self._release_slot()
            super().on_connection_close()

    Limited.__name__ = Limited.__qualname__ = f"Limited{handler_class.__name__}"
    Limited.__doc__ = handler_class.__doc__
    return Limited
