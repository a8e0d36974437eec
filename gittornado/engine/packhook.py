"""The pack-objects cache's hook: the program upload-pack runs instead of pack-objects.

The server (``packcache.PackCache``) sets ``uploadpack.packObjectsHook`` to a stub that
imports this file as the top-level module ``packhook``, from its compiled copy::

    python -I -S -c "<import this file as 'packhook'; main()>" DIR MAX_BYTES git pack-objects ARGS

(``python -I -S .../packhook.py DIR ...`` does the same, compiling it first). That
start-up is paid by every fetch that needs a pack, so this module imports only modules
built into the interpreter: no ``hashlib`` (it loads OpenSSL), ``subprocess``,
``threading``, nor anything of the ``gittornado`` package, which it runs without. What
the server needs too (the entry format, the directory scan) is defined here, once, and
imported by ``packcache``; never the other way round.

A key names one pack forever: the repository (its real path and inode), pack-objects'
arguments and its stdin, which are object ids (wants, ``--not``, haves, shallow
boundaries), and with ``--include-tag`` the state of the repository's tags.

The directory is flat: ``<key>.pack`` is a complete entry (the pack, then a 16-byte
footer, magic and the pack's length, so a truncated or half-written file is recognisable
and never served); ``<key>.part`` is the entry being written, under an exclusive
``flock`` held by its writer for as long as it writes. An identical request
that finds that lock held follows the writer: it sends what the file holds and waits for
more, so a clone storm runs pack-objects once. The writer fills the file from
pack-objects in a thread of its own and streams it to its client like any follower, so a
slow first client does not slow the others. Entries are finished by a rename (followers
keep reading the same inode); a crash leaves an unlocked ``.part`` that is never served
and is removed by the next writer of that key or the next trim. After each new entry, the
least recently used entries (oldest mtime; a hit refreshes it) go until the directory
fits ``MAX_BYTES``, and so do unlocked ``.part`` files older than a minute: the hooks
keep the bound, the server only reads the directory's usage. Entries are not fsync'd (it
is a cache, and the client is waiting): after a power cut, an entry whose data never
reached the disk fails the footer check, or at worst the client's own check of the
pack's checksum.
"""

from __future__ import annotations

import _signal
import _thread
import errno
import fcntl
import os
import struct
import sys
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
    "cache_key",
    "choose_evictions",
    "config_without_hook",
    "footer",
    "key_material",
    "main",
    "parse_footer",
    "repo_state",
    "scan",
    "trim",
]


