"""Command-line options that more than one console script takes, and ``parse_size``.

The server (``gittornado``) and the SSH forced command (``gittornado-shell``)
serve the same repositories under the same policy, so an option they share
must be spelled, parsed and explained the same way in both: a deployment
copies ``--gitbase D --accessfile F --pack-cache-dir C`` from one to the
other. Each ``add_*_options(p)`` only adds arguments (as an argument group,
which it returns, so ``--help`` shows them together); what a command does
with them is its own business. Where the two commands' defaults differ, a
keyword argument says which one is being built, never a server-only default
baked in. ``Settings.from_args`` (``settings.py``) reads the destinations
these functions define.

Importing this module is cheap (argparse and logging only): the SSH shell
runs once per connection.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers

__all__ = [
    "parse_size",
    "add_repository_options",
    "add_policy_options",
    "add_limit_options",
    "add_cache_options",
    "add_logging_options",
    "add_server_options",
    "setup_logging",
    "LOG_LEVELS",
]

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

#: ``--log-level`` choices, quietest last.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_size(text: str) -> int:
    """``"512M"`` -> bytes: an integer with an optional K/M/G/T suffix (powers of 1024).

    A plain byte count (``67108864``) is a size too, so options that used to
    take bytes keep accepting what scripts already pass. ``KB``/``KiB``
    spellings and lower case are accepted; anything else (negative, fractional,
    empty) is an ``argparse.ArgumentTypeError``, which argparse reports with
    the option's name.
    """
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)].strip()
    if not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use bytes, or e.g. 500K, 500M, 2G)")
    return int(number) * _UNITS[unit]


def add_repository_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--gitbase``/``--root``, ``--allow-external-links``, ``--git``: where repositories are, and git."""
    g = p.add_argument_group("repositories")
    g.add_argument(
        "--gitbase",
        "--root",
        dest="gitbase",
        default=".",
        metavar="DIR",
        help="directory holding the repositories (default: the current directory)",
    )
    g.add_argument(
        "--allow-external-links",
        action="store_true",
        help="serve repositories reached through symlinks (or alternates) that lead "
        "outside --gitbase (default: such a repository is not found)",
    )
    g.add_argument(
        "--git", default="git", metavar="PATH", help="git executable (default: git, found on PATH)"
    )
    return g


def add_policy_options(p: argparse.ArgumentParser, *, exclusive: bool = True) -> argparse._ArgumentGroup:
    """``--accessfile`` or ``--auth-api`` (with ``--auth-api-timeout``): who may do what.

    The two policies exclude each other. With ``exclusive`` (the default)
    argparse refuses both at once; the server passes ``exclusive=False``
    because its ``main`` returns 2 with the message ``Settings`` raises for
    the same conflict, which also covers programs that build ``Settings``
    without a command line.
    """
    g = p.add_argument_group("access policy")
    policy = g.add_mutually_exclusive_group() if exclusive else g
    policy.add_argument(
        "--accessfile", metavar="FILE", help="INI users/groups/access file (reloaded when it changes)"
    )
    policy.add_argument(
        "--auth-api", metavar="URL", help="Gitorious-style authorization API instead of an access file"
    )
    g.add_argument(
        "--auth-api-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long an API call may take before the request is refused (default 5)",
    )
    return g


def add_limit_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--max-upload-pack-request`` and ``--max-push-size``: request body caps (413 beyond).

    Both take a size (``parse_size``): plain bytes as before, or ``500M``.
    """
    g = p.add_argument_group("request limits")
    g.add_argument(
        "--max-upload-pack-request",
        type=parse_size,
        default=64 * 1024 * 1024,
        metavar="SIZE",
        help="cap on an inflated fetch request, in bytes or e.g. 100M (default 64M; larger: 413)",
    )
    g.add_argument(
        "--max-push-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="cap on a push, in bytes or e.g. 2G (default unbounded)",
    )
    return g


def add_cache_options(
    p: argparse.ArgumentParser, *, pack_cache_by_default: bool = True
) -> argparse._ArgumentGroup:
    """``--pack-cache-dir``, ``--pack-cache-size``, ``--no-pack-cache``: identical fetches share one pack.

    ``pack_cache_by_default``: the server caches packs unless told not to
    (in a directory under ``--state-dir``, else a temporary one); the SSH
    shell, one process per connection with nowhere of its own to keep a
    cache, only when ``--pack-cache-dir`` names one (the server's, to share
    it). Only the help text differs: the options and their defaults are the
    same, and the command applies its rule for a missing directory.
    """
    g = p.add_argument_group("caches")
    if pack_cache_by_default:
        where = "default: DIR/pack-cache under --state-dir, else a temporary directory removed at exit"
    else:
        where = "the server's --pack-cache-dir, to share its cache; default: no pack cache"
    g.add_argument(
        "--pack-cache-dir", metavar="DIR", help=f"where identical fetches share one pack ({where})"
    )
    g.add_argument(
        "--pack-cache-size",
        type=parse_size,
        default=1024**3,
        metavar="SIZE",
        help="disk the pack cache may use, e.g. 500M or 2G (default 1G; 0 turns it off)",
    )
    g.add_argument("--no-pack-cache", action="store_true", help="same as --pack-cache-size 0")
    return g


def add_logging_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--log-level``, ``--log-file``, ``--syslog``: where log lines go (``setup_logging``)."""
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="(default info)")
    g.add_argument("--log-file", metavar="FILE", help="append log lines to FILE")
    g.add_argument("--syslog", action="store_true", help="send log lines to syslog (/dev/log)")
    return g


