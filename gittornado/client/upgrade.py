"""What both clients (``tlsclient`` for wss://, ``plainclient`` for ws://) share.

The upgrade request's own headers (the protocol version asked for, HTTP Basic
credentials, ``http.extraHeader``), what a refusal or a failed connection
tells the user (one line, never a password), and the session's common ground:
frame size, git's pipe size, the close codes that mean success. Kept apart
from either client so that ``plainclient`` never imports ``tlsclient``, which
would bring Tornado's client and asyncio to every ws:// command.
"""

from __future__ import annotations

import base64
import fcntl
import re
import sys

from gittornado.client.target import HelperError, Settings, Target, _debug, _debug_enabled

#: Most of git's input sent in one frame (the server takes up to 1 MiB).
_FRAME = 64 * 1024
_CONNECT_TIMEOUT = 60.0
_PIPE_SIZE = 1024 * 1024
#: The version asked for, by service: git has no v2 push (its ``connect.c`` falls
#: back to v0) and upload-archive has no versions at all.
_VERSIONS = {
    "git-receive-pack": lambda v: 0 if v == 2 else v,
    "git-upload-archive": lambda v: 0,
}
#: Close codes that mean success (the rest carry the server's reason).
_CLOSE_OK = (1000,)


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


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe to and from git (Linux): fewer wakeups on both sides per pack."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except (OSError, AttributeError):
        pass  # not a pipe, not Linux, or over pipe-max-size: the default works too
