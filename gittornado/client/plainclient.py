"""ws://: the WebSocket client by hand, each frame's payload spliced into git's pipe.

After the upgrade (``handshake``), frame headers are read off the socket
exactly, nothing of a payload read ahead, so each binary frame's payload
moves from the socket into git's pipe inside the kernel (``os.splice``): a
pack never passes through Python, as the server puts it on the wire. Pings
are answered, and what goes to the server is masked and sent by a thread of
its own, so a pong never waits behind git's input.

This path loads neither Tornado's client nor asyncio (only Tornado's C mask):
a helper starts once per git command, before git may say anything. Frame
headers are built and parsed by ``gittornado.protocol.wsframe``.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import threading

try:  # the C mask (RFC 6455 5.3) alone: Tornado's client and asyncio are imported for wss:// only
    from tornado.speedups import websocket_mask as _mask
except ImportError:  # a Tornado built without its C extension
    from tornado.util import _websocket_mask_python as _mask

from gittornado.client.handshake import _handshake, _HandshakeError
from gittornado.client.target import HelperError, Settings, Target, _Credentials, _debug
from gittornado.client.upgrade import (
    _CLOSE_OK,
    _FRAME,
    _debug_attempt,
    _grow_pipe,
    _headers,
    _refusal,
    _Refused,
    _unreachable,
)
from gittornado.protocol import wsframe
from gittornado.protocol.wsframe import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT

#: Most bytes asked of one ``os.splice`` (the kernel moves at most a pipe's worth).
_SPLICE_MAX = 4 * 1024 * 1024
_COPY_CHUNK = 256 * 1024


class _ProtocolError(Exception):
    """The server broke RFC 6455 (or sent a text frame): close with ``code``, tell the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _GitGone(Exception):
    """git closed its end of the pipe we write its output into."""


def _frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One final frame from the client: masked, as a client's must be (RFC 6455 5.3);
    ``key`` is random unless given."""
    key = os.urandom(4) if key is None else key
    header = wsframe.frame_header(len(payload), opcode=opcode, mask=key)
    return header + _mask(key, payload) if payload else header


def connect_plain(target: Target, service: str, settings: Settings) -> _Plain:
    """``connect`` for ws://: the same credential flow and messages, no Tornado."""
    credentials = _Credentials(target)
    while True:
        headers = _headers(target, service, settings, credentials.auth)
        _debug_attempt(target, service, settings, headers)
        try:
            sock, buffered = _handshake(target, service, headers)
        except _Refused as exc:
            _debug(f"refused: HTTP {exc.code}")
            if credentials.retry(exc.code):
                continue
            raise HelperError(_refusal(exc, target)) from None
        except (OSError, _HandshakeError) as exc:
            raise _unreachable(target, settings, exc) from None
        credentials.accepted()
        _debug("connected")
        return _Plain(sock, buffered)


