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

The connections themselves (counts, caps, header deadlines) are kept by a
``connections.ConnectionTable``; this module listens, accepts and refuses.
Request bodies are watched elsewhere: the git engine drops a push or fetch
whose body stalls (``body_idle_timeout``).
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.httputil
from tornado import gen
from tornado.http1connection import HTTP1Connection
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from ..transports.chunked import FastBodyConnection
from .connections import ConnectionTable, Episode, default_max_connections, raise_open_file_limit

__all__ = ["GitHTTPServer", "default_max_connections", "raise_open_file_limit"]

#: accept() errors that mean "no descriptor (or memory) for another connection".
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Connections taken per wake-up of a listening socket (Tornado's own figure).
_ACCEPT_BATCH = 128
#: Refusals being written at once; beyond, a refused connection is just closed.
_MAX_REFUSING = 64
#: Seconds a refused client gets to read its 503 before the socket closes.
_REFUSAL_LINGER = 1.0
#: Largest piece of a request body read and handed to a handler at once (Tornado: 64 KiB).
#: With ``gittornado.chunked`` a push costs a loop turn per piece, not per ~23 KiB chunk;
#: 1 MiB saved no more CPU and added ~7 MiB to the peak RSS during a push.
_CHUNK_SIZE = 256 * 1024


def _table_setting(name: str) -> property:
    """The server's view of a setting its ``ConnectionTable`` keeps (read and written there)."""
    return property(
        lambda self: getattr(self._table, name),
        lambda self, value: setattr(self._table, name, value),
        doc=f"The ``ConnectionTable``'s ``{name}``.",
    )


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
        self._table = ConnectionTable(max_connections or None, max_connections_per_ip or None, header_timeout)
        self.idle_timeout = idle_timeout
        self.accept_pause = accept_pause
        self.retry_after = retry_after
        self._refusing = 0
        self._sweeper: PeriodicCallback | None = None
        self._paused = False
        self._closed_listeners = False
        self._no_fds = Episode(
            "out of file descriptors (%s) with %d connections open: accepting paused",
            "accepting again: %d pauses for want of descriptors over %.0fs",
        )

    #: Settings the server's ``ConnectionTable`` reads (they may be changed after start).
    max_connections = _table_setting("max_connections")
    max_connections_per_ip = _table_setting("max_connections_per_ip")
    header_timeout = _table_setting("header_timeout")
    #: Seconds without refusals (or pauses) before an episode's end is logged.
    episode_quiet = _table_setting("episode_quiet")

    # -- figures ----------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        return len(self._table)

    def connections_from(self, ip: str) -> int:
        return self._table.from_ip(ip)

    def busy_requests(self) -> int:
        """HTTP requests between their headers and the end of their answer (what a shutdown waits for)."""
        return self._table.busy_requests()

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
        self._no_fds.hit(code, len(self._table))
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
        reason = self._table.refusal(ip)
        if reason is not None:
            self._refuse(stream, reason)
            return
        self._table.add(stream, ip)
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
        return self._table.watch(getattr(server_conn, "stream", None), delegate)

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        self._table.closed(getattr(server_conn, "stream", None))

    def _sweep(self) -> None:
        """Once a second (or a quarter): forget closed connections, close late or stalled ones."""
        now = time.monotonic()
        watching = self._table.sweep(now)
        if self._no_fds.quiet(now, self.episode_quiet) and not self._paused:
            self._no_fds.over()
        if not watching and not self._no_fds.active and self._sweeper is not None:
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
