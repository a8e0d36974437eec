"""The clone scenario: ``git clone --bare`` of the generated repository, v2 and v0, through

* ``file://`` with ``--no-local`` (the *floor*: upload-pack straight into the client),
* gittornado (a real ``python -m gittornado`` subprocess),
* ``git http-backend`` behind nginx + fcgiwrap (the *peer*), when those are installed,

``--reps`` times each (median), interleaved in a rotating order after an untimed warm-up.
The gittornado server process's own CPU (utime + stime) is read before and after each of
its clones; its VmRSS is sampled throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile

from bench.common import Env, MiB, log
from bench.fixtures import ensure_repo, repo_summary
from bench.measure import CloneCase, proc_cpu_seconds, rss_mib, timed_clone
from bench.report import Row, paired_ratio, pf, spread
from bench.servers import GitTornado, Peer, ServerCode, ensure_peer_tools

CLONE_TARGET = 1.10  #: gittornado clone time <= 1.10x the floor
SERVER_CPU_PER_CLONE_S = 0.05  #: gittornado's own CPU per clone


def run_clones(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    repo = ensure_repo(env, args.workdir, args.size_mib, args.commits, args.regen)
    raw["repo"] = repo_summary(env, repo)
    log(f"repository: {raw['repo']['pack_mib']} MiB packed, {raw['repo']['commits']} commits")
    clone_root = args.clone_dir or _default_clone_dir(args.workdir, args.size_mib)
    os.makedirs(clone_root, exist_ok=True)
    clone_tmp = tempfile.mkdtemp(prefix="gittornado-bench-", dir=clone_root)
    log(f"clones are written under {clone_tmp}")
    try:
        _run_clones(env, args, tmp, code, rows, raw, repo, os.path.join(clone_tmp, "clone.git"))
    finally:
        shutil.rmtree(clone_tmp, ignore_errors=True)


def _default_clone_dir(workdir: str, size_mib: int) -> str:
    """``/dev/shm`` when it is a roomy tmpfs (disk writeback adds most of the noise), else workdir."""
    shm = "/dev/shm"
    try:
        roomy = shutil.disk_usage(shm).free > 3 * size_mib * MiB + 512 * MiB
        if os.path.isdir(shm) and roomy and os.access(shm, os.W_OK):
            return shm
    except OSError:
        pass
    return workdir


def _run_clones(
    env: Env,
    args: argparse.Namespace,
    tmp: str,
    code: ServerCode,
    rows: list[Row],
    raw: dict,
    repo: str,
    dest: str,
) -> None:
    repos_dir = os.path.dirname(repo)
    name = os.path.basename(repo)
    head = env.out("--git-dir", repo, "rev-parse", "refs/heads/main")
    if args.no_peer:
        peer_ok, peer_why = False, "--no-peer"
    else:
        peer_ok, peer_why = ensure_peer_tools(args.install_deps)
    if not peer_ok:
        log(f"peer (git http-backend behind nginx) skipped: {peer_why}")
    srv_log = os.path.join(tmp, "gittornado-clone.log")
    with contextlib.ExitStack() as stack:
        gt = stack.enter_context(GitTornado(code, repos_dir, srv_log))
        log(f"gittornado pid {gt.pid} serving on port {gt.port}")
        baseline = rss_mib(gt.pid)
        peer = None
        if peer_ok:
            try:
                peer = stack.enter_context(Peer(env, repos_dir, os.path.join(tmp, "peer")))
                log(f"peer (git http-backend, fcgiwrap, nginx) on port {peer.port}")
            except Exception as exc:
                log(f"peer failed to start: {exc}")
                peer_why = f"failed to start: {exc}"
        cases: list[CloneCase] = []
        for proto in (2, 0):
            cases.append(CloneCase(f"floor v{proto}", f"file://{repo}", proto, ["--no-local"]))
            cases.append(CloneCase(f"gittornado v{proto}", gt.url(name), proto, server_pid=gt.pid))
            if peer is not None:
                cases.append(CloneCase(f"peer v{proto}", peer.url(name), proto))
        case_ = {c.name: c for c in cases}
        log("warm-up (untimed): one file:// clone for the page cache, ls-remote on each server ...")
        timed_clone(env, cases[0], dest, head)
        for case in cases[1:]:
            env.git("ls-remote", case.url)
        loop_cpu0 = proc_cpu_seconds(gt.pid)
        for rep in range(args.reps):
            k = rep % len(cases)  # rotate the order: no case always goes first
            for case in cases[k:] + cases[:k]:
                case.times.append(timed_clone(env, case, dest, head))
            log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))
        loop_cpu = proc_cpu_seconds(gt.pid) - loop_cpu0
        hwm = rss_mib(gt.pid, "VmHWM")

    raw["clone"] = {
        c.name: {
            "times_s": [round(t, 4) for t in c.times],
            "median_s": round(c.median, 4),
            "min_s": round(min(c.times), 4),
            "max_s": round(max(c.times), 4),
            "machine_cpu_s": [round(x, 2) for x in c.machine_cpu],
            **({"server_cpu_s": [round(x, 3) for x in c.server_cpu]} if c.server_cpu else {}),
        }
        for c in cases
    }
    pack_mib = raw["repo"]["pack_mib"]
    for proto in (2, 0):
        floor, gt_case = case_[f"floor v{proto}"], case_[f"gittornado v{proto}"]
        ratio = gt_case.median / floor.median
        rows.append(
            Row(
                f"clone {pack_mib:.0f} MiB, protocol v{proto}: gittornado vs floor",
                gt_case.median, "s", floor.median, "file:// --no-local", ratio,
                f"<= {CLONE_TARGET:.2f}x", pf(ratio <= CLONE_TARGET),
                note=f"median of {len(gt_case.times)}; gittornado {spread(gt_case.times)}, "
                f"floor {spread(floor.times)}; best/best {min(gt_case.times) / min(floor.times):.3f}x, "
                f"median of paired ratios {paired_ratio(gt_case.times, floor.times):.3f}x",
            )
        )  # fmt: skip
    for proto in (2, 0):
        floor, gt_case = case_[f"floor v{proto}"], case_[f"gittornado v{proto}"]
        peer_case = case_.get(f"peer v{proto}")
        metric = f"clone {pack_mib:.0f} MiB, protocol v{proto}: gittornado vs git http-backend+nginx"
        if peer_case is None:
            rows.append(Row(metric, None, "s", result="skipped", note=peer_why))
        else:
            rows.append(
                Row(
                    metric, gt_case.median, "s", peer_case.median, "peer",
                    gt_case.median / peer_case.median,
                    note=f"peer {spread(peer_case.times)}; peer vs floor "
                    f"{peer_case.median / floor.median:.3f}x; median of paired ratios "
                    f"{paired_ratio(gt_case.times, peer_case.times):.3f}x",
                )
            )  # fmt: skip
    ncpu = os.cpu_count() or 1
    for proto in (2, 0):
        floor, gt_case = case_[f"floor v{proto}"], case_[f"gittornado v{proto}"]
        a, b = statistics.median(gt_case.machine_cpu), statistics.median(floor.machine_cpu)
        busy = b > 0.75 * ncpu * floor.median
        rows.append(
            Row(
                f"machine CPU per clone v{proto} (all processes): gittornado vs floor",
                a, "s", b, "file://", a / b if b else None,
                note=f"the floor keeps {b / floor.median:.1f} of {ncpu} CPUs busy: "
                "extra server CPU shows up as wall time" if busy else "",
            )
        )  # fmt: skip
    n_gt = 0
    for proto in (2, 0):
        gt_case = case_[f"gittornado v{proto}"]
        per_clone = gt_case.server_cpu_per_clone
        n_gt += len(gt_case.server_cpu)
        rows.append(
            Row(
                f"gittornado server CPU per clone v{proto} (its python process, utime+stime)",
                per_clone, "s", gt_case.median, "clone wall time", per_clone / gt_case.median,
                f"<= {SERVER_CPU_PER_CLONE_S:.3f} s", pf(per_clone <= SERVER_CPU_PER_CLONE_S),
                note=f"{sum(gt_case.server_cpu):.2f}s over {len(gt_case.server_cpu)} clones; per clone "
                f"median {statistics.median(gt_case.server_cpu):.3f}s, "
                f"{spread(gt_case.server_cpu, digits=3)}; ratio = share of one core "
                f"({pack_mib / per_clone if per_clone else float('inf'):.0f} MiB per CPU second)",
            )
        )  # fmt: skip
    for proto in (2, 0):
        gt_case = case_[f"gittornado v{proto}"]
        if not gt_case.server_user:
            continue
        user = sum(gt_case.server_user) / len(gt_case.server_user)
        rows.append(
            Row(
                f"gittornado server Python CPU per clone v{proto} (utime only)",
                user, "s", gt_case.server_cpu_per_clone, "utime+stime", None,
                f"<= {SERVER_CPU_PER_CLONE_S:.3f} s", pf(user <= SERVER_CPU_PER_CLONE_S),
                note="stime is the kernel moving the pack into TCP (splice): git paid it itself "
                "when it wrote to the socket, as http-backend's children do for the peer",
            )
        )  # fmt: skip
    raw["clone_server_cpu"] = {
        "per_clone_v2_s": round(case_["gittornado v2"].server_cpu_per_clone, 4),
        "per_clone_v0_s": round(case_["gittornado v0"].server_cpu_per_clone, 4),
        # Cross-check: the server's CPU over the whole timed loop (its idle time while the
        # other cases ran included) divided by its clone count.
        "whole_loop_s": round(loop_cpu, 3),
        "whole_loop_per_clone_s": round(loop_cpu / n_gt, 4),
        "target_s": SERVER_CPU_PER_CLONE_S,
    }
    peak = max(case_["gittornado v2"].server_peak_rss, case_["gittornado v0"].server_peak_rss)
    rows.append(
        Row(
            "gittornado server peak RSS during clones", peak, "MiB", baseline, "RSS at start", peak / baseline
        )
    )
    raw["clone_server_rss"] = {
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak, 1),
        "vmhwm_mib": round(hwm, 1),
    }
