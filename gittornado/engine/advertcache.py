"""The advertisement cache: ``info/refs`` and v2 ``ls-refs`` answers from memory.

CI fleets poll the ref advertisement far more often than refs change, and each
poll costs a git process. An answer is a function of the request (service,
``Git-Protocol``, the ``ls-refs`` arguments, the session's environment, the git
executable and its ``-c`` options) and of what git reads on disk: the refs,
``HEAD``, the configs (``transfer.hideRefs``, ``uploadpack.*``), ``shallow``
and git itself. So an entry is kept under the request and carries a *state*:
the stat stamps (inode, size, mtime, ctime) of every file and directory whose
change could change the answer. A request whose state is the same gets the
stored bytes without git; any other state misses (and drops the entry). Nothing
is shared between repositories: the repository's real path is part of the key.

Why stamps are enough: git writes every ref through ``<ref>.lock`` and a
rename, and both change the ref's directory's mtime and ctime; ``packed-refs``,
``HEAD``, ``config`` and reftable's ``tables.list`` are replaced by a rename (a
new inode). Only directories are stat'ed for loose refs, each directory's list
of subdirectories is remembered under its own stamp, so an unchanged
repository costs a handful of ``stat`` calls and no directory listing.

Racy stamps (git's racy-index rule): timestamps are coarse, so two changes in
one clock tick leave one stamp. An answer is stored only when every stamp in
its state is older than the moment its production began minus ``margin``
(default 1 s): a later change then must show a different stamp. ctime, unlike
mtime, cannot be set back by ``touch``/``rsync``. A listing of a directory is
remembered under the same rule. A repository being changed right now is simply
not cached; everyone gets git's answer until it settles.

Pushes through any transport of this process invalidate the repository at
once (a run observer), and an answer produced while a push ran is not stored.

Not seen (so keep them out of served repositories, or turn the cache off): a
loose ref file rewritten in place without git's lock-and-rename, files a
config ``include.path`` names, and clocks that disagree by more than
``margin`` (a repository on NFS written by another host).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol.services import WRITE

__all__ = [
    "AdvertCache",
    "Ticket",
    "Stamp",
    "stamp",
    "settled",
    "fingerprint",
    "request_key",
    "is_ls_refs",
    "config_files",
]

#: (st_ino, st_size, st_mtime_ns, st_ctime_ns), or None: the file does not exist.
Stamp = tuple[int, int, int, int] | None
#: What was stat'ed, in order, each with its stamp.
State = tuple[tuple[str, Stamp], ...]

#: Files of the repository whose change can change an upload-pack advertisement.
#: ``shallow``: v0/v1 advertise shallow grafts; ``reftable/tables.list``: the
#: reftable ref store (git 2.45+) replaces it on every update.
_REPO_FILES = ("HEAD", "config", "config.worktree", "packed-refs", "shallow", "reftable/tables.list")
#: Per-entry bookkeeping (key tuple, digest, dict slots, a share of the
#: directory listings): about 460 bytes measured with tracemalloc; counted
#: generously so that many tiny entries cannot exceed ``max_bytes``.
_ENTRY_OVERHEAD = 800
#: Directory listings kept per cache (each a few hundred bytes) before they are dropped.
_MAX_LISTINGS = 100_000


def stamp(path: str) -> Stamp:
    """The stat stamp of ``path`` (followed through symlinks), None if it is not there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(state: State, started_ns: int, margin_ns: int) -> bool:
    """True when every stamp in ``state`` is older than ``started_ns - margin_ns`` (pure).

    Then a change made after ``started_ns`` cannot carry a stamp equal to one
    in ``state``: the answer produced from ``started_ns`` on may be stored
    under it. A stamp from the future (clock skew) is never settled.
    """
    limit = started_ns - margin_ns
    return all(s is None or max(s[2], s[3]) < limit for _, s in state)


