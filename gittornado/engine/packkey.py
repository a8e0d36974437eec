"""The pack-objects cache's keys and directory: what an entry is called, holds and costs.

Both halves of the cache import this module: the hook (``packhook``, as the top-level
module ``packkey``, next to it on ``sys.path``) and the server (``packcache``, as
``gittornado.engine.packkey``). Like the hook, it imports only modules built into the
interpreter: no ``hashlib`` (it loads OpenSSL), ``subprocess``, ``threading``, nor
anything of the ``gittornado`` package. What the server needs too (the entry format, the
directory scan) is defined here, once, and imported by ``packcache``.

A key names one pack forever: the repository (its real path and inode), pack-objects'
arguments and its stdin, which are object ids (wants, ``--not``, haves, shallow
boundaries), and with ``--include-tag`` the state of the repository's tags.

The directory is flat: ``<key>.pack`` is a complete entry (the pack, then a 16-byte
footer, magic and the pack's length, so a truncated or half-written file is recognisable
and never served); ``<key>.part`` is the entry being written, under an exclusive
``flock`` held by its writer for as long as it writes (the hook's docstring has the
writer and its followers). A crash leaves an unlocked ``.part`` that is never served and
is removed by the next writer of that key or the next trim. After each new entry, the
least recently used entries (oldest mtime; a hit refreshes it) go until the directory
fits ``MAX_BYTES``, and so do unlocked ``.part`` files older than a minute: the hooks
keep the bound, the server only reads the directory's usage.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

try:  # the built-in SHA-256 (hashlib would load OpenSSL: ~10 ms per fetch)
    from _sha2 import sha256  # CPython 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.10, 3.11
    except ImportError:
        from hashlib import sha256

__all__ = [
    "FOOTER_SIZE",
    "PACK",
    "PART",
    "abandon_entry",
    "cache_key",
    "check_entry",
    "choose_evictions",
    "claimable",
    "config_without_hook",
    "entry_length",
    "finish_entry",
    "footer",
    "key_material",
    "parse_footer",
    "repo_state",
    "request_key",
    "scan",
    "still_names",
    "trim",
    "try_lock",
    "unlink",
]


#: Ends every complete entry, followed by the pack's length (big-endian, 8 bytes).
MAGIC = b"GTPACK\x00\x01"
_FOOTER = struct.Struct(">8sQ")
FOOTER_SIZE = _FOOTER.size
PACK = ".pack"
PART = ".part"
#: An unlocked ``.part`` older than this (seconds) is a dead writer's: removed by trims.
STALE_PART_AGE = 60.0
#: Begins every key's material. Bump it when what a key covers changes; keep it otherwise
#: (the module's name is not in it): a new value orphans every entry already on disk.
_KEY_VERSION = b"gittornado-packcache-1"
#: Environment that can change what pack-objects sends for the same arguments and stdin
#: (which repository, which objects, which tags, its config). Deliberately not
#: ``GIT_PROTOCOL`` (the pack is the same for every version) nor the per-user identity
#: the server sets: either would split the cache for nothing.
_KEY_ENV = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_CONFIG",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_SYSTEM",
    "GIT_GRAFT_FILE",
    "GIT_NAMESPACE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_OBJECT_DIRECTORY",
    "GIT_REPLACE_REF_BASE",
    "GIT_SHALLOW_FILE",
)
_KEY_ENV_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")
#: Arguments that change only what pack-objects says on stderr, not the pack.
_NOT_IN_KEY = ("--progress",)


# -- pure functions --------------------------------------------------------------------------


def footer(length: int) -> bytes:
    """The 16 bytes that end a complete entry holding a pack of ``length`` bytes."""
    return _FOOTER.pack(MAGIC, length)


def parse_footer(tail: bytes, size: int) -> int | None:
    """The pack length of an entry of ``size`` bytes ending in ``tail``; None if incomplete."""
    if size < FOOTER_SIZE or len(tail) != FOOTER_SIZE:
        return None
    magic, length = _FOOTER.unpack(tail)
    if magic != MAGIC or length + FOOTER_SIZE != size:
        return None
    return length


def _fields(parts: list[bytes]) -> bytes:
    # Length-prefixed, so no two different lists serialise alike.
    return b"".join(b"%d:%s," % (len(p), p) for p in parts)


def config_without_hook(params: str) -> str:
    """``GIT_CONFIG_PARAMETERS`` without the hook's own setting.

    The hook's command holds the cache's size and the interpreter's path: servers sharing
    a directory (HTTP and ``gittornado-shell``) must share keys whatever their sizes.
    git writes each setting shell-quoted (``'key'='value'``, older: ``'key=value'``),
    separated by single spaces.
    """
    kept, token, raw, quoted, i = [], [], [], False, 0
    while i <= len(params):
        c = params[i] if i < len(params) else " "
        if c == " " and not quoted:
            text = "".join(token)
            if raw and not text.lower().startswith("uploadpack.packobjectshook="):
                kept.append("".join(raw))
            token, raw = [], []
        elif c == "'":
            quoted = not quoted
            raw.append(c)
        elif c == "\\" and not quoted and i + 1 < len(params):
            i += 1
            token.append(params[i])
            raw.append(c + params[i])
        else:
            token.append(c)
            raw.append(c)
        i += 1
    return " ".join(kept)


def key_material(
    git_dir: str, repo_state: bytes, argv: list[str], env: dict[str, str], stdin: bytes
) -> bytes:
    """Everything a cache key covers, unambiguously serialised (hashed by ``cache_key``).

    ``git_dir`` is the repository's real path and ``repo_state`` what else about it can
    change the pack (``repo_state()``): different repositories never share an entry.
    """
    fs = os.fsencode
    args = [fs(a) for a in argv if a not in _NOT_IN_KEY]
    env = {n: v for n, v in env.items() if n in _KEY_ENV or n.startswith(_KEY_ENV_PREFIXES)}
    if "GIT_CONFIG_PARAMETERS" in env:
        env["GIT_CONFIG_PARAMETERS"] = config_without_hook(env["GIT_CONFIG_PARAMETERS"])
    for name, value in list(env.items()):
        if name.startswith("GIT_CONFIG_KEY_") and value.lower() == "uploadpack.packobjectshook":
            env.pop("GIT_CONFIG_VALUE_" + name[len("GIT_CONFIG_KEY_") :], None)
    names = sorted(env)
    return _fields(
        [
            _KEY_VERSION,
            fs(git_dir),
            repo_state,
            _fields(args),
            _fields([fs(n) + b"=" + fs(env[n]) for n in names]),
            stdin,
        ]
    )


def cache_key(git_dir: str, repo_state: bytes, argv: list[str], env: dict[str, str], stdin: bytes) -> str:
    """The entry's name: SHA-256 of ``key_material``, in hex."""
    return sha256(key_material(git_dir, repo_state, argv, env, stdin)).hexdigest()


