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


def test_startup_errors_are_one_line_and_status_2(tmp_path):
    def run(*args):
        return subprocess.run(
            ["gittornado", "--gitbase", str(tmp_path), "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    for args, message in [
        (["--certfile", str(tmp_path / "no.pem"), "--keyfile", str(tmp_path / "no.key")], "--certfile"),
        (["--certfile", str(tmp_path / "no.pem")], "--certfile and --keyfile go together"),
        (["--processes", "-1"], "--processes must be >= 0"),
        (["--prefix", "git"], "--prefix must be a plain absolute path"),
        (["--log-file", str(tmp_path / "no" / "such.log")], "cannot log to"),
    ]:
        proc = run(*args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_log_file_and_sizes_with_units(gitbase, tmp_path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        ["gittornado", "--address", "127.0.0.1", "--port", "0", "--log-file", str(log)]
        + ["--max-push-size", "1M", "--max-upload-pack-request", "65536"],
        cwd=gitbase,
        stderr=subprocess.PIPE,
        text=True,
    )

    def port():
        if proc.poll() is not None:
            raise AssertionError("server exited:\n" + proc.stderr.read())
        m = log.exists() and re.search(
            r"gittornado\[\d+\] INFO .*serving .* on http://127\.0\.0\.1:(\d+)/", log.read_text()
        )
        return m and int(m.group(1))

    try:
        port = wait_for(port, message="the 'serving' line in the log file")
        git("ls-remote", f"http://127.0.0.1:{port}/app")
    finally:
        assert stop(proc) == 0
    assert proc.stderr.read() == ""  # every line went to the file
    assert "stopped" in log.read_text()


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


def _test_ca(tmp_path):
    """A CA made in the test and a server certificate it signed for IP 127.0.0.1: (ca, cert, key)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert, key, csr = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr"
    ext = tmp_path / "ext.cnf"
    ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=gittornado test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        ca_key,
        "-out",
        ca,
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext,
        "-out",
        cert,
    )
    return ca, cert, key


PYGIT2_CLONE = """
import sys, pygit2
ca, url, dest = sys.argv[1:]
pygit2.settings.set_ssl_cert_locations(ca, None)
repo = pygit2.clone_repository(url, dest)
print(repo.head.target)
"""


def test_https_libgit2_clone_and_git_push(gitbase, tmp_path):
    """Over HTTPS verified against a CA made here: a pygit2 (libgit2) clone and a git push."""
    pytest.importorskip("pygit2")
    from conftest import write_access_file

    ca, cert, key = _test_ca(tmp_path)
    access = write_access_file(tmp_path / "acl.ini", {"alice": "pw"}, "alice = **=rw\n* = **=r\n")
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                "gittornado",
                "--address",
                "127.0.0.1",
                "--port",
                "0",
                "--accessfile",
                access,
                "--certfile",
                str(cert),
                "--keyfile",
                str(key),
            ],
            cwd=gitbase,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )

    def port():
        if proc.poll() is not None:
            raise AssertionError("server exited:\n" + log.read_text())
        m = re.search(r"serving .* on https://127\.0\.0\.1:(\d+)/", log.read_text())
        return m and int(m.group(1))

    try:
        port = wait_for(port, message="the server's 'serving' line")
        url = f"https://127.0.0.1:{port}/app"
        # set_ssl_cert_locations is process-wide: in a child process, not in pytest's.
        out = subprocess.run(
            [sys.executable, "-c", PYGIT2_CLONE, str(ca), url, str(tmp_path / "lg")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == rev(gitbase / "app.git", "main")
        # Without the CA the same clone is refused: the verification is real.
        bad = subprocess.run(
            [
                sys.executable,
                "-c",
                PYGIT2_CLONE,
                str(cert.parent / "nothing.pem"),
                url,
                str(tmp_path / "lg2"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0
        work = tmp_path / "w"
        # GIT_SSL_CAINFO (set on some hosts) would override http.sslCAInfo: point both at the CA.
        env = {"GIT_SSL_CAINFO": str(ca)}
        git("-c", f"http.sslCAInfo={ca}", "clone", "-q", url, str(work), env=env)
        (work / "tls.txt").write_text("over https\n")
        git("add", "tls.txt", cwd=work)
        git("commit", "-q", "-m", "tls", cwd=work)
        push_url = f"https://alice:pw@127.0.0.1:{port}/app"
        git("-c", f"http.sslCAInfo={ca}", "push", "-q", push_url, "HEAD:refs/heads/tls", cwd=work, env=env)
        assert rev(gitbase / "app.git", "tls") == rev(work, "HEAD")
    finally:
        assert stop(proc) == 0
    assert "Traceback" not in log.read_text()
