"""``git-remote-ws`` / ``git-remote-wss``: the remote helper behind ``git clone ws://...``.

git runs ``git-remote-<scheme> <remote> <url>`` for a URL it has no transport
for (``gitremote-helpers``). This helper offers only ``connect``: on
``connect git-upload-pack`` (or ``git-receive-pack``, ``git-upload-archive``)
it opens ``ws(s)://host/path/<service>`` and, once upgraded, its stdin and
stdout *are* the service's, pumped to and from binary frames (the wire is
described in ``gittornado.transports.websocket``). So git speaks its native
protocol end to end, v2 included; ``stateless-connect`` would only add HTTP's
framing back.

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

The parts, in ``gittornado.client``: ``target`` (the URL, git's settings,
credentials), ``upgrade`` (what both clients share), ``handshake`` and
``plainclient`` (ws://), ``tlsclient`` (wss://, imported for it alone); this
module answers git and picks the client.

Failures reach the user as one ``fatal: ...`` line and exit status 128, never a
traceback; ``GITTORNADO_WS_DEBUG=1`` traces the session on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from gittornado.client.plainclient import _Plain as _Plain  # re-exported: tests drive it
from gittornado.client.plainclient import _ProtocolError as _ProtocolError
from gittornado.client.plainclient import plain_session
from gittornado.client.target import HelperError, Settings, Target, _debug, _debug_enabled

__all__ = ["main", "main_ws", "main_wss", "HelperError", "Target"]

_SERVICES = ("git-upload-pack", "git-receive-pack", "git-upload-archive")


def _fatal(message: str) -> None:
    sys.stderr.write(f"fatal: {message}\n")
    sys.stderr.flush()


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
            from gittornado.client.tlsclient import tls_session  # Tornado's client: wss:// alone

            return tls_session(target, service, settings)
        else:
            raise HelperError(f"unsupported remote helper command {line!r}")


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


if __name__ == "__main__":  # python -m gittornado.client.remote_helper <remote> <url>
    sys.exit(main())
