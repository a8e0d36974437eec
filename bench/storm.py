"""Issue 11's clone figures: a storm of concurrent clones, and one large clone, with the caches.

* **Clone storm**: ``--clients`` (32) ``git clone --bare`` of the medium repository started at
  once, against gittornado with a warm pack cache, with a cold one (a fresh server with an
  empty cache directory for every storm), with ``--no-pack-cache``, and against ``git
  http-backend`` behind nginx + fcgiwrap (fcgiwrap preforks one process per client, so the
  peer serves them all at once too). Per storm: the wall time until the last clone is done,
  the server's CPU including the git it runs (the CPU of its process tree: every live
  process's utime+stime+cutime+cstime, read before and after, once its children are
  reaped; for the peer, nginx's and fcgiwrap's trees plus each http-backend's CPU with its
  git, which a wrapper logs because fcgiwrap lets the kernel reap its children
  unaccounted), and failures (each clone must exit 0 and have the expected ``main``).
* **Large clone**: one ``git clone --bare`` of the large repository at a time, through
  ``file://`` (``--no-local``: the floor), gittornado with a warm pack cache, gittornado's
  first clone into an empty cache (a fresh server for each), and ``--no-pack-cache`` (what
  gittornado did before the cache), interleaved in a rotating order, median of ``--reps``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from bench.clones import _default_clone_dir
from bench.common import Env, log
from bench.fixtures import ensure_repo, repo_summary
from bench.measure import (
    CloneCase,
    machine_busy_seconds,
    proc_cpu_seconds,
    process_tree,
    timed_clone,
    tree_cpu_seconds,
    wait_tree_quiet,
)
from bench.report import Row, paired_ratio, pf, spread
from bench.servers import GitTornado, Peer, ServerCode, ensure_peer_tools

STORM_CPU_TARGET = 0.30  #: storm server CPU (git included) vs http-backend's
STORM_WALL_TARGET = 1.00  #: storm wall time vs http-backend's
WARM_VS_FLOOR_TARGET = 1.00  #: large clone from a warm cache vs file://
COLD_VS_TODAY_TARGET = 1.05  #: first clone into an empty cache vs --no-pack-cache (noise allowance)

CACHE_SIZE = "4G"  #: --pack-cache-size of the cached servers (room for every entry of a run)


class Server:
    """A gittornado server that can be restarted with a fresh, empty pack-cache directory."""

    def __init__(self, code: ServerCode, gitbase: str, tmp: str, name: str, extra: list[str]) -> None:
        self.code, self.gitbase, self.tmp, self.name = code, gitbase, tmp, name
        self.extra = extra
        self.cached = "--no-pack-cache" not in extra
        self.gt: GitTornado | None = None
        self.cache_dir = ""
        self.starts = 0
        self.primed = False

    def start(self) -> Server:
        self.stop()
        self.starts += 1
        argv = list(self.extra)
        if self.cached:
            self.cache_dir = tempfile.mkdtemp(prefix=f"packcache-{self.name}-", dir=self.tmp)
            argv += ["--pack-cache-dir", self.cache_dir, "--pack-cache-size", CACHE_SIZE]
        log_file = os.path.join(self.tmp, f"gittornado-{self.name}-{self.starts}.log")
        self.gt = GitTornado(self.code, self.gitbase, log_file, extra=argv).__enter__()
        self.primed = False
        return self

    def fresh(self, env: Env, repo: str) -> None:
        """Restart with an empty cache (the old one removed); one ``ls-remote`` loads the code."""
        self.start()
        env.git("ls-remote", self.url(repo))

    def stop(self) -> None:
        if self.gt is not None:
            self.gt.__exit__()
            self.gt = None
        if self.cache_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir = ""

    @property
    def pid(self) -> int:
        assert self.gt is not None
        return self.gt.pid

    def url(self, repo: str) -> str:
        assert self.gt is not None
        return self.gt.url(repo)

    def cache_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.cache_dir or os.devnull):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_size
        return total


def peer_or_reason(args: argparse.Namespace) -> tuple[bool, str]:
    if args.no_peer:
        return False, "--no-peer"
    ok, why = ensure_peer_tools(args.install_deps)
    if not ok:
        log(f"peer (git http-backend behind nginx) skipped: {why}")
    return ok, why


# -- the storm ---------------------------------------------------------------------------------


def clone_storm(
    env: Env,
    url: str,
    clients: int,
    dest_root: str,
    head: str,
    roots: list[int],
    cpu: Callable[[], float],
    gateway: Callable[[], float],
    timeout: float = 600,
) -> dict:
    """``clients`` clones of ``url`` at once; wall time, the server's CPU (``cpu()`` read before
    and after, once the process trees under ``roots`` are back to their size), failures."""
    os.makedirs(dest_root, exist_ok=True)
    keep = len(process_tree(roots))
    cpu0, gw0 = cpu(), gateway()
    busy0 = machine_busy_seconds()
    dests = [os.path.join(dest_root, f"c{i:02d}.git") for i in range(clients)]
    procs = []
    t0 = time.perf_counter()
    for dest in dests:
        procs.append(
            subprocess.Popen(
                ["git", "-c", "protocol.version=2", "clone", "--bare", "-q", url, dest],
                env=env.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    errors: list[str] = []
    try:
        for p in procs:
            try:
                _out, err = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                _out, err = p.communicate()
                errors.append("timed out")
                continue
            if p.returncode != 0:
                errors.append(f"exit {p.returncode}: {err.decode(errors='replace').strip()[-300:]}")
    except BaseException:  # interrupted (SIGTERM, Ctrl-C): leave no clone running
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        raise
    wall = time.perf_counter() - t0
    busy = machine_busy_seconds() - busy0
    left = wait_tree_quiet(roots, keep)
    used, gw = cpu() - cpu0, gateway() - gw0
    for dest, p in zip(dests, procs, strict=True):
        if p.returncode == 0:
            res = env.git("--git-dir", dest, "rev-parse", "refs/heads/main", check=False)
            got = res.stdout.decode().strip()
            if got != head:
                errors.append(f"{os.path.basename(dest)}: main is {got or '(none)'}, expected {head}")
        shutil.rmtree(dest, ignore_errors=True)
    return {
        "wall_s": round(wall, 3),
        "server_cpu_s": round(used, 3),
        "gateway_cpu_s": round(gw, 3),
        "machine_cpu_s": round(busy, 2),
        "failures": len(errors),
        "errors": errors[:5],
        "server_processes_left": left - keep,
    }


def run_storm_clones(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    repo = ensure_repo(env, args.workdir, args.medium_mib, args.medium_commits, args.regen)
    summary = repo_summary(env, repo)
    raw["storm_repo"] = summary
    pack_mib = summary["pack_mib"]
    name, repos_dir = os.path.basename(repo), os.path.dirname(repo)
    head = env.out("--git-dir", repo, "rev-parse", "refs/heads/main")
    n = args.clients
    log(f"clone storm: {n} concurrent clones of {name} ({pack_mib} MiB), {args.storm_reps} rep(s)")
    peer_ok, peer_why = peer_or_reason(args)
    clone_root = args.clone_dir or _default_clone_dir(args.workdir, pack_mib * n // 3)
    dest_root = tempfile.mkdtemp(prefix="gittornado-storm-", dir=clone_root)
    results: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        warm = Server(code, repos_dir, tmp, "storm-warm", [])
        cold = Server(code, repos_dir, tmp, "storm-cold", [])
        nocache = Server(code, repos_dir, tmp, "storm-nocache", ["--no-pack-cache"])
        for s in (warm, cold, nocache):
            stack.callback(s.stop)
            s.start()
        stack.callback(shutil.rmtree, dest_root, True)
        peer = None
        if peer_ok:
            peer = stack.enter_context(
                Peer(env, repos_dir, os.path.join(tmp, "peer-storm"), children=n, account=True)
            )
        log("warm-up (untimed): a file:// clone for the page cache, one clone through each server")
        timed_clone(env, CloneCase("floor", f"file://{repo}", 2, ["--no-local"]), dest_root + "/w.git", head)
        for s in (warm, nocache):  # the warm server's cache gets its entry here
            timed_clone(env, CloneCase(s.name, s.url(name), 2), dest_root + "/w.git", head)
        if peer is not None:
            timed_clone(env, CloneCase("peer", peer.url(name), 2), dest_root + "/w.git", head)
        cases: list[tuple[str, object]] = [("warm", warm), ("cold", cold), ("nocache", nocache)]
        if peer is not None:
            cases.append(("peer", peer))
        for rep in range(args.storm_reps):
            k = rep % len(cases)
            for label, srv in cases[k:] + cases[:k]:
                if label == "cold":
                    cold.fresh(env, name)  # an empty cache at the start of the storm
                if isinstance(srv, Server):
                    roots = [srv.pid]
                    cpu = lambda r=roots: tree_cpu_seconds(r)  # noqa: E731
                    own = lambda p=srv.pid: proc_cpu_seconds(p)  # noqa: E731
                    res = clone_storm(env, srv.url(name), n, dest_root, head, roots, cpu, own)
                else:
                    assert peer is not None
                    gw = lambda r=peer.pids: tree_cpu_seconds(r)  # noqa: E731
                    url = peer.url(name)
                    res = clone_storm(env, url, n, dest_root, head, peer.pids, peer.cpu_seconds, gw)
                if isinstance(srv, Server) and srv.cached:
                    res["cache_mib_after"] = round(srv.cache_bytes() / 2**20, 1)
                results.setdefault(label, []).append(res)
                log(
                    f"storm rep {rep + 1}/{args.storm_reps} {label}: wall {res['wall_s']:.2f}s, "
                    f"server CPU {res['server_cpu_s']:.2f}s, failures {res['failures']}"
                )
    raw["storm"] = {"clients": n, "repo_pack_mib": pack_mib, "reps": args.storm_reps, "cases": results}

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in results[label])

    what = f"storm of {n} clones, {pack_mib:.0f} MiB repo"
    names = {
        "warm": "gittornado, warm pack cache",
        "cold": "gittornado, cold (empty cache at start)",
        "nocache": "gittornado --no-pack-cache",
    }
    failures = sum(r["failures"] for rs in results.values() for r in rs)
    examples = [e for rs in results.values() for r in rs for e in r["errors"]][:3]
    rows.append(
        Row(
            f"{what}: failed clones (all cases, all reps)", failures, "clones",
            target="0", result=pf(failures == 0),
            note=f"{sum(len(rs) for rs in results.values()) * n} clones, each checked with "
            f"rev-parse main" + (f"; e.g. {examples}" if examples else ""),
        )
    )  # fmt: skip
    peer_cpu = med("peer", "server_cpu_s") if peer_ok and "peer" in results else None
    peer_wall = med("peer", "wall_s") if peer_cpu is not None else None
    for label in ("warm", "cold", "nocache"):
        cpu, wall = med(label, "server_cpu_s"), med(label, "wall_s")
        target = label != "nocache"
        spreads = (
            f"{spread([r['server_cpu_s'] for r in results[label]])} over {len(results[label])} storm(s); "
            f"{cpu / n:.3f}s per clone, of which gittornado's own process "
            f"{med(label, 'gateway_cpu_s') / n:.3f}s"
        )
        if peer_cpu is None:
            rows.append(Row(f"{what}: server CPU incl. git, {names[label]}", cpu, "s", note=spreads))
            rows.append(Row(f"{what}: wall, {names[label]}", wall, "s"))
            continue
        ratio = cpu / peer_cpu if peer_cpu else None
        rows.append(
            Row(
                f"{what}: server CPU incl. git, {names[label]} vs http-backend+nginx",
                cpu, "s", peer_cpu, "peer", ratio,
                f"<= {STORM_CPU_TARGET:.2f}x" if target else "info",
                pf(ratio is not None and ratio <= STORM_CPU_TARGET) if target else "info",
                note=f"{spreads}; peer {spread([r['server_cpu_s'] for r in results['peer']])}, "
                f"{peer_cpu / n:.3f}s per clone, of which nginx and fcgiwrap "
                f"{med('peer', 'gateway_cpu_s') / n:.3f}s",
            )
        )  # fmt: skip
        assert peer_wall is not None
        wr = wall / peer_wall
        rows.append(
            Row(
                f"{what}: wall, {names[label]} vs http-backend+nginx",
                wall, "s", peer_wall, "peer", wr,
                f"<= {STORM_WALL_TARGET:.2f}x" if target else "info",
                pf(wr <= STORM_WALL_TARGET) if target else "info",
                note=f"gittornado {spread([r['wall_s'] for r in results[label]])}, "
                f"peer {spread([r['wall_s'] for r in results['peer']])}; machine CPU (clients "
                f"included) {med(label, 'machine_cpu_s'):.1f}s vs {med('peer', 'machine_cpu_s'):.1f}s",
            )
        )  # fmt: skip
    if peer_cpu is None:
        rows.append(Row(f"{what}: git http-backend+nginx", None, "s", result="skipped", note=peer_why))


# -- the large clone ---------------------------------------------------------------------------


def run_large_clone(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    repo = ensure_repo(env, args.workdir, args.size_mib, args.commits, args.regen)
    summary = repo_summary(env, repo)
    raw["large_repo"] = summary
    pack_mib = summary["pack_mib"]
    name, repos_dir = os.path.basename(repo), os.path.dirname(repo)
    head = env.out("--git-dir", repo, "rev-parse", "refs/heads/main")
    log(f"large clone: {name} ({pack_mib} MiB), {args.reps} reps, interleaved")
    clone_root = args.clone_dir or _default_clone_dir(args.workdir, pack_mib)
    dest_tmp = tempfile.mkdtemp(prefix="gittornado-large-", dir=clone_root)
    dest = os.path.join(dest_tmp, "clone.git")
    times: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, dest_tmp, True)
        warm = Server(code, repos_dir, tmp, "large-warm", [])
        cold = Server(code, repos_dir, tmp, "large-cold", [])
        nocache = Server(code, repos_dir, tmp, "large-nocache", ["--no-pack-cache"])
        for s in (warm, cold, nocache):
            stack.callback(s.stop)
            s.start()
        floor = CloneCase("floor", f"file://{repo}", 2, ["--no-local"])
        log("warm-up (untimed): a file:// clone, then one clone through the warm and no-cache servers")
        timed_clone(env, floor, dest, head)
        for s in (warm, nocache):
            timed_clone(env, CloneCase(s.name, s.url(name), 2), dest, head)
        order = ["floor", "warm", "cold", "nocache"]
        servers = {"warm": warm, "cold": cold, "nocache": nocache}
        for rep in range(args.reps):
            k = rep % len(order)
            for label in order[k:] + order[:k]:
                srv = servers.get(label)
                if srv is cold:
                    cold.fresh(env, name)
                case = floor if srv is None else CloneCase(label, srv.url(name), 2)
                roots = [srv.pid] if srv is not None else []
                keep = len(process_tree(roots)) if roots else 0
                cpu0 = tree_cpu_seconds(roots) if roots else 0.0
                times.setdefault(label, []).append(timed_clone(env, case, dest, head))
                if roots:
                    wait_tree_quiet(roots, keep)
                    cpus.setdefault(label, []).append(tree_cpu_seconds(roots) - cpu0)
            log(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{lb} {times[lb][-1]:.2f}s" for lb in order))
        cache_mib = round(warm.cache_bytes() / 2**20, 1)
    raw["large_clone"] = {
        label: {
            "times_s": [round(t, 4) for t in ts],
            "median_s": round(statistics.median(ts), 4),
            **({"server_cpu_s": [round(c, 3) for c in cpus[label]]} if label in cpus else {}),
        }
        for label, ts in times.items()
    }
    raw["large_clone"]["warm_cache_mib"] = cache_mib
    med = {label: statistics.median(ts) for label, ts in times.items()}
    what = f"large clone {pack_mib:.0f} MiB"
    r = med["warm"] / med["floor"]
    rows.append(
        Row(
            f"{what}: gittornado warm pack cache vs file:// floor", med["warm"], "s", med["floor"],
            "file:// --no-local", r, f"<= {WARM_VS_FLOOR_TARGET:.2f}x", pf(r <= WARM_VS_FLOOR_TARGET),
            note=f"median of {len(times['warm'])}, interleaved; warm {spread(times['warm'])}, floor "
            f"{spread(times['floor'])}; median of paired ratios "
            f"{paired_ratio(times['warm'], times['floor']):.3f}x; cache on disk {cache_mib} MiB",
        )
    )  # fmt: skip
    r = med["cold"] / med["nocache"]
    rows.append(
        Row(
            f"{what}: gittornado cold (first clone, empty cache) vs --no-pack-cache", med["cold"], "s",
            med["nocache"], "no cache", r, f"<= {COLD_VS_TODAY_TARGET:.2f}x", pf(r <= COLD_VS_TODAY_TARGET),
            note=f"cold {spread(times['cold'])}, no cache {spread(times['nocache'])}; median of paired "
            f"ratios {paired_ratio(times['cold'], times['nocache']):.3f}x; target: no slower, within "
            f"{COLD_VS_TODAY_TARGET - 1:.0%} noise",
        )
    )  # fmt: skip
    for label, text in (("nocache", "--no-pack-cache"), ("cold", "cold cache")):
        rows.append(
            Row(
                f"{what}: gittornado {text} vs file:// floor", med[label], "s", med["floor"],
                "file://", med[label] / med["floor"],
            )
        )  # fmt: skip
    rows.append(
        Row(
            f"{what}: pack cache on disk after the clones (warm server)", cache_mib, "MiB", pack_mib,
            "repository's pack", cache_mib / pack_mib if pack_mib else None,
            note="one entry per distinct fetch; a clone's entry is about the size of the pack it sends",
        )
    )  # fmt: skip
    cpu = {label: statistics.median(cs) for label, cs in cpus.items()}
    rows.append(
        Row(
            f"{what}: server CPU incl. git per clone, warm cache vs --no-pack-cache", cpu["warm"], "s",
            cpu["nocache"], "no cache", cpu["warm"] / cpu["nocache"] if cpu["nocache"] else None,
            note=f"cold (fills the cache) {cpu['cold']:.2f}s; medians of the process tree's CPU",
        )
    )  # fmt: skip
