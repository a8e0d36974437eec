"""The command line: parse the options, run the scenarios, print the table, write the JSON."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import signal
import sys
import tempfile
import time

from bench import clones, pushes
from bench.common import ROOT_DIR, Env, MiB, default_workdir, log
from bench.report import Row, print_table, write_json
from bench.servers import PEER_PACKAGES, ServerCode, find_tool

USAGE = """\
examples:
  python bench/run.py                     # full run (~6 min on 2 cores; first run also builds the repo)
  python bench/run.py --quick             # smoke run, ~1 min (30 MiB repo, 64/128 MiB pushes)
  python -m bench --install-deps          # same as the first, apt-get installing nginx + fcgiwrap
  python bench/run.py --server-python-path /work/bench-before --json before.json
                                          # measure another tree's gittornado (a git worktree)
"""


def environment_info(env: Env) -> dict:
    info = {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": env.out("--version"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import tornado

        info["tornado"] = tornado.version
    except ImportError:
        pass
    try:
        info["bench_commit"] = env.out("rev-parse", "HEAD", cwd=ROOT_DIR)
    except RuntimeError:
        pass
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="gittornado benchmark: clone speed against git's own transports (file:// floor, "
        "git http-backend behind nginx), the server's CPU per clone and its memory on big pushes.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 30 MiB repo, 64 and 128 MiB pushes, 5 reps"
    )
    p.add_argument("--size-mib", type=int, help="repository size (default 300; --quick 30)")
    p.add_argument("--commits", type=int, help="commits in the repository (default 300; --quick 60)")
    p.add_argument(
        "--push-mib",
        type=int,
        nargs="+",
        help="push sizes in MiB, in order (default 512 1024; --quick 64 128)",
    )
    p.add_argument("--reps", type=int, help="timed clones per case (median; default 7, --quick 5)")
    p.add_argument(
        "--workdir",
        default=default_workdir(),
        help="cached repository, run directories and results (default: $GITTORNADO_BENCH_WORKDIR "
        "or $TMPDIR/gittornado-bench, i.e. %(default)s; never inside the checkout unless you say so)",
    )
    p.add_argument(
        "--clone-dir",
        help="where clones are written (default: /dev/shm when it is a roomy tmpfs, so disk "
        "writeback does not add noise; else the workdir)",
    )
    p.add_argument(
        "--server-python-path",
        metavar="DIR",
        default=ROOT_DIR,
        help="run the gittornado package found in DIR (put first on the server's PYTHONPATH), e.g. "
        "a git worktree of an older commit (default: this checkout, %(default)s)",
    )
    p.add_argument(
        "--install-deps",
        action="store_true",
        help=f"apt-get install {' and '.join(PEER_PACKAGES)} when missing (root; opt-in: without "
        "it a missing tool skips the git http-backend row with a message)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip the git http-backend + nginx rows")
    p.add_argument("--no-clone", action="store_true", help="skip the clone measurements")
    p.add_argument("--no-push", action="store_true", help="skip the push memory measurements")
    p.add_argument(
        "--no-push-floor", action="store_true", help="do not time the same pushes to a file:// repository"
    )
    p.add_argument("--regen", action="store_true", help="regenerate the cached repository")
    p.add_argument("--keep", action="store_true", help="keep the run directory (server logs, push repos)")
    p.add_argument("--label", default="", help="free text stored in the results (e.g. 'before', 'after')")
    p.add_argument("--json", help="results file (default: WORKDIR/results/latest.json)")
    a = p.parse_args(argv)
    a.size_mib = a.size_mib or (30 if a.quick else 300)
    a.commits = a.commits or (60 if a.quick else 300)
    a.reps = a.reps or (5 if a.quick else 7)
    a.push_mib = a.push_mib or ([64, 128] if a.quick else [512, 1024])
    if a.reps < 1 or a.size_mib < 1 or a.commits < 1 or min(a.push_mib) < 1:
        p.error("sizes, commits and reps must be positive")
    a.workdir = os.path.abspath(a.workdir)
    a.json = os.path.abspath(a.json or os.path.join(a.workdir, "results", "latest.json"))
    if not os.path.isdir(os.path.join(a.server_python_path, "gittornado")):
        p.error(f"--server-python-path {a.server_python_path}: no gittornado package there")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does: every finally block stops its servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("git") is None:
        print("bench: git not found", file=sys.stderr)
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    env = Env(os.path.join(tmp, "home"))
    code = ServerCode(env, args.server_python_path)
    try:
        where = code.check()
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 2
    rows: list[Row] = []
    raw: dict = {}
    errors: list[str] = []
    t_start = time.perf_counter()
    info = environment_info(env)
    info["server_code"] = code.describe(env)
    sc = info["server_code"]
    log(f"gittornado benchmark ({'quick' if args.quick else 'full'}); work dir {args.workdir}, run dir {tmp}")
    log(
        f"server code: {os.path.dirname(where)} (version {sc['version']}, commit "
        f"{sc.get('commit', '?')[:12]}{', gittornado/ modified' if sc.get('dirty') else ''})"
    )
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        log(
            f"warning: load average {load1:.2f} before starting: other work on this machine "
            "will make the timings noisy"
        )
    need = (args.size_mib * 3 + sum(args.push_mib) * 3) * MiB
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        log(
            f"warning: {free / 2**30:.1f} GiB free under {args.workdir}, "
            f"this run wants ~{need / 2**30:.1f} GiB"
        )
    try:
        for name, fn, skip in (
            ("clone", clones.run_clones, args.no_clone),
            ("push", pushes.run_pushes, args.no_push),
        ):
            if skip:
                continue
            try:
                fn(env, args, tmp, code, rows, raw)
            except Exception as exc:  # reported as a row, the run goes on
                log(f"{name} benchmark failed: {exc}")
                errors.append(f"{name}: {exc}")
                rows.append(Row(f"{name} benchmark", None, "", result="ERROR", note=str(exc)[:500]))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start
    info.update({tool: find_tool(tool) for tool in PEER_PACKAGES})
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows)
    verdict = [r.result for r in rows if r.result in ("PASS", "MISS", "ERROR")]
    summary = (
        f"{verdict.count('PASS')} PASS, {verdict.count('MISS')} MISS"
        + (f", {verdict.count('ERROR')} ERROR" if errors else "")
        + f"; total {total:.0f}s"
    )
    print(summary)
    result = {
        "mode": "quick" if args.quick else "full",
        "label": args.label,
        "params": {
            "size_mib": args.size_mib,
            "commits": args.commits,
            "push_mib": args.push_mib,
            "reps": args.reps,
        },
        "targets": {
            "clone_vs_floor_max": clones.CLONE_TARGET,
            "server_cpu_per_clone_max_s": clones.SERVER_CPU_PER_CLONE_S,
            "push_peak_rss_max_mib": pushes.RSS_LIMIT_MIB,
            "push_rss_growth_tolerance_mib": pushes.RSS_GROWTH_TOL_MIB,
        },
        "environment": info,
        "rows": [r.as_json() for r in rows],
        "raw": raw,
        "errors": errors,
        "total_seconds": round(total, 1),
        "summary": summary,
    }
    write_json(args.json, result)
    log(f"wrote {args.json}")
    return 1 if errors else 0
