"""The pack-objects cache's hook: the program upload-pack runs instead of pack-objects.

The server (``packcache.PackCache``) sets ``uploadpack.packObjectsHook`` to a stub that
imports this file as the top-level module ``packhook``, from its compiled copy::

    python -I -S -c "<import this file as 'packhook'; main()>" DIR MAX_BYTES git pack-objects ARGS

(``python -I -S .../packhook.py DIR ...`` does the same, compiling it first). That
start-up is paid by every fetch that needs a pack, so this module imports only modules
built into the interpreter: no ``hashlib`` (it loads OpenSSL), ``subprocess``,
``threading``, nor anything of the ``gittornado`` package, which it runs without. The
keys, the entry format and the directory (scan, trim, the writer's lock) are
``packkey``'s: a module of the same kind next to this one, which the server imports too.

The writer of an entry (``<key>.part``, under its exclusive ``flock``; ``packkey`` has
the format) fills it from pack-objects in a thread of its own and streams it to its
client like any follower, so a slow first client does not slow the others. An identical
request that finds that lock held follows the writer: it sends what the file holds and
waits for more, so a clone storm runs pack-objects once. Entries are finished by a
rename (followers keep reading the same inode), then the writer trims the directory to
``MAX_BYTES``. Entries are not fsync'd (it is a cache, and the client is waiting): after
a power cut, an entry whose data never reached the disk fails the footer check, or at
worst the client's own check of the pack's checksum.
"""

from __future__ import annotations

import _signal
import _thread
import errno
import fcntl
import os
import sys
import time

if __package__:  # gittornado.engine.packhook: imported by the server (packcache) or tests
    from . import packkey
else:
    # The top-level ``packhook`` of the hook's stub, which put this directory on sys.path;
    # or a script, whose directory ``-I`` leaves off it.
    if __name__ == "__main__":
        sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import packkey

__all__ = ["main"]


#: A follower gives up when the file it follows has not grown for this long (seconds).
FOLLOW_STALL = 600.0
_CHUNK = 1 << 20
#: Python ignores these; an ignored signal stays ignored across exec, and git expects defaults.
_RESET_SIGNALS = tuple(getattr(_signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(_signal, name))


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
            self.kept = packkey.finish_entry(
                self.fd, self.part, self.final, self.written, self.hook.max_bytes
            )
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
        packkey.abandon_entry(self.fd, self.part)


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
        key = packkey.request_key(self.command, dict(os.environ), self.stdin)
        final = os.path.join(self.directory, key + packkey.PACK)
        part = os.path.join(self.directory, key + packkey.PART)
        for _ in range(8):
            status = self._serve_entry(final)
            if status is not None:
                return status
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if not packkey.try_lock(fd, fcntl.LOCK_EX):
                    status = self._follow(fd)
                    if status is not None:
                        return status
                    continue  # its writer failed before we sent a byte: start over
                if packkey.claimable(fd, part, final):
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
            length = packkey.check_entry(fd, final)
            if length is None:
                return None
            self._send(fd, 0, length)
            return 0
        finally:
            os.close(fd)

    def _follow(self, fd: int) -> int | None:
        """Send the entry another hook is writing, as it grows; None if it failed before our first byte."""
        pos, delay, grew = 0, 0.0005, time.monotonic()
        while True:
            # Once nobody holds the lock the writer is done (or dead): the size is final.
            done = packkey.try_lock(fd, fcntl.LOCK_SH)
            if done:
                fcntl.flock(fd, fcntl.LOCK_UN)
            size = os.fstat(fd).st_size
            if done:
                length = packkey.entry_length(fd)
                if length is not None and length >= pos:
                    self._send(fd, pos, length - pos)
                    return 0
                if pos == 0:
                    return None
                _say("the pack being shared was cut short; please fetch again")
                return 1
            ready = size - packkey.FOOTER_SIZE - pos  # the last bytes may be the footer
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
                packkey.trim(self.directory, self.max_bytes)
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