class _Sender:
    """Frames to the server from a thread of their own: the only writer of the socket.

    Control frames (a pong, the close) jump the queue and go out between two of
    git's frames; one of git's frames waits while the previous one is sent
    (backpressure, with reading and sending overlapped). Nothing is sent after
    the close frame.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._control: collections.deque[tuple[int, bytes]] = collections.deque()
        self._data: bytes | None = None
        self._closing = False  #: the close frame is queued (or out)
        self._done = False  #: stop once the queue is empty
        self.failed = False  #: the socket failed: nothing goes out any more
        self._thread = threading.Thread(target=self._run, name="git-remote-ws-send", daemon=True)
        self._thread.start()

    def data(self, payload: bytes) -> bool:
        """Queue one of git's frames, once the previous one is on its way; False once
        nothing can be sent (closed or failed)."""
        with self._cond:
            while self._data is not None and not (self._closing or self.failed):
                self._cond.wait()
            if self._closing or self.failed:
                return False
            self._data = payload
            self._cond.notify_all()
            return True

    def control(self, opcode: int, payload: bytes = b"") -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = opcode == CLOSE
            self._control.append((opcode, payload))
            self._cond.notify_all()

    def close(self, code: int, reason: str = "") -> None:
        self.control(CLOSE, wsframe.close_payload(code, reason))

    def finish(self, timeout: float) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._control and self._data is None and not self._done:
                    self._cond.wait()
                if self._control:
                    opcode, payload = self._control.popleft()
                elif self._data is not None:
                    opcode, payload, self._data = BINARY, self._data, None
                    self._cond.notify_all()
                    if self._closing:
                        continue
                else:
                    return
            try:
                self._sock.sendall(_frame(opcode, payload))
            except OSError as exc:
                _debug(f"sending failed: {exc}")
                with self._cond:
                    self.failed = True
                    self._cond.notify_all()
                return


class _Plain:
    """A plain ws:// connection after the upgrade: the server's frames read by hand.

    Headers are read exactly (nothing of a payload is read ahead), so each
    payload moves from the socket into git's pipe with ``os.splice``; what the
    handshake already read (git talks at once) is written first. Pings are
    answered through the sender; a close ends the session with its code.
    """

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.sender = _Sender(sock)
        self._buf = bytearray(buffered)
        self._splice = hasattr(os, "splice")
        self._copy: bytearray | None = None
        self.received = 0
        self.frames = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(n - len(self._buf))
            if not chunk:
                raise EOFError("the connection closed")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def pump(self, out: int) -> None:
        """Frames -> ``out`` until the server's close frame (``close_code``, ``close_reason``).

        Raises ``EOFError``/``OSError`` when the connection is lost, ``_GitGone`` when
        git stopped reading, ``_ProtocolError`` for frames that break RFC 6455.
        """
        message = False  # inside a fragmented binary message
        while True:
            start = self._read(2)
            # Refused on its first two bytes, before the reader waits for more of it.
            if start[0] & wsframe.RSV:
                raise _ProtocolError(1002, "protocol error: the server set reserved bits in a frame")
            if start[1] & wsframe.MASK:
                raise _ProtocolError(1002, "protocol error: the server masked a frame")
            header = wsframe.parse_header(start + self._read(wsframe.header_size(start) - 2))
            assert header is not None  # header_size's bytes were read
            fin, opcode, n = header.fin, header.opcode, header.length
            if opcode & 0x8:
                if not fin or n > wsframe.MAX_CONTROL:
                    raise _ProtocolError(1002, "protocol error: a fragmented or oversized control frame")
                payload = self._read(n)
                if opcode == CLOSE:
                    self.close_code, self.close_reason = wsframe.parse_close(payload)
                    # The answer echoes the code (RFC 6455 5.5.1), as Tornado's client does.
                    self.sender.control(CLOSE, payload[:2])
                    return
                if opcode == PING:
                    self.sender.control(PONG, payload)
                    _debug(f"ping after {self.received} bytes: answered")
                elif opcode != PONG:
                    raise _ProtocolError(1002, f"protocol error: unknown opcode {opcode}")
                continue
            if opcode == TEXT:
                raise _ProtocolError(4400, "protocol error: the server sent a text frame")
            if (opcode == BINARY and message) or (opcode == CONTINUATION and not message):
                raise _ProtocolError(1002, "protocol error: a broken fragmented message")
            if opcode not in (BINARY, CONTINUATION):
                raise _ProtocolError(1002, f"protocol error: unknown opcode {opcode}")
            message = not fin
            self.frames += 1
            self._payload(out, n)

    def _payload(self, out: int, n: int) -> None:
        """Move the next ``n`` bytes of the connection into ``out``."""
        if self._buf:
            take = min(n, len(self._buf))
            self._write(out, memoryview(bytes(self._buf[:take])))
            del self._buf[:take]
            n -= take
            self.received += take
        while n:
            if self._splice:
                try:
                    moved = os.splice(self.sock.fileno(), out, min(n, _SPLICE_MAX))
                except BrokenPipeError:
                    raise _GitGone() from None
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    self._splice = False  # ``out`` is no pipe (or no such call): copy
                    _debug(f"cannot splice into git's output ({exc.strerror}): copying")
                    continue
            else:
                if self._copy is None:
                    self._copy = bytearray(_COPY_CHUNK)
                view = memoryview(self._copy)
                moved = self.sock.recv_into(view, min(n, len(view)))
                if moved:
                    self._write(out, view[:moved])
            if moved == 0:
                raise EOFError("the connection closed inside a frame")
            n -= moved
            self.received += moved

    def _write(self, out: int, view: memoryview) -> None:
        try:
            while view:
                view = view[os.write(out, view) :]
        except BrokenPipeError:
            raise _GitGone() from None


def _upload_plain(sender: _Sender, fd: int = 0) -> None:
    """git's input -> frames, then the empty frame (end of input); keeps reading until
    git closes its side, as ``_upload`` does."""
    sending, sent = True, 0
    while True:
        try:
            data = os.read(fd, _FRAME)
        except OSError:
            break
        if not data:
            break
        if sending:
            sending = sender.data(data)
            sent += len(data) if sending else 0
    _debug(f"git's input ended after {sent} bytes")
    if sending:
        sender.data(b"")


def plain_session(target: Target, service: str, settings: Settings) -> int:
    """``session`` for ws://: the same steps, with frames read and spliced by hand."""
    conn = connect_plain(target, service, settings)
    with conn.sock:
        os.write(1, b"\n")  # connection established: stdin/stdout now belong to the service
        for fd in (0, 1):
            _grow_pipe(fd)
            os.set_blocking(fd, True)
        upload = threading.Thread(target=_upload_plain, args=(conn.sender,), daemon=True)
        upload.start()
        git_gone = False
        try:
            conn.pump(1)
        except _GitGone:
            _debug("git closed its input from us")
            conn.sender.close(1000)
            git_gone = True
        except _ProtocolError as exc:
            conn.sender.close(exc.code, str(exc)[:100])
            conn.sender.finish(5.0)
            raise HelperError(str(exc)) from None
        except (EOFError, OSError) as exc:
            _debug(f"connection lost: {exc}")
        finally:
            os.close(1)  # git sees the end of the service's output
        code, reason = conn.close_code, conn.close_reason
        _debug(
            f"server closed: code={code} reason={reason!r} after {conn.received} bytes, {conn.frames} frames"
        )
        upload.join()
        conn.sender.finish(5.0)
    if code in _CLOSE_OK or git_gone:
        return 0
    if code is None:
        raise HelperError(f"the connection to '{target.display}' was lost")
    raise HelperError(f"{reason or 'the server ended the connection'} (websocket close {code})")
