"""``gittornado-shell USER``: git over OpenSSH, as a forced command in ``authorized_keys``.

sshd has already authenticated the key; the key's line names the user::

    command="gittornado-shell --gitbase /srv/git --accessfile F alice",restrict ssh-ed25519 AAAA...

The shell reads ``SSH_ORIGINAL_COMMAND`` (``services.parse_ssh_command``: no
shell ever sees it), asks the same gate as HTTP (``Gate.decide`` with
``AccessRequest(user=USER, credentials=None)``: same rules, same lookup, "not
found" for what the user may not read) and runs git through the engine. git
reads the session itself (``GitRun(input_fd=0)``: the SSH channel *is* this
process's stdin, so a push is not copied through Python); its output is
relayed to stdout by the engine's answer loop (this module is its ``Wire``),
so that git always has somewhere to write its last words, even after the
client left (a push that cannot report its failure dies of SIGPIPE and leaves
its quarantine behind), and a git that dies mid-answer reaches the user as a
``remote:`` line or ``remote error:``, not a bare "early EOF". The engine logs
git's stderr, reaps git, caps a push (``--max-push-size`` becomes
receive-pack's own ``receive.maxInputSize``) and writes the audit line; hooks see
``GITTORNADO_TRANSPORT=ssh`` and ``REMOTE_ADDR`` from ``SSH_CONNECTION``, and
``GIT_PROTOCOL`` passes through (protocol v2 with sshd's ``AcceptEnv GIT_PROTOCOL``).

Whatever reaches stderr reaches the user: one line for a refusal (exit 128),
never a traceback. Logs go to ``--log-file`` or ``--syslog``, or nowhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Mapping
from typing import Any

from tornado.iostream import PipeIOStream, StreamClosedError

from ..access.gate import Gate
from ..access.rights import AccessRequest
from ..engine.engine import Engine
from ..errors import BadRequest, GitAccessError, NotFound, Unauthorized
from ..protocol.services import READ, parse_ssh_command, valid_git_protocol

__all__ = ["serve", "remote_addr", "tell", "PROG", "REFUSED"]

PROG = "gittornado-shell"
#: What git-shell and git itself exit with for a refused command.
REFUSED = 128

access_log = logging.getLogger("gittornado.access")


def remote_addr(environ: Mapping[str, str]) -> str:
    """The client's address: the first field of ``SSH_CONNECTION`` (or ``SSH_CLIENT``)."""
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        fields = environ.get(name, "").split()
        if fields:
            return fields[0]
    return ""


def tell(message: str) -> None:
    """One line for the user (SSH's stderr is theirs); a gone user is not an error."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _detach_stdin() -> None:
    """Give up our own hold on the session's stdin: git reads it now."""
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(fd, 0)
    finally:
        os.close(fd)


class _Session:
    """The SSH session's stdout as the run's ``Wire`` (no splice: sshd reads a pipe)."""

    closed_errors = (StreamClosedError, OSError)

    def __init__(self, fd: int) -> None:
        self._stream = PipeIOStream(fd)

    def send(self, data: bytes, last: bool = False) -> Awaitable[None]:
        return self._stream.write(data)

    def splice_target(self) -> None:
        return None


async def _greet(gate: Gate, lookup: Any, user: str, addr: str, listable: bool) -> int:
    """No command (``ssh host``): say who the key belongs to and what they can read."""
    lines = [
        f"Hi {user}! You have authenticated, but {PROG} gives no shell, only git.",
        "Clone with: git clone ssh://HOST/REPOSITORY",
    ]
    if listable and hasattr(lookup, "names"):
        request = AccessRequest(repo="", operation=READ, user=user, remote_addr=addr, transport="ssh")
        names = await gate.readable(lookup.names(), request)
        lines.append("Repositories you can read:" if names else "There is no repository you can read.")
        lines += [f"  {name}" for name in names]
    try:
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        sys.stderr.flush()
    except OSError:
        pass
    access_log.info("%s ssh (no command) user=%s: greeted", addr or "-", user)
    return REFUSED


async def serve(gate: Gate, engine: Engine, user: str, environ: Mapping[str, str], *, listable: bool) -> int:
    """Serve ``SSH_ORIGINAL_COMMAND`` for ``user`` over this process's stdin/stdout.

    Returns the exit status: git's, or ``REFUSED`` (128) with one line on stderr.
    ``listable``: a bare ``ssh host`` lists the repositories the user can read.
    """
    addr = remote_addr(environ)
    command = environ.get("SSH_ORIGINAL_COMMAND", "")
    if not command.strip():
        return await _greet(gate, gate.lookup, user, addr, listable=listable)
    try:
        parsed = parse_ssh_command(command)
        git_protocol = environ.get("GIT_PROTOCOL") or None
        if git_protocol is not None and not valid_git_protocol(git_protocol):
            raise BadRequest("malformed GIT_PROTOCOL")
        session = await gate.decide(
            AccessRequest(
                repo=parsed.path, operation=parsed.service.right, user=user, remote_addr=addr, transport="ssh"
            )
        )
    except GitAccessError as exc:
        # A key's user is never anonymous: "log in" could not help, so it reads as missing.
        shown = NotFound() if isinstance(exc, Unauthorized) else exc
        access_log.info("%s ssh %r user=%s: refused %d %s", addr or "-", command[:200], user, exc.status, exc)
        tell(str(shown))
        return REFUSED
    if session.user is None:
        # The policy does not vouch for names (the default, read-only one), but
        # sshd did: hooks and the audit line see the key's user.
        session = dataclasses.replace(session, user=user)
    try:
        run = await engine.start(
            session,
            parsed.service,
            transport="ssh",
            remote_addr=addr,
            git_protocol=git_protocol,
            stateless=False,
            input_fd=0,
        )
    except GitAccessError as exc:  # 503: git cannot start
        access_log.info("%s ssh %r user=%s: refused %d %s", addr or "-", command[:200], user, exc.status, exc)
        tell(str(exc))
        return REFUSED
    _detach_stdin()
    loop = asyncio.get_running_loop()
    # The session hung up: git, reading it, sees that itself; the run drains it.
    loop.add_signal_handler(signal.SIGHUP, run.peer_gone)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, run.abort, f"gittornado-shell got {signal.Signals(sig).name}")
    outcome = await run.answer(_Session(1))
    # The peer may have left while git still runs (a push finishing, a fetch being
    # stopped): this process is git's parent, so it ends only once git is reaped.
    status = await run.wait()
    if outcome.exit_status is not None:
        status = outcome.exit_status
    access_log.info(
        "%s ssh %s %s user=%s: git exited %d",
        addr or "-",
        parsed.service.name,
        session.repo.name,
        user,
        status,
    )
    return status if status >= 0 else REFUSED