#: Ends every complete entry, followed by the pack's length (big-endian, 8 bytes).
MAGIC = b"GTPACK\x00\x01"
_FOOTER = struct.Struct(">8sQ")
FOOTER_SIZE = _FOOTER.size
PACK = ".pack"
PART = ".part"
#: An unlocked ``.part`` older than this (seconds) is a dead writer's: removed by trims.
STALE_PART_AGE = 60.0
#: A follower gives up when the file it follows has not grown for this long (seconds).
FOLLOW_STALL = 600.0
_CHUNK = 1 << 20
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
#: Python ignores these; an ignored signal stays ignored across exec, and git expects defaults.
_RESET_SIGNALS = tuple(getattr(_signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(_signal, name))


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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _try_lock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _names(fd: int, path: str) -> bool:
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
        if _try_lock(fd, fcntl.LOCK_EX) and _names(fd, path):
            _unlink(path)
    finally:
        os.close(fd)


def trim(directory: str, max_bytes: int, stale_after: float = STALE_PART_AGE) -> None:
    """Evict least recently used entries until the directory fits; drop dead writers' files."""
    packs, parts = scan(directory)
    for name in choose_evictions(packs, max_bytes):
        _unlink(os.path.join(directory, name))
    oldest = time.time_ns() - int(stale_after * 1e9)
    for mtime, name in parts:
        if mtime < oldest:
            _unlink_if_unlocked(os.path.join(directory, name))


def _entry_length(fd: int) -> int | None:
    """The pack length of the complete entry open as ``fd``, else None."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE) if size >= FOOTER_SIZE else b""
    return parse_footer(tail, size)


# -- the hook --------------------------------------------------------------------------------


def _say(message: str) -> None:
    """One line to upload-pack's client (it reads as ``remote: pack cache: ...``)."""
    try:
        os.write(2, b"pack cache: %s\n" % message.encode(errors="replace"))
    except OSError:
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _stdin_fd(data: bytes) -> int:
    """A readable fd at offset 0 holding ``data``: pack-objects' stdin, without a feeder."""
    try:
        fd = os.memfd_create("packcache-stdin")
    except (AttributeError, OSError):  # not Linux, or an old kernel
        import tempfile

        fd, path = tempfile.mkstemp(prefix="packcache-stdin-")
        os.unlink(path)
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


class _Filler:
    """The writer's thread: pack-objects' stdout into the ``.part`` file, then the entry's end.

    The main thread reads ``written``, ``finished`` and the outcome; this thread reads
    ``client_gone``. Plain attributes suffice: one writer each, and the GIL orders them.
    """

    def __init__(self, hook: _Hook, fd: int, pipe: int, pid: int, part: str, final: str) -> None:
        self.hook, self.fd, self.pipe, self.pid = hook, fd, pipe, pid
        self.part, self.final = part, final
        self.written = 0
        self.pending = b""  #: read from the pipe, not in the file (a failed write)
        self.file_failed = False  #: the file takes no more: the main thread relays the pipe
        self.client_gone = False
        self.status: int | None = None
        self.kept = False
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self._fill()
            if self.file_failed:
                self._abandon()
                return
            self.status = _wait(self.pid)
            self._finish()
        except BaseException as exc:
            self.error = exc
            self._kill()
            if self.status is None:
                try:
                    self.status = _wait(self.pid)
                except ChildProcessError:
                    self.status = 1
            self._abandon()
        finally:
            self.finished = True

    def _fill(self) -> None:
        splice = hasattr(os, "splice")
        while True:
            if self.client_gone and self.written > self.hook.max_bytes:
                # Nobody of ours is reading and the entry cannot be kept: stop paying for it.
                self._kill()
                return
            if splice:
                try:
                    n = os.splice(self.pipe, self.fd, _CHUNK)
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        splice = False  # this file system takes no splice
                        continue
                    self.file_failed = True
                    return
                if n == 0:
                    return
                self.written += n
                continue
            data = os.read(self.pipe, _CHUNK)
            if not data:
                return
            try:
                n = os.write(self.fd, data)
            except OSError:
                n = 0
            if n < len(data):
                self.written += n
                self.pending = data[n:]
                self.file_failed = True
                return
            self.written += n

    def _finish(self) -> None:
        if self.status != 0 or (self.client_gone and self.written > self.hook.max_bytes):
            self._abandon()
            return
        try:
            if os.pwrite(self.fd, footer(self.written), self.written) != FOOTER_SIZE:
                raise OSError(errno.ENOSPC, "short write")
            if self.written + FOOTER_SIZE <= self.hook.max_bytes:
                os.rename(self.part, self.final)
                self.kept = True
            else:
                _unlink(self.part)  # too large to keep; followers still read the inode
        except OSError:  # a full disk, say: no entry, but this run's client still gets the pack
            self._abandon()
            return
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass

    def _abandon(self) -> None:
        """No entry: the ``.part`` goes; followers see no footer and unlocked, and retry."""
        try:
            if _names(self.fd, self.part):
                _unlink(self.part)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError:
            pass


class _Progress:
    """A thread relaying pack-objects' stderr (progress) to ours, and draining it once ours breaks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.finished = False

    def run(self) -> None:
        relaying = True
        try:
            while data := os.read(self.fd, 65536):
                if relaying:
                    try:
                        _write_all(2, data)
                    except OSError:
                        relaying = False
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.finished = True


class _Hook:
    """One run of the hook: serve from the cache, follow a writer, or become the writer."""

    def __init__(self, directory: str, max_bytes: int, command: list[str], stdin: bytes) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.command = command
        self.stdin = stdin
        self.sent = 0  #: bytes written to stdout: past 0, nothing can start over

    def run(self) -> int:
        env = dict(os.environ)
        git_dir = os.path.realpath(os.path.join(os.getcwd(), env.get("GIT_DIR", ".")))
        state = repo_state(git_dir, "--include-tag" in self.command)
        key = cache_key(git_dir, state, self.command, env, self.stdin)
        final = os.path.join(self.directory, key + PACK)
        part = os.path.join(self.directory, key + PART)
        for _ in range(8):
            status = self._serve_entry(final)
            if status is not None:
                return status
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if not _try_lock(fd, fcntl.LOCK_EX):
                    status = self._follow(fd)
                    if status is not None:
                        return status
                    continue  # its writer failed before we sent a byte: start over
                if not _names(fd, part):
                    continue  # finished (renamed) or abandoned since we opened it
                if os.fstat(fd).st_size:
                    _unlink(part)  # a dead writer's; never served
                    continue
                if os.path.exists(final):
                    _unlink(part)  # finished between our look and our lock
                    continue
                return self._write(fd, part, final)
            finally:
                os.close(fd)
        return self.exec_plain()

    def _send(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` from ``offset`` to stdout, file to pipe in the kernel."""
        end = offset + count
        while offset < end:
            try:
                n = os.sendfile(1, fd, offset, min(end - offset, _CHUNK))
            except BlockingIOError:  # someone made our stdout non-blocking
                import select

                select.select([], [1], [])
                continue
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                data = os.pread(fd, min(end - offset, _CHUNK), offset)
                n = os.write(1, data) if data else 0
            if n == 0:
                raise OSError(errno.EIO, "cache file shrank while being sent")
            offset += n
            self.sent += n

    def _serve_entry(self, final: str) -> int | None:
        """Send a complete entry (0); None if there is none. A bad one is deleted, never sent."""
        try:
            fd = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            length = _entry_length(fd)
            if length is None:
                if _names(fd, final):
                    _unlink(final)
                return None
            try:
                os.utime(final)  # least recently used goes first
            except OSError:
                pass
            self._send(fd, 0, length)
            return 0
        finally:
            os.close(fd)

    def _follow(self, fd: int) -> int | None:
        """Send the entry another hook is writing, as it grows; None if it failed before our first byte."""
        pos, delay, grew = 0, 0.0005, time.monotonic()
        while True:
            # Once nobody holds the lock the writer is done (or dead): the size is final.
            done = _try_lock(fd, fcntl.LOCK_SH)
            if done:
                fcntl.flock(fd, fcntl.LOCK_UN)
            size = os.fstat(fd).st_size
            if done:
                length = _entry_length(fd)
                if length is not None and length >= pos:
                    self._send(fd, pos, length - pos)
                    return 0
                if pos == 0:
                    return None
                _say("the pack being shared was cut short; please fetch again")
                return 1
            ready = size - FOOTER_SIZE - pos  # the last bytes may be the footer
            if ready > 0:
                self._send(fd, pos, ready)
                pos += ready
                delay, grew = 0.0005, time.monotonic()
                continue
            if time.monotonic() - grew > FOLLOW_STALL:
                if pos == 0:
                    return self.exec_plain()
                _say("the pack being shared stalled; please fetch again")
                return 1
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _write(self, fd: int, part: str, final: str) -> int:
        """Run pack-objects into the ``.part`` file (a thread) and send the file as it grows."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            fcntl.fcntl(out_r, fcntl.F_SETPIPE_SZ, _CHUNK)
        except (OSError, AttributeError):
            pass
        try:
            stdin_fd = _stdin_fd(self.stdin)
            try:
                pid = os.posix_spawnp(
                    self.command[0],
                    self.command,
                    os.environ,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, stdin_fd, 0),
                        (os.POSIX_SPAWN_DUP2, out_w, 1),
                        # Progress goes through us: pack-objects writing it into a dead
                        # upload-pack's pipe would die of SIGPIPE, followers or not.
                        (os.POSIX_SPAWN_DUP2, err_w, 2),
                    ],
                    setsigdef=_RESET_SIGNALS,
                    # Out of upload-pack's process group: the server signals that group
                    # when our client leaves, and followers may still need the pack.
                    setpgroup=0,
                )
            finally:
                os.close(stdin_fd)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        filler = _Filler(self, fd, out_r, pid, part, final)
        relay = _Progress(err_r)

        def client_gone(signum: int, frame: object) -> None:
            # The server stopping our upload-pack: stop sending, finish the entry.
            filler.client_gone = True

        _signal.signal(_signal.SIGTERM, client_gone)
        started = []
        try:
            for worker in (filler, relay):
                _thread.start_new_thread(worker.run, ())
                started.append(worker)
            return self._stream_own(fd, filler)
        finally:
            if filler not in started:
                os.kill(pid, 15)
                _wait(pid)
                filler._abandon()
                filler.finished = True
            if relay not in started:
                relay.run()  # pack-objects is gone: its stderr ends
            while not (filler.finished and relay.finished):  # never close fds under a thread
                time.sleep(0.002)
            os.close(out_r)

    def _stream_own(self, fd: int, filler: _Filler) -> int:
        pos, delay = 0, 0.0005
        while True:
            finished = filler.finished
            ready = filler.written - pos
            if ready > 0:
                if not filler.client_gone:
                    try:
                        self._send(fd, pos, ready)
                    except OSError:
                        filler.client_gone = True  # keep filling: followers may be reading
                pos += ready
                delay = 0.0005
                continue
            if finished:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        if filler.error is not None:
            raise filler.error
        if filler.file_failed:
            return self._relay_rest(filler)
        if filler.kept:
            try:
                trim(self.directory, self.max_bytes)
            except OSError:
                pass
        return 1 if filler.client_gone else filler.status or 0

    def _relay_rest(self, filler: _Filler) -> int:
        """The cache file took no more (disk full?): the rest of the pack goes straight through."""
        try:
            _write_all(1, filler.pending)
            while data := os.read(filler.pipe, _CHUNK):
                _write_all(1, data)
        except OSError:
            os.kill(filler.pid, 15)
            _wait(filler.pid)
            return 1
        return _wait(filler.pid)

    def exec_plain(self) -> int:
        """Become ``git pack-objects`` itself: the fetch works as if there were no cache."""
        os.dup2(_stdin_fd(self.stdin), 0)
        for sig in _RESET_SIGNALS:
            _signal.signal(sig, _signal.SIG_DFL)
        try:
            os.execvp(self.command[0], self.command)
        except OSError as exc:
            _say(f"cannot run {self.command[0]}: {exc}")
        return 127


def main(argv: list[str]) -> int:
    """``DIR MAX_BYTES git [options] pack-objects ARGS``: what upload-pack's hook runs."""
    if len(argv) < 3 or not argv[1].isdigit():
        _say("usage: packhook.py DIR MAX_BYTES git pack-objects ARGS")
        return 128
    try:
        stdin = _read_all(0)
    except OSError as exc:
        _say(f"cannot read the object list: {exc}")
        return 128
    hook = _Hook(argv[0], int(argv[1]), argv[2:], stdin)
    try:
        return hook.run()
    except BrokenPipeError:
        return 1  # upload-pack is gone: there is nobody to tell
    except Exception as exc:
        # The client reads this: the reason, never a server path.
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        if hook.sent:
            _say(f"failed mid-pack ({reason})")
            return 1
        # A broken cache must never break a fetch.
        _say(f"off for this fetch ({reason})")
        return hook.exec_plain()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