def fingerprint(state: State) -> bytes:
    """A 128-bit digest of ``state`` (pure): what an entry keeps instead of the stamps.

    Kept whole, a state is a tuple of tuples of big ints, about 200 bytes per
    stamp; the digest is 16 bytes, and 2^-128 is no risk beside a racy stamp.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, st in state:
        h.update(name.encode("utf-8", "surrogateescape"))
        if st is None:
            h.update(b"\0-")
            continue
        try:
            h.update(b"\0+" + _STAMP.pack(*st))
        except struct.error:  # an inode or time beyond 64 bits
            h.update(b"\0=" + repr(st).encode())
    return h.digest()


_STAMP = struct.Struct("<Qqqq")


def request_key(
    service: str,
    git_protocol: str | None,
    body: bytes | None,
    env: Mapping[str, str],
    git: str,
    options: tuple[str, ...],
) -> tuple:
    """Everything of a request that may change git's answer, as a hashable key (pure).

    ``body`` is the whole ``ls-refs`` request (its arguments), None for
    ``info/refs``; ``env`` the session's extra environment (a policy may set
    ``GIT_NAMESPACE``); ``options`` the ``-c`` settings git runs with.
    """
    return (service, git_protocol or "", body, tuple(sorted(env.items())), git, tuple(options))


def is_ls_refs(body: bytes) -> bool:
    """True when the first pkt-line of a v2 request is ``command=ls-refs`` (pure)."""
    head = body[:4]
    if len(head) < 4 or head.strip(b"0123456789abcdefABCDEF"):
        return False
    n = int(head, 16)
    return n > 4 and len(body) >= n and body[4:n] in (b"command=ls-refs\n", b"command=ls-refs")


@functools.lru_cache(maxsize=64)
def config_files(
    system: str | None, global_: str | None, home: str | None, xdg: str | None
) -> tuple[str, ...]:
    """The system and global config files git reads, from its environment (pure).

    Conservative: the default system file is included even under
    ``GIT_CONFIG_NOSYSTEM`` (a stat too many costs nothing but a miss).
    """
    files = [system or "/etc/gitconfig"]
    if global_:
        files.append(global_)
    elif home:
        files += [os.path.join(xdg or os.path.join(home, ".config"), "git", "config")]
        files.append(os.path.join(home, ".gitconfig"))
    return tuple(f for f in files if f != os.devnull)


@functools.lru_cache(maxsize=16)
def _executable(git: str) -> str:
    return shutil.which(git) or git


@dataclass(frozen=True)
class Ticket:
    """A miss that may be stored: what ``store`` needs to check the answer still holds."""

    key: tuple
    repo: str
    state: State
    started_ns: int
    pushes: int
    env: tuple[tuple[str, str], ...]
    git: str


class AdvertCache:
    """Answers of ``info/refs`` and v2 ``ls-refs`` per repository, bounded in bytes (LRU).

    :arg max_bytes: memory for answers and their bookkeeping; 0 stores nothing.
    :arg margin: seconds a stamp must be old before an answer under it is stored.
    :arg max_entry: largest answer stored (default an eighth of ``max_bytes``):
        one huge advertisement must not flush everything else.

    ``lookup`` returns the stored answer or a ``Ticket``; the caller produces
    the answer with git and gives it to ``store`` if git succeeded. Thread-safe
    (run observers may fire on another loop's thread); meant for one process.
    """

    def __init__(
        self, max_bytes: int = 64 * 1024 * 1024, *, margin: float = 1.0, max_entry: int | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.margin_ns = int(margin * 1e9)
        self.max_entry = max_entry if max_entry is not None else max_bytes // 8
        self.bytes = 0
        self.hits = self.misses = self.stores = self.evictions = self.invalidations = 0
        #: (repo, request) -> (fingerprint of the state, answer, bytes counted)
        self._entries: OrderedDict[tuple, tuple[bytes, bytes, int]] = OrderedDict()
        self._by_repo: dict[str, set[tuple]] = {}
        self._pushes: dict[str, int] = {}
        self._listings: dict[str, tuple[Stamp, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    # -- the repository's state ------------------------------------------------------
    def state(self, repo: str, git: str, env: Mapping[str, str]) -> State | None:
        """Stamps of everything git's advertisement of ``repo`` reads; None: do not cache.

        ``env`` is git's environment as far as it differs from this process's.
        Any error (no descriptor left for a listing, no permission) means "do
        not cache": git then answers, or says why it cannot.
        """
        try:
            return self._state(repo, git, env)
        except OSError:
            return None

    def _state(self, repo: str, git: str, env: Mapping[str, str]) -> State | None:
        if stamp(os.path.join(repo, "commondir")) is not None:
            return None  # a linked worktree's refs live in another directory
        out: list[tuple[str, Stamp]] = [(name, stamp(os.path.join(repo, name))) for name in _REPO_FILES]
        get = lambda k: env.get(k, os.environ.get(k))  # noqa: E731
        for path in config_files(
            get("GIT_CONFIG_SYSTEM"), get("GIT_CONFIG_GLOBAL"), get("HOME"), get("XDG_CONFIG_HOME")
        ):
            out.append((path, stamp(path)))
        exe = _executable(git)
        out.append((exe, stamp(exe)))
        if not self._walk_refs(os.path.join(repo, "refs"), out):
            return None
        return tuple(out)

    def _walk_refs(self, top: str, out: list[tuple[str, Stamp]]) -> bool:
        """Append the stamp of every directory under ``top``; False when it cannot be cached."""
        listings = self._listings
        stack = [top]
        while stack:
            path = stack.pop()
            st = stamp(path)
            out.append((path, st))
            if st is None:
                continue
            known = listings.get(path)
            if known is not None and known[0] == st:
                subdirs = known[1]
            else:
                listed_at = time.time_ns()
                names = []
                try:
                    with os.scandir(path) as entries:
                        for entry in entries:
                            if entry.is_symlink():
                                return False  # a symlinked ref or directory: its target is not watched
                            if entry.is_dir(follow_symlinks=False):
                                names.append(entry.name)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # gone since the stat: the stamp above already differs
                subdirs = tuple(sorted(names, reverse=True))
                # Remembered only when settled: a subdirectory made in the tick of
                # the stamp would otherwise never be looked at.
                if settled(((path, st),), listed_at, self.margin_ns):
                    with self._lock:
                        if len(listings) >= _MAX_LISTINGS:
                            listings.clear()
                        listings[path] = (st, subdirs)
            stack.extend(os.path.join(path, name) for name in subdirs)
        return True

    # -- lookup and store ------------------------------------------------------------
    def lookup(
        self, repo: str, request: tuple, *, git: str = "git", env: Mapping[str, str] | None = None
    ) -> tuple[bytes | None, Ticket | None]:
        """``(answer, None)`` on a hit; ``(None, ticket)`` on a miss worth storing;
        ``(None, None)`` when the repository cannot be cached now (changing, or odd).

        ``request`` is ``request_key(...)``; ``env`` the session's extra environment.
        """
        env = env or {}
        started = time.time_ns()
        with self._lock:
            pushes = self._pushes.get(repo, 0)
        state = self.state(repo, git, env)
        now = fingerprint(state) if state is not None else None
        key = (repo, request)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry[0] == now:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry[1], None
                self._remove(key)
            self.misses += 1
        if state is None or not settled(state, started, self.margin_ns) or self.max_entry <= 0:
            return None, None
        return None, Ticket(key, repo, state, started, pushes, tuple(sorted(env.items())), git)

    def store(self, ticket: Ticket, answer: bytes) -> bool:
        """Keep ``answer`` (git's complete, successful answer) if nothing changed since the ticket."""
        request = ticket.key[1]
        size = len(answer) + sum(len(p) for p in request if isinstance(p, (bytes, str))) + _ENTRY_OVERHEAD
        if size > self.max_entry or size > self.max_bytes:
            return False
        # Same stamps after git as before it: nothing changed while it read.
        if self.state(ticket.repo, ticket.git, dict(ticket.env)) != ticket.state:
            return False
        with self._lock:
            if self._pushes.get(ticket.repo, 0) != ticket.pushes:
                return False  # a push ended meanwhile
            if ticket.key in self._entries:
                self._remove(ticket.key)
            self._entries[ticket.key] = (fingerprint(ticket.state), answer, size)
            self._by_repo.setdefault(ticket.repo, set()).add(ticket.key)
            self.bytes += size
            self.stores += 1
            while self.bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))
                self.evictions += 1
        return True

    def run_ended(self, run) -> None:
        """An engine observer: a push that ended (in any way) may have moved refs."""
        if run.service.right == WRITE:
            self.invalidate(run.repo_path)

    def invalidate(self, repo: str) -> None:
        """Forget every answer about ``repo`` and refuse answers begun before now."""
        with self._lock:
            self._pushes[repo] = self._pushes.get(repo, 0) + 1
            for key in list(self._by_repo.get(repo, ())):
                self._remove(key)
            self.invalidations += 1

    def _remove(self, key: tuple) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size
        keys = self._by_repo.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_repo[key[0]]

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        # An empty cache is still a cache: ``advert_cache or None`` must keep it.
        return True

    def stats(self) -> dict[str, int]:
        """Counters for metrics: hits, misses, stores, evictions, invalidations, entries, bytes."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "stores": self.stores,
                "evictions": self.evictions,
                "invalidations": self.invalidations,
                "entries": len(self._entries),
                "bytes": self.bytes,
            }
