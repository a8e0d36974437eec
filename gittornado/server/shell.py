"""``gittornado-shell USER``: the forced command's composition root (options -> gate, engine).

The SSH transport itself is ``gittornado.transports.sshshell``; this builds
what it serves with from the same option groups as the server
(``gittornado.server.options``), so a flag means the same on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import re
import shutil
import sys
from collections.abc import Mapping
from typing import Any

from ..access.gate import Gate
from ..access.repos import RepositoryLookup
from ..engine.engine import Engine
from ..transports.sshshell import PROG, REFUSED, serve, tell
from . import options

__all__ = ["main", "make_parser"]

app_log = logging.getLogger("gittornado.application")

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


async def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    gate = Gate(_policy(args), RepositoryLookup(args.gitbase, allow_external_links=args.allow_external_links))
    engine = Engine(
        git=_find_git(args.git),
        receive_pack_limit=args.max_push_size,
        input_idle=None,  # git reads the session itself; sshd watches the connection
        output_idle=None,
        direct_output=False,
        pack_cache=_pack_cache(args),
    )
    return await serve(gate, engine, args.user, environ, listable=not args.auth_api)


def main(argv: list[str] | None = None) -> int:
    """The console script: exit status is git's, or 128 for a refusal (as git-shell)."""
    args = make_parser().parse_args(argv)
    _setup_logging(args)
    if not _USER.match(args.user):
        tell("this key's user name is invalid (see the server's authorized_keys)")
        app_log.error("invalid user name %r in the forced command", args.user)
        return REFUSED
    os.environ.setdefault("PATH", os.defpath)  # hooks need one; sshd may give none
    try:
        return asyncio.run(_run(args, os.environ))
    except _Refusal as exc:
        app_log.error("%s", exc.log_message)
        tell(str(exc))
        return REFUSED
    except Exception:
        app_log.exception("%s failed for user %s", PROG, args.user)
        tell("internal error (see the server's log)")
        return REFUSED


if __name__ == "__main__":
    sys.exit(main())
