"""Smart HTTP (``gitprotocol-http``): the ``info/refs`` advertisement and the RPC POSTs.

Request bodies stream into git as they arrive (chunked or not, gzip inflated
here so bad gzip is a 400 and an inflated upload-pack request can be capped),
with Tornado's flow control: ``data_received`` returns only when git's stdin
took the bytes. Responses stream out with an awaited ``flush()`` per chunk, so
neither a 1 GiB push nor a slow clone client grows the server's memory.
"""

from __future__ import annotations

import asyncio
import email.utils
import fcntl
import logging
import socket
import struct
import tempfile
import termios
import zlib
from typing import IO

from tornado.iostream import IOStream, StreamClosedError
import tornado.web

from . import pktline
from .dumbhttp import send_info_refs
from .errors import BadRequest, GitAccessError, PayloadTooLarge
from .gitproc import CHUNK_SIZE, GitProcess, start_service
from .services import READ, Service, protocol_version, service_for, valid_git_protocol
from .session import Session
from .web import NO_CACHE, GitHandler

__all__ = ["InfoRefsHandler", "RPCHandler"]

app_log = logging.getLogger("gittornado.application")

#: Largest single inflate step, so a gzip bomb never expands in one go.
_INFLATE_STEP = 256 * 1024
#: Tornado needs an integer body limit; "unbounded" pushes get this one (8 EiB).
_UNBOUNDED = 2 ** 63


