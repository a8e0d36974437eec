"""Graceful shutdown of the real ``gittornado`` command, and quarantines left by crashes.

SIGTERM must not cut a push short: the pusher would see a reset and git's
quarantine (tens of MiB) would stay behind. These tests signal the server in
the middle of real transfers.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import git, git_processes, refs, rev, wait_for, write_access_file
from test_proxies import Backend

PUSH_MIB = 20


@pytest.fixture
def accessfile(tmp_path):
    return write_access_file(tmp_path / "acl.ini", {"alice": "pw"}, "alice = **=rw\n* = **=r\n")


def _pushing(gitbase: Path) -> bool:
    """receive-pack is taking a pack (not just advertising) for a repository under ``gitbase``."""
    return any("--advertise-refs" not in cmd for cmd in git_processes(str(gitbase)))


def _quarantines(repo: Path) -> list[str]:
    return [n for n in os.listdir(repo / "objects") if n.startswith("tmp_")]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_mid_push_lets_it_finish(gitbase, tmp_path, accessfile, processes):
    server = Backend(gitbase, tmp_path, "--accessfile", accessfile, "--processes", processes)
    work = tmp_path / "w"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    with open(work / "big.bin", "wb") as fh:
        for _ in range(PUSH_MIB):
            fh.write(os.urandom(1024 * 1024))
    git("add", "big.bin", cwd=work)
    git("commit", "-q", "-m", "big", cwd=work)
    push = subprocess.Popen(
        ["git", "push", f"http://alice:pw@127.0.0.1:{server.port}/app", "HEAD:refs/heads/big"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _pushing(gitbase) or push.poll() is not None, message="the push")
        assert push.poll() is None, "the push ended before the signal: make it bigger"
        server.proc.send_signal(signal.SIGTERM)
        _, err = push.communicate(timeout=120)
        assert push.returncode == 0, err.decode(errors="replace")
        assert server.proc.wait(60) == 0
    finally:
        if push.poll() is None:
            push.kill()
        server.stop() if server.proc.poll() is None else server._fh.close()
    assert rev(gitbase / "app.git", "big") == rev(work, "HEAD")
    assert "waiting up to 30s" in server.text()
    assert _quarantines(gitbase / "app.git") == []
    assert "Traceback" not in server.text()


def test_stuck_push_is_stopped_at_the_grace_period(gitbase, tmp_path, accessfile):
    server = Backend(gitbase, tmp_path, "--accessfile", accessfile, "--shutdown-grace", "1")
    repo = gitbase / "app.git"
    before = refs(repo)
    old = before["refs/heads/main"]
    # Half of a real pack: git checks it as it comes, then waits for the rest.
    work = tmp_path / "w"
    git("clone", "-q", str(repo), str(work))
    (work / "blob.bin").write_bytes(os.urandom(512 * 1024))
    git("add", "blob.bin", cwd=work)
    git("commit", "-q", "-m", "x", cwd=work)
    new = rev(work, "HEAD")
    pack = git("pack-objects", "--revs", "--stdout", "-q", cwd=work, input=f"{new}\n^{old}\n".encode()).stdout
    token = base64.b64encode(b"alice:pw").decode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(
            b"POST /app/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Basic " + token.encode() + b"\r\n"
            b"Content-Type: application/x-git-receive-pack-request\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        command = f"{old} {new} refs/heads/stuck\0report-status\n".encode()
        body = b"%04x" % (len(command) + 4) + command + b"0000" + pack[: len(pack) // 2]
        sock.sendall(b"%x\r\n" % len(body) + body + b"\r\n")
        wait_for(lambda: _quarantines(repo) and _pushing(gitbase), message="git's quarantine")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        took = time.monotonic() - started
    finally:
        sock.close()
        server.stop() if server.proc.poll() is None else server._fh.close()
    assert 1.0 <= took < 10, took
    assert refs(repo) == before
    assert _quarantines(repo) == []
    assert not git_processes(str(gitbase))
    assert "stopping 1 git runs" in server.text()


def test_stale_quarantines_are_removed_at_start(gitbase, tmp_path):
    objects = gitbase / "team/app.git/objects"
    stale, fresh = objects / "tmp_objdir-incoming-dead", objects / "tmp_objdir-incoming-live"
    for d in (stale, fresh):
        (d / "pack").mkdir(parents=True)
        (d / "pack" / "tmp_pack_x").write_bytes(b"PACK")
    old = time.time() - 7200
    for path in (stale / "pack" / "tmp_pack_x", stale / "pack", stale):
        os.utime(path, (old, old))
    server = Backend(gitbase, tmp_path)
    try:
        assert not stale.exists()
        assert fresh.exists()  # may belong to a push still running (another host)
        assert "removed a push quarantine left behind" in server.text()
    finally:
        server.stop()
