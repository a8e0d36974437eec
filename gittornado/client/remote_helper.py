"""``git-remote-ws`` / ``git-remote-wss``: the remote helper behind ``git clone ws://...``.

git runs ``git-remote-<scheme> <remote> <url>`` for a URL it has no transport
for (``gitremote-helpers``). This helper offers only ``connect``: on
``connect git-upload-pack`` (or ``git-receive-pack``, ``git-upload-archive``)
it opens ``ws(s)://host/path/<service>`` and, once upgraded, its stdin and
stdout *are* the service's, pumped to and from binary frames (the wire is
described in ``gittornado.websocket``). So git speaks its native protocol end
to end, v2 included; ``stateless-connect`` would only add HTTP's framing back.

What git does not hand a ``connect`` helper, it finds itself:

* the protocol version: git gives a helper no ``GIT_PROTOCOL``, so it reads
  ``protocol.version`` (default 2 from git 2.26) and asks the server with a
  ``Git-Protocol`` header; git accepts a v2 answer. Pushes ask for v0, as
  git's own ``connect.c`` does (git has no v2 push);
* credentials: from the URL, else ``git credential fill`` after a 401, then
  ``approve``/``reject``. They are asked for as ``http``/``https`` (ws/wss) of
  the same host: they are that server's HTTP Basic credentials, and keychain
  helpers store only http(s);
* TLS and headers: ``http.*`` settings for the https (http) URL of the same
  server (``http.sslVerify``, ``http.sslCAInfo``, ``http.sslCert``/``sslKey``,
  ``http.extraHeader``) and ``GIT_SSL_NO_VERIFY``, ``GIT_SSL_CAINFO``,
  ``GIT_SSL_CERT``, ``GIT_SSL_KEY``. Proxies are not used.

On a plain ``ws://`` connection the helper speaks the WebSocket itself (the
handshake, then frames read by hand off the socket): each binary frame's
payload moves from the socket into git's pipe inside the kernel
(``os.splice``), so a pack never passes through Python, as the server puts it
on the wire. Pings are answered, and what goes to the server is masked and
sent by a thread of its own, so a pong never waits behind git's input.
That path loads neither Tornado's client nor asyncio: a helper starts once per
git command, before git may say anything. ``wss://`` goes through Tornado's
client (TLS is decrypted in the process anyway).

Failures reach the user as one ``fatal: ...`` line and exit status 128, never a
traceback; ``GITTORNADO_WS_DEBUG=1`` traces the session on stderr.
"""

from __future__ import annotations

import base64
import collections
import errno
import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

try:  # the built-in SHA-1: hashlib would load OpenSSL at every helper start
    from _sha1 import sha1
except ImportError:
    from hashlib import sha1
try:  # the C mask (RFC 6455 5.3) alone: Tornado's client and asyncio are imported for wss:// only
    from tornado.speedups import websocket_mask as _mask
except ImportError:  # a Tornado built without its C extension
    from tornado.util import _websocket_mask_python as _mask

if TYPE_CHECKING:
    import asyncio

    from tornado.iostream import PipeIOStream
    from tornado.websocket import WebSocketClientConnection

__all__ = ["main", "main_ws", "main_wss", "HelperError", "Target"]

#: Most of git's input sent in one frame (the server takes up to 1 MiB).
_FRAME = 64 * 1024
#: Largest frame Tornado's client (wss://) takes from the server (which relays up to
#: 256 KiB per frame over TLS); ws:// streams a frame of any size into git's pipe.
_MAX_IN = 16 * 1024 * 1024
_CONNECT_TIMEOUT = 60.0
_PIPE_SIZE = 1024 * 1024
_SERVICES = ("git-upload-pack", "git-receive-pack", "git-upload-archive")
#: The version asked for, by service: git has no v2 push (its ``connect.c`` falls
#: back to v0) and upload-archive has no versions at all.
_VERSIONS = {
    "git-receive-pack": lambda v: 0 if v == 2 else v,
    "git-upload-archive": lambda v: 0,
}
#: Close codes that mean success (the rest carry the server's reason).
_CLOSE_OK = (1000,)


