"""The open connections of one HTTP server: counted, capped and timed.

``ConnectionTable`` is what ``GitHTTPServer`` knows of each connection it
serves, without the listening or the answering:

* **Connection caps** per worker and per peer address: ``refusal`` says why a
  new connection must be refused (the server answers a readable ``503``), and
  each episode of refusals is logged once when it starts and once when it ends.
* **Header timeouts.** A request's headers must arrive within
  ``header_timeout`` seconds (counted from the connection's start for its
  first request, from the first byte for later ones); ``sweep`` closes the
  connections that are late. Idle keep-alive connections are Tornado's.
* **Busy requests**: connections between a request's headers and the end of
  its answer, what a graceful shutdown waits for.

The default cap comes from the descriptor limit (``default_max_connections``),
raised first by ``raise_open_file_limit``.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import tornado.httputil
from tornado.iostream import IOStream

__all__ = [
    "ConnectionTable",
    "Connection",
    "Episode",
    "WatchedRequest",
    "default_max_connections",
    "raise_open_file_limit",
]

log = logging.getLogger("gittornado.general")

#: Descriptors kept back from connections for git's pipes, files and the server itself.
_FD_RESERVE = 64


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


class Episode:
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
class Connection:
    """What the server knows of one open connection."""

    ip: str
    opened: float
    #: Waiting for a request's headers since (None: a request is being handled).
    waiting_since: float | None = None
    #: When bytes of the awaited request were first seen (None: none yet).
    partial_since: float | None = None
    first: bool = True
    detached: bool = False


class WatchedRequest(tornado.httputil.HTTPMessageDelegate):
    """Passes a request through, noting when its headers are complete."""

    def __init__(self, delegate: tornado.httputil.HTTPMessageDelegate, conn: Connection) -> None:
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


class ConnectionTable:
    """The open connections of one server, per stream and per peer address, with their caps.

    :arg max_connections: open connections in all (None: no cap).
    :arg max_connections_per_ip: open connections per peer address (None: no cap).
    :arg header_timeout: seconds a request's headers may take (None: no limit).

    The three may be changed later; ``episode_quiet`` is how long refusals
    must stop before an episode's end is logged.
    """

    def __init__(
        self, max_connections: int | None, max_connections_per_ip: int | None, header_timeout: float | None
    ) -> None:
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.header_timeout = header_timeout
        self.episode_quiet = 10.0
        self._conns: dict[IOStream, Connection] = {}
        self._per_ip: dict[str, int] = {}
        self._timed_out = 0
        self._timeout_logged = 0.0
        self._full = Episode(
            "connection cap reached (%d open): refusing new connections with 503",
            "below the connection cap again: %d connections refused in %.0fs",
        )
        self._crowded: dict[str, Episode] = {}

    # -- figures ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._conns)

    def from_ip(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def busy_requests(self) -> int:
        """Requests between their headers and the end of their answer (not detached WebSockets)."""
        return sum(1 for c in self._conns.values() if c.waiting_since is None and not c.detached)

    # -- a connection's life ------------------------------------------------------------------
    def refusal(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` must be refused (a cap is reached), or None."""
        if self.max_connections is not None and len(self._conns) >= self.max_connections:
            self._full.hit(len(self._conns))
            return "the server has too many open connections"
        per_ip = self.max_connections_per_ip
        if per_ip is not None and ip and self._per_ip.get(ip, 0) >= per_ip:
            episode = self._crowded.get(ip)
            if episode is None and len(self._crowded) < 1000:
                episode = self._crowded[ip] = Episode(
                    f"address {ip} reached its cap of %d open connections: refusing more with 503",
                    f"address {ip} below its connection cap again: %d connections refused in %.0fs",
                )
            if episode is not None:
                episode.hit(per_ip)
            return "too many open connections from your address"
        return None

    def add(self, stream: IOStream, ip: str) -> None:
        self._conns[stream] = Connection(ip=ip, opened=time.monotonic())
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def watch(
        self, stream: Any, delegate: tornado.httputil.HTTPMessageDelegate
    ) -> tornado.httputil.HTTPMessageDelegate:
        """A request starts on ``stream``: its headers are awaited from now (``delegate``, watched).

        A stream not in the table (None, or not counted) gets ``delegate`` as it is.
        """
        conn = self._conns.get(stream)
        if conn is None:
            return delegate
        conn.waiting_since, conn.partial_since = time.monotonic(), None
        return WatchedRequest(delegate, conn)

    def closed(self, stream: Any) -> None:
        """The HTTP connection on ``stream`` ended: forget it, or, if detached, stop timing it."""
        conn = self._conns.get(stream)
        if conn is None:
            return
        if stream.closed():
            self.forget(stream)
        else:  # detached (a WebSocket): still open, still counted, until it closes
            conn.detached = True
            conn.waiting_since = None

    def forget(self, stream: IOStream) -> None:
        conn = self._conns.pop(stream, None)
        if conn is None:
            return
        left = self._per_ip.get(conn.ip, 1) - 1
        if left > 0:
            self._per_ip[conn.ip] = left
        else:
            self._per_ip.pop(conn.ip, None)

    # -- the sweep ----------------------------------------------------------------------------
    def sweep(self, now: float) -> bool:
        """Forget closed connections, close late ones, end quiet episodes; True while any is left."""
        for stream, conn in list(self._conns.items()):
            if stream.closed():
                self.forget(stream)
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
                self.forget(stream)
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
        return bool(self._conns) or self._full.active or bool(self._crowded)
