"""``info/refs?service=git-upload-pack`` under load: requests per second and latency.

The same client (``bench.loadgen``: ``--connections`` keep-alive HTTP/1.1 connections, a
closed loop, run as its own process so its CPU is its own) against gittornado with the
advertisement cache, gittornado with ``--advert-cache-size 0``, and ``git http-backend``
behind nginx + fcgiwrap (nginx writing an access log, as gittornado does). Protocol v0 (no
``Git-Protocol`` header): the answer is the ref advertisement itself. Each case runs
``--refs-seconds`` per round after a short warm-up, in two rounds in opposite orders (one
with ``--quick``); the figures add the rounds up. Then the same (half as long) for the v2
``ls-refs`` POST that ``git fetch`` sends next (informational rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

from bench.common import ROOT_DIR, Env, log
from bench.fixtures import ensure_repo
from bench.loadgen import percentile
from bench.measure import process_tree, tree_cpu_seconds, wait_tree_quiet
from bench.report import Row, pf
from bench.servers import GitTornado, Peer, ServerCode
from bench.storm import peer_or_reason

RPS_TARGET = 2.0  #: gittornado (advert cache) requests per second vs http-backend's
P99_TARGET = 1.0  #: its p99 latency below http-backend's

EXPECT = "001e# service=git-upload-pack\n"
REFS_PATH = "info/refs?service=git-upload-pack"


def _pkt(text: str) -> bytes:
    data = text.encode()
    return b"%04x" % (len(data) + 4) + data


#: What ``git fetch`` (protocol v2) asks first: the branches, tags and HEAD.
LS_REFS_BODY = (
    _pkt("command=ls-refs\n") + _pkt("agent=git/bench-loadgen\n") + _pkt("object-format=sha1\n")
    + b"0001" + _pkt("peel\n") + _pkt("symrefs\n") + _pkt("unborn\n") + _pkt("ref-prefix HEAD\n")
    + _pkt("ref-prefix refs/heads/\n") + _pkt("ref-prefix refs/tags/\n") + b"0000"
)  # fmt: skip
LS_REFS_HEADERS = [
    "Content-Type: application/x-git-upload-pack-request",
    "Accept: application/x-git-upload-pack-result",
    "Git-Protocol: version=2",
]


def loadgen(
    url: str,
    connections: int,
    seconds: float = 0,
    count: int = 0,
    warmup: float = 0,
    body: bytes = b"",
    headers: list[str] | tuple[str, ...] = (),
) -> dict:
    """``python -m bench.loadgen`` in its own process; its JSON result.

    A GET of ``.../info/refs`` must answer the upload-pack advertisement; ``body``: a POST.
    """
    argv = [sys.executable, "-m", "bench.loadgen", url, "-c", str(connections), "--latencies"]
    if url.split("?")[0].endswith("/info/refs") and not body:
        argv += ["--expect", EXPECT]
    argv += ["-n", str(count)] if count else ["-d", str(seconds)]
    if warmup:
        argv += ["--warmup", str(warmup)]
    for h in headers:
        argv += ["-H", h]
    env = dict(os.environ, PYTHONPATH=ROOT_DIR)
    with tempfile.NamedTemporaryFile(prefix="loadgen-body-") as fh:
        if body:
            fh.write(body)
            fh.flush()
            argv += ["--post-file", fh.name]
        res = subprocess.run(argv, env=env, capture_output=True, timeout=900, cwd=ROOT_DIR)
    try:
        return json.loads(res.stdout)
    except ValueError:
        err = res.stderr.decode(errors="replace")[-800:]
        raise RuntimeError(f"loadgen failed ({res.returncode}): {err}") from None


def measured_load(url: str, roots: list[int], connections: int, **kw: object) -> dict:
    """:func:`loadgen` with the server trees' CPU (git included) read around it."""
    keep = len(process_tree(roots))
    cpu0 = tree_cpu_seconds(roots)
    res = loadgen(url, connections, **kw)  # type: ignore[arg-type]
    wait_tree_quiet(roots, keep)
    res["server_cpu_s"] = round(tree_cpu_seconds(roots) - cpu0, 3)
    return res


def combine(parts: list[dict]) -> dict:
    """Rounds added up: rps over the summed time, percentiles over all their requests."""
    lat = sorted(x for p in parts for x in p.pop("latencies_ms"))
    n = sum(p["requests"] for p in parts)
    secs = sum(p["seconds"] for p in parts)
    cpu = sum(p["server_cpu_s"] for p in parts)
    return {
        "requests": n,
        "errors": sum(p["errors"] for p in parts),
        "seconds": round(secs, 3),
        "rps": round(n / secs, 1) if secs else 0.0,
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": lat[-1] if lat else None,
        "server_cpu_ms_per_request": round(cpu / n * 1000, 3) if n else None,
        "client_cpu_share": max(p["client_cpu_share"] for p in parts),
        "rounds": parts,
    }


