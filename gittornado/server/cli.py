"""Console front ends: ``gittornado`` (the server, and ``check-access``) and ``gittornado-passwd``.

argparse, not ``tornado.options``: the contract needs ``--opt value`` as well
as ``--opt=value``. Each ``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import shutil
import signal
import sqlite3
import ssl
import sys
import tempfile

__all__ = ["main", "passwd_main", "make_parser"]

log = logging.getLogger("gittornado.general")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gittornado",
        description="Serve the git repositories under a directory over smart and dumb HTTP. "
        "Also: 'gittornado check-access FILE USER REPO'.",
    )
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks one)")
    p.add_argument("--address", default="", help="bind address (default: all interfaces)")
    p.add_argument(
        "--gitbase",
        "--root",
        dest="gitbase",
        default=".",
        help="directory holding the repositories (default: current directory)",
    )
    p.add_argument("--accessfile", help="INI users/groups/access file (reloaded when it changes)")
    p.add_argument(
        "--auth-api", metavar="URL", help="Gitorious-style authorization API instead of an access file"
    )
    p.add_argument("--realm", default="gittornado", help="Basic auth realm")
    p.add_argument("--prefix", default="", help="mount point when a proxy forwards /prefix/... unchanged")
    p.add_argument("--processes", type=int, default=1, help="worker processes; 0 = one per CPU")
    p.add_argument("--certfile", help="TLS certificate (serve HTTPS)")
    p.add_argument("--keyfile", help="TLS private key")
    p.add_argument(
        "--xheaders", action="store_true", help="trust X-Forwarded-For/-Proto from a reverse proxy"
    )
    p.add_argument(
        "--max-upload-pack-request",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="cap on an inflated fetch request (default 64 MiB; larger: 413)",
    )
    p.add_argument(
        "--max-push-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="cap on a push body (default unbounded)",
    )
    p.add_argument(
        "--body-idle-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="drop a request whose body stalls this long (default 600; 0: never)",
    )
    p.add_argument(
        "--send-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="stop git and hang up on a client that takes no answer data this long (default 600; 0: never)",
    )
    p.add_argument(
        "--login-failures",
        type=int,
        default=10,
        metavar="N",
        help="wrong passwords from one address within a minute before it gets 429 (default 10; 0 disables)",
    )
    p.add_argument(
        "--login-block",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long such an address is refused (default 60)",
    )
    p.add_argument("--no-throttle", action="store_true", help="same as --login-failures 0")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="directory for state the worker processes share (the login throttle); "
        "default: in memory, or a temporary directory with --processes",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="open connections per worker process, beyond which new ones get 503 "
        "(default: half the open-file limit; 0: no cap)",
    )
    p.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=None,
        metavar="N",
        help="open connections per client address (default 100, or none with "
        "--xheaders: the peer is then the proxy; 0: no cap)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="time a request's headers may take (default 20)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="time a keep-alive connection may wait for its next request (default 120)",
    )
    p.add_argument(
        "--allow-external-links",
        action="store_true",
        help="serve repositories reached through symlinks (or alternates) that lead "
        "outside --gitbase (default: such a repository is not found)",
    )
    p.add_argument(
        "--web",
        action="store_true",
        help="serve a code browser (klaus) on the repositories' own URLs, same access "
        "rules; needs pip install 'gittornado[web]'",
    )
    p.add_argument(
        "--ssh-url",
        metavar="PREFIX",
        help="show SSH clone URLs on the index page as PREFIX<repo>.git (e.g. git@host:)",
    )
    p.add_argument(
        "--max-git-processes",
        type=int,
        default=0,
        metavar="N",
        help="git-running HTTP requests per worker at once; the excess waits in a "
        "queue, then gets 503 with Retry-After (default 0: no cap)",
    )
    p.add_argument(
        "--git-queue",
        type=int,
        default=100,
        metavar="N",
        help="requests that may wait for a git slot (default 100; beyond: 503)",
    )
    p.add_argument(
        "--git-queue-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a request waits for a git slot before 503 (default 30)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time running clones and pushes get to finish before "
        "they are stopped (default 30; a second signal stops them at once)",
    )
    p.add_argument(
        "--pack-cache-dir",
        metavar="DIR",
        help="where identical fetches share one pack (default: DIR/pack-cache under "
        "--state-dir, else a temporary directory removed at exit)",
    )
    p.add_argument(
        "--pack-cache-size",
        type=parse_size,
        default=parse_size("1G"),
        metavar="SIZE",
        help="disk the pack cache may use, e.g. 500M or 2G (default 1G; 0 turns it off)",
    )
    p.add_argument("--no-pack-cache", action="store_true", help="same as --pack-cache-size 0")
    p.add_argument(
        "--advert-cache-size",
        type=parse_size,
        default=parse_size("64M"),
        metavar="SIZE",
        help="memory per worker for ref advertisements served while refs are unchanged "
        "(default 64M; 0 turns it off)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"])
    return p


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"512M"`` -> bytes: an integer with an optional K/M/G/T suffix (powers of 1024)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)].strip()
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 500M or 2G)")
    return int(number) * _UNITS[unit]


def _setup_logging(level: str, processes: int = 1) -> None:
    # With several workers, each line says which one wrote it.
    pid = "[%(process)d] " if processes != 1 else ""
    logging.basicConfig(
        level=getattr(logging, level.upper()), format=f"%(asctime)s {pid}%(levelname)s %(name)s: %(message)s"
    )


def _metrics_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the shared metrics (multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
        except Exception:  # metrics are optional; a supervisor must not die of them
            pass


RESTART_WINDOW = 10.0  # seconds: more than N worker restarts within it and the supervisor gives up


def _fork_workers(n: int, cleanup: list[str] | None = None) -> None:
    """Pre-fork ``n`` workers sharing the listening sockets; returns in each worker.

    The parent only supervises: it replaces a worker that dies abnormally (at
    most ``n`` times within ``RESTART_WINDOW`` seconds, a little later each
    time; beyond that a worker that crashes at start would only spin, so it
    stops the rest and exits 1), passes SIGHUP on to every worker (each then
    reloads its access file) and, on SIGTERM/SIGINT, stops every worker and
    exits 0 (``tornado.process.fork_processes`` would leave the workers running
    when the parent is killed). Directories in ``cleanup`` are removed when the
    supervisor exits.
    """
    import collections
    import time

    children: set[int] = set()
    stopping = False
    restarts: collections.deque[float] = collections.deque()

    def spawn() -> bool:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Until the worker's loop handles it, a SIGHUP must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            return True
        children.add(pid)
        return False

    def signal_all(signum: int) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        signal_all(signal.SIGTERM)

    def hup(signum, frame) -> None:
        if not stopping:
            signal_all(signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    for _ in range(n):
        if spawn():
            return
    log.info("started %d worker processes", n)
    status_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        _metrics_process_dead(pid)
        if stopping or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            continue
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW:
            restarts.popleft()
        if len(restarts) >= n:
            log.error(
                "worker %d died (status %d); %d workers died within %gs, giving up",
                pid,
                status,
                len(restarts) + 1,
                RESTART_WINDOW,
            )
            stopping = True
            status_code = 1
            signal_all(signal.SIGTERM)
            continue
        log.warning("worker %d died (status %d); starting another", pid, status)
        if restarts:  # a little later each time: a worker failing at start does not spin
            time.sleep(min(1.0, 0.1 * len(restarts)))
        restarts.append(now)
        if stopping:  # a signal came during the pause
            continue
        if spawn():
            return
    for path in cleanup or ():
        shutil.rmtree(path, ignore_errors=True)
    sys.exit(status_code)


def _quarantine_idle(args: argparse.Namespace) -> float:
    """How long a push quarantine must be untouched before it is nobody's.

    A push whose body stalls for ``--body-idle-timeout`` is dropped (git then
    cleans up itself), so a quarantine idle for longer is left over; a margin
    covers hooks and clocks of other hosts on a shared root.
    """
    return max(args.body_idle_timeout or 3600.0, 60.0) + 60.0


def _serve(args: argparse.Namespace) -> int:
    import tornado.ioloop
    import tornado.netutil
    import tornado.process

    from ..access.accessfile import AccessFile
    from ..access.throttle import SQLiteStore, Throttle
    from ..engine.advertcache import AdvertCache
    from .app import make_app
    from .httpserver import GitHTTPServer, default_max_connections, raise_open_file_limit
    from .shutdown import drain

    if args.accessfile and args.auth_api:
        print("gittornado: give either --accessfile or --auth-api, not both", file=sys.stderr)
        return 2
    if bool(args.certfile) != bool(args.keyfile):
        print("gittornado: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    if not os.path.isdir(args.gitbase):
        print(f"gittornado: --gitbase {args.gitbase!r} is not a directory", file=sys.stderr)
        return 2
    if args.web:
        from ..web.browse import klaus_missing

        if (missing := klaus_missing()) is not None:
            print(f"gittornado: {missing}", file=sys.stderr)
            return 2
    ssl_ctx = None
    if args.certfile:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(args.certfile, args.keyfile)
    try:
        sockets = tornado.netutil.bind_sockets(args.port, args.address or None)
    except OSError as exc:
        print(f"gittornado: cannot listen on {args.address or '*'}:{args.port}: {exc}", file=sys.stderr)
        return 1
    # SIGHUP reloads the access file once the server runs; until then it must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd_limit = raise_open_file_limit()
    max_connections = args.max_connections
    if max_connections is None:
        max_connections = default_max_connections(fd_limit)
    per_ip = args.max_connections_per_ip
    if per_ip is None:
        per_ip = 0 if args.xheaders else 100
    throttled = args.login_failures > 0 and not args.no_throttle
    store = None
    temporary: list[str] = []
    if throttled and (args.state_dir or args.processes != 1):
        # Made before forking, so every worker counts failed logins in one place.
        state_dir = args.state_dir or tempfile.mkdtemp(prefix="gittornado-state-")
        if not args.state_dir:
            temporary.append(state_dir)
        try:
            store = SQLiteStore.in_directory(state_dir)
        except (OSError, sqlite3.Error) as exc:
            print(f"gittornado: cannot use --state-dir {state_dir!r}: {exc}", file=sys.stderr)
            return 2
    pack_cache = None
    if args.pack_cache_size and not args.no_pack_cache:
        from ..engine.packcache import PackCache

        cache_dir = args.pack_cache_dir
        if cache_dir is None and args.state_dir:
            cache_dir = os.path.join(args.state_dir, "pack-cache")
        if cache_dir is None:
            cache_dir = tempfile.mkdtemp(prefix="gittornado-packs-")
            temporary.append(cache_dir)
        try:
            pack_cache = PackCache(cache_dir, max_bytes=args.pack_cache_size)
        except OSError as exc:
            print(f"gittornado: cannot use --pack-cache-dir {cache_dir!r}: {exc}", file=sys.stderr)
            return 2
    # Before any worker exists: quarantines of pushes a crash or kill -9 cut short.
    from .shutdown import remove_stale_quarantines

    remove_stale_quarantines(args.gitbase, _quarantine_idle(args))
    if args.processes != 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker's metrics add up in whichever worker answers /-/metrics.
        metrics_dir = tempfile.mkdtemp(prefix="gittornado-metrics-")
        temporary.append(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if args.processes != 1:
        # Must happen before any IOLoop exists.
        _fork_workers(args.processes or tornado.process.cpu_count(), cleanup=temporary)

    async def run() -> None:
        try:
            throttle = None
            if throttled:
                throttle = Throttle(limit=args.login_failures, block=args.login_block, store=store)
            app = make_app(
                args.gitbase,
                accessfile=args.accessfile,
                auth_api=args.auth_api,
                realm=args.realm,
                prefix=args.prefix,
                throttle=throttle,
                upload_pack_limit=args.max_upload_pack_request,
                receive_pack_limit=args.max_push_size,
                body_idle_timeout=args.body_idle_timeout or None,
                send_timeout=args.send_timeout or None,
                allow_external_links=args.allow_external_links,
                web=args.web,
                ssh_url=args.ssh_url,
                max_git_processes=args.max_git_processes or None,
                git_queue=args.git_queue,
                git_queue_timeout=args.git_queue_timeout,
                pack_cache=pack_cache,
                advert_cache=AdvertCache(args.advert_cache_size) if args.advert_cache_size else None,
            )
        except ValueError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None
        server = GitHTTPServer(
            app,
            xheaders=args.xheaders,
            ssl_options=ssl_ctx,
            max_connections=max_connections,
            max_connections_per_ip=per_ip,
            header_timeout=args.header_timeout or None,
            idle_timeout=args.idle_timeout or 3600,
        )
        stop = asyncio.Event()
        hurry = asyncio.Event()  # a second signal: no more waiting
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            (hurry if stop.is_set() else stop).set()

        def on_hup() -> None:
            # SIGHUP: take the access file as it is now, without waiting for the next check.
            access = app.gate.access
            if isinstance(access, AccessFile):
                if access.reload(force=True):
                    log.info("SIGHUP: reloaded the access file %s", access.path)
                else:
                    log.warning(
                        "SIGHUP: the access file %s did not load; the last good one stays", access.path
                    )
            else:
                log.info("SIGHUP: no access file to reload")

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        server.add_sockets(sockets)
        ports = sorted({s.getsockname()[1] for s in sockets})
        scheme = "https" if ssl_ctx else "http"
        log.info(
            "serving %s on %s://%s:%s%s/",
            os.path.abspath(args.gitbase),
            scheme,
            args.address or "*",
            ",".join(map(str, ports)),
            args.prefix.rstrip("/"),
        )
        log.info(
            "limits: %s connections, %s per address, open files %d, headers %gs, idle %gs",
            max_connections or "unlimited",
            per_ip or "unlimited",
            fd_limit,
            args.header_timeout,
            args.idle_timeout,
        )
        sweeper = tornado.ioloop.PeriodicCallback(
            lambda: loop.run_in_executor(
                None, remove_stale_quarantines, args.gitbase, _quarantine_idle(args)
            ),
            1000 * min(600.0, _quarantine_idle(args)),
        )
        sweeper.start()
        await stop.wait()
        sweeper.stop()
        log.info("shutting down")
        await drain(server, args.shutdown_grace, hurry)
        log.info("stopped")

    try:
        asyncio.run(run())
    finally:
        if args.processes == 1:  # with workers, the supervisor removes them
            for path in temporary:
                shutil.rmtree(path, ignore_errors=True)
    return 0


def check_access_main(argv: list[str]) -> int:
    """``gittornado check-access FILE USER REPO``: the verdict and the rule granting it.

    Exit status 0 when USER may read REPO, 3 when not, 1 for a file that does
    not load (its error names the line) or an invalid repository name.
    """
    p = argparse.ArgumentParser(
        prog="gittornado check-access", description="Explain what USER may do on REPO under an access file."
    )
    p.add_argument("accessfile")
    p.add_argument("user", help="user name, or - for anonymous")
    p.add_argument("repo")
    args = p.parse_args(argv)
    from ..access.accessfile import AccessFileError, hash_weakness, parse_access_file
    from ..access.repos import normalize_name

    try:
        with open(args.accessfile, encoding="utf-8") as fh:
            policy = parse_access_file(fh.read())
    except (OSError, UnicodeDecodeError) as exc:
        print(f"gittornado check-access: cannot read {args.accessfile}: {exc}", file=sys.stderr)
        return 1
    except AccessFileError as exc:
        print(f"gittornado check-access: {args.accessfile} does not load: {exc}", file=sys.stderr)
        return 1
    repo = normalize_name(args.repo)
    if repo is None:
        print(f"gittornado check-access: {args.repo!r} is not a valid repository name", file=sys.stderr)
        return 1
    user = None if args.user == "-" else args.user
    read, write, best = policy.rights(user, repo)
    who = user or "anonymous"
    verdict = "read and write" if write else "read only" if read else "no access"
    print(f"{who} on {repo}: {verdict}")
    if best is not None and (read or write):
        print(f"  granted by {best.describe()}")
    for rule in policy.matching_rules(user, repo):
        if rule is not best or not (read or write):
            print(f"  also matches {rule.describe()}")
    if best is None or not (read or write):
        print("  no rule grants access")
    if user is not None:
        if user not in policy.users:
            print(f"note: {user!r} has no password in [users], so cannot log in over HTTP")
        elif (weakness := hash_weakness(policy.users[user])) is not None:
            print(
                f"note: {user!r} has a weak password hash ({weakness}); "
                f"replace it with: gittornado-passwd {args.accessfile} {user}"
            )
    return 0 if read else 3


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-access":
        return check_access_main(argv[1:])
    args = make_parser().parse_args(argv)
    _setup_logging(args.log_level, args.processes)
    return _serve(args)


# -- gittornado-passwd ---------------------------------------------------------------------


def update_users_section(text: str, user: str, hashed: str | None) -> str:
    """The access file ``text`` with ``user``'s line set to ``hashed`` (None: removed).

    Pure. Every other line, comment, blank and line ending is kept byte for
    byte; on the user's own line only the hash changes (indentation, ``:`` or
    ``=`` and an inline comment stay). A new user goes after the last entry of
    the first ``[users]`` section; a missing ``[users]`` section is added
    before the first section (or at the end of a file without one).
    Raises ``KeyError`` when deleting a user that is not there.
    """
    import re

    def content(line: str) -> str:  # what the parser sees: no comment, no blanks
        stripped = line.strip()
        if stripped.startswith((";", "#")):
            return ""
        return re.split(r"\s[;#]", stripped, maxsplit=1)[0].strip()

    lines = text.splitlines(keepends=True)
    first_eol = re.search(r"\r\n|\n|\r", text)
    eol = first_eol.group(0) if first_eol else "\n"
    section = None
    first_header = None
    users_start = None
    users_last = None  # index of the last entry (or the header) of the first [users]
    in_first_users = False
    for i, line in enumerate(lines):
        body = content(line)
        if not body:
            continue
        if body.startswith("[") and body.endswith("]"):
            section = body[1:-1].strip().lower()
            if first_header is None:
                first_header = i
            in_first_users = section == "users" and users_start is None
            if in_first_users:
                users_start = users_last = i
            continue
        if in_first_users:
            users_last = i
        if section != "users":
            continue
        m = re.match(r"([^=:]+?)\s*[=:]", body)
        if not m or m.group(1).strip() != user:
            continue
        if hashed is None:
            del lines[i]
            return "".join(lines)
        raw = line.rstrip("\r\n")
        ending = line[len(raw) :]
        prefix = re.match(r"\s*[^=:]+?\s*[=:]\s*", raw).group(0)
        comment = re.search(r"\s+[;#].*\Z", raw[len(prefix) :])
        lines[i] = prefix + hashed + (comment.group(0) if comment else "") + ending
        return "".join(lines)
    if hashed is None:
        raise KeyError(user)
    entry = f"{user} = {hashed}{eol}"
    if users_start is None:
        block = [f"[users]{eol}", entry]
        if first_header is not None:
            return "".join(lines[:first_header] + block + [eol] + lines[first_header:])
        at = len(lines)
    else:
        assert users_last is not None
        block = [entry]
        at = users_last + 1
    if at == len(lines) and lines:
        if not lines[-1].endswith(("\n", "\r")):
            lines[-1] += eol  # appending: the last line needs its end first
        if users_start is None and lines[-1].strip():
            block.insert(0, eol)
    lines[at:at] = block
    return "".join(lines)


def passwd_main(argv: list[str] | None = None) -> int:
    """``gittornado-passwd FILE USER``: set (or ``--delete``) a user's hash, atomically.

    The password comes from a prompt (asked twice) or ``--password-stdin``
    (one line). Only a hash is ever written. The new file must parse, and it
    replaces the old one by rename, keeping its mode (and owner, when allowed).
    """
    p = argparse.ArgumentParser(
        prog="gittornado-passwd", description="Set or delete a user's password hash in an access file."
    )
    p.add_argument("accessfile")
    p.add_argument("user")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    p.add_argument(
        "--scheme", choices=["bcrypt", "argon2"], default="bcrypt", help="hash scheme (default bcrypt)"
    )
    p.add_argument("--delete", action="store_true", help="remove the user")
    args = p.parse_args(argv)
    from ..access.accessfile import _NAME, AccessFileError, hash_password, parse_access_file

    prog = "gittornado-passwd"
    if not _NAME.match(args.user):
        print(f"{prog}: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    # Write through a symlink to the real file, not over the link.
    target = os.path.realpath(args.accessfile)
    try:
        with open(target, encoding="utf-8", newline="") as fh:
            text = fh.read()
        existing = os.stat(target)
    except FileNotFoundError:
        text, existing = "", None
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{prog}: cannot read {args.accessfile}: {exc}", file=sys.stderr)
        return 1
    if args.delete:
        hashed = None
    else:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
            if getpass.getpass("Again: ") != password:
                print(f"{prog}: the passwords differ; nothing changed", file=sys.stderr)
                return 1
        if not password:
            print(f"{prog}: empty password refused", file=sys.stderr)
            return 1
        try:
            hashed = hash_password(password, args.scheme)
        except ValueError as exc:
            print(f"{prog}: {exc}; nothing changed", file=sys.stderr)
            return 1
    try:
        new_text = update_users_section(text, args.user, hashed)
    except KeyError:
        print(f"{prog}: no user {args.user!r} in {args.accessfile}", file=sys.stderr)
        return 1
    try:
        parse_access_file(new_text)
    except AccessFileError as exc:
        print(f"{prog}: {args.accessfile} would not load ({exc}); nothing changed", file=sys.stderr)
        return 1
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=".gittornado-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(new_text)
            fh.flush()
            if existing is not None:
                os.fchmod(fh.fileno(), existing.st_mode & 0o7777)
                try:
                    os.fchown(fh.fileno(), existing.st_uid, existing.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as with any editor
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    action = "deleted" if args.delete else "set"
    print(f"{action} {args.user} in {args.accessfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