# -- the server's own ---------------------------------------------------------------------


def add_server_options(p: argparse.ArgumentParser) -> None:
    """What only the HTTP server does with the repositories: its pages, git process limits, logins.

    These are ``Settings`` fields too (the application's, not the listening
    process's, which stay in ``cli``), but the SSH shell has no use for them:
    sshd authenticated the user, one connection is one process.
    """
    http = p.add_argument_group("serving")
    http.add_argument("--realm", default="gittornado", help="Basic auth realm (default gittornado)")
    http.add_argument("--prefix", default="", help="mount point when a proxy forwards /prefix/... unchanged")
    http.add_argument(
        "--web",
        action="store_true",
        help="serve a code browser (klaus) on the repositories' own URLs, same access "
        "rules; needs pip install 'gittornado[web]'",
    )
    http.add_argument(
        "--ssh-url",
        metavar="PREFIX",
        help="show SSH clone URLs on the index page as PREFIX<repo>.git (e.g. git@host:)",
    )
    http.add_argument(
        "--advert-cache-size",
        type=parse_size,
        default=64 * 1024 * 1024,
        metavar="SIZE",
        help="memory per worker for ref advertisements served while refs are unchanged "
        "(default 64M; 0 turns it off)",
    )
    git = p.add_argument_group("git processes")
    git.add_argument(
        "--body-idle-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="drop a request whose body stalls this long (default 600; 0: never)",
    )
    git.add_argument(
        "--send-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="stop git and hang up on a client that takes no answer data this long (default 600; 0: never)",
    )
    git.add_argument(
        "--max-git-processes",
        type=int,
        default=0,
        metavar="N",
        help="git-running HTTP requests per worker at once; the excess waits in a "
        "queue, then gets 503 with Retry-After (default 0: no cap)",
    )
    git.add_argument(
        "--git-queue",
        type=int,
        default=100,
        metavar="N",
        help="requests that may wait for a git slot (default 100; beyond: 503)",
    )
    git.add_argument(
        "--git-queue-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a request waits for a git slot before 503 (default 30)",
    )
    throttle = p.add_argument_group("login throttle")
    throttle.add_argument(
        "--login-failures",
        type=int,
        default=10,
        metavar="N",
        help="wrong passwords from one address within a minute before it gets 429 (default 10; 0 disables)",
    )
    throttle.add_argument(
        "--login-block",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long such an address is refused (default 60)",
    )
    throttle.add_argument("--no-throttle", action="store_true", help="same as --login-failures 0")
    throttle.add_argument(
        "--state-dir",
        metavar="DIR",
        help="directory for state the worker processes share (the login throttle; the pack "
        "cache unless --pack-cache-dir); default: in memory, or a temporary directory with --processes",
    )


def setup_logging(
    args: argparse.Namespace, *, prog: str, stderr: bool = True, with_pid: bool = False, delay: bool = False
) -> None:
    """Send the root logger's lines where ``add_logging_options``' options say.

    ``--log-file`` wins over ``--syslog``; with neither, stderr (``stderr``,
    the server's terminal or service manager) or nowhere (the SSH shell,
    whose stderr is the user's). ``with_pid`` marks stderr lines with the
    worker that wrote them (several processes); file and syslog lines always
    carry ``prog[pid]``, as several programs may share them. ``delay`` opens
    the file at the first line rather than now. Raises ``OSError`` when the
    file or syslog cannot be opened now. Calling it again replaces the
    handler it installed before; other handlers (a test harness's) stay.
    """
    handler: logging.Handler
    if args.log_file:
        handler = logging.FileHandler(args.log_file, encoding="utf-8", delay=delay)
        fmt = "%(asctime)s " + prog + "[%(process)d] %(levelname)s %(name)s: %(message)s"
    elif args.syslog:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = prog + "[%(process)d]: %(levelname)s %(name)s: %(message)s"
    elif stderr:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s " + ("[%(process)d] " if with_pid else "") + "%(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.NullHandler()  # and not logging's last resort, which is stderr
        fmt = "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler._gittornado = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; a test harness's stay
        if getattr(old, "_gittornado", False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, args.log_level.upper()))
