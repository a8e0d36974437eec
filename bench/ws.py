#!/usr/bin/env python3
"""ws:// against smart HTTP, in one run: clone time, server CPU per clone, memory on a big push.

Targets (issue 8): a clone over ``ws://`` takes at most 1.05x the same clone over smart
HTTP from the same server process, and a 512 MiB push over ``ws://`` keeps the server's
Python process flat and under 45 MiB, as over HTTP. The repository is the one
``bench/run.py`` generates (cached in the same work directory); the clone client is the
installed ``git-remote-ws`` script (the one ``pip install .`` puts next to
``sys.executable``), so its start-up is part of the figure, as ``git-remote-http``'s is
for HTTP, running the same gittornado code as the server (put first on its
``PYTHONPATH``, whatever version site-packages holds). After the timed clones, a few
untimed ones measure the CPU each helper process takes per clone (``git-remote-ws``
against git's own ``git-remote-http``), through a wrapper that waits for it::

    python bench/ws.py            # 300 MiB repository, 512 MiB push, 7 reps
    python bench/ws.py --quick    # 30 MiB, 64 MiB push, 5 reps
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.common import ROOT_DIR, Env, MiB, default_workdir, log  # noqa: E402
from bench.fixtures import ensure_repo, repo_summary, write_random_files  # noqa: E402
from bench.measure import CloneCase, RSSSampler, proc_cpu_seconds, rss_mib, timed_clone  # noqa: E402
from bench.pushes import FAST, PUSH_PASSWORD, PUSH_USER, RSS_GROWTH_TOL_MIB, RSS_LIMIT_MIB  # noqa: E402
from bench.report import Row, paired_ratio, pf, print_table, spread, write_json  # noqa: E402
from bench.servers import GitTornado, ServerCode  # noqa: E402

WS_VS_HTTP = 1.05  #: ws:// clone time <= this x smart HTTP's


def helper_dir() -> str:
    """Where ``git-remote-ws`` is installed (it must be: the bench measures the real thing)."""
    for directory in (os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)):
        if directory and os.access(os.path.join(directory, "git-remote-ws"), os.X_OK):
            return directory
    raise SystemExit("bench/ws.py: git-remote-ws is not installed (pip install -e .)")


#: A helper's stand-in: runs the real one (same argv, stdin, stdout) and appends the CPU
#: seconds that process used itself (utime + stime of its ``/proc/PID/stat``, read while
#: it is a zombie: its threads, not its children, so not the ``fetch-pack`` that
#: ``git-remote-http`` runs for v0) to the file named by ``$WS_BENCH_CPU_LOG``.
_CPU_WRAPPER = """#!{python}
import os, sys
real = {real!r}
pid = os.posix_spawn(real, [real, *sys.argv[1:]], os.environ)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
with open(f"/proc/{{pid}}/stat") as fh:
    fields = fh.read().rsplit(")", 1)[1].split()
cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
_, status = os.waitpid(pid, 0)
with open(os.environ["WS_BENCH_CPU_LOG"], "a") as fh:
    fh.write(f"{{cpu}}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _wrap(path: str, real: str) -> None:
    with open(path, "w") as fh:
        fh.write(_CPU_WRAPPER.format(python=sys.executable, real=real))
    os.chmod(path, 0o755)


def helper_cpu_env(env: Env, tmp: str) -> dict[str, str]:
    """An environment in which both helpers run wrapped: ``git-remote-ws`` first on ``PATH``,
    ``git-remote-http`` in a copy of git's exec path (symlinks, but for the wrapper)."""
    wrapped = os.path.join(tmp, "wrapped")
    bin_dir, exec_dir = os.path.join(wrapped, "bin"), os.path.join(wrapped, "exec")
    os.makedirs(bin_dir), os.makedirs(exec_dir)
    _wrap(os.path.join(bin_dir, "git-remote-ws"), os.path.join(helper_dir(), "git-remote-ws"))
    git_exec = env.out("--exec-path")
    for name in os.listdir(git_exec):
        real = os.path.join(git_exec, name)
        if name == "git-remote-http":
            _wrap(os.path.join(exec_dir, name), real)
        else:
            os.symlink(real, os.path.join(exec_dir, name))
    return dict(env.env, PATH=bin_dir + os.pathsep + env.env["PATH"], GIT_EXEC_PATH=exec_dir)


def helper_cpu(env: Env, cases: list[CloneCase], dest: str, head: str, tmp: str, n: int) -> dict[str, list]:
    """CPU seconds of the helper process per clone, ``n`` untimed clones per case."""
    wrapped = Env(env.home)
    wrapped.env = helper_cpu_env(env, tmp)
    out: dict[str, list] = {}
    for case in cases:
        log_file = os.path.join(tmp, f"cpu-{case.name.replace(' ', '-')}.log")
        wrapped.env["WS_BENCH_CPU_LOG"] = log_file
        scratch = CloneCase(case.name, case.url, case.protocol)
        for _ in range(n):
            timed_clone(wrapped, scratch, dest, head)
        with open(log_file) as fh:
            out[case.name] = [float(line) for line in fh if line.strip()]
        if len(out[case.name]) != n:
            raise RuntimeError(f"{case.name}: {len(out[case.name])} helper runs logged for {n} clones")
    return out


def ws_url(server: GitTornado, repo: str, auth: str = "") -> str:
    return f"ws://{auth}127.0.0.1:{server.port}/{repo}"


def run_clones(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    repo = ensure_repo(env, args.workdir, args.size_mib, args.commits, args.regen)
    raw["repo"] = repo_summary(env, repo)
    pack_mib = raw["repo"]["pack_mib"]
    log(f"repository: {pack_mib} MiB packed")
    dest = os.path.join(tempfile.mkdtemp(prefix="ws-bench-", dir=args.clone_dir), "clone.git")
    head = env.out("--git-dir", repo, "rev-parse", "refs/heads/main")
    name = os.path.basename(repo)
    with GitTornado(code, os.path.dirname(repo), os.path.join(tmp, "clone.log")) as gt:
        cases = []
        for proto in (2, 0):
            cases.append(CloneCase(f"http v{proto}", gt.url(name), proto, server_pid=gt.pid))
            cases.append(CloneCase(f"ws v{proto}", ws_url(gt, name), proto, server_pid=gt.pid))
        log("warm-up (untimed): one clone per case")
        for case in cases:
            timed_clone(env, case, dest, head)
            case.times.clear(), case.server_cpu.clear(), case.server_user.clear(), case.machine_cpu.clear()
        for rep in range(args.reps):
            k = rep % len(cases)
            for case in cases[k:] + cases[:k]:
                case.times.append(timed_clone(env, case, dest, head))
            log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))
        cpu = {}
        if args.helper_cpu_reps:
            log(f"helper CPU (untimed): {args.helper_cpu_reps} clones per case, each helper wrapped")
            cpu = helper_cpu(env, cases, dest, head, tmp, args.helper_cpu_reps)
    shutil.rmtree(os.path.dirname(dest), ignore_errors=True)
    by = {c.name: c for c in cases}
    raw["clone"] = {
        c.name: {
            "times_s": [round(t, 4) for t in c.times],
            "server_cpu_s": [round(x, 3) for x in c.server_cpu],
            "helper_cpu_s": [round(x, 3) for x in cpu.get(c.name, [])],
        }
        for c in cases
    }
    for proto in (2, 0):
        http, ws = by[f"http v{proto}"], by[f"ws v{proto}"]
        ratio = ws.median / http.median
        rows.append(Row(
            f"clone {pack_mib:.0f} MiB v{proto}: ws:// vs smart HTTP", ws.median, "s", http.median,
            "smart HTTP", ratio, f"<= {WS_VS_HTTP:.2f}x", pf(ratio <= WS_VS_HTTP),
            note=f"ws {spread(ws.times)}, http {spread(http.times)}; median of paired ratios "
            f"{paired_ratio(ws.times, http.times):.3f}x",
        ))  # fmt: skip
        for case in (ws, http):
            rows.append(Row(
                f"server CPU per clone v{proto}, {case.name.split()[0]}", case.server_cpu_per_clone, "s",
                note=f"median {statistics.median(case.server_cpu):.3f}s; "
                + (f"{pack_mib / case.server_cpu_per_clone:.0f} MiB per CPU second"
                   if case.server_cpu_per_clone else "under the clock's resolution"),
            ))  # fmt: skip
        if cpu:
            ws_cpu, http_cpu = statistics.median(cpu[ws.name]), statistics.median(cpu[http.name])
            rows.append(Row(
                f"helper CPU per clone v{proto}: git-remote-ws vs git-remote-http", ws_cpu, "s", http_cpu,
                "git-remote-http", ws_cpu / http_cpu if http_cpu else None,
                note=f"median of {len(cpu[ws.name])} untimed clones each; the helper process alone",
            ))  # fmt: skip


