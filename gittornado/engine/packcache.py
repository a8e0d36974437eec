"""The pack-objects cache, server side: identical fetches share one pack.

When ``uploadpack.packObjectsHook`` is set, upload-pack runs ``<hook> git pack-objects ARGS``
(through the shell) instead of pack-objects, feeding it the same stdin and sending its
stdout as the pack. git honours the setting only from protected config, which the ``-c`` of
the server's own command line is, so a repository cannot point it elsewhere.

The cache is two programs. This module is what the server imports: ``PackCache`` names
the directory and its size bound, builds the ``-c`` option, and reports the directory's
usage for ``/-/metrics``. The hook that upload-pack runs per fetch is ``packhook``, a
separate module because its start-up is paid by every fetch that needs a pack: it
imports only modules built into the interpreter and nothing of this package but
``packkey``, which is of the same kind (its docstring has the entry format and the keys;
the hook's has the writer, its followers and the locking). What both halves need is
defined in ``packkey`` and imported here, never the other way round.

The hooks keep the size bound themselves (each one trims after writing an entry), so the
server never writes to the directory: workers and ``gittornado-shell`` processes sharing it
coordinate by file locks alone.
"""

from __future__ import annotations

import os
import shlex
import sys

if __package__:
    from . import packhook, packkey
else:
    # Imported as the top-level ``packcache`` by the stub of a server started before the
    # hook had a module of its own: its fetches keep working until it restarts.
    import packhook
    import packkey

    main = packhook.main

__all__ = ["PackCache"]

#: The hook's command: ``packhook`` imported as a top-level module (``-S``: without the
#: package; it imports ``packkey`` the same way), from its compiled ``__pycache__`` copy
#: (written by the server's import of it, or by the first hook, which ``-I`` lets write it
#: whatever ``PYTHONDONTWRITEBYTECODE`` says). Run as a script it would be compiled on
#: every fetch (~5 ms of a ~12 ms start-up). Appended to ``sys.path``: nothing in the
#: package's directory can shadow a standard module.
_STUB = "import sys; sys.path.append(%r); import packhook; sys.exit(packhook.main(sys.argv[1:]))"


class PackCache:
    """Where cached packs live and how much disk they may take; builds the hook option.

    Made once in the supervisor, before workers fork: every worker's fetches (and
    ``gittornado-shell``'s, given the same directory) share one directory, coordinated
    by file locks alone.
    """

    def __init__(self, directory: str, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.directory = os.path.abspath(directory)
        self.max_bytes = int(max_bytes)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        argv = [
            sys.executable or "python3",
            "-I",
            "-S",
            "-c",
            _STUB % os.path.dirname(os.path.abspath(packhook.__file__)),
            self.directory,
            str(self.max_bytes),
        ]
        # The size is the hook's to enforce: it is in the command, and kept out of the key
        # (``packkey.config_without_hook``) so servers of other sizes share entries.
        self._options = ("uploadpack.packObjectsHook=" + " ".join(shlex.quote(a) for a in argv),)

    def git_options(self) -> tuple[str, ...]:
        """The ``-c`` settings that make upload-pack use the cache."""
        return self._options

    def usage(self) -> tuple[int, int]:
        """``(complete entries, their bytes)``: what the cache holds now."""
        packs, _ = packkey.scan(self.directory)
        return len(packs), sum(size for _, size, _ in packs)