def choose_evictions(entries: list[tuple[int, int, str]], max_bytes: int) -> list[str]:
    """Names to delete, least recently used first, until the rest fit in ``max_bytes``.

    ``entries`` are ``(mtime_ns, size, name)`` of complete entries.
    """
    total = sum(size for _, size, _ in entries)
    doomed = []
    for _, size, name in sorted(entries):
        if total <= max_bytes:
            break
        doomed.append(name)
        total -= size
    return doomed


def request_key(argv: list[str], env: dict[str, str], stdin: bytes) -> str:
    """The key of the pack-objects run ``argv``, in the repository upload-pack runs it in."""
    git_dir = os.path.realpath(os.path.join(os.getcwd(), env.get("GIT_DIR", ".")))
    return cache_key(git_dir, repo_state(git_dir, "--include-tag" in argv), argv, env, stdin)


# -- the directory ---------------------------------------------------------------------------


def repo_state(git_dir: str, include_tags: bool) -> bytes:
    """What, besides object ids, decides the pack: the repository's identity and boundaries.

    The inode tells a repository re-created at the same path from the old one; the
    repository's own ``shallow`` and ``info/grafts`` bound what ``--revs`` walks. With
    ``--include-tag``, pack-objects adds the tags that exist when it runs, so any change
    to the tags (``packed-refs`` rewritten, a loose tag added, moved or deleted, which
    changes its directory's mtime) makes a new key rather than serving an old tag set.
    """
    st = os.stat(git_dir)
    parts = [b"%d.%d" % (st.st_dev, st.st_ino)]
    names = ["shallow", "info/grafts"] + (["packed-refs"] if include_tags else [])
    for name in names:
        try:
            s = os.stat(os.path.join(git_dir, name))
            parts.append(b"%s %d %d %d" % (name.encode(), s.st_ino, s.st_size, s.st_mtime_ns))
        except FileNotFoundError:
            pass
    if include_tags:
        stack = ["refs/tags"]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(os.path.join(git_dir, rel)) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(rel + "/" + entry.name)
                parts.append(b"%s %d" % (os.fsencode(rel), os.stat(os.path.join(git_dir, rel)).st_mtime_ns))
            except (FileNotFoundError, NotADirectoryError):
                pass
    return _fields(sorted(parts))