class HelperError(Exception):
    """A failure to report to the user as ``fatal: <message>``."""


def _debug_enabled() -> bool:
    return os.environ.get("GITTORNADO_WS_DEBUG", "") not in ("", "0", "false")


def _debug(message: str) -> None:
    if _debug_enabled():
        sys.stderr.write(f"git-remote-ws: {message}\n")
        sys.stderr.flush()


def _fatal(message: str) -> None:
    sys.stderr.write(f"fatal: {message}\n")
    sys.stderr.flush()


# -- the URL ---------------------------------------------------------------------------
class Target(collections.namedtuple("Target", "scheme netloc path username password", defaults=(None, None))):
    """The repository URL, split: where to connect and with which credentials.

    ``scheme`` is ``ws`` or ``wss``; ``netloc`` host[:port] without userinfo;
    ``path`` the repository's, ``/`` first, no trailing ``/``. (A named tuple,
    not a dataclass: ``dataclasses`` costs every helper start 5 ms of imports.)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Target({self.scheme!r}, {self.netloc!r}, {self.path!r}, username={self.username!r})"

    @classmethod
    def parse(cls, url: str, default_scheme: str) -> Target:
        """``ws://user:pw@host:port/repo`` (``http(s)://`` maps to ``ws(s)://``;
        ``ws::host/repo`` reaches us as ``host/repo``)."""
        if "://" not in url:
            url = f"{default_scheme}://{url}"
        parts = urlsplit(url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss"):
            raise HelperError(f"unsupported URL scheme {parts.scheme!r} (ws:// or wss://)")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise HelperError(f"invalid URL: {exc}") from None
        if not host:
            raise HelperError("invalid URL: no host")
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{port}" if port else host
        path = parts.path.rstrip("/") or "/"
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(scheme, netloc, path, user, password)

    @property
    def display(self) -> str:
        """The URL as the user may see it: never a password."""
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def http_scheme(self) -> str:
        return "https" if self.scheme == "wss" else "http"

    @property
    def http_url(self) -> str:
        """The same server's http(s) URL, for git's ``http.<url>.*`` settings."""
        return f"{self.http_scheme}://{self.netloc}{self.path}"

    def service_url(self, service: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path.rstrip('/')}/{service}"


# -- what git's configuration says -------------------------------------------------------
def _git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a git command for its output; git's own messages go to the user's stderr."""
    try:
        return subprocess.run(["git", *args], input=stdin, stdout=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise HelperError(f"cannot run git: {exc}") from None


def _git_outputs(*commands: Sequence[str]) -> list[str]:
    """The output of git queries run side by side (each costs a process start, paid
    before git hears from us)."""
    procs = []
    try:
        for args in commands:
            procs.append(subprocess.Popen(["git", *args], stdout=subprocess.PIPE, text=True))
    except OSError as exc:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise HelperError(f"cannot run git: {exc}") from None
    return [proc.communicate()[0] for proc in procs]


def _config_pairs(output: str) -> list[tuple[str, str]]:
    """``git config -z`` output -> (lower-cased key, value) pairs, in order."""
    pairs = []
    for item in output.split("\0"):
        if item:
            key, _, value = item.partition("\n")
            pairs.append((key.lower(), value))
    return pairs


def _git_bool(value: str) -> bool:
    return value.strip().lower() not in ("false", "no", "off", "0", "")


def _url_applies(pattern: str, url: str) -> bool:
    """Whether ``http.<pattern>.*`` is meant for ``url`` (scheme, host and a path prefix)."""
    pattern = pattern.rstrip("/")
    return url == pattern or url.startswith(pattern + "/")


class Settings:
    """What the helper takes from git's configuration and environment."""

    def __init__(self) -> None:
        self.version = 0
        self.verify = True
        self.ca_file: str | None = None
        self.client_cert: str | None = None
        self.client_key: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.proxy: str | None = None

    @classmethod
    def load(cls, target: Target, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        urlmatch, regexp, git_version = _git_outputs(
            ("config", "-z", "--get-urlmatch", "http", target.http_url),
            ("config", "-z", "--get-regexp", r"^(protocol\.version|http\..*extraheader)$"),
            ("version",),
        )
        http = dict(_config_pairs(urlmatch))
        other = _config_pairs(regexp)
        settings = cls()
        version = [v for k, v in other if k == "protocol.version"]
        if version:
            settings.version = int(version[-1]) if version[-1].strip().isdigit() else 0
        else:
            settings.version = _default_protocol_version(git_version)
        headers: list[str] = []
        for key, value in other:
            if not key.endswith(".extraheader"):
                continue
            scope = key[len("http.") : -len(".extraheader")]
            if scope and not _url_applies(scope, target.http_url):
                continue
            if value:
                headers.append(value)
            else:
                headers.clear()  # git: an empty value resets the list
        for line in headers:
            name, sep, value = line.partition(":")
            if sep and name.strip():
                settings.headers.append((name.strip(), value.strip()))
        settings.verify = _git_bool(http.get("http.sslverify", "true")) and "GIT_SSL_NO_VERIFY" not in env
        settings.ca_file = env.get("GIT_SSL_CAINFO") or http.get("http.sslcainfo") or None
        settings.client_cert = env.get("GIT_SSL_CERT") or http.get("http.sslcert") or None
        settings.client_key = env.get("GIT_SSL_KEY") or http.get("http.sslkey") or None
        # Not used (see the module docstring); only named when a connection fails.
        scheme_vars = ("https_proxy", "HTTPS_PROXY") if target.scheme == "wss" else ("http_proxy",)
        proxy_vars = (*scheme_vars, "all_proxy", "ALL_PROXY")
        settings.proxy = http.get("http.proxy") or next((env[v] for v in proxy_vars if env.get(v)), None)
        return settings


def _default_protocol_version(git_version: str) -> int:
    """git's default for ``git version``'s output: v2 from 2.26 on (the helper runs the
    user's git)."""
    match = re.search(r"(\d+)\.(\d+)", git_version)
    if match and (int(match[1]), int(match[2])) >= (2, 26):
        return 2
    return 0


# -- credentials -------------------------------------------------------------------------
def _credential(action: str, fields: dict[str, str]) -> dict[str, str] | None:
    """``git credential <action>``; for ``fill`` the answer, None when git gave none."""
    text = "".join(f"{k}={v}\n" for k, v in fields.items()) + "\n"
    proc = _git("credential", action, stdin=text)
    if action != "fill":
        return None
    if proc.returncode != 0:
        return None
    answer = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            answer[key] = value
    if "username" not in answer or "password" not in answer:
        return None
    return answer


def _credential_query(target: Target) -> dict[str, str]:
    fields = {"protocol": target.http_scheme, "host": target.netloc, "path": target.path.lstrip("/")}
    if target.username:
        fields["username"] = target.username
    return fields


# -- connecting --------------------------------------------------------------------------
class _Refused(Exception):
    """The server answered the upgrade with an HTTP status (no WebSocket)."""

    def __init__(self, code: int, message: str, body: bytes = b"") -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.message, self.body = code, message, body


def _headers(
    target: Target, service: str, settings: Settings, auth: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """The upgrade request's own headers (the WebSocket ones are the client's)."""
    headers = [("User-Agent", "git-remote-ws (gittornado)")]
    version = _VERSIONS.get(service, lambda v: v)(settings.version)
    if version:
        headers.append(("Git-Protocol", f"version={version}"))
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        headers.append(("Authorization", f"Basic {token}"))
    headers.extend(settings.headers)
    return headers


def _no_userinfo(url: str) -> str:
    """``url`` without a password (or user) to print."""
    return re.sub(r"//[^/@]*@", "//", url)


def _refusal(exc: _Refused, target: Target) -> str:
    """The server's HTTP answer to the upgrade, as one line for the user."""
    code = exc.code
    if code == 401:
        return f"Authentication failed for '{target.display}'"
    if code == 404:
        return f"repository '{target.display}' not found"
    body = ""
    if exc.body and exc.body.strip():
        body = exc.body.decode("utf-8", "replace").strip().splitlines()[0][:200]
    if code == 599:
        return f"unable to access '{target.display}': {exc.message}"
    detail = body or exc.message or "refused"
    return f"unable to access '{target.display}': {detail} (HTTP {code})"


class _Credentials:
    """Who the helper says it is: the URL's user and password, else what ``git credential
    fill`` gives after a 401; ``approve``/``reject`` once the server said."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.auth = (
            (target.username, target.password) if target.username and target.password is not None else None
        )
        self.filled: dict[str, str] | None = None

    def retry(self, code: int) -> bool:
        """After a refusal: True to try again with credentials just filled."""
        if code == 401 and self.filled is None and (self.auth is None or self.target.password is None):
            self.filled = _credential("fill", _credential_query(self.target))
            if self.filled is not None:
                self.auth = (self.filled["username"], self.filled["password"])
                return True
        elif code == 401 and self.filled is not None:
            _credential("reject", self.filled)
        return False

    def accepted(self) -> None:
        if self.filled is not None:
            _credential("approve", self.filled)


def _unreachable(target: Target, settings: Settings, exc: BaseException) -> HelperError:
    """A connection that failed before any HTTP answer, as one line."""
    ssl = sys.modules.get("ssl")  # only wss:// loads it
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return HelperError(
            f"unable to access '{target.display}': certificate verify failed: {exc.verify_message}"
            " (GIT_SSL_CAINFO or http.sslCAInfo names the CA to trust)"
        )
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return HelperError(f"unable to access '{target.display}': {exc.reason or exc.strerror or exc}")
    note = ""
    if settings.proxy:
        note = f" (proxies are not used: {_no_userinfo(settings.proxy)} ignored)"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return HelperError(f"unable to access '{target.display}': {reason}{note}")


def _debug_attempt(target: Target, service: str, settings: Settings, headers: list[tuple[str, str]]) -> None:
    if _debug_enabled():
        names = dict(headers)
        _debug(
            f"connecting to {target.service_url(service)} "
            f"(Git-Protocol: {names.get('Git-Protocol', '-')}, "
            f"auth: {'yes' if 'Authorization' in names else 'no'}, verify: {settings.verify})"
        )


# -- wss://: Tornado's client ------------------------------------------------------------
# Tornado is imported only here: ws:// needs none of it, and a helper starts per command.
async def connect(target: Target, service: str, settings: Settings) -> WebSocketClientConnection:
    """Open the service's WebSocket with Tornado's client, asking git's credential
    helpers on a 401."""
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.httputil import HTTPHeaders
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketError, websocket_connect

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
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

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
        import asyncio
        import queue

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


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe to and from git (Linux): fewer wakeups on both sides per pack."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # not a pipe, not Linux, or over pipe-max-size: the default works too


async def session(target: Target, service: str, settings: Settings) -> int:
    """Connect, tell git, then pump both ways until the service ends; the exit status."""
    import asyncio

    from tornado.iostream import PipeIOStream

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


# -- plain ws://: the handshake and frames by hand, payloads spliced into git's pipe -------
#: Magic of the handshake's ``Sec-WebSocket-Accept`` (RFC 6455 1.3).
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Most header (and error body) bytes taken from the server's answer to the upgrade.
_MAX_HEAD = 64 * 1024
#: Opcodes (RFC 6455 5.2).
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Most bytes asked of one ``os.splice`` (the kernel moves at most a pipe's worth).
_SPLICE_MAX = 4 * 1024 * 1024
_COPY_CHUNK = 256 * 1024


class _HandshakeError(Exception):
    """The server's answer to the upgrade is no WebSocket handshake."""


class _ProtocolError(Exception):
    """The server broke RFC 6455 (or sent a text frame): close with ``code``, tell the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _GitGone(Exception):
    """git closed its end of the pipe we write its output into."""


def _frame(opcode: int, payload: bytes) -> bytes:
    """One final frame from the client: masked, as a client's must be (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return header + key + _mask(key, payload) if payload else header + key


def _close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


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
            self._closing = opcode == _CLOSE
            self._control.append((opcode, payload))
            self._cond.notify_all()

    def close(self, code: int, reason: str = "") -> None:
        self.control(_CLOSE, _close_payload(code, reason))

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
                    opcode, payload, self._data = _BINARY, self._data, None
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
            b0, b1 = self._read(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if b0 & 0x70:
                raise _ProtocolError(1002, "protocol error: the server set reserved bits in a frame")
            if b1 & 0x80:
                raise _ProtocolError(1002, "protocol error: the server masked a frame")
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            if opcode & 0x8:
                if not fin or n > 125:
                    raise _ProtocolError(1002, "protocol error: a fragmented or oversized control frame")
                payload = self._read(n)
                if opcode == _CLOSE:
                    if len(payload) >= 2:
                        self.close_code = struct.unpack("!H", payload[:2])[0]
                        self.close_reason = payload[2:].decode("utf-8", "replace")
                    # The answer echoes the code (RFC 6455 5.5.1), as Tornado's client does.
                    self.sender.control(_CLOSE, payload[:2])
                    return
                if opcode == _PING:
                    self.sender.control(_PONG, payload)
                    _debug(f"ping after {self.received} bytes: answered")
                elif opcode != _PONG:
                    raise _ProtocolError(1002, f"protocol error: unknown opcode {opcode}")
                continue
            if opcode == _TEXT:
                raise _ProtocolError(4400, "protocol error: the server sent a text frame")
            if (opcode == _BINARY and message) or (opcode == _CONTINUATION and not message):
                raise _ProtocolError(1002, "protocol error: a broken fragmented message")
            if opcode not in (_BINARY, _CONTINUATION):
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


# -- talking to git ----------------------------------------------------------------------
def _read_line(fd: int = 0) -> str | None:
    """One command line from git, byte by byte: what follows ``connect`` is the
    service's, and a buffered reader would swallow it."""
    data = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte:
            return None if not data else data.decode()
        if byte == b"\n":
            return data.decode()
        data += byte


def _reply(text: str) -> None:
    os.write(1, text.encode())


def run(target: Target) -> int:
    """Answer git's commands (``gitremote-helpers``) until it asks to connect."""
    while True:
        line = _read_line()
        _debug(f"git says {line!r}")
        if not line:
            return 0  # git is done with us
        if line == "capabilities":
            _reply("connect\n\n")
        elif line.startswith("connect "):
            service = line[len("connect ") :].strip()
            if service not in _SERVICES:
                raise HelperError(f"unsupported service {service!r}")
            settings = Settings.load(target)
            if target.scheme == "ws":
                return plain_session(target, service, settings)
            import asyncio

            _quiet_logging(_debug_enabled())
            return asyncio.run(session(target, service, settings))
        else:
            raise HelperError(f"unsupported remote helper command {line!r}")


def _quiet_logging(debug: bool) -> None:
    """Tornado and asyncio log through ``logging``: to stderr when debugging, else nowhere."""
    import logging

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.CRITICAL + 1,
        format="git-remote-ws: %(name)s: %(message)s",
    )


def main(scheme: str = "ws", argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled()
    try:
        if not 1 <= len(args) <= 2:
            raise HelperError(f"usage: git-remote-{scheme} <remote> [<url>] (run by git)")
        return run(Target.parse(args[-1], scheme))
    except HelperError as exc:
        _fatal(str(exc))
        return 128
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback for the user, unless asked for
        if debug:
            import traceback

            traceback.print_exc()
        _fatal(f"git-remote-{scheme}: {type(exc).__name__}: {exc}")
        return 128


def main_ws() -> int:
    return main("ws")


def main_wss() -> int:
    return main("wss")


if __name__ == "__main__":  # python -m gittornado.remote_helper <remote> <url>
    sys.exit(main())