def run_push(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    root = os.path.join(tmp, "pushroot")
    os.makedirs(root)
    target = os.path.join(root, "target.git")
    env.git("init", "-q", "--bare", "--initial-branch=main", target)
    accessfile = os.path.join(tmp, "access.ini")
    with open(accessfile, "w") as fh:
        fh.write(
            f"[users]\n{PUSH_USER} = {code.hash_password(PUSH_PASSWORD)}\n[access]\n{PUSH_USER} = **=rw\n"
        )
    work = os.path.join(tmp, "pushsrc")
    env.git("init", "-q", "--initial-branch=main", work)
    with open(os.path.join(work, "README"), "w") as fh:
        fh.write("push target\n")
    env.git("add", "README", cwd=work)
    env.git("commit", "-q", "-m", "initial", cwd=work)
    with GitTornado(code, root, os.path.join(tmp, "push.log"), accessfile=accessfile) as gt:
        url = ws_url(gt, "target.git", f"{PUSH_USER}:{PUSH_PASSWORD}@")
        env.git("push", "-q", url, "HEAD:refs/heads/main", cwd=work)  # warm-up
        data_dir = os.path.join(work, "data")
        log(f"writing {args.push_mib} MiB of random data and committing it ...")
        write_random_files(data_dir, args.push_mib * MiB)
        env.git(*FAST, "add", "data", cwd=work)
        env.git(*FAST, "commit", "-q", "-m", "random data", cwd=work)
        shutil.rmtree(data_dir)
        before = rss_mib(gt.pid)
        cpu0 = proc_cpu_seconds(gt.pid)
        log(f"pushing {args.push_mib} MiB over ws:// (server RSS before: {before:.1f} MiB) ...")
        with RSSSampler(gt.pid) as sampler:
            t = time.perf_counter()
            env.git(*FAST, "push", "-q", url, "HEAD:refs/heads/main", cwd=work, capture=False)
            elapsed = time.perf_counter() - t
        cpu = proc_cpu_seconds(gt.pid) - cpu0
        if env.out("--git-dir", target, "rev-parse", "main") != env.out("rev-parse", "HEAD", cwd=work):
            raise RuntimeError("the pushed ref is not on the server")
    peak = max(sampler.max_mib, before)
    raw["push"] = {
        "MiB": args.push_mib,
        "seconds": round(elapsed, 2),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak, 1),
        "server_cpu_s": round(cpu, 2),
    }
    rows.append(Row(
        f"server peak RSS, {args.push_mib} MiB push over ws://", peak, "MiB", before, "RSS before",
        peak / before, f"<= {RSS_LIMIT_MIB:.0f} MiB", pf(peak <= RSS_LIMIT_MIB),
        note=f"{args.push_mib / elapsed:.0f} MiB/s; server python CPU {cpu:.1f}s; {sampler.samples} samples",
    ))  # fmt: skip
    rows.append(Row(
        "server RSS growth during that push", peak - before, "MiB",
        target=f"<= {RSS_GROWTH_TOL_MIB:.0f} MiB (flat)", result=pf(peak - before <= RSS_GROWTH_TOL_MIB),
    ))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/ws.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="30 MiB repository, 64 MiB push, 5 reps")
    p.add_argument("--size-mib", type=int)
    p.add_argument("--commits", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument(
        "--helper-cpu-reps", type=int, default=3, help="untimed clones per case for helper CPU (0: none)"
    )
    p.add_argument("--push-mib", type=int)
    p.add_argument("--workdir", default=default_workdir())
    p.add_argument("--clone-dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    p.add_argument("--no-clone", action="store_true")
    p.add_argument("--no-push", action="store_true")
    p.add_argument("--regen", action="store_true")
    p.add_argument(
        "--server-python-path",
        default=ROOT_DIR,
        metavar="DIR",
        help="run the gittornado package found in DIR, server and helper alike (default: this "
        "checkout); e.g. an export of an older commit, for before/after figures",
    )
    p.add_argument("--json", help="results file (default WORKDIR/results/ws.json)")
    args = p.parse_args(argv)
    args.size_mib = args.size_mib or (30 if args.quick else 300)
    args.commits = args.commits or (60 if args.quick else 300)
    args.reps = args.reps or (5 if args.quick else 7)
    args.push_mib = args.push_mib or (64 if args.quick else 512)
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ws-run-", dir=args.workdir)
    env = Env(os.path.join(tmp, "home"))
    env.env["PATH"] = helper_dir() + os.pathsep + env.env.get("PATH", "")
    if not os.path.isdir(os.path.join(args.server_python_path, "gittornado")):
        p.error(f"--server-python-path {args.server_python_path}: no gittornado package there")
    code = ServerCode(env, args.server_python_path)
    code.check()
    # The helper starts once per clone: from bytecode, as ``pip install`` leaves it (with
    # PYTHONDONTWRITEBYTECODE=1 a checkout's source would be compiled at every start).
    compileall.compile_dir(os.path.join(code.path, "gittornado"), quiet=1)
    env.env["PYTHONPATH"] = code.env["PYTHONPATH"]  # the helper runs the code under test too
    rows: list[Row] = []
    raw: dict = {"loadavg_start": os.getloadavg()}
    try:
        if not args.no_clone:
            run_clones(env, args, tmp, code, rows, raw)
        if not args.no_push:
            run_push(env, args, tmp, code, rows, raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    write_json(
        args.json or os.path.join(args.workdir, "results", "ws.json"),
        {"rows": [r.as_json() for r in rows], "raw": raw},
    )
    return 0 if all(r.result != "MISS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
