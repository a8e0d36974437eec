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
import signal
import ssl
import sys
import tempfile

__all__ = ["main", "passwd_main", "make_parser"]

log = logging.getLogger("gittornado.general")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gittornado",
        description="Serve the git repositories under a directory over smart and dumb HTTP. "
                    "Also: 'gittornado check-access FILE USER REPO'.")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks one)")
    p.add_argument("--address", default="", help="bind address (default: all interfaces)")
    p.add_argument("--gitbase", "--root", dest="gitbase", default=".",
                   help="directory holding the repositories (default: current directory)")
    p.add_argument("--accessfile", help="INI users/groups/access file (reloaded when it changes)")
    p.add_argument("--realm", default="gittornado", help="Basic auth realm")
    p.add_argument("--prefix", default="", help="mount point when a proxy forwards /prefix/... unchanged")
    p.add_argument("--processes", type=int, default=1, help="worker processes; 0 = one per CPU")
    p.add_argument("--certfile", help="TLS certificate (serve HTTPS)")
    p.add_argument("--keyfile", help="TLS private key")
    p.add_argument("--xheaders", action="store_true",
                   help="trust X-Forwarded-For/-Proto from a reverse proxy")
    p.add_argument("--max-upload-pack-request", type=int, default=64 * 1024 * 1024, metavar="BYTES",
                   help="cap on an inflated fetch request (default 64 MiB; larger: 413)")
    p.add_argument("--max-push-size", type=int, default=None, metavar="BYTES",
                   help="cap on a push body (default unbounded)")
    p.add_argument("--no-throttle", action="store_true",
                   help="do not block addresses after repeated wrong passwords")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error", "critical"])
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fork_workers(n: int) -> None:
    """Pre-fork ``n`` workers sharing the listening sockets; returns in each worker.

    The parent only supervises: it restarts a worker that dies abnormally and,
    on SIGTERM/SIGINT, stops every worker and exits 0 (``tornado.process.
    fork_processes`` would leave the workers running when the parent is killed).
    """
    children: set[int] = set()
    stopping = False

    def spawn() -> bool:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            return True
        children.add(pid)
        return False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(n):
        if spawn():
            return
    log.info("started %d worker processes", n)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            log.warning("worker %d died (status %d); starting another", pid, status)
            if spawn():
                return
    sys.exit(0)


def _serve(args: argparse.Namespace) -> int:
    import tornado.httpserver
    import tornado.netutil
    import tornado.process

    from .app import make_app

    if bool(args.certfile) != bool(args.keyfile):
        print("gittornado: --certfile and --keyfile go together", file=sys.stderr)
        return 2
    if not os.path.isdir(args.gitbase):
        print(f"gittornado: --gitbase {args.gitbase!r} is not a directory", file=sys.stderr)
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
    if args.processes != 1:
        # Must happen before any IOLoop exists.
        _fork_workers(args.processes or tornado.process.cpu_count())

    async def run() -> None:
        try:
            app = make_app(args.gitbase, accessfile=args.accessfile, realm=args.realm,
                           prefix=args.prefix, throttle=not args.no_throttle,
                           upload_pack_limit=args.max_upload_pack_request,
                           receive_pack_limit=args.max_push_size)
        except ValueError as exc:
            log.error("%s", exc)
            raise SystemExit(2)
        server = tornado.httpserver.HTTPServer(app, xheaders=args.xheaders, ssl_options=ssl_ctx,
                                               idle_connection_timeout=3600)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server.add_sockets(sockets)
        ports = sorted({s.getsockname()[1] for s in sockets})
        scheme = "https" if ssl_ctx else "http"
        log.info("serving %s on %s://%s:%s%s/", os.path.abspath(args.gitbase), scheme,
                 args.address or "*", ",".join(map(str, ports)), args.prefix.rstrip("/"))
        await stop.wait()
        log.info("shutting down")
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=10)
        except asyncio.TimeoutError:
            pass

    asyncio.run(run())
    return 0


