"""The console command as users run it: a real process, real git, clean exit on signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import git, rev, wait_for


def start(args, cwd, module=False):
    cmd = [sys.executable, "-m", "gittornado"] if module else ["gittornado"]
    proc = subprocess.Popen(
        cmd + ["--address", "127.0.0.1", "--port", "0", *args],
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []

    def port():
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", line)
        if not line and proc.poll() is not None:
            raise AssertionError("server exited:\n" + "".join(lines))
        return m and int(m.group(1))

    return proc, wait_for(port, message="the server's 'serving' line")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        proc.kill() if proc.poll() is None else None


@pytest.mark.parametrize("module", [False, True])
def test_serves_current_directory_read_only(gitbase, tmp_path, module):
    proc, port = start([], cwd=gitbase, module=module)
    try:
        git("clone", "-q", f"http://127.0.0.1:{port}/app", str(tmp_path / "c"))
        assert rev(tmp_path / "c", "HEAD") == rev(gitbase / "app.git", "main")
        pushed = git(
            "push", f"http://127.0.0.1:{port}/app", "HEAD:refs/heads/x", cwd=tmp_path / "c", check=False
        )
        assert pushed.returncode != 0 and b"error: 403" in pushed.stderr
    finally:
        assert stop(proc) == 0
    assert "Traceback" not in proc.stderr.read()


def test_options_in_both_forms(gitbase, tmp_path):
    proc, port = start([f"--gitbase={gitbase}", "--prefix", "/git", "--realm=x"], cwd=tmp_path)
    try:
        git("ls-remote", f"http://127.0.0.1:{port}/git/team/app.git")
        assert git("ls-remote", f"http://127.0.0.1:{port}/team/app.git", check=False).returncode != 0
    finally:
        assert stop(proc) == 0


def test_sigint_exits_cleanly(gitbase):
    proc, _ = start([], cwd=gitbase)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0
    assert "Traceback" not in proc.stderr.read()


def test_bad_options_are_clear_errors(tmp_path):
    proc = subprocess.run(
        ["gittornado", "--gitbase", str(tmp_path / "nope"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    proc = subprocess.run(["gittornado", "--port", "x"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr


def test_processes_forks_workers(gitbase, tmp_path):
    proc, port = start(["--processes", "2"], cwd=gitbase)
    try:
        for _ in range(4):
            git("ls-remote", f"http://127.0.0.1:{port}/app")
        children = wait_for(
            lambda: [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == proc.pid],
            message="worker processes",
        )
        assert len(children) >= 2
    finally:
        assert stop(proc) == 0


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def test_server_py_example_serves(gitbase, tmp_path):
    import importlib.util
    import urllib.request

    from conftest import ServerThread

    path = os.path.join(os.path.dirname(__file__), "..", "server.py")
    spec = importlib.util.spec_from_file_location("example_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = ServerThread(module.make_app(str(gitbase)))
    try:
        git("ls-remote", f"{server.url}/app")  # the access-object routes
        git("ls-remote", f"{server.url}/legacy/app")  # the legacy config dict
        with urllib.request.urlopen(f"{server.url}/status") as resp:
            assert resp.read() == b'{"status": "ok"}'
        with urllib.request.urlopen(f"{server.url}/anything") as resp:
            assert resp.read().startswith(b"Your web UI here")
        work = tmp_path / "w"
        git("clone", "-q", f"{server.url}/app", str(work))
        denied = git("push", f"{server.url}/app", "HEAD:refs/heads/x", cwd=work, check=False)
        assert denied.returncode != 0
        git("push", "-q", f"http://me:secret@127.0.0.1:{server.port}/app", "HEAD:refs/heads/x", cwd=work)
        assert rev(gitbase / "app.git", "x") == rev(work, "HEAD")
    finally:
        server.stop()


def test_https_with_certfile(gitbase, tmp_path):
    """--certfile/--keyfile serve HTTPS (fetch answers then go through pipes, not the socket)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [
            "gittornado",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
        ],
        cwd=gitbase,
        stderr=subprocess.PIPE,
        text=True,
    )

    def port():
        line = proc.stderr.readline()
        m = re.search(r"serving .* on https://127\.0\.0\.1:(\d+)/", line)
        return m and int(m.group(1))

    try:
        port = wait_for(port, message="the server's 'serving' line")
        git("-c", "http.sslVerify=false", "clone", "-q", f"https://127.0.0.1:{port}/app", str(tmp_path / "c"))
        assert rev(tmp_path / "c", "HEAD") == rev(gitbase / "app.git", "main")
    finally:
        assert stop(proc) == 0


def test_login_throttle_options(gitbase, tmp_path):
    import base64
    import http.client

    from passlib.hash import bcrypt

    access = tmp_path / "access.ini"
    access.write_text(f"[users]\nalice = {bcrypt.using(rounds=4).hash('pw')}\n[access]\nalice = **=rw\n")
    proc, port = start(
        ["--accessfile", str(access), "--login-failures", "2", "--login-block", "30"], cwd=gitbase
    )
    try:

        def status(password):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            token = base64.b64encode(f"alice:{password}".encode()).decode()
            conn.request(
                "GET", "/app/info/refs?service=git-upload-pack", headers={"Authorization": f"Basic {token}"}
            )
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status, resp.headers.get("Retry-After")

        assert status("pw") == (200, None)
        assert status("wrong")[0] == 401
        assert status("wrong")[0] == 401
        code, retry = status("pw")
        assert code == 429 and 0 < int(retry) <= 30
    finally:
        assert stop(proc) == 0
