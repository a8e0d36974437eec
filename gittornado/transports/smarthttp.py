"""Smart HTTP (``gitprotocol-http``): the ``info/refs`` advertisement and the RPC POSTs.

A translator over the engine (``gitproc.GitRun``): it turns HTTP into a
decided session plus a git run and back. Request bodies stream into the run as
they arrive (chunked or not; gzip inflated here, in bounded steps that yield to
the loop, so bad gzip is a 400 and a bomb cannot hold the server), with
Tornado's flow control: ``data_received`` returns only when git took the
bytes. Every HTTP/1.1 answer is chunked, so every client library and proxy
can tell where it ends and the connection serves the next request; on plain
sockets the pack moves from git's pipe into the socket inside the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib

import tornado.web
from tornado.iostream import IOStream, StreamClosedError

from ..access.gate import Session
from ..engine.advertcache import Ticket, is_ls_refs, request_key
from ..engine.run import GIT_OPTIONS, GitRun, PeerGone
from ..errors import BadRequest, GitAccessError, PayloadTooLarge
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

    def _new_run(
        self, *, advertise: bool = False, spool: bool = False, input_limit: int | None = None
    ) -> GitRun:
        config = self.config
        return GitRun(
            self.session,
            self.service,
            transport=self.transport,
            remote_addr=self.request.remote_ip or "",
            git_protocol=self._git_protocol_value,
            advertise=advertise,
            spool=spool,
            git=self.git,
            input_limit=input_limit,
            input_idle=config.body_idle_timeout or None,
            output_idle=config.send_timeout or None,
            on_abort=self._drop,
            options=config.git_options(self.service),
        )

    def _drop(self, reason: str) -> None:
        """The run gave up on this client: hang up (the reason is in the run's log line)."""
        self._failed = True
        # The stream, not the HTTP connection: closing the connection drops its
        # write callbacks, and a flush() waiting on a stuck client never returns.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.close()

    def _splice_socket(self):
        """The plain socket to splice the answer into, or None to relay through Python.

        Only for HTTP/1.1 (chunked) on a plain TCP stream: TLS must encrypt in
        Python, and an HTTP/1.0 answer ends with the connection anyway.
        """
        if not self.config.direct_output or not hasattr(os, "splice") or self.request.version != "HTTP/1.1":
            return None
        stream = getattr(self.request.connection, "stream", None)
        if type(stream) is not IOStream or stream.socket is None:
            return None
        return stream.socket

    async def _answer(self, content_type: str, preamble: bytes = b"", ticket: Ticket | None = None) -> None:
        """Send git's answer; the status waits for git's first bytes (or its end).

        Waiting means a git that fails before saying anything still gets a real
        answer: an ``ERR`` pkt-line git shows as ``remote error: ...``. A git
        that fails later gets the run's late error, framed for where its answer
        stands (ERR or side-band 3). With a ``ticket`` (an advertisement cache
        miss) the answer is relayed through Python and kept, and stored if git
        succeeded.
        """
        run = self.run
        assert run is not None
        self.set_header("Content-Type", content_type)
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        try:
            await run.output_ready()
            if preamble and not run.output_ended():
                self.write(preamble)
            else:
                preamble = b""
            sock = self._splice_socket() if ticket is None else None
            if sock is not None:
                await self.flush()
                await run.splice_into(sock, _chunk_header, b"\r\n")
            elif ticket is not None:
                await self._relay_and_store(run, ticket, preamble)
            else:
                while chunk := await run.read():
                    self.write(chunk)
                    await self.flush()
            await run.wait()
            trailer = run.trailer()
            if trailer is None:
                # git failed inside a pack whose packet boundaries went by unseen:
                # no in-band error can be placed, so the answer is cut short
                # (no final chunk) and the client cannot take it for complete.
                self._abandon()
                return
            if trailer:
                self.write(trailer)
            self.finish()
        except (StreamClosedError, PeerGone):
            run.peer_gone()
            self._abandon()

    # -- the advertisement cache (gittornado.advertcache) ---------------------------------
    def _advert_cache(self):
        """The advertisement cache when this request's answer may come from it, else None.

        upload-pack only: receive-pack's advertisement carries ``.have`` lines
        from the alternates' refs (other repositories, not in the state) and,
        with push certificates, a nonce that changes with time.
        """
        cache = self.config.advert_cache
        if cache is None or self.service.subcommand != "upload-pack":
            return None
        return cache

    def _advert_lookup(self, cache, body: bytes | None) -> tuple[bytes | None, Ticket | None]:
        """Look this request up (after the gate decided: the cache never answers a refusal)."""
        request = request_key(
            self.service.name,
            self._git_protocol_value,
            body,
            self.session.env,
            self.git,
            GIT_OPTIONS + self.config.git_options(self.service),
        )
        return cache.lookup(self.session.repo.path, request, git=self.git, env=self.session.env)

    def compute_etag(self) -> None:
        """No ``Etag``: git's answers are ``no-cache``, and hashing a cached one costs a SHA-1."""
        return None

    def _send_cached(self, content_type: str, answer: bytes) -> None:
        """A cache hit: the same headers and bytes as git's answer, with a Content-Length."""
        self.set_header("Content-Type", content_type)
        for k, v in NO_CACHE.items():
            self.set_header(k, v)
        self.finish(answer)

    async def _relay_and_store(self, run: GitRun, ticket: Ticket, preamble: bytes) -> None:
        """Relay git's answer through Python, and store it if it is whole, successful and not too big."""
        kept: list[bytes] | None = [preamble]
        size = len(preamble)
        limit = self.config.advert_cache.max_entry
        while chunk := await run.read():
            self.write(chunk)
            await self.flush()
            if kept is not None:
                size += len(chunk)
                if size <= limit:
                    kept.append(chunk)
                else:
                    kept = None
        await run.wait()
        if not kept or len(kept) < 2 or run.exit_status != 0 or run.abort_reason or run.trailer() != b"":
            return
        # Complete from git's side even when the client hung up right after the
        # last flush (dulwich does, without reading the final chunk).
        if pktline.complete_with_flush(b"".join(kept[1:])):
            self.config.advert_cache.store(ticket, b"".join(kept))

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
            await send_info_refs(self, self.session, git=self.git)
            return
        self.service = self._service(service)
        self._git_protocol_value = self._git_protocol()
        self.session = await self.decide(repo, self.service.right)
        ticket = None
        cache = self._advert_cache()
        if cache is not None:
            answer, ticket = self._advert_lookup(cache, None)
            if answer is not None:
                self._send_cached(self.service.advertisement_type, answer)
                return
        self.run = self._new_run(advertise=True)
        preamble = b""
        if protocol_version(self._git_protocol_value) != 2:
            preamble = pktline.encode(f"# service={self.service.name}\n".encode()) + pktline.FLUSH
        await self._answer(self.service.advertisement_type, preamble, ticket)


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
        fetch = self.service.right == READ
        limit = self.config.upload_pack_limit if fetch else self.config.receive_pack_limit
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
        # A fetch request is small and git answers only once it has all of it:
        # the run spools it (checked whole before git starts). A push streams
        # into git as it arrives: it may be gigabytes.
        if fetch and protocol_version(self._git_protocol_value) == 2 and self._advert_cache() is not None:
            # Maybe an ls-refs the advertisement cache answers: held until post() knows.
            self.run = _HeldRequest(self, limit)
        else:
            self.run = self._new_run(spool=fetch, input_limit=limit)
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
        ticket = None
        if isinstance(self.run, _HeldRequest):
            answered, ticket = await self._ls_refs()
            if answered:
                return
        self.run.end_input()
        await self._answer(self.service.result_type, ticket=ticket)

    async def _ls_refs(self) -> tuple[bool, Ticket | None]:
        """A held v2 request at its end: answer an ``ls-refs`` from the cache, or start git.

        Returns whether the request is answered, and the ticket to store git's
        answer with on a cacheable miss. ``command=fetch`` is never cached here.
        """
        held = self.run
        assert isinstance(held, _HeldRequest)
        body = bytes(held.body)
        held.discard()
        self.run = None
        ticket = None
        cache = self._advert_cache()
        if cache is not None and is_ls_refs(body):
            answer, ticket = self._advert_lookup(cache, body)
            if answer is not None:
                self._send_cached(self.service.result_type, answer)
                return True, None
        try:
            self.run = held.start_run()
            await self.run.feed(body)
        except GitAccessError as exc:
            self._fail(exc)
            return True, None
        return False, ticket


#: The most of a held v2 request kept in memory before it becomes a spooled git run.
_HOLD_LIMIT = 64 * 1024
_LS_REFS_FIRST = (b"command=ls-refs\n", b"command=ls-refs")


class _HeldRequest:
    """A v2 upload-pack request held in memory until it is known to be an ``ls-refs``.

    Stands in for the handler's ``GitRun`` (``feed``, ``note_request``,
    ``close``, ``peer_gone``), so the body path is the same. An ``ls-refs``
    stays here to ``post()``, which answers it from the advertisement cache:
    no git, no spool file, no audit line for a hit. Anything else (a
    ``command=fetch``), a body over ``_HOLD_LIMIT`` or over the request limit
    becomes a spooled ``GitRun`` as soon as it shows, fed what came so far;
    the handler talks to that run from then on. Until then the body idle
    timeout is kept here, and a request refused or dropped while held gets
    the audit line an unstarted run gives.
    """

    def __init__(self, handler: RPCHandler, limit: int | None) -> None:
        self.handler = handler
        self.limit = limit
        self.body = bytearray()
        self.first: bytes | None = None
        self._over = _HOLD_LIMIT if limit is None else min(_HOLD_LIMIT, limit)
        self._done = False
        self._idle = handler.config.body_idle_timeout or None
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(self._idle, self._check_idle) if self._idle else None

    def note_request(self, first: bytes | None) -> None:
        self.first = first

    async def feed(self, data: bytes) -> bool:
        self._last = asyncio.get_running_loop().time()
        self.body += data
        if len(self.body) > self._over or (self.first is not None and self.first not in _LS_REFS_FIRST):
            run = self.start_run()
            self.handler.run = run
            return await run.feed(bytes(self.body))
        return True

    def start_run(self) -> GitRun:
        """The real (spooled) run this request becomes; the caller feeds it the body."""
        self.discard()
        run = self.handler._new_run(spool=True, input_limit=self.limit)
        if self.first is not None:
            run.note_request(self.first)
        return run

    def discard(self) -> None:
        """Done holding: the request was answered, or handed to a run."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, reason: str | None = None) -> None:
        if self._done:
            return
        try:
            run = self.start_run()
        except GitAccessError:
            return
        self.handler.run = run
        run.close(reason=reason)

    def peer_gone(self) -> None:
        self.close()

    def _check_idle(self) -> None:
        self._timer = None
        if self._done:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last
        if idle < self._idle:
            self._timer = loop.call_later(self._idle - idle, self._check_idle)
            return
        reason = f"no request data for {idle:.0f}s"
        app_log.warning(
            "git %s repo=%s user=%s: %s",
            self.handler.service.name,
            self.handler.session.repo.name,
            self.handler.session.user or "-",
            reason,
        )
        self.close(reason)
        self.handler._drop(reason)
