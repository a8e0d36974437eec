"""ws://: the WebSocket upgrade on a socket of the helper's own (RFC 6455 4.1).

The request is written by hand and the server's HTTP/1.1 answer parsed here
(status line, headers, and a refusal's body for its first line): Tornado's
HTTP client would bring asyncio and Tornado's whole client with it, a cost
paid at every git command. What follows the answer's headers in the same
read (git's server talks at once) is handed to the frame reader.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from urllib.parse import urlsplit

try:  # the built-in SHA-1: hashlib would load OpenSSL at every helper start
    from _sha1 import sha1
except ImportError:
    from hashlib import sha1

from gittornado.client.target import HelperError, Target
from gittornado.client.upgrade import _CONNECT_TIMEOUT, _Refused

#: Magic of the handshake's ``Sec-WebSocket-Accept`` (RFC 6455 1.3).
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Most header (and error body) bytes taken from the server's answer to the upgrade.
_MAX_HEAD = 64 * 1024


class _HandshakeError(Exception):
    """The server's answer to the upgrade is no WebSocket handshake."""


def _parse_answer(head: bytes) -> tuple[int, str, dict[str, str]]:
    """An HTTP/1.1 answer's status line and headers: (code, reason, lower-cased names)."""
    first, *lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] +(\d{3})(?: +(.*))?$", first)
    if match is None:
        raise _HandshakeError(f"malformed answer to the upgrade: {first[:80]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise _HandshakeError(f"malformed header in the answer to the upgrade: {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return int(match[1]), (match[2] or "").strip(), headers


def _read_body(sock: socket.socket, headers: dict[str, str], data: bytes) -> bytes:
    """The body of a refusal, as much of it as fits ``_MAX_HEAD`` (for its first line)."""
    buf = bytearray(data)
    length = headers.get("content-length", "").strip()
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    want = int(length) if length.isdigit() else _MAX_HEAD
    try:
        while len(buf) < min(want, _MAX_HEAD) and not (chunked and b"\r\n0\r\n" in b"\r\n" + buf):
            chunk = sock.recv(_MAX_HEAD)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass  # what came is enough for a message
    if not chunked:
        return bytes(buf[:want])
    body, rest = bytearray(), bytes(buf)
    while rest:
        size, sep, rest = rest.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0], 16)
        except ValueError:
            break
        if not sep or n == 0:
            break
        body += rest[:n]
        rest = rest[n + 2 :]
    return bytes(body)


def _handshake(target: Target, service: str, headers: list[tuple[str, str]]) -> tuple[socket.socket, bytes]:
    """The upgrade on a socket of our own: (the socket, what came after the answer's headers).

    Raises ``_Refused`` for an HTTP answer, ``_HandshakeError`` for one that is
    not a WebSocket's, ``OSError`` when the server cannot be reached.
    """
    parts = urlsplit(target.service_url(service))
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=_CONNECT_TIMEOUT)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # negotiation: small packets
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {parts.path or '/'} HTTP/1.1",
            f"Host: {target.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode('ascii')}",
            "Sec-WebSocket-Version: 13",
        ]
        for name, value in headers:
            if any(c in name + value for c in "\r\n\0"):
                raise HelperError(f"invalid HTTP header {name!r} (http.extraHeader?)")
            lines.append(f"{name}: {value}")
        try:
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise HelperError("invalid HTTP header: only latin-1 can be sent (http.extraHeader?)") from None
        sock.sendall(request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            if len(data) > _MAX_HEAD:
                raise _HandshakeError("the answer to the upgrade has too many headers")
            chunk = sock.recv(_MAX_HEAD)
            if not chunk:
                raise _HandshakeError("the connection closed during the upgrade")
            data += chunk
        code, reason, answer = _parse_answer(data[:end])
        rest = data[end + 4 :]
        if code != 101:
            raise _Refused(code, reason or f"HTTP {code}", _read_body(sock, answer, rest))
        accept = base64.b64encode(sha1(key + _WS_GUID).digest()).decode("ascii")
        if (
            answer.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in answer.get("connection", "").lower()
            or answer.get("sec-websocket-accept", "") != accept
        ):
            raise _HandshakeError("the server's answer to the upgrade is not a WebSocket handshake")
        if answer.get("sec-websocket-extensions"):
            raise _HandshakeError("the server chose a WebSocket extension nobody asked for")
        sock.settimeout(None)  # from here on git's idle timers (and the server's) decide
        return sock, rest
    except BaseException:
        sock.close()
        raise
