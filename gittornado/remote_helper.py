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

Failures reach the user as one ``fatal: ...`` line and exit status 128, never a
traceback; ``GITTORNADO_WS_DEBUG=1`` traces the session on stderr.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import fcntl
import logging
import os
import queue
import re
import ssl
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import PipeIOStream, StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    websocket_connect,
)

__all__ = ["main", "main_ws", "main_wss", "HelperError", "Target"]

#: Most of git's input sent in one frame (the server takes up to 1 MiB).
_FRAME = 64 * 1024
#: Largest frame taken from the server (it sends up to 256 KiB).
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
@dataclass(frozen=True)
class Target:
    """The repository URL, split: where to connect and with which credentials."""

    scheme: str  #: ``ws`` or ``wss``
    netloc: str  #: host[:port], without userinfo
    path: str  #: the repository's path, ``/`` first, no trailing ``/``
    username: str | None = None
    password: str | None = field(default=None, repr=False)

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


@dataclass
class Settings:
    """What the helper takes from git's configuration and environment."""

    version: int = 0
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    proxy: str | None = None

    @classmethod
    def load(cls, target: Target, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        http = dict(_config_pairs(_git("config", "-z", "--get-urlmatch", "http", target.http_url).stdout))
        other = _config_pairs(
            _git("config", "-z", "--get-regexp", r"^(protocol\.version|http\..*extraheader)$").stdout
        )
        settings = cls()
        version = [v for k, v in other if k == "protocol.version"]
        if version:
            settings.version = int(version[-1]) if version[-1].strip().isdigit() else 0
        else:
            settings.version = _default_protocol_version()
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


def _default_protocol_version() -> int:
    """git's default: v2 from 2.26 on (the helper runs the user's git)."""
    match = re.search(r"(\d+)\.(\d+)", _git("version").stdout)
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
def _request(target: Target, service: str, settings: Settings, auth: tuple[str, str] | None) -> HTTPRequest:
    headers = HTTPHeaders({"User-Agent": "git-remote-ws (gittornado)"})
    version = _VERSIONS.get(service, lambda v: v)(settings.version)
    if version:
        headers["Git-Protocol"] = f"version={version}"
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    for name, value in settings.headers:
        headers.add(name, value)
    return HTTPRequest(
        target.service_url(service),
        headers=headers,
        connect_timeout=_CONNECT_TIMEOUT,
        request_timeout=_CONNECT_TIMEOUT,
        follow_redirects=False,
        validate_cert=settings.verify,
        ca_certs=settings.ca_file,
        client_cert=settings.client_cert,
        client_key=settings.client_key,
    )


def _no_userinfo(url: str) -> str:
    """``url`` without a password (or user) to print."""
    return re.sub(r"//[^/@]*@", "//", url)


def _refusal(exc: HTTPClientError, target: Target) -> str:
    """The server's HTTP answer to the upgrade, as one line for the user."""
    code = exc.code
    if code == 401:
        return f"Authentication failed for '{target.display}'"
    if code == 404:
        return f"repository '{target.display}' not found"
    body = ""
    if exc.response is not None and exc.response.body:
        body = exc.response.body.decode("utf-8", "replace").strip().splitlines()[0][:200]
    if code == 599:
        return f"unable to access '{target.display}': {exc.message}"
    detail = body or exc.message or "refused"
    return f"unable to access '{target.display}': {detail} (HTTP {code})"


async def connect(target: Target, service: str, settings: Settings) -> WebSocketClientConnection:
    """Open the service's WebSocket, asking git's credential helpers on a 401."""
    auth = (target.username, target.password) if target.username and target.password is not None else None
    filled: dict[str, str] | None = None
    while True:
        request = _request(target, service, settings, auth)
        _debug(
            f"connecting to {target.service_url(service)} "
            f"(Git-Protocol: {request.headers.get('Git-Protocol', '-')}, "
            f"auth: {'yes' if auth else 'no'}, verify: {settings.verify})"
        )
        try:
            conn = await websocket_connect(request, max_message_size=_MAX_IN)
        except HTTPClientError as exc:
            _debug(f"refused: HTTP {exc.code}")
            if exc.code == 401 and filled is None and (auth is None or target.password is None):
                filled = _credential("fill", _credential_query(target))
                if filled is not None:
                    auth = (filled["username"], filled["password"])
                    continue
            elif exc.code == 401 and filled is not None:
                _credential("reject", filled)
            raise HelperError(_refusal(exc, target)) from None
        except ssl.SSLCertVerificationError as exc:
            raise HelperError(
                f"unable to access '{target.display}': certificate verify failed: {exc.verify_message}"
                " (GIT_SSL_CAINFO or http.sslCAInfo names the CA to trust)"
            ) from None
        except ssl.SSLError as exc:
            raise HelperError(
                f"unable to access '{target.display}': {exc.reason or exc.strerror or exc}"
            ) from None
        except (OSError, StreamClosedError, WebSocketError) as exc:
            note = ""
            if settings.proxy:
                note = f" (proxies are not used: {_no_userinfo(settings.proxy)} ignored)"
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            )
            raise HelperError(f"unable to access '{target.display}': {reason}{note}") from None
        if filled is not None:
            _credential("approve", filled)
        _debug("connected")
        return conn


# -- the session -------------------------------------------------------------------------
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


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe to and from git (Linux): fewer wakeups on both sides per pack."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # not a pipe, not Linux, or over pipe-max-size: the default works too


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
            return asyncio.run(session(target, service, settings))
        else:
            raise HelperError(f"unsupported remote helper command {line!r}")


def _quiet_logging(debug: bool) -> None:
    """Tornado and asyncio log through ``logging``: to stderr when debugging, else nowhere."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.CRITICAL + 1,
        format="git-remote-ws: %(name)s: %(message)s",
    )


def main(scheme: str = "ws", argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_enabled()
    _quiet_logging(debug)
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
            traceback.print_exc()
        _fatal(f"git-remote-{scheme}: {type(exc).__name__}: {exc}")
        return 128


def main_ws() -> int:
    return main("ws")


def main_wss() -> int:
    return main("wss")


if __name__ == "__main__":  # python -m gittornado.remote_helper <remote> <url>
    sys.exit(main())
