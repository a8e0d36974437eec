"""Smart HTTP (``gitprotocol-http``): the ``info/refs`` advertisement and the RPC POSTs.

A translator over the engine (``Engine.start`` -> ``GitRun``): it turns HTTP
into a decided session plus a git run, and is the run's ``Wire``. Request bodies stream into the run as
they arrive (chunked or not; gzip inflated here, in bounded steps that yield to
the loop, so bad gzip is a 400 and a bomb cannot hold the server), with
Tornado's flow control: ``data_received`` returns only when git took the
bytes. git's answers over HTTP/1.1 are chunked (an advertisement from the
cache has a Content-Length), so every client library and proxy can tell where
it ends and the connection serves the next request; on plain sockets the pack
moves from git's pipe into the socket inside the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable

import tornado.web
from tornado.iostream import IOStream, StreamClosedError

from ..access.gate import Session
from ..engine.output import Splice
from ..engine.run import GitRun, PeerGone
from ..errors import BadRequest, GitAccessError, PayloadTooLarge, ServiceUnavailable
from ..protocol import pktline
from ..protocol.services import READ, WRITE, Service, protocol_version, service_for, valid_git_protocol
from .dumbhttp import send_info_refs
from .httpbase import NO_CACHE, GitHandler

__all__ = ["InfoRefsHandler", "RPCHandler"]

app_log = logging.getLogger("gittornado.application")

#: Largest single inflate (and pkt-line check) step: a few milliseconds of work at most.
_INFLATE_STEP = 8 * 1024
#: The longest a request may hold the event loop before it yields (seconds).
_SLICE = 0.002
#: Tornado needs an integer body limit; limits are ours (a 413 with a reason, not its 400).
_UNBOUNDED = 2**63


def _chunk_header(n: int) -> bytes:
    return b"%x\r\n" % n


class _ServiceHandler(GitHandler):
    """What the advertisement and the RPC share: service, Git-Protocol, the run and its answer."""

    service: Service
    session: Session
    run: GitRun | None = None
    _git_protocol_value: str | None = None

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

    async def _start(self, *, advertise: bool = False) -> GitRun:
        """The run for this request (the engine takes a process slot, maybe waiting for one)."""
        run = await self.engine.start(
            self.session,
            self.service,
            transport=self.transport,
            remote_addr=self.request.remote_ip or "",
            git_protocol=self._git_protocol_value,
            advertise=advertise,
            on_abort=self._drop,
        )
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and stream.closed():
            run.close(reason="client went away while queued")
            raise ServiceUnavailable("client went away while queued")
        return run

    def _drop(self, reason: str) -> None:
        """The run gave up on this client: hang up (the reason is in the run's log line)."""
        self._failed = True
        # The stream, not the HTTP connection: closing the connection drops its
        # write callbacks, and a flush() waiting on a stuck client never returns.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.close()

    # -- the run's Wire ------------------------------------------------------------------
    closed_errors = (StreamClosedError,)

    def send(self, data: bytes, last: bool = False) -> Awaitable[None]:
        if last:
            return self.finish(data)  # the whole answer: sent with a Content-Length
        self.write(data)
        return self.flush()

    def splice_target(self) -> Splice | None:
        """The plain socket to splice the answer into, or None to relay through Python.

        Only for HTTP/1.1 (chunked) on a plain TCP stream: TLS must encrypt in
        Python, and an HTTP/1.0 answer ends with the connection anyway.
        """
        if self.request.version != "HTTP/1.1":
            return None
        stream = getattr(self.request.connection, "stream", None)
        if type(stream) is not IOStream or stream.socket is None:
            return None
        return Splice(stream.socket, _chunk_header, b"\r\n")

    async def _answer(self, content_type: str, preamble: bytes = b"") -> None:
        """Send git's answer; the status waits for git's first bytes (or its end).

        Waiting means a git that fails before saying anything still gets a real
        answer: an ``ERR`` pkt-line git shows as ``remote error: ...``; a git
        that fails later gets the run's late error, in-band.
        """
        run = self.run
        assert run is not None
        self.set_header("Content-Type", content_type)
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        try:
            outcome = await run.answer(self, preamble)
        except GitAccessError as exc:  # 503: git could not start; nothing was sent
            self.refuse(exc)
            return
        if outcome.peer_gone or outcome.cut_short:
            # cut_short: git failed inside a pack whose packet boundaries went by
            # unseen: no in-band error can be placed, so the answer is cut short
            # (no final chunk) and the client cannot take it for complete.
            self._abandon()
        elif not self._finished:
            self.finish()

    def compute_etag(self) -> None:
        """No ``Etag``: git's answers are ``no-cache``, and hashing a cached one costs a SHA-1."""
        return None

    def _abandon(self) -> None:
        """End an answer that cannot be completed: the connection goes, the access log says so."""
        if self._finished:
            return
        self.aborted = True
        self._log()
        if self.request.connection is not None:
            self.request.connection.close()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self.run is not None:
            self.run.peer_gone()

    def on_finish(self) -> None:
        # Every path ends here or in on_connection_close: never leave git behind.
        if self.run is not None:
            self.run.close()


class InfoRefsHandler(_ServiceHandler):
    """``GET <repo>/info/refs?service=git-X``; without ``service`` the dumb file."""

    ALLOWED = ("GET",)

    async def get(self, repo: str) -> None:
        service = self.get_query_argument("service", None)
        if service is None:
            self.session = await self.decide(repo, READ)
            await send_info_refs(self, self.session, self.engine)
            return
        self.service = self._service(service)
        self._git_protocol_value = self._git_protocol()
        self.session = await self.decide(repo, self.service.right)
        self.run = await self._start(advertise=True)
        preamble = b""
        if protocol_version(self._git_protocol_value) != 2:
            preamble = pktline.encode(f"# service={self.service.name}\n".encode()) + pktline.FLUSH
        await self._answer(self.service.advertisement_type, preamble)


@tornado.web.stream_request_body
class RPCHandler(_ServiceHandler):
    """``POST <repo>/git-upload-pack`` and ``POST <repo>/git-receive-pack``."""

    ALLOWED = ("POST",)
    #: Until prepare() accepted the request, body bytes are not ours to look at.
    _failed = True
    _in_post = False
    #: A refusal decided before a small body arrived, answered once it has (keep-alive).
    _deferred: GitAccessError | None = None
    #: Bodies up to this size are read (and dropped) before a refusal is answered.
    _DRAIN_LIMIT = 64 * 1024

    def _body_unread(self) -> bool:
        return self.request.method == "POST" and not self._in_post

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return  # Tornado answers 405 once the (empty) body is read: keep-alive
        try:
            await self._prepare()
        except GitAccessError as exc:
            if self._small_body():
                # git's auth probe and small fetch requests: read the few bytes, then
                # answer, and the connection serves the next request.
                self._deferred = exc
                self.request.connection.set_max_body_size(self._DRAIN_LIMIT)
                return
            raise

    async def _prepare(self) -> None:
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
        limit = self.engine.input_limit(self.service)
        length = self.request.headers.get("Content-Length")
        if (
            limit is not None
            and self._inflater is None
            and length is not None
            and length.isdigit()
            and int(length) > limit
        ):
            # Refused before git starts; Tornado reads (and drops) the body, so the
            # client reads this answer instead of a reset connection.
            raise PayloadTooLarge(
                f"{self.service.name} request of {length} bytes is larger than the limit of {limit} bytes"
            )
        self.request.connection.set_max_body_size(_UNBOUNDED)
        # upload-pack requests are pkt-lines from end to end; a push is pkt-line
        # commands up to a flush, then pack data passed through unread.
        self._scanner = pktline.Scanner(until_flush=self.service.right == WRITE)
        self._noted = False
        # A fetch request is spooled by the run (small, answered only once whole;
        # git starts on it at the answer); a push streams into git as it arrives.
        self.run = await self._start()
        self._failed = False

    async def data_received(self, chunk: bytes) -> None:
        # Never raise from here: Tornado would log it as an uncaught exception.
        if self._failed:
            return
        try:
            loop = asyncio.get_running_loop()
            self._slice_start = loop.time()
            if self._inflater is None:
                await self._feed(chunk)
                return
            data = self._inflater.decompress(chunk, _INFLATE_STEP)
            while True:
                await self._feed(data)
                tail = self._inflater.unconsumed_tail
                if not tail or self._failed:
                    break
                data = self._inflater.decompress(tail, _INFLATE_STEP)
        except zlib.error:
            self._fail(BadRequest("request body is not valid gzip"))
        except pktline.PktLineError as exc:
            self._fail(BadRequest(f"malformed request: {exc}"))
        except GitAccessError as exc:
            self._fail(exc)
        except PeerGone:
            self._failed = True

    async def _feed(self, data: bytes) -> None:
        # The pkt-lines are checked in small steps with a turn of the loop between
        # them once a slice is used up: a body of tiny pkt-lines (or a gzip bomb
        # of them) costs a Python step per packet, and others must not wait. A
        # push's pack, after its commands, is not checked: it goes to git whole.
        if not data:
            return
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        for start in range(0, len(view), _INFLATE_STEP):
            if self._scanner.done:
                break
            if loop.time() - self._slice_start > _SLICE:
                await asyncio.sleep(0)
                self._slice_start = loop.time()
                if self._failed:
                    return
            self._scanner.feed(view[start : start + _INFLATE_STEP])
        if not self._noted and self._scanner.first is not None:
            self._noted = True
            self.run.note_request(self._scanner.first)
        # False when git stopped reading: it failed and says why in its answer,
        # which post() relays. The rest of the body is still checked, not sent.
        await self.run.feed(data)

    def _fail(self, exc: GitAccessError) -> None:
        self._failed = True
        if self.run is not None:
            self.run.close(reason=f"refused: {exc.status} {exc}")
        if not self._in_post and self._small_body():
            self._deferred = exc  # answered from post() once the rest is read: keep-alive
            return
        self.refuse(exc)

    def _small_body(self) -> bool:
        length = self.request.headers.get("Content-Length", "")
        return (
            length.isdigit()
            and int(length) <= self._DRAIN_LIMIT
            and "Transfer-Encoding" not in self.request.headers
        )

    async def post(self, repo: str, service: str) -> None:
        self._in_post = True
        if self._deferred is not None:
            self.refuse(self._deferred)
            return
        if self._failed:
            return
        if self._inflater is not None and not self._inflater.eof:
            self._fail(BadRequest("request body is truncated gzip"))
            return
        if self._scanner.pending:
            self._fail(BadRequest("request body ends inside a pkt-line"))
            return
        self.run.end_input()
        await self._answer(self.service.result_type)
