"""Public repository names -> repositories on disk, under one root, never outside it.

Names are what users type in URLs: ``app``, ``app.git``, ``team/app``. They are
resolved the way git's ``enter_repo`` does (``app.git`` for ``app``, a work tree
``w`` serves ``w/.git``), and every candidate is checked by ``realpath`` against
the real root plus a separator, so neither ``..`` nor a symlink can lead out.

Two further rules, both from attacks on a running server:

* A repository found inside the root may still *read* outside it, through a
  symlinked ``objects/``, ``refs/``, pack, ``commondir`` or an
  ``objects/info/alternates`` entry (git http-backend serves those). Unless
  the admin allows it (``allow_external_links``), such a repository is
  refused like a missing one and logged once, so a user who may create
  directories in the root cannot publish a repository they may not read.
* ``lookup`` takes the same path whether or not a name exists: every
  candidate is resolved and checked in full, no early return, so timing does
  not tell a name from a missing one.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["Repository", "RepositoryLookup", "normalize_name", "is_git_dir", "walk_git_dirs"]

# Raw URL paths carrying an encoded separator, NUL or backslash are refused
# before decoding: "team%2fapp" must not become a second spelling of "team/app".
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)

app_log = logging.getLogger("gittornado.application")

#: Directories whose entries git reads to serve a repository; a symlink among
#: them (or the entries of the repository itself) must stay inside the root.
_SCANNED = ("", "objects", "objects/pack", "objects/info", "refs")
#: At most this many refused repositories are remembered (each logged once).
_MAX_LOGGED = 1000


@dataclass(frozen=True)
class Repository:
    name: str  #: canonical public name, no ``.git`` (``team/app``)
    path: str  #: real path of the git directory


def has_encoded_separator(raw_path: str) -> bool:
    return bool(_ENCODED_SEPARATOR.search(raw_path))


def normalize_name(name: str) -> str | None:
    """The canonical public name for ``name`` (decoded URL text), or None if unusable.

    Refuses rather than repairs: ``..``/``.`` segments, empty segments, NUL,
    backslashes and names starting with ``-`` (they would read as git options).
    """
    if not name or "\x00" in name or "\\" in name or len(name) > 1024:
        return None
    segments = name.strip("/").split("/")
    for seg in segments:
        if seg in ("", ".", "..") or seg.startswith("-"):
            return None
    if segments[-1].endswith(".git"):
        segments[-1] = segments[-1][:-4]
        if segments[-1] in ("", ".", ".."):
            return None
    return "/".join(segments)


def is_git_dir(path: str) -> bool:
    """git's own test (``is_git_directory``): HEAD, objects/ and refs/ present.

    All three are checked every time (no short circuit), so a missing
    directory costs what an existing one does.
    """
    head = os.path.isfile(os.path.join(path, "HEAD"))
    objects = os.path.isdir(os.path.join(path, "objects"))
    refs = os.path.isdir(os.path.join(path, "refs"))
    return head and objects and refs


class RepositoryLookup:
    """Finds repositories under ``gitbase``; the default lookup of every transport.

    :arg allow_external_links: serve repositories reached through symlinks (or
        alternates, ``commondir``) that resolve outside ``gitbase``: the
        repository directory itself or what git reads inside it. Off by
        default: such a repository is as missing as no repository.
    """

    def __init__(self, gitbase: str, *, allow_external_links: bool = False) -> None:
        self.gitbase = os.path.realpath(gitbase)
        self.allow_external_links = allow_external_links
        self._logged: set[str] = set()

    def _inside(self, real: str) -> bool:
        return real == self.gitbase or real.startswith(self.gitbase + os.sep)

    def external_link(self, repo: str) -> str | None:
        """What in the git directory ``repo`` leads outside the root, or None if nothing does.

        Looks at the entries git reads to serve it: symlinks among the
        repository's own entries, ``objects/``, ``objects/pack``,
        ``objects/info`` and ``refs/`` (one directory listing each; only
        symlinks are resolved), plus ``commondir`` and
        ``objects/info/alternates``, which name other directories in text.
        """
        for sub in _SCANNED:
            directory = os.path.join(repo, sub) if sub else repo
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.is_symlink() and not self._inside(os.path.realpath(entry.path)):
                    return os.path.join(sub, entry.name) if sub else entry.name
        for name, base in (("commondir", repo), ("objects/info/alternates", os.path.join(repo, "objects"))):
            try:
                with open(os.path.join(repo, name), encoding="utf-8", errors="replace") as fh:
                    lines = fh.read(65536).splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if not self._inside(os.path.realpath(os.path.join(base, line))):
                    return f"{name} ({line})"
        return None

    def _refused(self, real: str, why: str) -> None:
        if real not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(real)
            app_log.warning(
                "repository %s refused: %s resolves outside %s (serve it with --allow-external-links)",
                real,
                why,
                self.gitbase,
            )

    def lookup(self, name: str) -> Repository | None:
        """The repository a public name refers to, or None (missing or outside the root).

        Every candidate (``name.git``, ``name``, ``name/.git``) is resolved and
        tested whatever the others gave; the first git directory wins.
        """
        canonical = normalize_name(name)
        if canonical is None:
            return None
        base = os.path.join(self.gitbase, *canonical.split("/"))
        found: str | None = None
        for candidate in (base + ".git", base, os.path.join(base, ".git")):
            real = os.path.realpath(candidate)
            inside = self.allow_external_links or self._inside(real)
            git_dir = is_git_dir(real)
            if inside and git_dir and found is None:
                found = real
        if found is None:
            return None
        if not self.allow_external_links:
            why = self.external_link(found)
            if why is not None:
                self._refused(found, why)
                return None
        return Repository(canonical, found)

    def names(self, max_depth: int = 4) -> list[str]:
        """Public names of every repository under the root (for the index page), sorted.

        The git directories are those ``walk_git_dirs`` finds; each is listed
        under the name ``lookup`` serves it by, and only if it does.
        """
        found: set[str] = set()
        for path, _mtime, repo in walk_git_dirs(self.gitbase, max_depth):
            if not repo:
                continue
            parts = os.path.relpath(path, self.gitbase).split(os.sep)
            if parts[-1] == ".git":
                parts.pop()
            elif parts[-1].endswith(".git"):
                parts[-1] = parts[-1][:-4]
            if parts and self.lookup("/".join(parts)) is not None:
                found.add("/".join(parts))
        return sorted(found)


def _listable(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            for _entry in it:
                pass
    except OSError:
        return False
    return True


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def walk_git_dirs(
    root: str, max_depth: int = 4, known: Mapping[str, tuple[int, bool]] | None = None
) -> Iterator[tuple[str, int, bool]]:
    """``(path, mtime_ns, is_git_dir)`` for every directory the repository walk visits.

    The one walk behind ``RepositoryLookup.names`` and the index page's name
    cache, so the two cannot disagree about where repositories are:

    * hidden directories are skipped, except ``.git``; in a directory that
      holds a ``.git`` (a work tree) only the ``.git`` is entered;
    * a git directory below the root is reported and not entered;
    * symlinked directories are not entered; nor is anything more than
      ``max_depth`` levels below the root;
    * a directory that cannot be listed is not entered, and is no git
      directory (``os.walk`` never reports such a directory).

    Each directory is reported with the mtime it had before it was looked
    at (its git-directory test and listing), so a caller that keeps the
    mtimes sees a change made during the walk on its next walk. ``known``
    holds answers from an earlier walk (``path -> (mtime_ns, is_git_dir)``):
    a directory whose mtime has not changed is not tested again (it gains or
    loses ``HEAD``, ``objects/`` or ``refs/`` only by a change of its own
    mtime). The root itself is never a git directory here.
    """
    try:
        root_mtime = os.stat(root).st_mtime_ns
    except OSError:
        return
    stack = [(root, 0, root_mtime)]
    while stack:
        path, depth, mtime = stack.pop()
        repo = False
        if depth > 0:
            hit = known.get(path) if known is not None else None
            if hit is not None and hit[0] == mtime:
                repo = hit[1]
            else:
                repo = is_git_dir(path) and _listable(path)
        yield path, mtime, repo
        if repo:
            continue
        try:
            with os.scandir(path) as it:
                subdirs = sorted(
                    e.name for e in it if _is_dir(e) and (not e.name.startswith(".") or e.name == ".git")
                )
        except OSError:
            continue
        if ".git" in subdirs:  # a work tree: only its .git counts
            subdirs = [".git"]
        if depth >= max_depth:
            continue
        for name in reversed(subdirs):
            child = os.path.join(path, name)
            try:
                st = os.lstat(child)
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                stack.append((child, depth + 1, st.st_mtime_ns))
