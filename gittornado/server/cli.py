"""The ``gittornado`` command: its options, and the server they start.

argparse, not ``tornado.options``: the contract needs ``--opt value`` as well
as ``--opt=value``. The options shared with ``gittornado-shell`` come from
``options``; the command line becomes a checked ``Settings`` (the
application's configuration) before anything is bound, forked or started,
and what stays here is the process's own business: listening, TLS,
connection limits, forking workers (``supervisor``), signals and a graceful
shutdown. ``gittornado check-access`` and ``gittornado-passwd`` live in
``passwd``; ``passwd_main`` is re-exported because setup.cfg's console script
names it here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import shutil
import signal
import sqlite3
import ssl
import sys
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

from .options import (
    add_cache_options,
    add_limit_options,
    add_logging_options,
    add_policy_options,
    add_repository_options,
    add_server_options,
    parse_size,
    setup_logging,
)
from .passwd import check_access_main, passwd_main
from .settings import Settings

__all__ = ["main", "passwd_main", "make_parser", "parse_size", "COMMANDS"]

log = logging.getLogger("gittornado.general")

PROG = "gittornado"

#: ``gittornado NAME ARGS...`` runs ``COMMANDS[NAME](ARGS)``; any other first word is the server's.
COMMANDS: dict[str, Callable[[list[str]], int]] = {"check-access": check_access_main}


def make_parser() -> argparse.ArgumentParser:
    """The server's options: the shared groups from ``options`` and the server's own."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the git repositories under a directory over smart and dumb HTTP. "
        "Also: 'gittornado check-access FILE USER REPO'.",
    )
    listen = p.add_argument_group("listening")
    listen.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks one)")
    listen.add_argument("--address", default="", help="bind address (default: all interfaces)")
    listen.add_argument("--processes", type=int, default=1, help="worker processes; 0 = one per CPU")
    listen.add_argument("--certfile", help="TLS certificate (serve HTTPS)")
    listen.add_argument("--keyfile", help="TLS private key")
    listen.add_argument(
        "--xheaders", action="store_true", help="trust X-Forwarded-For/-Proto from a reverse proxy"
    )
    listen.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections per worker process, beyond which new ones get 503 "
        "(default: half the open-file limit; 0: no cap)",
    )
    listen.add_argument(
        "--max-connections-per-ip",
        type=int,
        metavar="N",
        help="open connections per client address (default 100, or none with "
        "--xheaders: the peer is then the proxy; 0: no cap)",
    )
    listen.add_argument(
        "--header-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="time a request's headers may take (default 20)",
    )
    listen.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="time a keep-alive connection may wait for its next request (default 120)",
    )
    listen.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time running clones and pushes get to finish before "
        "they are stopped (default 30; a second signal stops them at once)",
    )
    add_repository_options(p)
    add_policy_options(p, exclusive=False)  # Settings says why both are refused; main returns 2
    add_limit_options(p)
    add_server_options(p)
    add_cache_options(p)
    add_logging_options(p)
    return p


class _StartError(Exception):
    """The server cannot start: a one-line reason for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class _Shared:
    """What is made before forking, so that every worker uses the same one."""

    store: Any = None  #: the login throttle's SQLite store (None: each worker's memory)
    pack_cache: Any = None
    temporary: list[str] = dataclasses.field(default_factory=list)  #: removed at exit

    def remove_temporary(self) -> None:
        for path in self.temporary:
            shutil.rmtree(path, ignore_errors=True)


class _Limits(NamedTuple):
    fd_limit: int
    max_connections: int
    per_ip: int


def _check_environment(args: argparse.Namespace, settings: Settings) -> None:
    """What ``Settings`` does not check: the process's own options, and the world as it is now."""
    if args.processes < 0:
        raise _StartError("--processes must be >= 0")
    if bool(args.certfile) != bool(args.keyfile):
        raise _StartError("--certfile and --keyfile go together")
    if not os.path.isdir(settings.gitbase):
        raise _StartError(f"--gitbase {settings.gitbase!r} is not a directory")
    if settings.web:
        from ..web.browse import klaus_missing

        if (missing := klaus_missing()) is not None:
            raise _StartError(missing)


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise _StartError(f"cannot use --certfile/--keyfile: {exc}") from None
    return ctx


def _bind(args: argparse.Namespace) -> list:
    import tornado.netutil

    try:
        return tornado.netutil.bind_sockets(args.port, args.address or None)
    except OSError as exc:
        raise _StartError(f"cannot listen on {args.address or '*'}:{args.port}: {exc}", 1) from None


def _connection_limits(args: argparse.Namespace) -> _Limits:
    from .httpserver import default_max_connections, raise_open_file_limit

    fd_limit = raise_open_file_limit()
    max_connections = args.max_connections
    if max_connections is None:
        max_connections = default_max_connections(fd_limit)
    per_ip = args.max_connections_per_ip
    if per_ip is None:
        per_ip = 0 if args.xheaders else 100
    return _Limits(fd_limit, max_connections, per_ip)


def _prepare_shared(settings: Settings, processes: int) -> _Shared:
    """The throttle's store and the pack cache, in ``--state-dir`` or temporary directories."""
    from ..access.throttle import SQLiteStore

    shared = _Shared()
    try:
        if settings.throttled and (settings.state_dir or processes != 1):
            state_dir = settings.state_dir or tempfile.mkdtemp(prefix="gittornado-state-")
            if not settings.state_dir:
                shared.temporary.append(state_dir)
            try:
                shared.store = SQLiteStore.in_directory(state_dir)
            except (OSError, sqlite3.Error) as exc:
                raise _StartError(f"cannot use --state-dir {state_dir!r}: {exc}") from None
        if settings.pack_cache_size:
            from ..engine.packcache import PackCache

            cache_dir = settings.pack_cache_path
            if cache_dir is None:
                cache_dir = tempfile.mkdtemp(prefix="gittornado-packs-")
                shared.temporary.append(cache_dir)
            try:
                shared.pack_cache = PackCache(cache_dir, max_bytes=settings.pack_cache_size)
            except OSError as exc:
                raise _StartError(f"cannot use --pack-cache-dir {cache_dir!r}: {exc}") from None
    except BaseException:
        shared.remove_temporary()
        raise
    return shared


