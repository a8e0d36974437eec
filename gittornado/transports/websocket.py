"""The ws:// transport: git's own protocol over one WebSocket per service run.

A translator over the engine (``Engine.start`` -> ``GitRun``), like
``smarthttp``, with a full-duplex wire instead of request/response pairs: the bytes are those of
``git://`` or SSH (``gitprotocol-pack``, ``gitprotocol-v2``), not the
``--stateless-rpc`` dialect of ``gitprotocol-http``. The client is the
``git-remote-ws`` helper (``gittornado.remote_helper``); the wire it speaks:

* ``GET <repo>/<service>`` with ``Upgrade: websocket``, ``Authorization: Basic``
  when it has credentials, and ``Git-Protocol`` as over HTTP. The session is
  decided *before* the upgrade by the same gate as HTTP, so a refusal is an
  ordinary HTTP answer: 401 with ``WWW-Authenticate`` (the helper then asks
  git's credential helpers), 403, 404, 400 (bad service, malformed
  ``Git-Protocol``), 429. git starts before the upgrade too, in a process
  slot like every other run: no slot in time, or no git (out of descriptors
  or processes), is a 503 with ``Retry-After``, never a dropped connection.
* After ``101``: binary frames carry git's stdin (client to server) and stdout
  (server to client) unchanged; where frames split the stream means nothing.
  An *empty* binary frame from the client is end of input (git's stdin
  closes): the half-close WebSocket itself lacks. It tells the engine the
  input is whole, so a push whose client then vanishes still completes.
* The server closes once git's output ended: ``1000`` when git succeeded,
  ``4500`` with a reason when it failed (the same late error also goes in-band
  first, so git itself shows ``remote: ...``); ``4400`` for input that is not
  git's (a text frame, a malformed first pkt-line), ``4413`` past the input
  cap, ``4408`` when the run gave up on an idle client, ``1009`` (Tornado) for
  a frame over ``websocket_max_message_size``. Codes 4xxx are 4000 + the HTTP
  status the same fault gets over HTTP.

Backpressure both ways: ``on_message`` is a coroutine that returns once git's
pipe took the frame, and Tornado reads no further frame until it has. git's
output goes out as it does over plain HTTP: on a plain socket, once the pack
flows, the engine splices it from git's pipe into the socket, one binary frame
per piece (the Python process spends as little CPU per clone as for HTTP); the
small answers before it, and everything over TLS, are relayed through Tornado,
read from git only once the previous frame was flushed. While the kernel
writes, whatever Tornado itself would write (a pong, a close frame) is
held and sent between two frames. Compression is off (packs are compressed
already, and a deflated frame's size says nothing about the memory it takes).
Pings keep idle proxies from cutting a long pack generation (git's own
side-band keepalives do too); they only keep the connection warm: deciding
when a client is gone is the engine's (its idle timers), so there is no pong
timeout by default.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.routing
import tornado.websocket
from tornado.httputil import HTTPServerRequest
from tornado.iostream import IOStream, StreamClosedError

from ..access.gate import Session
from ..engine.output import Splice
from ..engine.run import GitRun
from ..errors import BadRequest, GitAccessError
from ..protocol import pktline
from ..protocol.services import Service, service_for, valid_git_protocol
from ..protocol.wsframe import frame_header
from .httpbase import GitHandler

__all__ = [
    "GitWebSocketHandler",
    "WebSocketUpgrade",
    "CLOSE_OK",
    "CLOSE_FAILED",
    "CLOSE_BAD_INPUT",
    "CLOSE_TOO_LARGE",
    "CLOSE_IDLE",
]

app_log = logging.getLogger("gittornado.application")

#: Close codes (RFC 6455 7.4.2 leaves 4000-4999 to applications): 4000 + HTTP status.
CLOSE_OK = 1000
CLOSE_BAD_INPUT = 4400
CLOSE_IDLE = 4408
CLOSE_TOO_LARGE = 4413
CLOSE_FAILED = 4500

#: Largest frame accepted (``websocket_max_message_size`` overrides): Tornado
#: holds a whole frame in memory before ``on_message`` sees it. The helper
#: sends at most 64 KiB per frame.
MAX_FRAME = 1024 * 1024
#: Seconds between pings (``websocket_ping_interval`` overrides; 0 turns them off).
PING_INTERVAL = 30.0
#: A close reason must fit the 125-byte control frame with its 2-byte code.
_MAX_REASON = 123


def _reason(text: str) -> str:
    data = text.encode("utf-8")[:_MAX_REASON]
    return data.decode("utf-8", "ignore")


class _HeldWrites:
    """Stands in for a WebSocket's stream while git's output is spliced into its socket.

    Reads and everything else go to the stream; what Tornado writes (pongs,
    pings, a close frame) is held and handed to the splice pump, which sends it
    between two frames (``frame``, called on the pump's thread).
    """

    def __init__(self, stream: IOStream, stop: Callable[[], None]) -> None:
        self._stream = stream
        self._stop = stop
        self._held: collections.deque[bytes] = collections.deque()  # thread-safe append/popleft
        #: Tornado closed the connection: it closes once the held bytes are out.
        self.closing = False

    def close(self, exc_info: Any = False) -> None:
        # A close frame (1009, a protocol error) is held: stop the splice first,
        # then it goes out and the stream closes (``release``).
        self.closing = True
        self._stop()

    def closed(self) -> bool:
        return self.closing or self._stream.closed()

    def release(self) -> None:
        """The splice is over: send what was held, close if Tornado asked to."""
        rest = self.take()
        if rest and not self._stream.closed():
            self._stream.write(rest).add_done_callback(_retrieve)
        if self.closing:
            self._stream.close()

    def write(self, data: bytes | memoryview) -> asyncio.Future:
        self._held.append(bytes(data))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def take(self) -> bytes:
        parts = []
        while self._held:
            parts.append(self._held.popleft())
        return b"".join(parts)

    def frame(self, n: int) -> bytes:
        return self.take() + frame_header(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _retrieve(future: asyncio.Future) -> None:
    """Mark a write's failure as seen (the code awaiting the next write handles it)."""
    if not future.cancelled():
        future.exception()


class WebSocketUpgrade(tornado.routing.PathMatches):
    """A path pattern that matches only a ``GET`` asking for ``Upgrade: websocket``.

    Routed before the smart HTTP RPC route on the same URLs, so a POST (or a
    plain GET, 405 there) never reaches the WebSocket handler.
    """

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:  # type: ignore[override]
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


class GitWebSocketHandler(tornado.websocket.WebSocketHandler, GitHandler):
    """``GET <repo>/git-upload-pack|git-receive-pack|git-upload-archive`` upgraded to ws://.

    Configured like the HTTP handlers (``config=GitConfig(...)`` or its
    keywords): the gate, git, the input caps (``upload_pack_limit`` for the
    whole input of a read session, ``receive_pack_limit`` for a push) and the
    idle timeouts (``body_idle_timeout``: git waits for the client;
    ``send_timeout``: the client takes none of git's output).
    """

    ALLOWED = ("GET",)
    transport = "ws"
    service: Service
    session: Session
    run: GitRun | None = None
    _git_protocol_value: str | None = None
    _pump: asyncio.Task | None = None
    _ended = False
    _noted = False

    # -- before the upgrade: an ordinary HTTP request ---------------------------------
    async def get(self, repo: str, service: str) -> None:
        svc = service_for(service, transport="ws")
        if svc is None:
            raise BadRequest(f"unsupported service {service!r}")
        value = self.request.headers.get("Git-Protocol")
        if value is not None and not valid_git_protocol(value):
            raise BadRequest("malformed Git-Protocol header")
        self.service, self._git_protocol_value = svc, value
        self.session = await self.decide(repo, svc.right)
        # git starts before the upgrade: no slot or no git is still an HTTP answer (503).
        self.run = await self.engine.start(
            self.session,
            svc,
            transport="ws",
            remote_addr=self.request.remote_ip or "",
            git_protocol=value,
            stateless=False,
            on_abort=self._drop,
        )
        try:
            await super().get(repo, service)  # the upgrade (or Tornado's 400/403/426)
        finally:
            if self.ws_connection is None:
                self.run.close(reason="refused: not a WebSocket upgrade")

    @property
    def ping_interval(self) -> float | None:
        return self.settings.get("websocket_ping_interval", PING_INTERVAL)

    @property
    def ping_timeout(self) -> float | None:
        # 0: no pong deadline. Tornado reads no pong while on_message waits for a
        # busy git, so a deadline would cut legitimate backpressure.
        return self.settings.get("websocket_ping_timeout", 0)

    @property
    def max_message_size(self) -> int:
        return self.settings.get("websocket_max_message_size", MAX_FRAME)

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # never permessage-deflate (see the module docstring)

    # -- after the upgrade: frames <-> the run ------------------------------------------
    def open(self, repo: str, service: str) -> None:
        self.set_nodelay(True)  # negotiation is many small packets each way
        self._scanner = pktline.Scanner()
        self._pump = asyncio.ensure_future(self._send_output())

    async def on_message(self, message: str | bytes) -> None:
        run = self.run
        if run is None or self._ended:
            return
        if isinstance(message, str):
            self._refuse(CLOSE_BAD_INPUT, "text frame: git's data goes in binary frames")
            return
        if not message:
            run.end_input()  # the client's half-close
            return
        try:
            if not self._noted:
                self._scanner.feed(message)
                if self._scanner.first is not None:
                    self._noted = True
                    run.note_request(self._scanner.first)
            # False once git stopped reading: it failed and says why on its way out.
            await run.feed(message)
        except pktline.PktLineError as exc:
            self._refuse(CLOSE_BAD_INPUT, f"malformed request: {exc}")
        except GitAccessError as exc:  # PayloadTooLarge
            self._refuse(4000 + exc.status, str(exc))

    def on_close(self) -> None:
        # Every upgraded connection ends here: never leave git behind.
        run = self.run
        if run is not None:
            run.peer_gone()
            run.close()

    async def _send_output(self) -> None:
        """git's answer -> binary frames (the engine's loop); then close with its outcome."""
        outcome = await self.run.answer(self)
        if outcome.peer_gone:
            return
        if outcome.abort_reason is not None:
            self._end(CLOSE_IDLE, outcome.abort_reason)
        elif outcome.exit_status != 0:
            # The late error went in-band first (unless git failed where none could be
            # placed: inside a pack that went by unseen); the code says it either way.
            self._end(CLOSE_FAILED, f"{self.service.name} failed on the server (see its log)")
        else:
            self._end(CLOSE_OK, "")

    # -- the run's Wire ------------------------------------------------------------------
    closed_errors = (StreamClosedError, tornado.websocket.WebSocketClosedError)

    _in_flight: asyncio.Future | None = None

    def send(self, data: bytes, last: bool = False) -> Awaitable[None]:
        """A binary frame; done once the frame before it is flushed (one in flight while
        the engine reads the next from git: the socket never waits for a Python step)."""
        before = self._in_flight
        if data:  # an empty frame would mean nothing here: never sent
            self._in_flight = sent = self.write_message(data, binary=True)
            sent.add_done_callback(_retrieve)  # its failure is the next send's too
        else:
            self._in_flight = None
        if before is None:
            before = asyncio.get_running_loop().create_future()
            before.set_result(None)
        return before

    def splice_target(self) -> Splice | None:
        """The plain socket git's output may be spliced into, or None to relay (TLS).

        Tornado must not write to the socket meanwhile (a pong or a close could
        land inside a frame): its stream is swapped for one that holds what
        Tornado writes, and the pump sends that between two frames (or it goes
        at the end, in ``release``).
        """
        protocol = self.ws_connection
        stream = getattr(protocol, "stream", None)
        if type(stream) is not IOStream or stream.socket is None:
            return None
        held = _HeldWrites(stream, self.run.peer_gone)
        protocol.stream = held  # type: ignore[union-attr]

        def release() -> None:
            protocol.stream = stream  # type: ignore[union-attr]
            held.release()

        return Splice(stream.socket, held.frame, b"", release)

    def _refuse(self, code: int, reason: str) -> None:
        """Input that is not git's: stop git (nothing half-done is kept), then say why."""
        app_log.info("ws %s %s: closing with %d: %s", self.service.name, self.request.path, code, reason)
        if self.run is not None:
            self.run.close(reason=f"refused: {code} {reason}")
        self._end(code, reason)

    def _drop(self, reason: str) -> None:
        """The run gave up on this client (an idle timer): say so and hang up."""
        self._end(CLOSE_IDLE, reason)

    def _end(self, code: int, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.close(code, _reason(reason) if reason else None)
