"""Public repository names -> repositories on disk, under one root, never outside it.

Names are what users type in URLs: ``app``, ``app.git``, ``team/app``. They are
resolved the way git's ``enter_repo`` does (``app.git`` for ``app``, a work tree
``w`` serves ``w/.git``), and every candidate is checked by ``realpath`` against
the real root plus a separator, so neither ``..`` nor a symlink can lead out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["Repository", "RepositoryLookup", "normalize_name", "is_git_dir"]

# Raw URL paths carrying an encoded separator, NUL or backslash are refused
# before decoding: "team%2fapp" must not become a second spelling of "team/app".
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)


@dataclass(frozen=True)
class Repository:
    name: str   #: canonical public name, no ``.git`` (``team/app``)
    path: str   #: real path of the git directory


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
    """git's own test (``is_git_directory``): HEAD, objects/ and refs/ present."""
    return (
        os.path.isfile(os.path.join(path, "HEAD"))
        and os.path.isdir(os.path.join(path, "objects"))
        and os.path.isdir(os.path.join(path, "refs"))
    )


class RepositoryLookup:
    """Finds repositories under ``gitbase``; the default lookup of every transport."""

    def __init__(self, gitbase: str) -> None:
        self.gitbase = os.path.realpath(gitbase)

    def _contained(self, path: str) -> str | None:
        real = os.path.realpath(path)
        if real == self.gitbase or real.startswith(self.gitbase + os.sep):
            return real
        return None

    def lookup(self, name: str) -> Repository | None:
        """The repository a public name refers to, or None (missing or outside the root)."""
        canonical = normalize_name(name)
        if canonical is None:
            return None
        base = os.path.join(self.gitbase, *canonical.split("/"))
        for candidate in (base + ".git", base, os.path.join(base, ".git")):
            real = self._contained(candidate)
            if real is not None and is_git_dir(real):
                return Repository(canonical, real)
        return None

    def names(self, max_depth: int = 4) -> list[str]:
        """Public names of every repository under the root (for the index page), sorted."""
        found: list[str] = []
        for dirpath, dirnames, _files in os.walk(self.gitbase):
            rel = os.path.relpath(dirpath, self.gitbase)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") or d == ".git")
            if rel != "." and is_git_dir(dirpath):
                parts = rel.split(os.sep)
                if parts[-1] == ".git":
                    parts.pop()
                elif parts[-1].endswith(".git"):
                    parts[-1] = parts[-1][:-4]
                if parts and self.lookup("/".join(parts)) is not None:
                    found.append("/".join(parts))
                dirnames[:] = []
                continue
            if ".git" in dirnames:
                dirnames[:] = [".git"]
            if depth >= max_depth:
                dirnames[:] = []
        return sorted(set(found))
