"""Login throttling: how many password checks an address may cause, and how many run at once.

An attack run found the first throttle (count a failure once bcrypt said so)
bypassed by sending guesses in parallel: 200 concurrent wrong passwords were
all checked, a correct login from elsewhere waited 19 s behind them, and each
``--processes`` worker counted on its own. So:

1. An attempt counts from the moment its check starts: a check starts only
   while the address's recent failures plus its checks in flight stay under
   ``limit``; once it is blocked, everything it still has queued is refused
   (429) without a look at the password. Guesses sent at once are cut at the
   limit; logins sent at once (a CI farm behind one address) wait their turn
   instead of being refused.
2. Checks run in slots: at most ``per_address`` at once per address and
   ``concurrency`` in all (the size of the password thread pool). A request
   waits for its slot on the event loop, never blocking it, and addresses
   without recent failures are served first, so a guesser delays someone
   else's login by one check at most. An address may have ``max_pending``
   requests waiting; more are refused at once.
3. Failures and blocks live in a store (``throttlestore``): in memory (one
   process), or an SQLite file every worker on the host shares
   (``--state-dir``). Only failures and blocks are written; the count is read
   again, uncached, right before each password check. With P workers an
   address gets at most ``limit + per_address * (P - 1)`` checks per block.

Nothing here holds across hosts: put a shared proxy limit or fail2ban in
front of several machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import time
from collections.abc import AsyncIterator, Callable

from ..errors import ServiceUnavailable, TooManyRequests
from .throttlestore import MemoryStore, SQLiteStore, ThrottleStore

__all__ = ["Throttle", "MemoryStore", "SQLiteStore", "ThrottleStore", "LoginsBusy", "address_key"]


class LoginsBusy(ServiceUnavailable):
    """So many password checks wait for a slot that one more would wait too long: 503."""

    default_message = "the server is busy checking passwords; try again shortly"

    def __init__(self, retry_after: int, message: str = "") -> None:
        super().__init__(message, retry_after=retry_after)


def address_key(addr: str) -> str:
    """What one client is, for counting: the IPv4 address, or the IPv6 /64.

    An IPv6 host usually owns a whole /64 and can use a new address per guess.
    """
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# -- slots ----------------------------------------------------------------------------------


class _Slots:
    """A semaphore whose waiters are served by priority (lower first), then in arrival order."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._seq), future)
        heapq.heappush(self._waiters, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as we gave up: pass it on
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot goes straight to the next waiter
                return
        self.free += 1


# -- the throttle ------------------------------------------------------------------------


class _Attempt:
    """One password check in progress; ``failed()`` records it as a failure."""

    def __init__(self, throttle: Throttle, key: str) -> None:
        self._throttle, self._key = throttle, key
        self.recorded = False

    def failed(self) -> bool:
        """Record the failure; True when it starts a block (log that once)."""
        self.recorded = True
        return self._throttle._fail(self._key)


class Throttle:
    """Counts login attempts per address; past ``limit`` failures in ``window`` s, blocks for ``block`` s.

    :arg store: where failures and blocks are kept (default: this process's memory;
        ``SQLiteStore`` to share them between processes).
    :arg per_address: password checks one address may have running at once.
    :arg concurrency: password checks running at once in all (match the
        password thread pool: more only queue there, unfairly).
    :arg max_waiting: checks that may wait for a slot before more are refused (503).
    :arg max_pending: requests one address may have waiting or running before
        more are refused (429).
    :arg clock: wall-clock seconds (the store may be shared between processes);
        injectable for tests.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        block: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_entries: int = 100_000,
        *,
        store: ThrottleStore | None = None,
        per_address: int = 2,
        concurrency: int = 4,
        max_waiting: int = 1000,
        max_pending: int = 100,
    ) -> None:
        if limit < 1 or per_address < 1 or concurrency < 1:
            raise ValueError("limit, per_address and concurrency must be at least 1")
        self.limit, self.window, self.block = limit, window, block
        self.per_address, self.concurrency, self.max_waiting = per_address, concurrency, max_waiting
        self.max_pending = max_pending
        self._clock = clock
        self.store = store if store is not None else MemoryStore(max_entries)
        self._pending: dict[str, int] = {}  # attempts admitted and not finished, per key
        self._running: dict[str, int] = {}  # of those, the ones holding their address slot
        self._address_slots: dict[str, asyncio.Semaphore] = {}
        self._finished: dict[str, asyncio.Future[None]] = {}  # resolved when a check of the key ends
        self._slots = _Slots(concurrency)
        #: Password checks started (for tests and metrics).
        self.checks = 0

    # -- the synchronous view (and the 0.2 API) -----------------------------------------
    def _blocked_for(self, until: float | None, now: float) -> int | None:
        if until is None or until <= now:
            return None
        # A shared file may hold a time from a clock that jumped: never more than a block.
        return max(1, int(min(until - now, self.block) + 0.999))

    def retry_after(self, addr: str, *, fresh: bool = False) -> int | None:
        """Seconds the address must still wait, or None if it may try."""
        now = self._clock()
        _, until = self.store.read(address_key(addr), now, self.window, fresh)
        return self._blocked_for(until, now)

    def check(self, addr: str) -> None:
        """Raise ``TooManyRequests`` if ``addr`` is blocked (a cheap, briefly cached read)."""
        wait = self.retry_after(addr)
        if wait is not None:
            raise TooManyRequests(wait)

    def failure(self, addr: str) -> bool:
        """Record a failed login; True when this failure starts a block (log it once)."""
        return self._fail(address_key(addr))

    def _fail(self, key: str) -> bool:
        return self.store.fail(key, self._clock(), self.window, self.limit, self.block)

    # -- attempts -------------------------------------------------------------------------
    def _state(self, key: str, *, fresh: bool) -> int:
        """The address's recent failures; 429 if it is blocked."""
        now = self._clock()
        failures, until = self.store.read(key, now, self.window, fresh)
        wait = self._blocked_for(until, now)
        if wait is not None:
            raise TooManyRequests(wait)
        return failures

    async def _clear_to_start(self, key: str) -> int:
        """Wait until a check may start for ``key`` (failures + running < limit); its failures.

        Read fresh: failures may have landed, here or in another process,
        while this attempt queued. Near the limit this waits for a running
        check to end (one check at most: this attempt holds an address slot).
        """
        while True:
            failures = self._state(key, fresh=True)
            if failures + self._running.get(key, 0) < self.limit:
                return failures
            finished = self._finished.get(key)
            if finished is None:  # failures alone at the limit: a block is being written
                raise TooManyRequests(1, "too many failed logins; try again later")
            await asyncio.shield(finished)

    def _check_ended(self, key: str) -> None:
        """Wake whoever waits for a check of ``key`` to end; the next end gets a new future."""
        finished = self._finished.pop(key, None)
        if finished is not None and not finished.done():
            finished.set_result(None)
        if self._running.get(key):
            self._finished[key] = asyncio.get_running_loop().create_future()

    @contextlib.asynccontextmanager
    async def attempt(self, addr: str) -> AsyncIterator[_Attempt]:
        """Hold a password check for ``addr``: admitted, given its slots, then released.

        Raises ``TooManyRequests`` when the address is blocked (also after
        queueing: the check then never starts) or already has ``max_pending``
        requests, and ``LoginsBusy`` when too many checks already wait. The
        body runs the check; call ``failed()`` on the yielded attempt when the
        password was wrong.
        """
        key = address_key(addr)
        self._state(key, fresh=False)
        if self._pending.get(key, 0) >= self.max_pending:
            raise TooManyRequests(1, "too many login attempts at once; try again later")
        if self._slots.waiting >= self.max_waiting:
            raise LoginsBusy(5)
        self._pending[key] = self._pending.get(key, 0) + 1
        own = self._address_slots.get(key)
        if own is None:
            own = self._address_slots[key] = asyncio.Semaphore(self.per_address)
        try:
            async with own:
                failures = await self._clear_to_start(key)
                await self._slots.acquire(failures)
                self._running[key] = self._running.get(key, 0) + 1
                if key not in self._finished:
                    self._finished[key] = asyncio.get_running_loop().create_future()
                try:
                    self.checks += 1
                    yield _Attempt(self, key)
                finally:
                    self._running[key] -= 1
                    if not self._running[key]:
                        del self._running[key]
                    self._slots.release()
                    self._check_ended(key)
        finally:
            self._pending[key] -= 1
            if not self._pending[key]:
                del self._pending[key]
                self._address_slots.pop(key, None)
