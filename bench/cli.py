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
import traceback

from bench import adverts, clones, pushes, scale, storm
from bench.common import ROOT_DIR, Env, MiB, default_workdir, log
from bench.report import Row, print_table, write_json
from bench.servers import PEER_PACKAGES, ServerCode, find_tool

STORM_PARTS = ("storm", "large", "refs", "push", "scale")

USAGE = """\
examples:
  python bench/run.py                     # full run (~6 min on 2 cores; first run also builds the repo)
  python bench/run.py --quick             # smoke run, ~1 min (30 MiB repo, 64/128 MiB pushes)
  python bench/run.py --storm             # issue 11 (caches): clone storm, large clone, info/refs
                                          # load, push gateway CPU, scaling (~9 min; first run
                                          # also builds the repos, ~1 min more)
  python bench/run.py --storm --quick     # the same in ~2 min (one storm, 30 MiB "large" clone,
                                          # 128 MiB push, 10,000 refs and 1,000 repositories)
  python bench/run.py --storm --parts storm,refs   # only some parts of it
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
        "git http-backend behind nginx), the server's CPU per clone and its memory on big pushes; "
        "with --storm, issue 11's figures (clone storm, pack and advertisement caches, push "
        "gateway CPU, scaling) against the same references.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 30 MiB repo, 64 and 128 MiB pushes, 5 reps"
    )
    p.add_argument(
        "--storm",
        action="store_true",
        help="run issue 11's scenarios (the pack-objects and advertisement caches) instead: "
        "a storm of concurrent clones of the medium repository (gittornado with a warm and a cold "
        "pack cache and --no-pack-cache, git http-backend+nginx), a large clone (warm cache vs "
        "file://, cold vs --no-pack-cache), info/refs requests per second and latency (advert "
        "cache on/off vs http-backend), the gateway's CPU on a big push vs nginx+fcgiwrap+"
        "http-backend, and how info/refs and the index page grow with refs and repositories",
    )
    p.add_argument(
        "--parts",
        default=",".join(STORM_PARTS),
        help=f"with --storm: which parts, comma-separated (default: all, {','.join(STORM_PARTS)})",
    )
    p.add_argument("--clients", type=int, default=32, help="--storm: concurrent clones (default 32)")
    p.add_argument("--storm-reps", type=int, help="--storm: storms per case (default 3; --quick 1)")
    p.add_argument(
        "--medium-mib", type=int, default=30, help="--storm: the storm's repository size (default 30)"
    )
    p.add_argument("--medium-commits", type=int, default=60, help="--storm: its commits (default 60)")
    p.add_argument(
        "--connections", type=int, default=8, help="--storm: info/refs keep-alive connections (default 8)"
    )
    p.add_argument(
        "--refs-seconds",
        type=float,
        help="--storm: info/refs load per case and round (default 3; --quick 1.5)",
    )
    p.add_argument(
        "--push-reps", type=int, help="--storm: pushes per server and receiving mode (default 2; --quick 1)"
    )
    p.add_argument(
        "--scale-refs",
        type=int,
        nargs="*",
        help="--storm: ref counts for the info/refs scaling (default 10000 100000; --quick 10000)",
    )
    p.add_argument(
        "--scale-repos",
        type=int,
        nargs="*",
        help="--storm: repository counts for the index page scaling (default 1000 10000; --quick 1000)",
    )
    p.add_argument(
        "--size-mib",
        type=int,
        help="repository size (default 300; --quick 30); with --storm the large clone's",
    )
    p.add_argument("--commits", type=int, help="commits in the repository (default 300; --quick 60)")
    p.add_argument(
        "--push-mib",
        type=int,
        nargs="+",
        help="push sizes in MiB, in order (default 512 1024; --quick 64 128; --storm: one size, "
        "512, --quick 128)",
    )
    p.add_argument(
        "--reps",
        type=int,
        help="timed clones per case (median; default 7, --quick 5; --storm: 5, --quick 3)",
    )
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
    p.add_argument(
        "--json", help="results file (default: WORKDIR/results/latest.json; --storm: storm-latest.json)"
    )
    a = p.parse_args(argv)
    a.size_mib = a.size_mib or (30 if a.quick else 300)
    a.commits = a.commits or (60 if a.quick else 300)
    if a.storm:
        a.reps = a.reps or (3 if a.quick else 5)
        a.push_mib = a.push_mib or ([128] if a.quick else [512])
    a.reps = a.reps or (5 if a.quick else 7)
    a.push_mib = a.push_mib or ([64, 128] if a.quick else [512, 1024])
    a.storm_reps = a.storm_reps or (1 if a.quick else 3)
    a.refs_seconds = a.refs_seconds or (1.5 if a.quick else 3.0)
    a.push_reps = a.push_reps or (1 if a.quick else 2)
    if a.scale_refs is None:
        a.scale_refs = [10_000] if a.quick else [10_000, 100_000]
    if a.scale_repos is None:
        a.scale_repos = [1_000] if a.quick else [1_000, 10_000]
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = set(a.parts) - set(STORM_PARTS)
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(STORM_PARTS)})")
    if a.clients < 1 or a.clients > 256 or a.connections < 1 or a.storm_reps < 1 or a.push_reps < 1:
        p.error("--clients 1..256, --connections, --storm-reps and --push-reps at least 1")
    if any(n < 2 or n > 1_000_000 for n in a.scale_refs) or any(n < 1 or n > 100_000 for n in a.scale_repos):
        p.error("--scale-refs 2..1,000,000, --scale-repos 1..100,000")
    if a.reps < 1 or a.size_mib < 1 or a.commits < 1 or min(a.push_mib) < 1:
        p.error("sizes, commits and reps must be positive")
    a.workdir = os.path.abspath(a.workdir)
    default_json = "storm-latest.json" if a.storm else "latest.json"
    a.json = os.path.abspath(a.json or os.path.join(a.workdir, "results", default_json))
    if not os.path.isdir(os.path.join(a.server_python_path, "gittornado")):
        p.error(f"--server-python-path {a.server_python_path}: no gittornado package there")
    return a


_stopping = False  #: SIGTERM came: stop the run, do not go on to the next part


def _on_sigterm(*_: object) -> None:
    global _stopping
    if _stopping:
        return  # one unwinding at a time: a second signal must not cut the clean-up short
    _stopping = True
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does: every finally block stops its servers.
    signal.signal(signal.SIGTERM, _on_sigterm)
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
    mode = ("storm " if args.storm else "") + ("quick" if args.quick else "full")
    log(f"gittornado benchmark ({mode}); work dir {args.workdir}, run dir {tmp}")
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
    if args.storm:
        need = (args.size_mib * 3 + args.push_mib[0] * 5 + args.medium_mib * (args.clients + 4)) * MiB
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        log(
            f"warning: {free / 2**30:.1f} GiB free under {args.workdir}, "
            f"this run wants ~{need / 2**30:.1f} GiB"
        )
    try:
        scenarios = (
            ("clone", clones.run_clones, args.no_clone),
            ("push", pushes.run_pushes, args.no_push),
        )
        if args.storm:
            scenarios = tuple(
                (part, fn, part not in args.parts)
                for part, fn in (
                    ("storm", storm.run_storm_clones),
                    ("large", storm.run_large_clone),
                    ("refs", adverts.run_refs_rps),
                    ("push", pushes.run_push_gateway),
                    ("scale", scale.run_scaling),
                )
            )
        for name, fn, skip in scenarios:
            if skip:
                continue
            t_part = time.perf_counter()
            try:
                fn(env, args, tmp, code, rows, raw)
            except Exception as exc:  # reported as a row, the run goes on
                if _stopping:  # SIGTERM: an error while unwinding must not hide it
                    raise
                log(f"{name} benchmark failed: {exc!r}")
                traceback.print_exc()
                errors.append(f"{name}: {exc}")
                rows.append(Row(f"{name} benchmark", None, "", result="ERROR", note=str(exc)[:500]))
            part_s = time.perf_counter() - t_part
            load_after = os.getloadavg()[0]
            part = {"seconds": round(part_s, 1), "load1_after": round(load_after, 2)}
            raw.setdefault("parts", {})[name] = part
            log(f"{name}: {part_s:.0f}s; load average {load_after:.2f} (the run's own load included)")
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
        "mode": mode,
        "label": args.label,
        "params": {
            "size_mib": args.size_mib,
            "commits": args.commits,
            "push_mib": args.push_mib,
            "reps": args.reps,
            **(
                {
                    "parts": args.parts,
                    "clients": args.clients,
                    "storm_reps": args.storm_reps,
                    "medium_mib": args.medium_mib,
                    "medium_commits": args.medium_commits,
                    "connections": args.connections,
                    "refs_seconds": args.refs_seconds,
                    "push_reps": args.push_reps,
                    "scale_refs": args.scale_refs,
                    "scale_repos": args.scale_repos,
                }
                if args.storm
                else {}
            ),
        },
        "targets": {
            "clone_vs_floor_max": clones.CLONE_TARGET,
            "server_cpu_per_clone_max_s": clones.SERVER_CPU_PER_CLONE_S,
            "push_peak_rss_max_mib": pushes.RSS_LIMIT_MIB,
            "push_rss_growth_tolerance_mib": pushes.RSS_GROWTH_TOL_MIB,
            **(
                {
                    "storm_cpu_vs_peer_max": storm.STORM_CPU_TARGET,
                    "storm_wall_vs_peer_max": storm.STORM_WALL_TARGET,
                    "large_warm_vs_floor_max": storm.WARM_VS_FLOOR_TARGET,
                    "large_cold_vs_no_cache_max": storm.COLD_VS_TODAY_TARGET,
                    "info_refs_rps_vs_peer_min": adverts.RPS_TARGET,
                    "info_refs_p99_vs_peer_below": adverts.P99_TARGET,
                    "push_gateway_cpu_vs_peer_max": pushes.GATEWAY_CPU_TARGET,
                }
                if args.storm
                else {}
            ),
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
