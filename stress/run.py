"""``python -m stress``: every hostile scenario at full size against the real server, with figures.

Prints, per scenario, what was tried and what came of it (tries, statuses,
5xx answers, leftovers, threads and descriptors before and after, latencies),
then the problems, if any; exits 1 when there were. ``--quick`` runs the CI
sizes; ``--only`` picks scenarios. Everything runs on 127.0.0.0/8 in a
temporary directory that is removed afterwards (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from stress import attacks
from stress.client import hermetic_env, temp_dir

#: name -> (full size, quick size) keyword arguments
SIZES: dict[str, tuple[dict, dict]] = {
    "push_kills": ({"n": 30, "size": 2 << 20}, {"n": 10, "size": 512 << 10}),
    "server_kills": ({"n": 20}, {"n": 4}),
    "concurrent_pushes": ({"n": 20}, {"n": 6}),
    "mixed_clients": ({"n": 200}, {"n": 50}),
    "slowloris": ({"n": 1000, "header_timeout": 2}, {"n": 60, "header_timeout": 1}),
    "idle_keepalive": ({"idle_timeout": 3}, {"idle_timeout": 2}),
    "header_bombs": ({}, {}),
    "gzip_bombs": ({"inflated": 64 << 20}, {"inflated": 16 << 20}),
    "bad_pktlines": ({}, {}),
    "guessing": ({"n": 200}, {"n": 100}),
    "path_tricks": ({}, {}),
    "fd_exhaustion": ({"nofile": 1024, "conns": 1100, "watch": 5.0}, {"nofile": 64, "conns": 150}),
    "git_at_fd_limit": ({"nofile": 64, "clones": 12}, {"nofile": 40, "clones": 6}),
}

#: Figures shown in the summary line of each scenario (all are in --json).
HEADLINE = (
    "tries",
    "pushes",
    "clients",
    "connections",
    "5xx",
    "checked",
    "refused_429",
    "refs_unchanged",
    "refs_whole",
    "refs_other",
    "fsck_failures",
    "git_left",
    "quarantines_left",
    "errors",
    "leaks",
    "still_open_at_deadline",
    "median_held_s",
    "max_held_s",
    "probe_median_ms",
    "probe_p99_ms",
    "probe_max_ms",
    "login_idle_s",
    "login_under_attack_s",
    "cpu_share",
    "log_growth_bytes",
    "pause_log_lines",
    "cap",
    "cap_reached",
    "over_cap_status",
    "recovered",
    "clones_ok",
    "answered_500",
    "tracebacks",
    "capped_recovered",
    "held_s",
    "fds_before",
    "fds_after",
    "threads_before",
    "threads_after",
    "seconds",
)


def _shared(root: Path, quick: bool, rounds: int) -> attacks.Target:
    timeouts = ["--header-timeout", "1" if quick else "2", "--idle-timeout", "2" if quick else "3"]
    return attacks.setup_target(root / "shared", *timeouts, xheaders=True, rounds=rounds)


def _scenarios(target_of: Callable[[], attacks.Target], root: Path) -> dict[str, Callable[..., dict]]:
    return {
        "push_kills": lambda **kw: attacks.push_kills(target_of(), **kw),
        "concurrent_pushes": lambda **kw: attacks.concurrent_pushes(target_of(), **kw),
        "mixed_clients": lambda **kw: attacks.mixed_clients(target_of(), **kw),
        "slowloris": lambda **kw: attacks.slowloris(target_of(), **kw),
        "idle_keepalive": lambda **kw: attacks.idle_keepalive(target_of(), **kw),
        "header_bombs": lambda **kw: attacks.header_bombs(target_of()),
        "gzip_bombs": lambda **kw: attacks.gzip_bombs(target_of(), **kw),
        "bad_pktlines": lambda **kw: attacks.bad_pktlines(target_of()),
        "guessing": lambda **kw: attacks.guessing(target_of(), **kw),
        "path_tricks": lambda **kw: attacks.path_tricks(target_of()),
        "fd_exhaustion": lambda **kw: attacks.fd_exhaustion(root / "fds", **kw),
        "git_at_fd_limit": lambda **kw: attacks.git_at_fd_limit(root / "gitfds", **kw),
        "server_kills": lambda **kw: attacks.server_kills(root / "kills", **kw),
    }


def _summary(fig: dict) -> str:
    parts = [f"{k}={fig[k]}" for k in HEADLINE if k in fig]
    extra = {k: v for k, v in fig.items() if isinstance(v, dict) and k not in ("outcomes",)}
    lines = ["  " + ", ".join(parts)]
    if "statuses" in fig:
        lines.append(f"  statuses: {fig['statuses']}")
    if "outcomes" in fig:
        lines.append(f"  outcomes: {fig['outcomes']}")
    for key, value in extra.items():
        if key != "statuses":
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the sizes the CI test uses")
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SIZES),
        metavar="SCENARIO",
        help=f"run only these ({', '.join(sorted(SIZES))})",
    )
    p.add_argument("--rounds", type=int, default=10, help="bcrypt cost of the users' hashes (default 10)")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    # A SIGTERM ends the run through its cleanup: the servers it started are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    root = temp_dir()
    os.environ.update(hermetic_env(root / "home"))
    shared: list[attacks.Target] = []

    def target_of() -> attacks.Target:
        if not shared:
            shared.append(_shared(root, args.quick, args.rounds))
        return shared[0]

    runners = _scenarios(target_of, root)
    results = []
    started = time.monotonic()
    try:
        for name in args.only or list(SIZES):
            full, quick = SIZES[name]
            print(f"== {name} {quick if args.quick else full}", flush=True)
            t0 = time.monotonic()
            try:
                fig = runners[name](**(quick if args.quick else full))
            except Exception as exc:  # a scenario that could not run is a problem, not a crash
                fig = attacks.Figures(name)
                fig.problem(f"could not run: {type(exc).__name__}: {exc}")
            fig.setdefault("seconds", round(time.monotonic() - t0, 1))
            results.append(fig)
            print(_summary(fig), flush=True)
            for problem in fig["problems"]:
                print(f"  PROBLEM: {problem}", flush=True)
    finally:
        if shared:
            code = shared[0].server.stop()
            log = shared[0].server.log()
            print(
                f"== shared server: exit {code}, log {len(log)} bytes, "
                f"{log.count('Traceback')} tracebacks, {log.count(' ERROR ')} ERROR lines"
            )
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    problems = sum(len(f["problems"]) for f in results)
    print(f"== {len(results)} scenarios in {time.monotonic() - started:.0f}s, {problems} problems")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
