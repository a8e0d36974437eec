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

import argparse
import asyncio
import dataclasses
import logging
import logging.handlers
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Mapping
from typing import Any

from tornado.iostream import PipeIOStream, StreamClosedError

from ..access.gate import Gate
from ..access.repos import RepositoryLookup
from ..access.rights import AccessRequest
from ..engine.engine import Engine
from ..errors import BadRequest, GitAccessError, NotFound, Unauthorized
from ..protocol.services import READ, parse_ssh_command, valid_git_protocol

__all__ = ["main", "make_parser", "remote_addr"]

PROG = "gittornado-shell"
#: What git-shell and git itself exit with for a refused command.
REFUSED = 128

app_log = logging.getLogger("gittornado.application")
access_log = logging.getLogger("gittornado.access")

#: A user name from authorized_keys: printable, no whitespace, not an option.
_USER = re.compile(r"[^\s\-][^\s]{0,255}\Z")


class _Refusal(Exception):
    """A refusal to tell the user in one line (the log gets ``log_message``)."""

    def __init__(self, message: str, log_message: str | None = None) -> None:
        super().__init__(message)
        self.log_message = log_message or message


def _pack_cache(args: argparse.Namespace) -> Any:
    """The pack cache the options name, or None when off or unusable."""
    if not args.pack_cache_dir or not args.pack_cache_size or args.no_pack_cache:
        return None
    from ..engine.packcache import PackCache

    try:
        return PackCache(args.pack_cache_dir, max_bytes=args.pack_cache_size)
    except OSError as exc:
        app_log.warning("pack cache off: cannot use --pack-cache-dir %r: %s", args.pack_cache_dir, exc)
        return None


def make_parser() -> argparse.ArgumentParser:
    """The shell's options: the server's own groups (``gittornado.server.options``), so a
    flag means the same on both sides (``--max-push-size``, ``--pack-cache-dir``, ...)."""
    from ..server import options

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve git over OpenSSH as a forced command: "
        'command="gittornado-shell [options] USER",restrict ssh-ed25519 ... in authorized_keys.',
    )
    p.add_argument("user", help="the user this key belongs to (what hooks and access rules see)")
    options.add_repository_options(p)
    options.add_policy_options(p)
    options.add_limit_options(p)
    options.add_cache_options(p, pack_cache_by_default=False)
    options.add_logging_options(p)
    return p


def remote_addr(environ: Mapping[str, str]) -> str:
    """The client's address: the first field of ``SSH_CONNECTION`` (or ``SSH_CLIENT``)."""
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        fields = environ.get(name, "").split()
        if fields:
            return fields[0]
    return ""


def _tell(message: str) -> None:
    """One line for the user (SSH's stderr is theirs); a gone user is not an error."""
    try:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _setup_logging(args: argparse.Namespace) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if args.log_file:
        handler = logging.FileHandler(args.log_file, encoding="utf-8", delay=True)
        handler.setFormatter(
            logging.Formatter("%(asctime)s " + PROG + "[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
    elif args.syslog:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(PROG + "[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.NullHandler()  # and not logging's last resort, which is stderr
    root.addHandler(handler)
    root.setLevel(getattr(logging, args.log_level.upper()))
    # A log file that cannot be written must not print a traceback to the user.
    logging.raiseExceptions = False


def _find_git(name: str) -> str:
    """git's absolute path: sshd gives forced commands a minimal environment (maybe no PATH)."""
    found = shutil.which(name, path=os.environ.get("PATH") or os.defpath)
    if found is None and os.sep not in name:
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
    if found is None:
        raise _Refusal("git is not available on the server", f"git executable {name!r} not found")
    return os.path.abspath(found)


def _policy(args: argparse.Namespace) -> Any:
    """The access policy the options name; None is the server's default (read-only for all)."""
    if args.auth_api:
        from ..access.authapi import AuthAPI

        return AuthAPI(args.auth_api, timeout=args.auth_api_timeout, cache_ttl=0)
    if args.accessfile:
        from ..access.accessfile import AccessFile, AccessFileError

        try:
            return AccessFile(args.accessfile)
        except AccessFileError as exc:
            raise _Refusal(
                "the server's access configuration does not load", f"access file {args.accessfile}: {exc}"
            ) from None
    return None


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


async def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    user, addr = args.user, remote_addr(environ)
    gate = Gate(_policy(args), RepositoryLookup(args.gitbase, allow_external_links=args.allow_external_links))
    command = environ.get("SSH_ORIGINAL_COMMAND", "")
    if not command.strip():
        return await _greet(gate, gate.lookup, user, addr, listable=not args.auth_api)
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
        _tell(str(shown))
        return REFUSED
    if session.user is None:
        # The policy does not vouch for names (the default, read-only one), but
        # sshd did: hooks and the audit line see the key's user.
        session = dataclasses.replace(session, user=user)
    git = _find_git(args.git)
    engine = Engine(
        git=git,
        receive_pack_limit=args.max_push_size,
        input_idle=None,
        output_idle=None,
        direct_output=False,
        pack_cache=_pack_cache(args),
    )
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
        _tell(str(exc))
        return REFUSED
    _detach_stdin()
    loop = asyncio.get_running_loop()
    # The session hung up: git, reading it, sees that itself; the run drains it.
    loop.add_signal_handler(signal.SIGHUP, run.peer_gone)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, run.abort, f"gittornado-shell got {signal.Signals(sig).name}")
    outcome = await run.answer(_Session(1))
    status = outcome.exit_status if outcome.exit_status is not None else -1
    access_log.info(
        "%s ssh %s %s user=%s: git exited %d",
        addr or "-",
        parsed.service.name,
        session.repo.name,
        user,
        status,
    )
    return status if status >= 0 else REFUSED


def main(argv: list[str] | None = None) -> int:
    """The console script: exit status is git's, or 128 for a refusal (as git-shell)."""
    args = make_parser().parse_args(argv)
    _setup_logging(args)
    if not _USER.match(args.user):
        _tell("this key's user name is invalid (see the server's authorized_keys)")
        app_log.error("invalid user name %r in the forced command", args.user)
        return REFUSED
    os.environ.setdefault("PATH", os.defpath)  # hooks need one; sshd may give none
    try:
        return asyncio.run(_serve(args, os.environ))
    except _Refusal as exc:
        app_log.error("%s", exc.log_message)
        _tell(str(exc))
        return REFUSED
    except Exception:
        app_log.exception("%s failed for user %s", PROG, args.user)
        _tell("internal error (see the server's log)")
        return REFUSED


if __name__ == "__main__":
    sys.exit(main())