def _socket_bytes_out(sock: socket.socket) -> int:
    """Bytes this TCP socket has sent: acknowledged (TCP_INFO) plus still queued.

    Counts what git wrote to the client directly, for the audit line; -1 where
    the kernel does not say (not Linux, not TCP).
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        acked = struct.unpack_from("<Q", info, 120)[0]  # tcpi_bytes_acked
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return acked + queued
    except (OSError, AttributeError, struct.error):
        return -1


class _ServiceHandler(GitHandler):
    """What the advertisement and the RPC share: service, Git-Protocol, running git."""

    service: Service
    session: Session
    proc: GitProcess | None = None

    def _service(self, name: str | None) -> Service:
        svc = service_for(name or "", transport="http")
        if svc is None:
            raise BadRequest(f"unsupported service {name!r}")
        return svc

    def _git_protocol(self) -> str | None:
        value = self.request.headers.get("Git-Protocol")
        if value is not None and not valid_git_protocol(value):
            raise BadRequest("malformed Git-Protocol header")
        return value

    def _spawn(self, *, advertise: bool, git_protocol: str | None, stdin: bool | int = True,
               stdout: bool | int = True) -> GitProcess:
        return start_service(self.session, self.service, transport="http",
                             remote_addr=self.request.remote_ip or "", git_protocol=git_protocol,
                             advertise=advertise, stdin=stdin, stdout=stdout, git=self.git)

    async def _stream_output(self, content_type: str, preamble: bytes = b"") -> None:
        """Copy git's stdout to the client; status and headers wait for git's first bytes.

        Waiting means a git that fails before saying anything still gets a real
        answer: an ``ERR`` pkt-line git shows as ``remote error: ...``.
        """
        proc = self.proc
        assert proc is not None
        chunk = await proc.read()
        if not chunk:
            status = await proc.finish()
            if status != 0:
                chunk = pktline.error_line(f"{self.service.name} failed on the server (see its log)")
        self.set_header("Content-Type", content_type)
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        if preamble and chunk:
            self.write(preamble)
        sent = bool(chunk)
        try:
            while chunk:
                self.write(chunk)
                await self.flush()
                chunk = await proc.read(CHUNK_SIZE)
            status = await proc.finish()
            if sent and status != 0:
                # git died mid-answer (killed, out of memory...): tell the user
                # why instead of leaving them with "early EOF".
                message = f"{self.service.name} died on the server (see its log)"
                self.write(pktline.sideband(3, message.encode()) if content_type.endswith("-result")
                           else pktline.error_line(message))
                await self.flush()
        except StreamClosedError:
            if not self._may_kill_on_close():
                while await proc.read():  # let a whole push finish its ref updates
                    pass
            await proc.finish(kill=self._may_kill_on_close())

    def on_connection_close(self) -> None:
        super().on_connection_close()
        proc = self.proc
        if proc is not None and self._may_kill_on_close():
            asyncio.ensure_future(proc.finish(kill=True))

    def _may_kill_on_close(self) -> bool:
        return True

    def on_finish(self) -> None:
        # Safety net: a request that ended on any path never leaves git behind.
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.cancel()
        proc = self.proc
        if proc is not None and not proc.finished:
            asyncio.ensure_future(proc.finish(kill=True))


class InfoRefsHandler(_ServiceHandler):
    """``GET <repo>/info/refs?service=git-X``; without ``service`` the dumb file."""

    ALLOWED = ("GET",)

    async def get(self, repo: str) -> None:
        service = self.get_query_argument("service", None)
        if service is None:
            self.session = await self.decide(repo, READ)
            await send_info_refs(self, self.session, git=self.git)
            return
        self.service = self._service(service)
        git_protocol = self._git_protocol()
        self.session = await self.decide(repo, self.service.right)
        self.proc = self._spawn(advertise=True, git_protocol=git_protocol)
        preamble = b""
        if protocol_version(git_protocol) != 2:
            preamble = pktline.encode(f"# service={self.service.name}\n".encode()) + pktline.FLUSH
        await self._stream_output(self.service.advertisement_type, preamble)


@tornado.web.stream_request_body
class RPCHandler(_ServiceHandler):
    """``POST <repo>/git-upload-pack`` and ``POST <repo>/git-receive-pack``."""

    ALLOWED = ("POST",)

    async def prepare(self) -> None:
        if self.request.method != "POST":
            raise tornado.web.HTTPError(405)
        self._failed = False
        self._body_done = False
        self.service = self._service(self.path_kwargs.get("service") or self.path_args[-1])
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() != self.service.request_type:
            # Also a CSRF guard: a browser cannot send this type cross-site without CORS.
            raise BadRequest(f"Content-Type must be {self.service.request_type}")
        encoding = self.request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding in ("identity", ""):
            self._inflater = None
        else:
            raise BadRequest(f"unsupported Content-Encoding {encoding!r}")
        self._git_protocol_value = self._git_protocol()
        repo = self.path_kwargs.get("repo") or self.path_args[0]
        self.session = await self.decide(repo, self.service.right)
        self._inflated = 0
        self._git_reading = True
        self._watchdog: asyncio.Task | None = None
        if self.body_idle_timeout:
            self._watchdog = asyncio.ensure_future(self._watch_body(self.body_idle_timeout))
        if self.service.right == READ:
            self._limit: int | None = self.upload_pack_limit
            # upload-pack requests are pkt-lines from end to end.
            self._parser = pktline.Parser()
            # A fetch request is small and git answers only once it has all of
            # it: spool it (checked whole before git starts), and git can then
            # write its answer straight to the client (see _answer_directly).
            self._spool: IO[bytes] | None = tempfile.TemporaryFile(prefix="gittornado-")
        else:
            self._limit = self.receive_pack_limit
            # receive-pack: the command list up to the first flush is pkt-lines;
            # what follows (push options, the pack) is passed through unread.
            self._parser = pktline.Parser(until_flush=True)
            # A push streams into git as it arrives: it may be gigabytes.
            self._spool = None
            self.proc = self._spawn(advertise=False, git_protocol=self._git_protocol_value)
        self.request.connection.set_max_body_size(
            self._limit if self._limit is not None else _UNBOUNDED)

    async def _watch_body(self, timeout: float) -> None:
        """Hang up on a client whose body stops arriving for ``timeout`` seconds.

        Otherwise a stalled push holds its connection and a receive-pack
        forever. git never pauses that long mid-body (a fetch request is tiny;
        a push body is pack-objects' output as it is made).
        """
        loop = asyncio.get_running_loop()
        self._last_data = loop.time()
        while not self._body_done:
            idle = loop.time() - self._last_data
            if idle >= timeout:
                app_log.warning("%s %s: no request data for %.0fs, hanging up",
                                self.service.name, self.request.path, idle)
                self._failed = True
                if self.proc is not None:
                    await self.proc.finish(kill=True)
                self.request.connection.close()
                return
            await asyncio.sleep(timeout - idle)

    async def data_received(self, chunk: bytes) -> None:
        # Never raise from here: Tornado would log it as an uncaught exception.
        if self._watchdog is not None:
            self._last_data = asyncio.get_running_loop().time()
        if self._failed:
            return
        try:
            if self._inflater is None:
                await self._feed(chunk)
                return
            data = self._inflater.decompress(chunk, _INFLATE_STEP)
            while True:
                await self._feed(data)
                tail = self._inflater.unconsumed_tail
                if not tail:
                    break
                data = self._inflater.decompress(tail, _INFLATE_STEP)
        except zlib.error:
            self._fail(BadRequest("request body is not valid gzip"))
        except pktline.PktLineError as exc:
            self._fail(BadRequest(f"malformed request: {exc}"))
        except GitAccessError as exc:
            self._fail(exc)

    async def _feed(self, data: bytes) -> None:
        if not data:
            return
        self._inflated += len(data)
        if self._limit is not None and self._inflated > self._limit:
            raise PayloadTooLarge(f"{self.service.name} request larger than {self._limit} bytes")
        self._parser.feed(data)
        if self._spool is not None:
            self._spool.write(data)
        elif self._git_reading:
            try:
                await self.proc.write(data)
            except BrokenPipeError:
                # git stopped reading: it failed and says why in its output, which
                # post() relays. The rest of the body is still checked, not sent.
                self._git_reading = False

    def _fail(self, exc: GitAccessError) -> None:
        # git is stopped by on_finish -> finish(kill=True), which closes its
        # input first so a push removes its own quarantine (a bare signal would not).
        self._failed = True
        self.refuse(exc)

    async def post(self, repo: str, service: str) -> None:
        self._body_done = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._failed and self._finished:
            return
        if self._inflater is not None and not self._inflater.eof:
            self._fail(BadRequest("request body is truncated gzip"))
            return
        if self._parser.pending:
            self._fail(BadRequest("request body ends inside a pkt-line"))
            return
        if self._spool is None:
            self.proc.close_stdin()
            await self._stream_output(self.service.result_type)
            return
        with self._spool as spool:
            spool.flush()
            spool.seek(0)
            stream = self.request.connection.stream if self.direct_output else None
            if type(stream) is IOStream and hasattr(self.request.connection, "detach"):
                await self._answer_directly(spool.fileno())
                return
            self.proc = self._spawn_fetch(stdin=spool.fileno())
        await self._stream_output(self.service.result_type)

    def _spawn_fetch(self, **io: int) -> GitProcess:
        """upload-pack reading the spooled request (counted for the audit line)."""
        proc = self._spawn(advertise=False, git_protocol=self._git_protocol_value, **io)
        proc.op.bytes_in = self._inflated
        return proc

    async def _answer_directly(self, request_fd: int) -> None:
        """Let git write the fetch answer straight into the client's socket.

        A pack is the one big thing a git server sends; relaying it through
        Python costs about 0.6 s of CPU per 300 MiB here, which on a busy box
        is 10-15% of the clone's time. So the status and headers go out
        first, the connection is detached from Tornado, and git gets the
        socket as its stdout: the kernel does the backpressure, the body ends
        when git exits and the connection closes (``Connection: close``, a
        close-delimited HTTP/1.1 body). TLS connections keep the pipe path.
        Needs git >= 2.11, whose writes wait on a non-blocking socket.
        """
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            "Server: gittornado\r\n"
            f"Content-Type: {self.service.result_type}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in NO_CACHE.items())
            + "Connection: close\r\n\r\n"
        ).encode("latin-1")
        stream = self.detach()
        try:
            await stream.write(head)
            sock = stream.socket
            start = _socket_bytes_out(sock)
            self.proc = proc = self._spawn_fetch(stdin=request_fd, stdout=sock.fileno())
            proc.output_counter = lambda: max(0, _socket_bytes_out(sock) - start)
            status = await proc.finish()
            if status != 0 and proc.op.bytes_out == 0:
                sock.sendall(pktline.error_line(
                    f"{self.service.name} failed on the server (see its log)"))
        except (StreamClosedError, OSError):
            if self.proc is not None:
                await self.proc.finish(kill=True)
        finally:
            stream.close()
            self.application.log_request(self)

    def _may_kill_on_close(self) -> bool:
        # A push whose body arrived whole is let finish: killing receive-pack
        # between its pack check and its ref updates helps nobody.
        return self.service.right == READ or not self._body_done
