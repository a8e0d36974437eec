"""What the index page shows about each repository, read from disk and cached.

Nothing here costs a git process per repository per request:

* the names come from the lookup's ``names()`` walk, repeated only when a
  directory it walked changed (``_NameCache``: one ``stat`` per directory
  instead of the lookup's full check of every repository);
* what is read in a repository (``description``, ``HEAD``, the last
  commit's time from one ``git for-each-ref``) is cached per repository
  until the files it came from change (``SummaryCache``).

Everything here reads the disk: call it in the WSGI thread pool, never on the
event loop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..access.repos import RepositoryLookup, walk_git_dirs
from ..engine.query import GitQueryError, git_query_sync

__all__ = ["RepoSummary", "SummaryCache", "cached_names", "read_description", "read_default_branch"]

app_log = logging.getLogger("gittornado.application")

#: git's own text in a new repository's ``description``: not worth showing.
_DEFAULT_DESCRIPTION = "Unnamed repository;"


@dataclass(frozen=True)
class RepoSummary:
    """What the index shows about one repository besides its name."""

    description: str | None = None
    default_branch: str | None = None
    last_commit: int | None = None  #: committer time (Unix seconds) of the newest branch tip


def _read_small(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def read_description(git_dir: str) -> str | None:
    """The first line of ``description``, unless it is git's placeholder text."""
    text = _read_small(os.path.join(git_dir, "description"))
    if not text:
        return None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line or line.startswith(_DEFAULT_DESCRIPTION):
        return None
    return line[:300]


def read_default_branch(git_dir: str) -> str | None:
    """HEAD's branch, read from the file (no git process); None when HEAD names none."""
    head = os.path.join(git_dir, "HEAD")
    if os.path.islink(head):  # git before 1.5 wrote HEAD as a symlink
        target = os.readlink(head)
        return target[len("refs/heads/") :] if target.startswith("refs/heads/") else None
    text = _read_small(head, 1024)
    if text is None or not text.startswith("ref:"):
        return None
    ref = text[4:].strip()
    if not ref.startswith("refs/heads/") or ref == "refs/heads/.invalid":  # reftable's stub
        return None
    return ref[len("refs/heads/") :]


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _validators(git_dir: str) -> tuple:
    """What changes whenever HEAD, the description or a branch does.

    git moves a ref by renaming a lock file in the ref's directory, so the
    mtime of ``refs/heads`` and each directory below it changes with every
    branch update; ``packed-refs`` and ``HEAD`` are replaced the same way;
    reftable repositories rewrite ``reftable/tables.list``.
    """
    heads = os.path.join(git_dir, "refs", "heads")
    dirs = []
    for dirpath, _dirnames, _files in os.walk(heads):
        dirs.append((dirpath, _stamp(dirpath)))
    return (
        _stamp(os.path.join(git_dir, "HEAD")),
        _stamp(os.path.join(git_dir, "description")),
        _stamp(os.path.join(git_dir, "packed-refs")),
        _stamp(os.path.join(git_dir, "reftable", "tables.list")),
        tuple(dirs),
    )


class SummaryCache:
    """``summary(git_dir)``, recomputed only when the files it was read from change.

    Safe to share between the WSGI threads: two threads may compute the same
    entry at once, and either answer is right.
    """

    def __init__(self, git: str = "git", max_entries: int = 100_000) -> None:
        self.git = git
        self.max_entries = max_entries
        self._entries: dict[str, tuple[tuple, RepoSummary]] = {}
        self.computed = 0  #: summaries computed (not served from the cache): for tests

    def summary(self, git_dir: str) -> RepoSummary:
        validators = _validators(git_dir)
        hit = self._entries.get(git_dir)
        if hit is not None and hit[0] == validators:
            return hit[1]
        summary = RepoSummary(
            description=read_description(git_dir),
            default_branch=read_default_branch(git_dir),
            last_commit=self._last_commit(git_dir),
        )
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[git_dir] = (validators, summary)
        self.computed += 1
        return summary

    def _last_commit(self, git_dir: str) -> int | None:
        """The newest branch tip's committer time: one ``git for-each-ref``.

        Reading it without git means inflating a loose or packed (possibly
        deltified) commit; git does that right for every repository format,
        and the cache makes it once per change, not once per request.
        """
        argv = [
            self.git,
            "--git-dir",
            git_dir,
            "-c",
            f"safe.directory={git_dir}",
            "for-each-ref",
            "--count=1",
            "--sort=-committerdate",
            "--format=%(committerdate:unix)",
            "refs/heads",
        ]
        try:
            out = git_query_sync(argv, git_dir, timeout=10).strip()
        except OSError as exc:
            app_log.warning("index: cannot read the last commit of %s: %s", git_dir, exc)
            return None
        except GitQueryError as exc:
            app_log.info("index: git for-each-ref in %s failed: %s", git_dir, exc)
            return None
        if not out.isdigit():
            return None
        return int(out)


class _NameCache:
    """``RepositoryLookup.names()``, walked again only when a directory it walked changed.

    ``names()`` checks every repository in full (containment, symlinks,
    alternates): about 150 µs each, 1.5 s for 10,000. Creating, removing or
    renaming a repository changes the mtime of its parent directory, and
    ``git init`` in an existing directory changes that directory's, so the
    mtimes of the directories ``walk_git_dirs`` visits (the walk ``names()``
    itself makes, one ``stat`` per directory, the git-directory test kept
    while a directory's mtime stays) tell when the list may have changed. A
    change deeper inside a repository (a symlink swapped into
    ``objects/pack``) shows on the next change of the tree; the gate still
    checks the repository itself on every request for it.
    """

    def __init__(self, lookup: RepositoryLookup, max_depth: int = 4) -> None:
        self.lookup = lookup
        self.max_depth = max_depth
        self._lock = threading.Lock()
        self._signature: list[tuple[str, int]] | None = None
        self._names: list[str] = []
        self._known: dict[str, tuple[int, bool]] = {}
        self.walks = 0  #: full ``names()`` walks so far: for tests

    def __call__(self) -> list[str]:
        signature = self._walk()  # before names(): a change during it shows next time
        with self._lock:
            if signature != self._signature:
                self._names = self.lookup.names(self.max_depth)
                self._signature = signature
                self.walks += 1
            return self._names

    def _walk(self) -> list[tuple[str, int]]:
        visited = list(walk_git_dirs(self.lookup.gitbase, self.max_depth, self._known))
        self._known = {path: (mtime, repo) for path, mtime, repo in visited}
        return sorted((path, mtime) for path, mtime, _repo in visited)


def cached_names(names: Callable[[], Iterable[str]]) -> Callable[[], Iterable[str]]:
    """``names`` with ``_NameCache`` in front when it is the default lookup's own walk."""
    owner = getattr(names, "__self__", None)
    if isinstance(owner, RepositoryLookup) and getattr(names, "__func__", None) is RepositoryLookup.names:
        return _NameCache(owner)
    return names