def scan(directory: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, str]]]:
    """``(complete entries as (mtime_ns, size, name), in-progress files as (mtime_ns, name))``.

    Trims read it, and so does the server (``PackCache.usage``): the one place that knows
    which names are entries.
    """
    packs, parts = [], []
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not name.endswith((PACK, PART)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if name.endswith(PACK):
                packs.append((st.st_mtime_ns, st.st_size, name))
            else:
                parts.append((st.st_mtime_ns, name))
    return packs, parts


def unlink(path: str) -> None:
    """Remove ``path`` if it is still there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def try_lock(fd: int, how: int) -> bool:
    """Take ``flock`` ``how`` on ``fd`` without waiting; False if another holder has it."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def still_names(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not renamed or unlinked since)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _unlink_if_unlocked(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if try_lock(fd, fcntl.LOCK_EX) and still_names(fd, path):
            unlink(path)
    finally:
        os.close(fd)


def trim(directory: str, max_bytes: int, stale_after: float = STALE_PART_AGE) -> None:
    """Evict least recently used entries until the directory fits; drop dead writers' files."""
    packs, parts = scan(directory)
    for name in choose_evictions(packs, max_bytes):
        unlink(os.path.join(directory, name))
    oldest = time.time_ns() - int(stale_after * 1e9)
    for mtime, name in parts:
        if mtime < oldest:
            _unlink_if_unlocked(os.path.join(directory, name))


def entry_length(fd: int) -> int | None:
    """The pack length of the complete entry open as ``fd``, else None."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE) if size >= FOOTER_SIZE else b""
    return parse_footer(tail, size)


# -- entries: the writer's lock and the rename ------------------------------------------------


def check_entry(fd: int, path: str) -> int | None:
    """The pack length of the entry ``path`` open as ``fd``, its use recorded; None if none.

    A bad (incomplete) entry is deleted, never served. A hit refreshes the mtime: least
    recently used goes first.
    """
    length = entry_length(fd)
    if length is None:
        if still_names(fd, path):
            unlink(path)
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return length


def claimable(fd: int, part: str, final: str) -> bool:
    """Whether the ``.part`` open as ``fd``, its exclusive lock just taken, is ours to write."""
    if not still_names(fd, part):
        return False  # finished (renamed) or abandoned since we opened it
    if os.fstat(fd).st_size:
        unlink(part)  # a dead writer's; never served
        return False
    if os.path.exists(final):
        unlink(part)  # finished between our look and our lock
        return False
    return True


def finish_entry(fd: int, part: str, final: str, length: int, max_bytes: int) -> bool:
    """Seal the ``.part`` holding a pack of ``length`` bytes: True if it became ``final``.

    Too large to keep, it is unlinked instead (followers still read the inode). An
    ``OSError`` (a full disk, say) leaves it to ``abandon_entry``.
    """
    if os.pwrite(fd, footer(length), length) != FOOTER_SIZE:
        raise OSError(errno.ENOSPC, "short write")
    if length + FOOTER_SIZE <= max_bytes:
        os.rename(part, final)
        return True
    unlink(part)
    return False


def abandon_entry(fd: int, part: str) -> None:
    """No entry: the ``.part`` goes; followers see no footer and unlocked, and retry."""
    try:
        if still_names(fd, part):
            unlink(part)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
