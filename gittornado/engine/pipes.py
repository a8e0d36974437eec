"""Processes and pipes for a git run: spawn, reap, git's stdin, raw non-blocking reads.

Plumbing only: what a run does with them is ``gittornado.engine.run``'s.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import struct
import subprocess
import termios
from dataclasses import dataclass

from tornado.iostream import PipeIOStream, StreamClosedError

__all__ = [
    "InputPipe",
    "CHUNK_SIZE",
    "OUT_OF_RESOURCES",
    "Child",
    "spawn",
    "reap",
    "pending",
    "fd_ready",
    "read_some",
]

#: Bytes read from git per chunk; also the most one response write holds.
CHUNK_SIZE = 64 * 1024
#: Pipe buffer for git's output: fewer wakeups per clone (Linux caps it at pipe-max-size).
_PIPE_SIZE = 1024 * 1024
#: errno values that mean "the machine is busy", answered 503 rather than 500.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM)

#: After git's stdin pipe filled up, wait this long past its first free page before
#: writing again (seconds): see ``InputPipe``.
_REFILL_WAIT = 0.001


def _set_done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class InputPipe:
    """git's stdin, written so that a push costs a loop turn per pipeful, not per page.

    index-pack and unpack-objects read 4 KiB at a time, and the kernel wakes a
    writer as soon as a full pipe has one free page: written as soon as it is
    writable (as ``PipeIOStream`` does), a push took a wakeup and a write per
    4 KiB git read. Here a write that found the pipe full waits for a free page
    (no wakeups while git reads nothing) and then a millisecond more, in which
    git empties a good part of the megabyte pipe.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        self._waiter: asyncio.Future | None = None
        os.set_blocking(fd, False)

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while True:
            fd = self._fd
            if fd is None:
                raise StreamClosedError()
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: git stopped reading
                self.close()
                raise StreamClosedError() from None
            if not len(view):
                return
            self._waiter = waiter = loop.create_future()
            loop.add_writer(fd, _set_done, waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._fd is None:
                    raise StreamClosedError() from None
                raise
            finally:
                self._waiter = None
                if self._fd is not None:
                    loop.remove_writer(fd)
            await asyncio.sleep(_REFILL_WAIT)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._waiter is not None:
            asyncio.get_running_loop().remove_writer(fd)
            self._waiter.cancel()
        os.close(fd)


@dataclass
class Child:
    proc: subprocess.Popen
    stdin: InputPipe | None
    stdout: int | None  #: raw non-blocking fd (read or spliced by GitRun)
    stderr: PipeIOStream | None

    @property
    def pid(self) -> int:
        return self.proc.pid


def spawn(
    argv: list[str],
    *,
    env: dict[str, str] | None,
    cwd: str,
    stdin: bool | int = True,
    stdout: bool = True,
    stderr: bool = True,
) -> Child:
    """Start ``argv``; stdin is an async pipe (True) or a given fd, stdout a raw pipe.

    Like ``tornado.process.Subprocess``, but the streams are made only once
    the process exists: Subprocess wraps the pipes first and, when Popen
    fails, closes the raw fds under the streams, which close them a second
    time later, by then another connection's fd. Its ``wait_for_exit`` also
    needs a SIGCHLD handler on the main thread; ``reap`` does not.
    """
    fds: list[int] = []
    child_ends: dict[str, int] = {}
    parent_ends: dict[str, int] = {}
    given = {"stdin": stdin, "stdout": stdout, "stderr": stderr}
    try:
        for name, child_reads in (("stdin", True), ("stdout", False), ("stderr", False)):
            if given[name] is True:
                r, w = os.pipe()
                fds += (r, w)
                child_ends[name], parent_ends[name] = (r, w) if child_reads else (w, r)
        for name in ("stdin", "stdout"):
            if name in parent_ends:
                try:
                    fcntl.fcntl(parent_ends[name], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
                except (OSError, AttributeError):
                    pass
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            **{
                name: child_ends.get(name, subprocess.DEVNULL if value is False else value)
                for name, value in given.items()
            },
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in child_ends.values():
        os.close(fd)
    out = parent_ends.get("stdout")
    if out is not None:
        os.set_blocking(out, False)
    return Child(
        proc,
        InputPipe(parent_ends["stdin"]) if "stdin" in parent_ends else None,
        out,
        PipeIOStream(parent_ends["stderr"]) if "stderr" in parent_ends else None,
    )


async def reap(popen: subprocess.Popen) -> int:
    """Wait for ``popen`` to exit without blocking the loop; returns its status.

    Uses a pidfd (Linux >= 5.3), else a worker thread. Not Tornado's
    ``wait_for_exit``: its SIGCHLD handler only works on the main thread's
    loop, and an embedding app may run Tornado on any thread.
    """
    if popen.poll() is not None:
        return popen.returncode
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        return await loop.run_in_executor(None, popen.wait)
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return popen.wait()


def pending(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


async def fd_ready(fd: int, *, write: bool = False) -> None:
    """Wait until ``fd`` is readable (or writable); cancellable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)


async def read_some(fd: int, size: int) -> bytes:
    """One read from a non-blocking fd, waiting for data; ``b""`` at end of file."""
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await fd_ready(fd)
