"""``/-/health`` and ``/-/metrics``: the server's own URLs, never a repository."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from conftest import git


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if all(part in got.split(",") for part in want.split(",") if part):
                total += float(m.group(3))
    return total


def test_health_ok(serve):
    server = serve()
    status, ctype, body = get(f"{server.url}/-/health")
    assert (status, body) == (200, "ok\n") and ctype.startswith("text/plain")


def test_health_503_when_git_cannot_run(serve, tmp_path):
    server = serve(git=str(tmp_path / "no-such-git"))
    status, _, body = get(f"{server.url}/-/health")
    assert status == 503 and "cannot run git" in body


def test_health_503_when_root_unreadable(serve, tmp_path):
    server = serve(gitbase=str(tmp_path / "gone"), index=False)
    status, _, body = get(f"{server.url}/-/health")
    assert status == 503 and "repository root" in body


def test_under_prefix_and_reserved(serve, gitbase):
    server = serve(prefix="/git")
    assert get(f"{server.url}/git/-/health")[0] == 200
    assert get(f"{server.url}/-/health")[0] == 404
    # A repository named "-" is never served: /-/ is the server's own.
    import shutil

    shutil.copytree(gitbase / "app.git", gitbase / "-" / "x.git")
    assert get(f"{server.url}/git/-/x/info/refs?service=git-upload-pack")[0] == 404
    assert git("ls-remote", f"{server.url}/git/-/x", check=False).returncode != 0


def test_metrics_count_requests_and_runs(serve, tmp_path):
    pytest.importorskip("prometheus_client")
    server = serve()
    _, _, before = get(f"{server.url}/-/metrics")
    git("clone", "-q", f"{server.url}/app", str(tmp_path / "c"))
    assert get(f"{server.url}/nope/info/refs?service=git-upload-pack")[0] == 404
    status, ctype, text = get(f"{server.url}/-/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    runs = dict(service="git-upload-pack", transport="http", result="ok")
    assert (
        sample(text, "gittornado_git_runs_total", **runs)
        >= sample(before, "gittornado_git_runs_total", **runs) + 2
    )  # advertisement + fetch
    assert (
        sample(text, "gittornado_http_requests_total", status="404")
        >= sample(before, "gittornado_http_requests_total", status="404") + 1
    )
    assert sample(text, "gittornado_git_sent_bytes_total", service="git-upload-pack") > sample(
        before, "gittornado_git_sent_bytes_total", service="git-upload-pack"
    )
    assert "gittornado_git_run_duration_seconds_bucket" in text
    assert "gittornado_git_processes_running" in text


def test_metrics_add_up_across_worker_processes(gitbase, tmp_path):
    """With --processes, any worker's /-/metrics counts every worker's requests."""
    pytest.importorskip("prometheus_client")
    from test_proxies import Backend

    server = Backend(gitbase, tmp_path, "--processes", "2")
    try:
        url = f"http://127.0.0.1:{server.port}"
        for _ in range(6):
            git("ls-remote", f"{url}/app")
        for _ in range(4):  # whichever worker answers
            text = get(f"{url}/-/metrics")[2]
            assert sample(text, "gittornado_git_runs_total", service="git-upload-pack", result="ok") >= 6
            assert sample(text, "gittornado_http_requests_total", status="200") >= 6
    finally:
        server.stop()


def test_systemd_unit_verifies(tmp_path):
    """conf/gittornado.service passes ``systemd-analyze verify`` (our binary's path put in)."""
    import shutil
    import subprocess
    from pathlib import Path

    analyze, binary = shutil.which("systemd-analyze"), shutil.which("gittornado")
    if analyze is None or binary is None:
        pytest.skip("systemd-analyze (or the gittornado command) is not installed")
    unit = (Path(__file__).resolve().parent.parent / "conf" / "gittornado.service").read_text()
    assert "--processes 0" in unit and "--shutdown-grace" in unit
    path = tmp_path / "gittornado.service"
    path.write_text(unit.replace("/usr/local/bin/gittornado", binary))
    done = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "gittornado.service" not in done.stderr, done.stderr


def test_metrics_report_the_caches(serve, tmp_path):
    """The advertisement cache's hits and the pack cache's entries show on /-/metrics."""
    pytest.importorskip("prometheus_client")
    from gittornado.engine.advertcache import AdvertCache
    from gittornado.engine.packcache import PackCache

    server = serve(advert_cache=AdvertCache(margin=0), pack_cache=PackCache(str(tmp_path / "packs")))
    for name in ("c1", "c2"):
        git("clone", "-q", f"{server.url}/app", str(tmp_path / name))
    text = get(f"{server.url}/-/metrics")[2]
    assert sample(text, "gittornado_advert_cache_hits_total") >= 1
    assert sample(text, "gittornado_advert_cache_entries") >= 1
    assert sample(text, "gittornado_pack_cache_entries") == 1
    assert sample(text, "gittornado_pack_cache_bytes") > 0
