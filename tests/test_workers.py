"""``--processes N`` supervision and SIGHUP, on the real ``gittornado`` command.

A worker that dies is replaced without touching the other workers' transfers;
SIGHUP makes every worker re-read its access file at once and stops nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import git, rev, wait_for, write_access_file
from test_proxies import Backend

BIG_MIB = 20


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _children(pid: int) -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid}


def _upload_packs(fragment: str) -> list[int]:
    """Pids of git upload-pack processes sending a pack (not advertising) for ``fragment``."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "upload-pack" in cmd and fragment in cmd and "--advertise-refs" not in cmd:
            found.append(int(p))
    return found


@pytest.fixture
def big_repo(gitbase, tmp_path) -> Path:
    """gitbase/big.git: one commit with BIG_MIB MiB of incompressible data, packed."""
    work = tmp_path / "bigwork"
    git("init", "-q", str(work))
    with open(work / "big.bin", "wb") as fh:
        for _ in range(BIG_MIB):
            fh.write(os.urandom(1024 * 1024))
    git("add", "big.bin", cwd=work)
    git("commit", "-q", "-m", "big", cwd=work)
    repo = gitbase / "big.git"
    git("clone", "-q", "--bare", str(work), str(repo))
    git("repack", "-adq", cwd=repo)
    return repo


def test_killed_worker_is_replaced_and_others_transfers_survive(gitbase, tmp_path, big_repo):
    server = Backend(gitbase, tmp_path, "--processes", "2")
    try:
        url = f"http://127.0.0.1:{server.port}"
        workers = wait_for(lambda: len(_children(server.proc.pid)) == 2 and _children(server.proc.pid))
        clone = None
        for attempt in range(3):
            # A clone paused (SIGSTOP on its whole session) while its upload-pack is
            # sending: the transfer stays open in one worker while the other is killed.
            dest = tmp_path / f"clone{attempt}"
            clone = subprocess.Popen(
                ["git", "clone", "-q", f"{url}/big", str(dest)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            packs = wait_for(
                lambda c=clone: _upload_packs("big.git") or c.poll() is not None,
                message="the clone's upload-pack",
            )
            os.killpg(clone.pid, signal.SIGSTOP)
            if clone.poll() is None and packs is not True:
                serving = {_ppid(p) for p in packs} & workers
                if serving:
                    break
            os.killpg(clone.pid, signal.SIGCONT)
            clone.wait(60)
        else:
            pytest.fail("could not catch a clone in flight")
        (serving_worker,) = serving
        (other,) = workers - serving
        os.kill(other, signal.SIGKILL)
        replaced = wait_for(
            lambda: (kids := _children(server.proc.pid)) - workers and len(kids) == 2 and kids,
            message="a new worker",
        )
        assert serving_worker in replaced and other not in replaced
        os.killpg(clone.pid, signal.SIGCONT)
        _, err = clone.communicate(timeout=60)
        assert clone.returncode == 0, err.decode(errors="replace")
        assert rev(dest, "HEAD") == rev(big_repo, "HEAD")
        git("fsck", "--no-progress", cwd=dest)
        for _ in range(4):  # both workers, the new one included, answer
            git("ls-remote", f"{url}/app")
        assert f"worker {other} died" in server.text()
        assert "starting another" in server.text()
    finally:
        if clone is not None and clone.poll() is None:
            os.killpg(clone.pid, signal.SIGCONT)
            clone.kill()
        server.stop()
    assert "Traceback" not in server.text()


def test_workers_dying_too_often_stop_the_supervisor(gitbase, tmp_path):
    server = Backend(gitbase, tmp_path, "--processes", "2")
    try:
        killed = set()

        # Kill workers as they appear: after two restarts within 10 s it gives up.
        def kill_one():
            if server.proc.poll() is not None:
                return True
            for pid in _children(server.proc.pid) - killed:
                killed.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return False

        wait_for(kill_one, timeout=20, message="the supervisor to give up")
        assert server.proc.wait(10) == 1
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server._fh.close()
    text = server.text()
    assert "giving up" in text
    assert len([line for line in text.splitlines() if "giving up" in line]) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sighup_reloads_the_access_file(gitbase, tmp_path, processes):
    access = tmp_path / "acl.ini"
    write_access_file(access, {"alice": "pw"}, "alice = **=r\n")
    server = Backend(gitbase, tmp_path, "--accessfile", str(access), "--processes", processes)
    try:
        if processes == "2":
            wait_for(lambda: len(_children(server.proc.pid)) == 2, message="two workers")
        assert git("ls-remote", f"http://bob:pw2@127.0.0.1:{server.port}/app", check=False).returncode != 0
        write_access_file(access, {"alice": "pw", "bob": "pw2"}, "alice = **=r\nbob = **=r\n")
        server.proc.send_signal(signal.SIGHUP)
        want = int(processes)
        wait_for(
            lambda: server.text().count("SIGHUP: reloaded the access file") >= want,
            message="'reloaded' in every worker",
        )
        assert server.proc.poll() is None
        for _ in range(4):
            git("ls-remote", f"http://bob:pw2@127.0.0.1:{server.port}/app")
        # A broken file: refused, the last good one stays, the server goes on.
        access.write_text("[access]\nthis is not a rule\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: server.text().count("did not load") >= want, message="'did not load'")
        git("ls-remote", f"http://bob:pw2@127.0.0.1:{server.port}/app")
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert "Traceback" not in server.text()


def test_sighup_without_access_file(gitbase, tmp_path):
    server = Backend(gitbase, tmp_path)
    try:
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: no access file to reload" in server.text(), message="the SIGHUP line")
        git("ls-remote", f"http://127.0.0.1:{server.port}/app")
    finally:
        server.stop()
