"""Where the login throttle keeps failures and blocks: this process's memory or a shared SQLite file.

A store counts per key (``throttle.address_key``) and knows nothing of slots
or attempts in flight: ``read`` says how many failures a key has within a
window and until when it is blocked, ``fail`` records one more and starts a
block at the limit. ``SQLiteStore`` is what ``--state-dir`` gives every worker
on the host to share.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Protocol

__all__ = ["ThrottleStore", "MemoryStore", "SQLiteStore"]

app_log = logging.getLogger("gittornado.application")


class ThrottleStore(Protocol):
    """What ``Throttle`` needs of a store (times are the throttle's clock, in seconds)."""

    def read(self, key: str, now: float, window: float, fresh: bool = False) -> tuple[int, float | None]:
        """(failures within ``window`` before ``now``, blocked until or None); ``fresh``: no cached answer."""
        ...

    def fail(self, key: str, now: float, window: float, limit: int, block: float) -> bool:
        """Record a failure at ``now``; at ``limit`` within ``window``, block for ``block``: True then."""
        ...


class MemoryStore:
    """Failures and blocks of one process; memory bounded by ``max_entries`` addresses."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._failures: dict[str, list[float]] = {}
        self._blocked: dict[str, float] = {}
        self._max = max_entries

    def read(self, key: str, now: float, window: float, fresh: bool = False) -> tuple[int, float | None]:
        """(failures within ``window``, blocked until or None)."""
        until = self._blocked.get(key)
        if until is not None and until <= now:
            del self._blocked[key]
            until = None
        return sum(1 for t in self._failures.get(key, ()) if now - t < window), until

    def fail(self, key: str, now: float, window: float, limit: int, block: float) -> bool:
        """Record a failure; True when it starts a block."""
        recent = [t for t in self._failures.get(key, ()) if now - t < window]
        recent.append(now)
        if len(recent) >= limit:
            self._failures.pop(key, None)
            self._blocked[key] = now + block
            return True
        self._failures[key] = recent
        if len(self._failures) > self._max:
            self._prune(now, window)
        return False

    def _prune(self, now: float, window: float) -> None:
        self._failures = {a: ts for a, ts in self._failures.items() if now - ts[-1] < window}
        self._blocked = {a: u for a, u in self._blocked.items() if u > now}
        while len(self._failures) > self._max:
            self._failures.pop(next(iter(self._failures)))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (addr TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_addr ON failures (addr, at);
CREATE TABLE IF NOT EXISTS blocks (addr TEXT PRIMARY KEY, until REAL NOT NULL);
"""


class SQLiteStore:
    """Failures and blocks in one SQLite file, shared by every process that opens it.

    Each process opens its own connection on first use (never across a fork).
    Writes are one short transaction per failed login; reads of the hot path
    (any request with credentials) are cached for ``read_ttl`` seconds, except
    when ``fresh`` is asked (just before a password check). If the file stops
    working, the store says so once and carries on in memory: logins stay
    throttled, per process.
    """

    def __init__(self, path: str, *, read_ttl: float = 0.25, max_cached: int = 10_000) -> None:
        self.path = path
        self.read_ttl = read_ttl
        self._max_cached = max_cached
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._cache: dict[str, tuple[float, int, float | None]] = {}
        self._next_prune = 0.0
        self._fallback: MemoryStore | None = None

    @classmethod
    def in_directory(cls, directory: str, **kwargs) -> SQLiteStore:
        """The store of a state directory (``--state-dir``), its file created now."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        store = cls(os.path.join(directory, "logins.sqlite3"), **kwargs)
        store.initialize()
        return store

    def initialize(self) -> None:
        """Create the file and its tables, then let go of it (call before forking)."""
        db = self._connect()
        db.close()
        self._db = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # the state is worth a minute: no fsync per failure
        db.executescript(_SCHEMA)
        self._db, self._pid = db, os.getpid()
        return db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self._cache.clear()
            return self._connect()
        return self._db

    def _broken(self, exc: Exception) -> MemoryStore:
        if self._fallback is None:
            app_log.error(
                "login throttle store %s failed (%s): counting in this process only", self.path, exc
            )
            self._fallback = MemoryStore()
        return self._fallback

    def read(self, key: str, now: float, window: float, fresh: bool = False) -> tuple[int, float | None]:
        if self._fallback is not None:
            return self._fallback.read(key, now, window)
        hit = self._cache.get(key)
        if not fresh and hit is not None and now - hit[0] < self.read_ttl:
            return hit[1], hit[2]
        try:
            count, until = (
                self._conn()
                .execute(
                    "SELECT (SELECT count(*) FROM failures WHERE addr = ? AND at > ?),"
                    " (SELECT until FROM blocks WHERE addr = ? AND until > ?)",
                    (key, now - window, key, now),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            return self._broken(exc).read(key, now, window)
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        self._cache[key] = (now, count, until)
        return count, until

    def fail(self, key: str, now: float, window: float, limit: int, block: float) -> bool:
        if self._fallback is not None:
            return self._fallback.fail(key, now, window, limit, block)
        self._cache.pop(key, None)
        try:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM failures WHERE addr = ? AND at <= ?", (key, now - window))
                db.execute("INSERT INTO failures (addr, at) VALUES (?, ?)", (key, now))
                (count,) = db.execute("SELECT count(*) FROM failures WHERE addr = ?", (key,)).fetchone()
                started = count >= limit
                if started:
                    db.execute(
                        "INSERT OR REPLACE INTO blocks (addr, until) VALUES (?, ?)", (key, now + block)
                    )
                    db.execute("DELETE FROM failures WHERE addr = ?", (key,))
                if now >= self._next_prune:  # what nobody asks about again goes, once a minute
                    self._next_prune = now + 60.0
                    db.execute("DELETE FROM failures WHERE at <= ?", (now - window,))
                    db.execute("DELETE FROM blocks WHERE until <= ?", (now,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            return self._broken(exc).fail(key, now, window, limit, block)
        return started
