"""wss://: the service's WebSocket through Tornado's client.

TLS is decrypted in the process anyway, so payloads pass through Python here
and Tornado's client does the handshake, the frames and the pings. The
helper imports this module (and with it Tornado's client and asyncio) only
for a ``wss://`` URL: ws:// (``plainclient``) needs none of it, and a helper
starts once per git command.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import sys
import threading

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import PipeIOStream, StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    websocket_connect,
)

from gittornado.client.target import HelperError, Settings, Target, _Credentials, _debug, _debug_enabled
from gittornado.client.upgrade import (
    _CLOSE_OK,
    _CONNECT_TIMEOUT,
    _FRAME,
    _debug_attempt,
    _grow_pipe,
    _headers,
    _refusal,
    _Refused,
    _unreachable,
)

#: Largest frame Tornado's client takes from the server (which relays up to 256 KiB
#: per frame over TLS); ws:// streams a frame of any size into git's pipe.
_MAX_IN = 16 * 1024 * 1024


def tls_session(target: Target, service: str, settings: Settings) -> int:
    """The session on an event loop of its own; the exit status."""
    _quiet_logging(_debug_enabled())
    return asyncio.run(session(target, service, settings))


def _quiet_logging(debug: bool) -> None:
    """Tornado and asyncio log through ``logging``: to stderr when debugging, else nowhere."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.CRITICAL + 1,
        format="git-remote-ws: %(name)s: %(message)s",
    )


async def connect(target: Target, service: str, settings: Settings) -> WebSocketClientConnection:
    """Open the service's WebSocket with Tornado's client, asking git's credential
    helpers on a 401."""
    credentials = _Credentials(target)
    while True:
        headers = _headers(target, service, settings, credentials.auth)
        _debug_attempt(target, service, settings, headers)
        tornado_headers = HTTPHeaders()
        for name, value in headers:
            tornado_headers.add(name, value)
        request = HTTPRequest(
            target.service_url(service),
            headers=tornado_headers,
            connect_timeout=_CONNECT_TIMEOUT,
            request_timeout=_CONNECT_TIMEOUT,
            follow_redirects=False,
            validate_cert=settings.verify,
            ca_certs=settings.ca_file,
            client_cert=settings.client_cert,
            client_key=settings.client_key,
        )
        try:
            conn = await websocket_connect(request, max_message_size=_MAX_IN)
        except HTTPClientError as exc:
            _debug(f"refused: HTTP {exc.code}")
            if credentials.retry(exc.code):
                continue
            body = exc.response.body if exc.response is not None and exc.response.body else b""
            raise HelperError(_refusal(_Refused(exc.code, exc.message, body), target)) from None
        except (OSError, StreamClosedError, WebSocketError) as exc:
            raise _unreachable(target, settings, exc) from None
        credentials.accepted()
        _debug("connected")
        return conn


async def _upload(conn: WebSocketClientConnection, stdin: PipeIOStream) -> None:
    """git's input -> frames; at its end an empty frame (end of input).

    Keeps reading after the connection ended, until git closes its side: a
    helper that exits first makes git's closing flush hit a broken pipe.
    """
    sending = True
    sent = 0
    while True:
        try:
            data = await stdin.read_bytes(_FRAME, partial=True)
        except StreamClosedError:
            break
        if sending:
            try:
                await conn.write_message(data, binary=True)
                sent += len(data)
            except (WebSocketClosedError, StreamClosedError):
                sending = False
    _debug(f"git's input ended after {sent} bytes")
    if sending:
        try:
            await conn.write_message(b"", binary=True)
        except (WebSocketClosedError, StreamClosedError):
            pass


class _PipeWriter:
    """Blocking writes into git's pipe, on a thread of their own.

    git reads a pack in packet-sized pieces, and a non-blocking writer is woken
    for each (twenty thousand loop turns per 300 MiB clone); a blocking write of
    a whole frame sleeps in the kernel until git has taken it. ``write`` returns
    then: backpressure as before.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[tuple[bytes, asyncio.Future] | None] = queue.SimpleQueue()
        os.set_blocking(fd, True)
        threading.Thread(target=self._run, name="git-remote-ws-stdout", daemon=True).start()

    async def write(self, data: bytes) -> None:
        """Raises ``OSError`` (``EPIPE``) when git closed its end."""
        await self.submit(data)

    def submit(self, data: bytes) -> asyncio.Future:
        """Queue ``data``; the future settles once git took it (or with ``OSError``)."""
        done = self._loop.create_future()
        self._jobs.put((data, done))
        return done

    def close(self) -> None:
        """git sees the end of the output once what was written is out."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            data, done = job
            error: OSError | None = None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                error = exc
            self._loop.call_soon_threadsafe(_settle, done, error)
        os.close(self._fd)


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(None)


async def _download(conn: WebSocketClientConnection, stdout: _PipeWriter) -> int:
    """Frames -> git's output until the server closes; returns the bytes passed."""
    received = 0
    # One frame may be on its way into git's pipe while the next is read off the
    # socket (two in flight at most: backpressure holds, and the two overlap).
    in_flight: collections.deque[asyncio.Future] = collections.deque()
    try:
        while True:
            message = await conn.read_message()
            if message is None:
                while in_flight:
                    await in_flight.popleft()
                return received
            if isinstance(message, str):
                conn.close(4400, "text frame")
                raise HelperError("protocol error: the server sent a text frame")
            in_flight.append(stdout.submit(message))
            received += len(message)
            if len(in_flight) > 1:
                await in_flight.popleft()
    except OSError:
        # git stopped reading: it is done (or dying), so is the session.
        _debug("git closed its input from us")
        conn.close(1000)
        return received


async def session(target: Target, service: str, settings: Settings) -> int:
    """Connect, tell git, then pump both ways until the service ends; the exit status."""
    conn = await connect(target, service, settings)
    os.write(1, b"\n")  # connection established: stdin/stdout now belong to the service
    for fd in (0, 1):
        _grow_pipe(fd)
    stdin, stdout = PipeIOStream(0), _PipeWriter(1)
    upload = asyncio.ensure_future(_upload(conn, stdin))
    try:
        received = await _download(conn, stdout)
    finally:
        stdout.close()  # git sees the end of the service's output
    code, reason = conn.close_code, conn.close_reason
    _debug(f"server closed: code={code} reason={reason!r} after {received} bytes")
    await upload
    conn.close()
    if code in _CLOSE_OK:
        return 0
    if code is None:
        raise HelperError(f"the connection to '{target.display}' was lost")
    raise HelperError(f"{reason or 'the server ended the connection'} (websocket close {code})")
