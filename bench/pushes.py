"""The push scenario: the gittornado server's memory while it takes big chunked pushes.

512 MiB and then 1 GiB of new random data (default ``http.postBuffer``, so chunked request
bodies) pushed to a gittornado that grants write access through an ``--accessfile``; the
VmRSS of the server's own Python process (not its git children) is sampled every 20 ms.
The same pushes to a ``file://`` repository give the push time a floor (informational).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

from bench.common import Env, MiB, log
from bench.fixtures import write_random_files
from bench.measure import RSSSampler, proc_cpu_seconds, rss_mib
from bench.report import Row, pf, size_label
from bench.servers import GitTornado, ServerCode

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