def check_access_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gittornado check-access",
                                description="Explain what USER may do on REPO under an access file.")
    p.add_argument("accessfile")
    p.add_argument("user", help="user name, or - for anonymous")
    p.add_argument("repo")
    args = p.parse_args(argv)
    from .access import AccessFile, AccessFileError
    from .repos import normalize_name

    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    try:
        access = AccessFile(args.accessfile)
    except AccessFileError:
        return 1
    repo = normalize_name(args.repo)
    if repo is None:
        print(f"{args.repo!r} is not a valid repository name")
        return 1
    user = None if args.user == "-" else args.user
    if user is not None and user not in access.policy.users:
        print(f"note: {user!r} has no password in [users], so cannot log in over HTTP")
    read, write, rules = access.explain(user, repo)
    who = user or "anonymous"
    verdict = "read and write" if write else "read only" if read else "no access"
    print(f"{who} on {repo}: {verdict}")
    for rule in rules:
        print(f"  {rule.describe()}")
    if not rules:
        print("  no rule matches")
    return 0 if read else 3


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-access":
        return check_access_main(argv[1:])
    args = make_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return _serve(args)


# -- gittornado-passwd ---------------------------------------------------------------------

def update_users_section(text: str, user: str, hashed: str | None) -> str:
    """The access file ``text`` with ``user``'s line set to ``hashed`` (None: removed).

    Pure. Every other line, comment and blank is kept as it was; a missing
    ``[users]`` section is added at the top.
    """
    import re

    lines = text.splitlines(keepends=True)
    section = None
    users_start = None
    users_end = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "users" and users_end is None:
                users_end = i
            section = stripped[1:-1].strip().lower()
            if section == "users" and users_start is None:
                users_start = i
            continue
        if section == "users":
            m = re.match(r"\s*([^=:\s]+)\s*[=:]", line)
            if m and m.group(1) == user:
                if hashed is None:
                    lines[i] = ""
                else:
                    newline = "\n" if line.endswith("\n") else ""
                    lines[i] = f"{user} = {hashed}{newline}"
                return "".join(lines)
    if hashed is None:
        raise KeyError(user)
    entry = f"{user} = {hashed}\n"
    if users_start is None:
        return "[users]\n" + entry + ("\n" if lines else "") + "".join(lines)
    end = users_end if users_end is not None else len(lines)
    # Insert after the section's last non-blank line.
    while end > users_start + 1 and not lines[end - 1].strip():
        end -= 1
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines.insert(end, entry)
    return "".join(lines)


def passwd_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gittornado-passwd",
                                description="Set or delete a user's password hash in an access file.")
    p.add_argument("accessfile")
    p.add_argument("user")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--scheme", choices=["bcrypt", "argon2"], default="bcrypt")
    p.add_argument("--delete", action="store_true", help="remove the user")
    args = p.parse_args(argv)
    from .access import AccessFileError, hash_password, parse_access_file

    if not args.user or any(c in args.user for c in " \t=:;#[]@*,") :
        print(f"gittornado-passwd: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    try:
        with open(args.accessfile, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        text = ""
    if args.delete:
        hashed = None
    else:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"Password for {args.user}: ")
            if getpass.getpass("Again: ") != password:
                print("gittornado-passwd: the passwords differ; nothing changed", file=sys.stderr)
                return 1
        if not password:
            print("gittornado-passwd: empty password refused", file=sys.stderr)
            return 1
        hashed = hash_password(password, args.scheme)
    try:
        new_text = update_users_section(text, args.user, hashed)
    except KeyError:
        print(f"gittornado-passwd: no user {args.user!r} in {args.accessfile}", file=sys.stderr)
        return 1
    try:
        parse_access_file(new_text)
    except AccessFileError as exc:
        print(f"gittornado-passwd: {args.accessfile} would not load ({exc}); nothing changed",
              file=sys.stderr)
        return 1
    directory = os.path.dirname(os.path.abspath(args.accessfile))
    fd, tmp = tempfile.mkstemp(prefix=".gittornado-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, os.stat(args.accessfile).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o600)
        os.replace(tmp, args.accessfile)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    action = "deleted" if args.delete else "set"
    print(f"{action} {args.user} in {args.accessfile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
