"""The HTTP server, with the connection limits a public git server needs.

An attack run against Tornado's plain ``HTTPServer`` found: no cap on open
connections, idle and header timeouts of an hour (100 slowloris connections
all still open after 40 s), and at the descriptor limit an accept loop that
failed on every turn, at 100% CPU, with a traceback each time (43 MB of log
every 5 s). ``GitHTTPServer`` is ``HTTPServer`` plus:

* **Timeouts that fit git.** A request's headers must arrive within
  ``header_timeout`` seconds (counted from the connection's start for its
  first request, from the first byte for later ones); a keep-alive connection
  may idle ``idle_timeout`` seconds between requests. git sends its headers at
  once and reuses a connection within one operation (including while the user
  types a password), so seconds and minutes.
* **Connection caps** per worker and per peer address, refused with a
  readable ``503`` and ``Retry-After`` (not a reset), logged once per episode.
* **Accepting pauses at the descriptor limit** (``EMFILE``/``ENFILE``): the
  listening sockets are left alone for ``accept_pause`` seconds at a time,
  with one log line when it starts and one when it ends.

Request bodies are watched elsewhere: the git engine drops a push or fetch
whose body stalls (``body_idle_timeout``).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.httputil
from tornado import gen
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from ..transports.chunked import FastBodyConnection

__all__ = ["GitHTTPServer", "default_max_connections", "raise_open_file_limit"]

log = logging.getLogger("gittornado.general")

#: accept() errors that mean "no descriptor (or memory) for another connection".
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Connections taken per wake-up of a listening socket (Tornado's own figure).
_ACCEPT_BATCH = 128
#: Refusals being written at once; beyond, a refused connection is just closed.
_MAX_REFUSING = 64
#: Seconds a refused client gets to read its 503 before the socket closes.
_REFUSAL_LINGER = 1.0
#: Descriptors kept back from connections for git's pipes, files and the server itself.
_FD_RESERVE = 64
#: Largest piece of a request body read and handed to a handler at once (Tornado: 64 KiB).
#: With ``gittornado.chunked`` a push costs a loop turn per piece, not per ~23 KiB chunk;
#: 1 MiB saved no more CPU and added ~7 MiB to the peak RSS during a push.
_CHUNK_SIZE = 256 * 1024


def raise_open_file_limit(target: int = 65536) -> int:
    """Raise the soft open-file limit towards the hard one (at most ``target``); the new soft limit.

    Tornado polls with epoll, not select(), so descriptors past 1024 are fine;
    many systems still start services with a soft limit of 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(limit: int | None = None) -> int:
    """Connections per worker by default: half the descriptors left after a reserve.

    The other half is for git: each running git holds a few pipes and files
    in the server. Never fewer than 8 (a tiny limit is then reached by
    descriptors, and accepting pauses), never more than 10,000.
    """
    if limit is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return 10_000
    return max(8, min(10_000, (limit - _FD_RESERVE) // 2))


class _Episode:
    """One log line when trouble starts, one when it ends (with a count), none between.

    It ends only after ``quiet`` seconds without trouble, so a server held at
    its limit (room made and taken again many times a second) logs one
    episode, not two lines per connection.
    """

    def __init__(self, start: str, end: str, level: int = logging.WARNING) -> None:
        self._start, self._end, self._level = start, end, level
        self.active = False
        self.count = 0
        self.since = self.last = 0.0

    def hit(self, *args: Any) -> None:
        self.count += 1
        self.last = time.monotonic()
        if not self.active:
            self.active, self.since = True, self.last
            log.log(self._level, self._start, *args)

    def quiet(self, now: float, seconds: float) -> bool:
        return self.active and now - self.last >= seconds

    def over(self) -> None:
        if self.active:
            log.info(self._end, self.count, time.monotonic() - self.since)
            self.active, self.count = False, 0


@dataclass
class _Conn:
    """What the server knows of one open connection."""

    ip: str
    opened: float
    #: Waiting for a request's headers since (None: a request is being handled).
    waiting_since: float | None = None
    #: When bytes of the awaited request were first seen (None: none yet).
    partial_since: float | None = None
    first: bool = True
    detached: bool = False


class _Watched(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through, noting when its headers are complete."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, conn: _Conn) -> None:
        self._delegate, self._conn = delegate, conn

    def headers_received(self, start_line, headers):
        self._conn.waiting_since = self._conn.partial_since = None
        self._conn.first = False
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


class GitHTTPServer(tornado.httpserver.HTTPServer):
    """``HTTPServer`` with header/idle timeouts, connection caps and a calm accept loop.

    :arg max_connections: open connections this process serves (None or 0: no cap).
    :arg max_connections_per_ip: open connections per peer address (None or 0:
        no cap). Behind a reverse proxy the peer is the proxy: leave it off there.
    :arg header_timeout: seconds a request's headers may take (None: only the idle timeout).
    :arg idle_timeout: seconds a keep-alive connection may wait for its next request.
    :arg accept_pause: seconds accepting stops when the process is out of descriptors.
    :arg retry_after: the ``Retry-After`` of a refused connection.

    Every other keyword goes to ``HTTPServer`` (``xheaders``, ``ssl_options``, ...).
    """

    def initialize(
        self,
        request_callback: Any,
        *,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        header_timeout: float | None = 20.0,
        idle_timeout: float = 120.0,
        accept_pause: float = 1.0,
        retry_after: int = 5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("idle_connection_timeout", idle_timeout)
        kwargs.setdefault("chunk_size", _CHUNK_SIZE)
        super().initialize(request_callback, **kwargs)
        self.max_connections = max_connections or None
        self.max_connections_per_ip = max_connections_per_ip or None
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.accept_pause = accept_pause
        self.retry_after = retry_after
        #: Seconds without refusals (or pauses) before an episode's end is logged.
        self.episode_quiet = 10.0
        self._conns: dict[IOStream, _Conn] = {}
        self._per_ip: dict[str, int] = {}
        self._refusing = 0
        self._sweeper: PeriodicCallback | None = None
        self._paused = False
        self._closed_listeners = False
        self._timed_out = 0
        self._timeout_logged = 0.0
        self._full = _Episode(
            "connection cap reached (%d open): refusing new connections with 503",
            "below the connection cap again: %d connections refused in %.0fs",
        )
        self._crowded: dict[str, _Episode] = {}
        self._no_fds = _Episode(
            "out of file descriptors (%s) with %d connections open: accepting paused",
            "accepting again: %d pauses for want of descriptors over %.0fs",
        )

    # -- figures ----------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def connections_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    # -- accepting ---------------------------------------------------------------------------
    def add_sockets(self, sockets) -> None:
        """Like ``TCPServer.add_sockets``, with an accept handler that pauses instead of spinning."""
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._listen(sock)

    def _listen(self, sock: socket.socket) -> Callable[[], None]:
        loop = IOLoop.current()

        def accept(fd: Any, events: int) -> None:
            for _ in range(_ACCEPT_BATCH):
                if self._paused or self._closed_listeners:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno in _OUT_OF_FDS:
                        self._pause(errno.errorcode.get(exc.errno, str(exc.errno)))
                        return
                    raise
                self._handle_connection(connection, address)

        def remove() -> None:
            self._closed_listeners = True
            loop.remove_handler(sock)

        loop.add_handler(sock, accept, IOLoop.READ)
        return remove

    def _pause(self, code: str) -> None:
        """Stop accepting for ``accept_pause`` seconds; the kernel queues new connections meanwhile."""
        self._no_fds.hit(code, len(self._conns))
        self._sweeping()
        self._paused = True
        loop = IOLoop.current()
        for sock in self._sockets.values():
            loop.remove_handler(sock)
        loop.call_later(self.accept_pause, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self._closed_listeners:
            return
        for fd, sock in list(self._sockets.items()):
            self._handlers[fd] = self._listen(sock)

    def stop(self) -> None:
        self._closed_listeners = True
        super().stop()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    # -- connections ---------------------------------------------------------------------
    def handle_stream(self, stream: IOStream, address: Any) -> None:
        ip = address[0] if isinstance(address, tuple) and address else ""
        if self.max_connections is not None and len(self._conns) >= self.max_connections:
            self._full.hit(len(self._conns))
            self._refuse(stream, "the server has too many open connections")
            return
        per_ip = self.max_connections_per_ip
        if per_ip is not None and ip and self._per_ip.get(ip, 0) >= per_ip:
            episode = self._crowded.get(ip)
            if episode is None and len(self._crowded) < 1000:
                episode = self._crowded[ip] = _Episode(
                    f"address {ip} reached its cap of %d open connections: refusing more with 503",
                    f"address {ip} below its connection cap again: %d connections refused in %.0fs",
                )
            if episode is not None:
                episode.hit(per_ip)
            self._refuse(stream, "too many open connections from your address")
            return
        self._conns[stream] = _Conn(ip=ip, opened=time.monotonic())
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._sweeping()
        super().handle_stream(stream, address)

    def _sweeping(self) -> None:
        if self._sweeper is None and not self._closed_listeners:
            quick = self.header_timeout is not None and self.header_timeout < 5
            self._sweeper = PeriodicCallback(self._sweep, 250 if quick else 1000)
            self._sweeper.start()

    def start_request(self, server_conn: Any, request_conn: Any) -> tornado.httputil.HTTPMessageDelegate:
        if type(request_conn) is HTTP1Connection:
            # Same connection, a cheaper chunked-body reader (gittornado.chunked);
            # swapped before it reads anything of the request.
            request_conn.__class__ = FastBodyConnection
        delegate = super().start_request(server_conn, request_conn)
        conn = self._conns.get(getattr(server_conn, "stream", None))
        if conn is None:
            return delegate
        conn.waiting_since, conn.partial_since = time.monotonic(), None
        return _Watched(delegate, conn)

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        stream = getattr(server_conn, "stream", None)
        conn = self._conns.get(stream)
        if conn is None:
            return
        if stream.closed():
            self._forget(stream)
        else:  # detached (a WebSocket): still open, still counted, until it closes
            conn.detached = True
            conn.waiting_since = None

    def _forget(self, stream: IOStream) -> None:
        conn = self._conns.pop(stream, None)
        if conn is None:
            return
        left = self._per_ip.get(conn.ip, 1) - 1
        if left > 0:
            self._per_ip[conn.ip] = left
        else:
            self._per_ip.pop(conn.ip, None)

    def _sweep(self) -> None:
        """Once a second (or a quarter): forget closed connections, close late or stalled ones."""
        now = time.monotonic()
        for stream, conn in list(self._conns.items()):
            if stream.closed():
                self._forget(stream)
                continue
            if conn.detached or conn.waiting_since is None or self.header_timeout is None:
                continue
            if conn.first:
                deadline = conn.opened + self.header_timeout
            else:
                if conn.partial_since is None and getattr(stream, "_read_buffer_size", 0):
                    conn.partial_since = now
                if conn.partial_since is None:
                    continue  # idle between requests: Tornado's idle timeout applies
                deadline = conn.partial_since + self.header_timeout
            if now >= deadline:
                self._timed_out += 1
                stream.close()
                self._forget(stream)
        if self._timed_out and now - self._timeout_logged >= 60.0:
            log.info(
                "closed %d connections whose request headers took over %gs",
                self._timed_out,
                self.header_timeout,
            )
            self._timed_out, self._timeout_logged = 0, now
        quiet = self.episode_quiet
        if self._full.quiet(now, quiet) and (
            self.max_connections is None or len(self._conns) < self.max_connections
        ):
            self._full.over()
        for ip, episode in list(self._crowded.items()):
            if episode.quiet(now, quiet) and self._per_ip.get(ip, 0) < (self.max_connections_per_ip or 1):
                episode.over()
                del self._crowded[ip]
        if self._no_fds.quiet(now, quiet) and not self._paused:
            self._no_fds.over()
        episodes = self._full.active or self._no_fds.active or self._crowded
        if not self._conns and not episodes and self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    # -- refusing --------------------------------------------------------------------------
    def _refuse(self, stream: IOStream, reason: str) -> None:
        self._sweeping()
        if self._refusing >= _MAX_REFUSING:
            stream.close()
            return
        self._refusing += 1
        IOLoop.current().add_future(
            gen.convert_yielded(self._answer_503(stream, reason)), lambda f: f.result()
        )

    async def _answer_503(self, stream: IOStream, reason: str) -> None:
        """A readable refusal: the answer, our half closed, then what the client sends drained.

        Closing with the client's request unread would reset the connection
        and could destroy the answer before the client reads it.
        """
        body = f"{reason}; try again later\n".encode()
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: {self.retry_after}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\nServer: gittornado\r\n\r\n"
        ).encode()
        try:
            await stream.write(head + body)
            if not isinstance(stream, SSLIOStream) and stream.socket is not None:
                stream.socket.shutdown(socket.SHUT_WR)
            deadline = IOLoop.current().time() + _REFUSAL_LINGER
            drained = 0
            while drained < 65536:
                chunk = await gen.with_timeout(
                    deadline, stream.read_bytes(65536, partial=True), quiet_exceptions=(StreamClosedError,)
                )
                drained += len(chunk)
        except (StreamClosedError, TimeoutError, OSError):
            pass
        finally:
            stream.close()
            self._refusing -= 1
