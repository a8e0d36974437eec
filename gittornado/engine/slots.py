"""A cap on concurrent git processes per worker, with a bounded, timed wait queue.

Without it, every request that passes the gate gets its git at once: 200
stalled pushes held 400 git processes and 1.86 GiB until their idle timeout.
With ``--max-git-processes N``, every git the engine starts takes a slot
first, whatever the transport (smart HTTP, ws://, SSH, the one-off queries),
after the gate decided (a refused request never waits for or holds a slot) and
before git starts: an HTTP request waits in ``prepare`` (Tornado reads no
streamed body meanwhile), a WebSocket before its upgrade. The excess waits in
a queue of bounded length for a bounded time, and beyond either the answer is
503 with ``Retry-After``, never a crash and never an unbounded pile of processes.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import ServiceUnavailable

__all__ = ["GitProcessLimit"]


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
