"""The push scenario: the gittornado server's memory while it takes big chunked pushes.

512 MiB and then 1 GiB of new random data (default ``http.postBuffer``, so chunked request
bodies) pushed to a gittornado that grants write access through an ``--accessfile``; the
VmRSS of the server's own Python process (not its git children) is sampled every 20 ms.
The same pushes to a ``file://`` repository give the push time a floor (informational).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import time

from bench.common import Env, MiB, log
from bench.fixtures import write_random_files
from bench.measure import (
    RSSSampler,
    TreeSampler,
    proc_cpu_seconds,
    process_tree,
    rss_mib,
    tree_cpu_seconds,
    wait_tree_quiet,
)
from bench.report import Row, pf, size_label
from bench.servers import GitTornado, Peer, ServerCode
from bench.storm import peer_or_reason

RSS_LIMIT_MIB = 45.0  #: server peak RSS during a push
RSS_GROWTH_TOL_MIB = 4.0  #: "flat": peak during a push <= RSS before it + this (and across sizes)

PUSH_USER, PUSH_PASSWORD = "bench", "benchpw"

# Objects above bigFileThreshold go straight into a pack at `git add` and are then reused
# verbatim by the push; level 0 keeps the client from spending minutes deflating noise
# (and makes it send as fast as the server will take it: the harder case for buffering).
FAST = ["-c", "core.bigFileThreshold=1m", "-c", "core.compression=0", "-c", "pack.compression=0"]


def run_pushes(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    root = os.path.join(tmp, "pushroot")
    os.makedirs(root)
    target = os.path.join(root, "target.git")
    env.git("init", "-q", "--bare", "--initial-branch=main", target)
    floor_target = os.path.join(tmp, "push-floor.git")
    if not args.no_push_floor:
        env.git("init", "-q", "--bare", "--initial-branch=main", floor_target)
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

    srv_log = os.path.join(tmp, "gittornado-push.log")
    push_raw: dict = {}
    peaks: dict[int, float] = {}
    with GitTornado(code, root, srv_log, accessfile=accessfile) as gt:
        url = gt.url("target.git", auth=f"{PUSH_USER}:{PUSH_PASSWORD}@")
        log(f"push server pid {gt.pid} on port {gt.port}; warm-up push")
        env.git("push", "-q", url, "HEAD:refs/heads/main", cwd=work)  # imports, bcrypt, etc.
        if not args.no_push_floor:
            env.git("push", "-q", f"file://{floor_target}", "HEAD:refs/heads/main", cwd=work)
        start_rss = rss_mib(gt.pid)
        for size_mib in args.push_mib:
            label = size_label(size_mib)
            data_dir = os.path.join(work, f"data_{size_mib}m")
            log(f"writing {label} of random data and committing it ...")
            write_random_files(data_dir, size_mib * MiB)
            env.git(*FAST, "add", os.path.relpath(data_dir, work), cwd=work)
            env.git(*FAST, "commit", "-q", "-m", f"{size_mib} MiB of random data", cwd=work)
            shutil.rmtree(data_dir)  # the objects are in the repository now
            head = env.out("rev-parse", "HEAD", cwd=work)
            floor_s = None
            if not args.no_push_floor:
                log(f"pushing {label} to file:// (the floor) ...")
                t = time.perf_counter()
                env.git(
                    *FAST, "push", "-q", f"file://{floor_target}", "HEAD:refs/heads/main",
                    cwd=work, capture=False,
                )  # fmt: skip
                floor_s = time.perf_counter() - t
            before = rss_mib(gt.pid)
            log(f"pushing {label} through gittornado (server RSS before: {before:.1f} MiB) ...")
            cpu0 = proc_cpu_seconds(gt.pid)
            with RSSSampler(gt.pid) as sampler:
                t = time.perf_counter()
                env.git(*FAST, "push", "-q", url, "HEAD:refs/heads/main", cwd=work, capture=False)
                elapsed = time.perf_counter() - t
            cpu = proc_cpu_seconds(gt.pid) - cpu0
            after = rss_mib(gt.pid)
            got = env.out("--git-dir", target, "rev-parse", "refs/heads/main")
            if got != head:
                raise RuntimeError(f"push of {label}: server has {got}, expected {head}")
            peak = max(sampler.max_mib, before, after)
            peaks[size_mib] = peak
            growth = peak - before
            push_raw[f"{size_mib}MiB"] = {
                "seconds": round(elapsed, 3),
                "MiB_per_s": round(size_mib / elapsed, 1),
                "rss_before_mib": round(before, 1),
                "rss_peak_mib": round(peak, 1),
                "rss_after_mib": round(after, 1),
                "growth_mib": round(growth, 1),
                "samples": sampler.samples,
                "server_cpu_s": round(cpu, 2),
                "floor_seconds": None if floor_s is None else round(floor_s, 3),
            }
            log(
                f"pushed {label} in {elapsed:.1f}s ({size_mib / elapsed:.0f} MiB/s); server RSS peak "
                f"{peak:.1f} MiB (+{growth:.1f}), {sampler.samples} samples, python CPU {cpu:.1f}s"
            )
            rows.append(
                Row(
                    f"server peak RSS, push {label}", peak, "MiB", before, "RSS before push",
                    peak / before, f"<= {RSS_LIMIT_MIB:.0f} MiB", pf(peak <= RSS_LIMIT_MIB),
                    note=f"after the push {after:.1f} MiB; {sampler.samples} samples every 20 ms",
                )
            )  # fmt: skip
            rows.append(
                Row(
                    f"server RSS growth during push {label} (peak - before)", growth, "MiB",
                    target=f"<= {RSS_GROWTH_TOL_MIB:.0f} MiB (flat)", result=pf(growth <= RSS_GROWTH_TOL_MIB),
                )
            )  # fmt: skip
            rows.append(
                Row(
                    f"push {label}: gittornado vs floor", elapsed, "s", floor_s,
                    "file://" if floor_s is not None else "", elapsed / floor_s if floor_s else None,
                    note=f"{size_mib / elapsed:.0f} MiB/s; server python CPU {cpu:.1f}s",
                )
            )  # fmt: skip
        hwm = rss_mib(gt.pid, "VmHWM")
    smallest, biggest = min(args.push_mib), max(args.push_mib)
    if biggest != smallest:
        limit = peaks[smallest] + RSS_GROWTH_TOL_MIB
        rows.append(
            Row(
                f"server peak RSS, push {size_label(biggest)} vs {size_label(smallest)}",
                peaks[biggest], "MiB", peaks[smallest], f"peak at {size_label(smallest)}",
                peaks[biggest] / peaks[smallest], f"<= ref + {RSS_GROWTH_TOL_MIB:.0f} MiB (no growth)",
                pf(peaks[biggest] <= limit),
            )
        )  # fmt: skip
    rows.append(
        Row(
            "server VmHWM after all pushes", hwm, "MiB", start_rss, "RSS after warm-up push",
            hwm / start_rss, f"<= {RSS_LIMIT_MIB:.0f} MiB", pf(hwm <= RSS_LIMIT_MIB),
        )
    )  # fmt: skip
    raw["push"] = {
        "per_push": push_raw,
        "rss_after_warmup_mib": round(start_rss, 1),
        "vmhwm_end_mib": round(hwm, 1),
    }


# -- issue 11: the gateway's own CPU per push, against git http-backend behind nginx ------------

GATEWAY_CPU_TARGET = 1.0  #: gittornado's own CPU per push vs nginx + fcgiwrap + http-backend's

#: The receiving side's two ways: git's default for a push of few objects (fewer than
#: ``receive.unpackLimit``, 100), and ``receive.unpackLimit=1``; the value names its git.
PUSH_VARIANTS = {"unpacked": "unpack-objects", "pack kept": "index-pack"}

#: ``comm`` of the peer's gateway processes; every other process in its tree is git's work.
PEER_GATEWAY_COMMS = ("nginx", "fcgiwrap", "git-http-backen")


def run_push_gateway(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    """``args.push_mib[0]`` MiB pushed to gittornado and to git http-backend behind nginx.

    ``--push-reps`` pushes to each, for each of :data:`PUSH_VARIANTS` (the receiving
    repository unpacks the objects, or keeps the pack).

    gittornado's gateway CPU is its own process's utime+stime (its git children excluded);
    the peer's is the own CPU of its nginx, fcgiwrap and git-http-backend processes, with
    receive-pack and index-pack/unpack-objects (``git`` processes) excluded, from a sampler
    reading the process tree every 20 ms (http-backend's own CPU after its last reading is
    missed: it has nothing left to do then but exit). The peer's total (git included) comes
    from its process trees and the http-backend wrapper's log. Each push goes to a new, empty
    repository on both.
    """
    size_mib = args.push_mib[0]
    label = size_label(size_mib)
    reps = args.push_reps
    peer_ok, peer_why = peer_or_reason(args)
    gt_root, peer_root = os.path.join(tmp, "gw-gittornado"), os.path.join(tmp, "gw-peer")
    os.makedirs(gt_root)
    os.makedirs(peer_root)
    accessfile = os.path.join(tmp, "gw-access.ini")
    with open(accessfile, "w") as fh:
        fh.write(
            f"[users]\n{PUSH_USER} = {code.hash_password(PUSH_PASSWORD)}\n[access]\n{PUSH_USER} = **=rw\n"
        )
    work = os.path.join(tmp, "gw-src")
    env.git("init", "-q", "--initial-branch=main", work)
    data_dir = os.path.join(work, "data")
    log(f"push gateway: writing {label} of random data and committing it ...")
    write_random_files(data_dir, size_mib * MiB)
    env.git(*FAST, "add", "data", cwd=work)
    env.git(*FAST, "commit", "-q", "-m", f"{size_mib} MiB of random data", cwd=work)
    shutil.rmtree(data_dir)
    head = env.out("rev-parse", "HEAD", cwd=work)

    def new_target(root: str, peer: bool, keep_pack: bool) -> str:
        path = os.path.join(root, "target.git")
        shutil.rmtree(path, ignore_errors=True)
        env.git("init", "-q", "--bare", "--initial-branch=main", path)
        if peer:  # http-backend refuses receive-pack to anonymous users unless told
            env.git("--git-dir", path, "config", "http.receivepack", "true")
        if keep_pack:  # index-pack keeps the pack instead of unpack-objects writing loose objects
            env.git("--git-dir", path, "config", "receive.unpackLimit", "1")
        return path

    results: dict[str, dict[str, list[dict]]] = {}
    with contextlib.ExitStack() as stack:
        gt = stack.enter_context(
            GitTornado(code, gt_root, os.path.join(tmp, "gittornado-gw.log"), accessfile=accessfile)
        )
        gt_url = gt.url("target.git", auth=f"{PUSH_USER}:{PUSH_PASSWORD}@")
        peer = None
        if peer_ok:
            peer = stack.enter_context(Peer(env, peer_root, os.path.join(tmp, "peer-push"), account=True))
        order = ["gittornado", "peer"] if peer is not None else ["gittornado"]
        for variant in PUSH_VARIANTS:
            results[variant] = {"gittornado": [], "peer": []}
            for rep in range(reps):
                for which in order if rep % 2 == 0 else order[::-1]:
                    root = gt_root if which == "gittornado" else peer_root
                    target = new_target(root, which == "peer", variant == "pack kept")
                    if which == "gittornado":
                        res = _push_gittornado(env, gt, gt_url, work)
                    else:
                        assert peer is not None
                        res = _push_peer(env, peer, work)
                    got = env.out("--git-dir", target, "rev-parse", "refs/heads/main")
                    if got != head:
                        raise RuntimeError(f"push of {label} to {which}: main is {got}, expected {head}")
                    results[variant][which].append(res)
                    log(
                        f"push {label} ({variant}) rep {rep + 1}/{reps} {which}: {res['seconds']:.1f}s, "
                        f"gateway CPU {res['gateway_cpu_s']:.2f}s, git CPU {res['git_cpu_s']:.2f}s"
                        + (f", peak RSS {res['rss_peak_mib']} MiB" if "rss_peak_mib" in res else "")
                    )
                    shutil.rmtree(target, ignore_errors=True)
        hwm = rss_mib(gt.pid, "VmHWM")
    raw["push_gateway"] = {
        "size_mib": size_mib,
        "reps": reps,
        "variants": results,
        "gittornado_vmhwm_mib": hwm,
    }

    for variant, res_by in results.items():

        def med(which: str, key: str, res_by: dict = res_by) -> float:
            return statistics.median(r[key] for r in res_by[which])

        what = f"push {label} ({variant})"
        gw = med("gittornado", "gateway_cpu_s")
        gt_note = (
            f"median of {reps}; {gw / (size_mib / 1024):.2f}s per GiB; gittornado's git children "
            f"{med('gittornado', 'git_cpu_s'):.2f}s"
        )
        if res_by["peer"]:
            pgw = med("peer", "gateway_cpu_s")
            r = gw / pgw if pgw else None
            rows.append(
                Row(
                    f"{what}: gateway CPU, gittornado (own process) vs nginx+fcgiwrap+http-backend",
                    gw, "s", pgw, "peer", r, f"<= {GATEWAY_CPU_TARGET:.2f}x",
                    pf(r is not None and r <= GATEWAY_CPU_TARGET),
                    note=f"{gt_note}; peer's git (receive-pack, {PUSH_VARIANTS[variant]}) "
                    f"{med('peer', 'git_cpu_s'):.2f}s; peer's own CPU by process name "
                    f"{res_by['peer'][-1]['own_cpu_by_process_name_s']}",
                )
            )  # fmt: skip
            rows.append(
                Row(
                    f"{what}: time, gittornado vs http-backend+nginx", med("gittornado", "seconds"), "s",
                    med("peer", "seconds"), "peer", med("gittornado", "seconds") / med("peer", "seconds"),
                )
            )  # fmt: skip
        else:
            rows.append(Row(f"{what}: gateway CPU, gittornado (own process)", gw, "s", note=gt_note))
    if not peer_ok:
        rows.append(Row(f"push {label}: http-backend+nginx", None, "s", result="skipped", note=peer_why))
    mine = [r for res_by in results.values() for r in res_by["gittornado"]]
    peak = max(r["rss_peak_mib"] for r in mine)
    before = min(r["rss_before_mib"] for r in mine)
    rows.append(
        Row(
            f"push {label}: gittornado peak RSS (all pushes)", peak, "MiB", before, "RSS before",
            peak / before, f"<= {RSS_LIMIT_MIB:.0f} MiB", pf(peak <= RSS_LIMIT_MIB),
            note=f"+{peak - before:.1f} MiB during the pushes; VmHWM at the end {hwm:.1f} MiB; "
            "sampled every 20 ms",
        )
    )  # fmt: skip


def _push_gittornado(env: Env, gt: GitTornado, url: str, work: str) -> dict:
    # The login is verified (bcrypt) once and remembered for a minute: do it here, untimed,
    # so the push pays what a push of a known user pays.
    env.git("push", "-q", "--dry-run", url, "HEAD:refs/heads/main", cwd=work)
    before = rss_mib(gt.pid)
    own0, tree0 = proc_cpu_seconds(gt.pid), tree_cpu_seconds([gt.pid])
    with RSSSampler(gt.pid) as sampler:
        t = time.perf_counter()
        env.git(*FAST, "push", "-q", url, "HEAD:refs/heads/main", cwd=work, capture=False)
        elapsed = time.perf_counter() - t
    wait_tree_quiet([gt.pid], 1)
    own = proc_cpu_seconds(gt.pid) - own0
    total = tree_cpu_seconds([gt.pid]) - tree0
    return {
        "seconds": round(elapsed, 3),
        "gateway_cpu_s": round(own, 3),
        "git_cpu_s": round(total - own, 3),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(max(sampler.max_mib, before), 1),
        "rss_samples": sampler.samples,
    }


def _push_peer(env: Env, peer: Peer, work: str) -> dict:
    url, roots = peer.url("target.git"), peer.pids
    total0 = peer.cpu_seconds()
    keep = len(process_tree(roots))
    with TreeSampler(roots) as ts:
        t = time.perf_counter()
        env.git(*FAST, "push", "-q", url, "HEAD:refs/heads/main", cwd=work, capture=False)
        elapsed = time.perf_counter() - t
        wait_tree_quiet(roots, keep)
    total = peer.cpu_seconds() - total0
    gateway = ts.own_by(lambda st: st.comm in PEER_GATEWAY_COMMS)
    by_comm: dict[str, float] = {}
    for key, st in ts.last.items():
        base = ts.first[key].own if key in ts.initial else 0.0
        by_comm[st.comm] = round(by_comm.get(st.comm, 0.0) + st.own - base, 3)
    return {
        "seconds": round(elapsed, 3),
        "gateway_cpu_s": round(gateway, 3),
        "git_cpu_s": round(total - gateway, 3),
        "own_cpu_by_process_name_s": by_comm,
        "tree_samples": ts.samples,
    }