def run_refs_rps(
    env: Env, args: argparse.Namespace, tmp: str, code: ServerCode, rows: list[Row], raw: dict
) -> None:
    repo = ensure_repo(env, args.workdir, args.medium_mib, args.medium_commits, args.regen)
    name, repos_dir = os.path.basename(repo), os.path.dirname(repo)
    nrefs = len(env.out("--git-dir", repo, "for-each-ref").splitlines())
    peer_ok, peer_why = peer_or_reason(args)
    c = args.connections
    log(f"info/refs load: {name} ({nrefs} refs), {c} keep-alive connections, {args.refs_seconds}s per case")
    results: dict[str, list[dict]] = {}
    ls_results: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        on_log = os.path.join(tmp, "gittornado-refs-on.log")
        on = stack.enter_context(GitTornado(code, repos_dir, on_log, extra=["--no-pack-cache"]))
        off = stack.enter_context(
            GitTornado(
                code, repos_dir, os.path.join(tmp, "gittornado-refs-off.log"),
                extra=["--no-pack-cache", "--advert-cache-size", "0"],
            )
        )  # fmt: skip
        cases: list[tuple[str, str, list[int]]] = [
            ("advert cache", on.url(name), [on.pid]),
            ("no advert cache", off.url(name), [off.pid]),
        ]
        if peer_ok:
            # With an access log, like gittornado's default (one line per request).
            peer_dir = os.path.join(tmp, "peer-refs")
            peer = stack.enter_context(Peer(env, repos_dir, peer_dir, children=2 * c, access_log=True))
            cases.append(("peer", peer.url(name), peer.pids))
        rounds = 1 if args.quick else 2
        for request in ("info/refs", "ls-refs"):
            for rnd in range(rounds):
                for label, url, roots in cases if rnd % 2 == 0 else cases[::-1]:
                    if request == "info/refs":
                        kw: dict = {"seconds": args.refs_seconds, "warmup": 0.3}
                        target = f"{url}/{REFS_PATH}"
                    else:
                        kw = {"seconds": args.refs_seconds / 2, "warmup": 0.3}
                        kw.update(body=LS_REFS_BODY, headers=LS_REFS_HEADERS)
                        target = f"{url}/git-upload-pack"
                    res = measured_load(target, roots, c, **kw)
                    (results if request == "info/refs" else ls_results).setdefault(label, []).append(res)
                    log(
                        f"  {request}, {label}: {res['rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 "
                        f"{res['p99_ms']:.1f} ms, errors {res['errors']}, client CPU "
                        f"{res['client_cpu_share']:.2f} of a core"
                    )
    summary = {label: combine(parts) for label, parts in results.items()}
    ls_summary = {label: combine(parts) for label, parts in ls_results.items()}
    raw["info_refs_load"] = {"repo": name, "refs": nrefs, "connections": c, "cases": summary}
    raw["ls_refs_load"] = {"repo": name, "refs": nrefs, "connections": c, "cases": ls_summary}
    what = f"info/refs ({nrefs} refs, v0, {c} keep-alive conns)"
    errors = sum(s["errors"] for s in summary.values())
    rows.append(Row(f"{what}: errors", errors, "requests", target="0", result=pf(errors == 0)))
    peer_s = summary.get("peer")
    for label in ("advert cache", "no advert cache"):
        s = summary[label]
        target = label == "advert cache"
        note = (
            f"{s['requests']} requests in {s['seconds']:.1f}s; p50 {s['p50_ms']:.2f} ms; server CPU "
            f"{s['server_cpu_ms_per_request']} ms/request; client CPU up to {s['client_cpu_share']:.2f} "
            "of a core"
        )
        if peer_s is None:
            rows.append(Row(f"{what}: gittornado {label}, requests/s", s["rps"], "req/s", note=note))
            continue
        note += (
            f"; peer p50 {peer_s['p50_ms']:.2f} ms, client CPU up to {peer_s['client_cpu_share']:.2f} "
            "of a core (its server CPU is not measured here: no accounting wrapper in its way)"
        )
        r = s["rps"] / peer_s["rps"] if peer_s["rps"] else None
        rows.append(
            Row(
                f"{what}: gittornado {label} vs http-backend+nginx, requests/s", s["rps"], "req/s",
                peer_s["rps"], "peer", r, f">= {RPS_TARGET:.1f}x" if target else "info",
                pf(r is not None and r >= RPS_TARGET) if target else "info", note=note,
            )
        )  # fmt: skip
        r = s["p99_ms"] / peer_s["p99_ms"] if peer_s["p99_ms"] else None
        rows.append(
            Row(
                f"{what}: gittornado {label} vs http-backend+nginx, p99 latency", s["p99_ms"], "ms",
                peer_s["p99_ms"], "peer", r, f"< {P99_TARGET:.1f}x" if target else "info",
                pf(r is not None and r < P99_TARGET) if target else "info",
            )
        )  # fmt: skip
    if peer_s is None:
        rows.append(Row(f"{what}: git http-backend+nginx", None, "req/s", result="skipped", note=peer_why))
    what = f"ls-refs (v2 POST, {nrefs} refs, {c} keep-alive conns)"
    errors = sum(s["errors"] for s in ls_summary.values())
    rows.append(Row(f"{what}: errors", errors, "requests", target="0", result=pf(errors == 0)))
    peer_s = ls_summary.get("peer")
    for label in ("advert cache", "no advert cache"):
        s = ls_summary[label]
        note = (
            f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms; server CPU "
            f"{s['server_cpu_ms_per_request']} ms/request"
        )
        if peer_s is None:
            rows.append(Row(f"{what}: gittornado {label}, requests/s", s["rps"], "req/s", note=note))
            continue
        rows.append(
            Row(
                f"{what}: gittornado {label} vs http-backend+nginx, requests/s", s["rps"], "req/s",
                peer_s["rps"], "peer", s["rps"] / peer_s["rps"] if peer_s["rps"] else None,
                note=f"{note}; peer p50 {peer_s['p50_ms']:.2f} ms, p99 {peer_s['p99_ms']:.2f} ms",
            )
        )  # fmt: skip
