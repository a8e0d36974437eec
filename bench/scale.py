"""How cost grows: ``info/refs`` with many refs, the index page with many repositories.

* ``info/refs?service=git-upload-pack`` (v0: the full advertisement) of a repository with
  10,000 and 100,000 refs (one commit; half branches, half tags; packed), one request at a
  time on one keep-alive connection: the first request after the server started, then the
  median of ``N`` more; with the advertisement cache and without it (a fresh gittornado for
  each), and through ``git http-backend`` behind nginx for reference. The server's VmRSS
  after the requests and its VmHWM are its own Python process's.
* ``GET /`` (the index page, 100 rows a page) with 1,000 and 10,000 tiny repositories under
  ``--gitbase``: the first request after the server started (cold: the walk of the
  directory tree, the access checks, the summaries of the page's rows) and the median of
  ``N`` more (warm), and the server's memory.
"""

from __future__ import annotations

import argparse
import os

from bench.adverts import REFS_PATH, loadgen
from bench.common import Env, log
from bench.fixtures import ensure_many_repos, ensure_refs_repo
from bench.measure import rss_mib
from bench.report import Row
from bench.servers import GitTornado, Peer, ServerCode
from bench.storm import peer_or_reason


def _timed(url: str, count: int) -> tuple[float, float, dict]:
    """The first request's time and the median of ``count`` more (ms), one connection."""
    first = loadgen(url, 1, count=1)
    if first["errors"] or first["requests"] != 1:
        raise RuntimeError(f"GET {url} failed: {first['error_kinds']}")
    rest = loadgen(url, 1, count=count)
    if rest["errors"]:
        raise RuntimeError(f"GET {url} failed: {rest['error_kinds']}")
    return first["p50_ms"], rest["p50_ms"], rest


def run_scaling(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    out: dict = {"refs": {}, "index": {}}
    raw["scaling"] = out
    peer_ok, peer_why = peer_or_reason(args)
    for nrefs in args.scale_refs:
        repo = ensure_refs_repo(env, args.workdir, nrefs)
        name, base = os.path.basename(repo), os.path.dirname(repo)
        count = 20 if nrefs <= 20_000 else 8
        res: dict = {}
        for label, extra in (("cache on", []), ("cache off", ["--advert-cache-size", "0"])):
            logf = os.path.join(tmp, f"gittornado-scale-refs-{nrefs}.log")
            with GitTornado(code, base, logf, extra=["--no-pack-cache", *extra]) as gt:
                rss0 = rss_mib(gt.pid)
                first, med, detail = _timed(f"{gt.url(name)}/{REFS_PATH}", count)
                res[label] = {
                    "first_ms": first,
                    "median_ms": med,
                    "p99_ms": detail["p99_ms"],
                    "answer_bytes": detail["body_bytes_per_request"],
                    "rss_start_mib": round(rss0, 1),
                    "rss_after_mib": round(rss_mib(gt.pid), 1),
                    "vmhwm_mib": round(rss_mib(gt.pid, "VmHWM"), 1),
                }
        if peer_ok:
            with Peer(env, base, os.path.join(tmp, f"peer-scale-{nrefs}")) as peer:
                first, med, detail = _timed(f"{peer.url(name)}/{REFS_PATH}", count)
                res["peer"] = {"first_ms": first, "median_ms": med, "p99_ms": detail["p99_ms"]}
        out["refs"][nrefs] = res
        on, off = res["cache on"], res["cache off"]
        log(
            f"info/refs with {nrefs:,} refs: cache on {on['median_ms']:.1f} ms (first "
            f"{on['first_ms']:.1f}), off {off['median_ms']:.1f} ms; RSS on {on['rss_after_mib']} MiB, "
            f"off {off['rss_after_mib']} MiB"
            + (f"; peer {res['peer']['median_ms']:.1f} ms" if "peer" in res else "")
        )
        what = f"scale: info/refs, {nrefs:,} refs ({on['answer_bytes'] / 2**20:.1f} MiB answer)"
        rows.append(
            Row(
                f"{what}: time per request, advert cache on vs off", on["median_ms"], "ms",
                off["median_ms"], "cache off", on["median_ms"] / off["median_ms"],
                note=f"median of {count} after a first request (on: {on['first_ms']:.1f} ms, fills "
                f"the cache; off: {off['first_ms']:.1f} ms); p99 on {on['p99_ms']:.1f} ms, off "
                f"{off['p99_ms']:.1f} ms",
            )
        )  # fmt: skip
        if "peer" in res:
            p = res["peer"]
            rows.append(
                Row(
                    f"{what}: time per request, advert cache on vs http-backend+nginx", on["median_ms"],
                    "ms", p["median_ms"], "peer", on["median_ms"] / p["median_ms"],
                    note=f"cache off vs peer {off['median_ms'] / p['median_ms']:.3f}x",
                )
            )  # fmt: skip
        rows.append(
            Row(
                f"{what}: server RSS after, advert cache on vs off", on["rss_after_mib"], "MiB",
                off["rss_after_mib"], "cache off", on["rss_after_mib"] / off["rss_after_mib"],
                note=f"at start {on['rss_start_mib']} MiB; VmHWM on {on['vmhwm_mib']} MiB, off "
                f"{off['vmhwm_mib']} MiB",
            )
        )  # fmt: skip
    if not peer_ok and args.scale_refs:
        rows.append(
            Row("scale: info/refs via git http-backend+nginx", None, "ms", result="skipped", note=peer_why)
        )
    for nrepos in args.scale_repos:
        root = ensure_many_repos(env, args.workdir, nrepos)
        count = 20
        logf = os.path.join(tmp, f"gittornado-scale-index-{nrepos}.log")
        with GitTornado(code, root, logf, extra=["--no-pack-cache"]) as gt:
            rss0 = rss_mib(gt.pid)
            first, med, detail = _timed(gt.url(""), count)
            res = {
                "cold_ms": first,
                "warm_median_ms": med,
                "warm_p99_ms": detail["p99_ms"],
                "page_bytes": detail["body_bytes_per_request"],
                "rss_start_mib": round(rss0, 1),
                "rss_after_mib": round(rss_mib(gt.pid), 1),
                "vmhwm_mib": round(rss_mib(gt.pid, "VmHWM"), 1),
            }
        out["index"][nrepos] = res
        log(
            f"index page with {nrepos:,} repos: cold {first:.1f} ms, warm {med:.1f} ms, RSS "
            f"{res['rss_after_mib']} MiB"
        )
        what = f"scale: index page GET /, {nrepos:,} repos"
        rows.append(
            Row(
                f"{what}: time per request, warm vs cold (first after start)", med, "ms", first,
                "cold", med / first if first else None,
                note=f"warm: median of {count}, p99 {detail['p99_ms']:.1f} ms; page "
                f"{res['page_bytes'] / 1024:.0f} KiB (100 rows)",
            )
        )  # fmt: skip
        rows.append(
            Row(
                f"{what}: server RSS after", res["rss_after_mib"], "MiB", res["rss_start_mib"],
                "at start", res["rss_after_mib"] / res["rss_start_mib"],
                note=f"VmHWM {res['vmhwm_mib']} MiB",
            )
        )  # fmt: skip