def _quarantine_idle(settings: Settings) -> float:
    """How long a push quarantine must be untouched before it is nobody's.

    A push whose body stalls for ``--body-idle-timeout`` is dropped (git then
    cleans up itself), so a quarantine idle for longer is left over; a margin
    covers hooks and clocks of other hosts on a shared root.
    """
    return max(settings.body_idle_timeout or 3600.0, 60.0) + 60.0


def _make_app(settings: Settings, shared: _Shared) -> Any:
    """``make_app(settings)``, with the objects workers share (in the worker)."""
    from ..access.throttle import Throttle
    from .app import make_app

    throttle = None
    if settings.throttled:
        throttle = Throttle(
            limit=settings.login_failures,
            window=settings.login_window,
            block=settings.login_block,
            store=shared.store,
        )
    return make_app(settings, throttle=throttle, pack_cache=shared.pack_cache)


def _on_hup(app: Any) -> None:
    """SIGHUP: take the access file as it is now, without waiting for the next check."""
    from ..access.accessfile import AccessFile

    access = app.gate.access
    if not isinstance(access, AccessFile):
        log.info("SIGHUP: no access file to reload")
    elif access.reload(force=True):
        log.info("SIGHUP: reloaded the access file %s", access.path)
    else:
        log.warning("SIGHUP: the access file %s did not load; the last good one stays", access.path)


def _log_started(args, settings: Settings, sockets: list, tls: bool, limits: _Limits) -> None:
    ports = sorted({s.getsockname()[1] for s in sockets})
    log.info(
        "serving %s on %s://%s:%s%s/",
        os.path.abspath(settings.gitbase),
        "https" if tls else "http",
        args.address or "*",
        ",".join(map(str, ports)),
        settings.prefix,
    )
    log.info(
        "limits: %s connections, %s per address, open files %d, headers %gs, idle %gs",
        limits.max_connections or "unlimited",
        limits.per_ip or "unlimited",
        limits.fd_limit,
        args.header_timeout,
        args.idle_timeout,
    )


async def _run(args, settings: Settings, sockets: list, ssl_ctx, shared: _Shared, limits: _Limits) -> None:
    """One worker: the application on ``sockets`` until a signal, then a graceful drain."""
    import tornado.ioloop

    from .httpserver import GitHTTPServer
    from .shutdown import drain, remove_stale_quarantines

    try:
        app = _make_app(settings, shared)
    except ValueError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    server = GitHTTPServer(
        app,
        xheaders=args.xheaders,
        ssl_options=ssl_ctx,
        max_connections=limits.max_connections,
        max_connections_per_ip=limits.per_ip,
        header_timeout=args.header_timeout or None,
        idle_timeout=args.idle_timeout or 3600,
    )
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: no more waiting
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (hurry if stop.is_set() else stop).set())
    loop.add_signal_handler(signal.SIGHUP, _on_hup, app)
    server.add_sockets(sockets)
    _log_started(args, settings, sockets, ssl_ctx is not None, limits)
    idle = _quarantine_idle(settings)
    sweeper = tornado.ioloop.PeriodicCallback(
        lambda: loop.run_in_executor(None, remove_stale_quarantines, settings.gitbase, idle),
        1000 * min(600.0, idle),
    )
    sweeper.start()
    await stop.wait()
    sweeper.stop()
    log.info("shutting down")
    await drain(server, args.shutdown_grace, hurry)
    log.info("stopped")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Bind, prepare what workers share, fork (``--processes``), run; the exit status."""
    import tornado.process

    from .shutdown import remove_stale_quarantines
    from .supervisor import fork_workers

    try:
        _check_environment(args, settings)
        ssl_ctx = _tls_context(args)
        sockets = _bind(args)
        # SIGHUP reloads the access file once the server runs; until then it must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        limits = _connection_limits(args)
        shared = _prepare_shared(settings, args.processes)
    except _StartError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    # Before any worker exists: quarantines of pushes a crash or kill -9 cut short.
    remove_stale_quarantines(settings.gitbase, _quarantine_idle(settings))
    if args.processes != 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Every worker's metrics add up in whichever worker answers /-/metrics.
            metrics_dir = tempfile.mkdtemp(prefix="gittornado-metrics-")
            shared.temporary.append(metrics_dir)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        # The application's modules load before forking (after the variable above, which
        # prometheus_client reads): workers share them and are ready at once (a worker
        # ignores SIGHUP until its loop runs).
        importlib.import_module(".app", __package__)
        # Must happen before any IOLoop exists; the supervisor never returns from it.
        fork_workers(args.processes or tornado.process.cpu_count(), cleanup=shared.temporary)
    try:
        asyncio.run(_run(args, settings, sockets, ssl_ctx, shared, limits))
    finally:
        if args.processes == 1:  # with workers, the supervisor removes them
            shared.remove_temporary()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``gittornado [OPTIONS]`` (the server) or ``gittornado COMMAND ...`` (``COMMANDS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = make_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(args, prog=PROG, with_pid=args.processes != 1)
    except OSError as exc:
        print(f"{PROG}: cannot log to {args.log_file or '/dev/log'}: {exc}", file=sys.stderr)
        return 2
    return _serve(args, settings)


if __name__ == "__main__":
    sys.exit(main())
