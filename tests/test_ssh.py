"""``gittornado-shell`` behind a real sshd: what the contract suite does not cover.

The transport-neutral rows (clone, fetch, push, refusals, interrupted push) run
over SSH in ``test_contract.TestSSH``; here: the URL forms, protocol v2 over
SSH, ``git archive --remote``, every refused command form end to end, the
interactive-login greeting, the hook environment and audit line, and a forced
command that finds git with no PATH at all.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile

import pytest
from conftest import git, git_processes, rev, write_access_file
from sshd_server import shell_argv, sshd  # noqa: F401  (the fixture)

RULES = "alice = **=rw\nbob = app=r, private=r\n* = public/*=r\n"


@pytest.fixture
def keys(sshd, gitbase, tmp_path):  # noqa: F811
    """alice, bob and carol's keys, with forced commands under the contract's access rules."""
    acl = write_access_file(tmp_path / "acl.ini", {}, RULES)
    log = tmp_path / "shell.log"
    base = ["--gitbase", str(gitbase), "--accessfile", acl, "--log-file", str(log)]
    sshd.authorize({name: [*base, name] for name in ("alice", "bob", "carol")})
    sshd.log_file = log
    return sshd


def _commit(tmp_path, gitbase, name="new.txt"):
    work = tmp_path / f"work-{name}"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / name).write_text("new\n")
    git("add", name, cwd=work)
    git("commit", "-qm", f"add {name}", cwd=work)
    return work


@pytest.mark.parametrize(
    "form, path", [("ssh", "app.git"), ("ssh", "~/app"), ("scp", "app.git"), ("scp", "/team/app.git")]
)
def test_clone_every_url_form(keys, gitbase, tmp_path, form, path):
    dest = tmp_path / "clone"
    git("clone", "-q", keys.url(path, form=form), str(dest), env=keys.env("alice"))
    repo = "team/app.git" if "team" in path else "app.git"
    assert rev(dest, "HEAD") == rev(gitbase / repo, "main")


def test_push_scp_like_with_audit_line_and_hook_environment(keys, gitbase, tmp_path):
    upstream = gitbase / "app.git"
    seen = tmp_path / "hook-env"
    hook = upstream / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nenv > '{seen}'\n")
    hook.chmod(0o755)
    work = _commit(tmp_path, gitbase)
    # v1: git never asks for v2 on a push (receive-pack has no v2), but says so in GIT_PROTOCOL.
    git(
        "-c",
        "protocol.version=1",
        "push",
        "-q",
        keys.url("app.git", form="scp"),
        "main",
        cwd=work,
        env=keys.env("alice"),
    )
    assert rev(upstream, "main") == rev(work, "HEAD")
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["REMOTE_USER"] == env["GITTORNADO_USER"] == "alice"
    assert env["GITTORNADO_REPO"] == "app"
    assert env["GITTORNADO_TRANSPORT"] == "ssh"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["GIT_PROTOCOL"] == "version=1"  # kept from sshd's AcceptEnv
    audit = [line for line in keys.log_file.read_text().splitlines() if "gittornado.audit" in line]
    assert len(audit) == 1, audit  # the clone went over the file system
    # git read the push itself (in=-); its answer passed through the run (out=N).
    assert re.search(
        r"user=alice addr=127\.0\.0\.1 repo=app service=git-receive-pack protocol=v1 "
        r"transport=ssh in=- out=[1-9]\d* .*exit=0 result=ok\Z",
        audit[0],
    ), audit


def test_protocol_v2_over_ssh(keys, tmp_path):
    trace = tmp_path / "trace"
    out = git(
        "-c",
        "protocol.version=2",
        "ls-remote",
        keys.url("app.git"),
        env={**keys.env("bob"), "GIT_TRACE_PACKET": str(trace)},
    ).stdout.decode()
    assert "refs/heads/main" in out
    assert "ls-remote< version 2" in trace.read_text()  # the server answered in v2
    assert "protocol=v2 transport=ssh" in keys.log_file.read_text()


def test_git_archive_remote(keys, gitbase):
    proc = git(
        "archive", f"--remote={keys.url('app.git')}", "--format=tar", "main", "hello.txt", env=keys.env("bob")
    )
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.extractfile("hello.txt").read() == b"hello again\n"


def test_archive_of_unreadable_repository_is_not_found(keys):
    proc = git("archive", f"--remote={keys.url('team/app.git')}", "main", env=keys.env("bob"), check=False)
    assert proc.returncode != 0
    assert b"gittornado-shell: repository not found" in proc.stderr


#: Refused SSH_ORIGINAL_COMMAND forms, end to end (one of each kind; test_services has them all).
#: MARKER is replaced by a file that must not exist afterwards: nothing may run.
REFUSED = [
    "sh -c 'touch MARKER'",  # another command
    "git-upload-pack --upload-pack='touch MARKER' app",  # option injection
    "git-upload-pack 'app.git'; touch MARKER",  # command separator
    "git-upload-pack '$(touch MARKER)'",  # command substitution
    "git-upload-pack 'app.git'\ntouch MARKER",  # newline
    "git-upload-pack '../repos/app.git'",  # escaping the root
]


@pytest.mark.parametrize("command", REFUSED)
def test_refused_command(keys, tmp_path, command):
    marker = tmp_path / "marker"
    proc = keys.run("alice", command.replace("MARKER", str(marker)))
    assert proc.returncode == 128, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gittornado-shell: "), lines
    assert proc.stdout == b""
    assert not marker.exists()
    assert not git_processes(str(tmp_path))


def test_unreadable_and_missing_repositories_read_the_same(keys):
    refused = keys.run("carol", "git-upload-pack '/private.git'")
    missing = keys.run("carol", "git-upload-pack '/nope.git'")
    assert refused.returncode == missing.returncode == 128
    assert refused.stderr == missing.stderr == b"gittornado-shell: repository not found\n"


def test_reader_push_is_refused(keys):
    proc = keys.run("bob", "git-receive-pack 'app.git'")
    assert proc.returncode == 128
    assert proc.stderr == b"gittornado-shell: you may not push to this repository\n"


def test_interactive_login_greets_the_user(keys):
    proc = keys.run("bob", None)
    assert proc.returncode == 128
    text = proc.stderr.decode()
    assert "Hi bob!" in text and "no shell" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert listed == ["app", "private", "public/lib"]
    assert "Traceback" not in text


def test_malformed_git_protocol_is_refused(keys):
    proc = keys.run("bob", "git-upload-pack 'app.git'", options=("-o", "SetEnv=GIT_PROTOCOL=version=2;id"))
    assert proc.returncode == 128
    assert proc.stderr == b"gittornado-shell: malformed GIT_PROTOCOL\n"


def test_server_side_failures_show_one_line_never_a_traceback(sshd, gitbase, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.ini"
    broken.write_text("[access]\nalice = app=maybe\n")
    log = tmp_path / "shell.log"
    base = ["--gitbase", str(gitbase), "--log-file", str(log)]
    sshd.authorize(
        {
            "alice": [*base, "--accessfile", str(broken), "alice"],
            "bob": [*base, "--git", "/nonexistent/git", "bob"],
        }
    )
    config = sshd.run("alice", "git-upload-pack 'app.git'")
    no_git = sshd.run("bob", "git-upload-pack 'app.git'")
    assert config.returncode == no_git.returncode == 128
    assert config.stderr == b"gittornado-shell: the server's access configuration does not load\n"
    assert no_git.stderr == b"gittornado-shell: git is not available on the server\n"
    logged = log.read_text()
    assert "line 2" in logged and "/nonexistent/git" in logged


def test_forced_command_finds_git_without_path(gitbase):
    """sshd may give a forced command next to no environment: git must still be found."""
    env = {
        "SSH_ORIGINAL_COMMAND": "git-upload-pack '/app.git'",
        "SSH_CONNECTION": "192.0.2.7 50000 192.0.2.1 22",
    }
    assert "PATH" not in env
    proc = subprocess.run(
        [*shell_argv(), "--gitbase", str(gitbase), "alice"],
        env=env,
        input=b"0000",
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"refs/heads/main" in proc.stdout
    assert proc.stderr == b""


def test_greeting_without_access_file_lists_everything(gitbase):
    proc = subprocess.run(
        [*shell_argv(), "--gitbase", str(gitbase), "dave"], env={}, capture_output=True, timeout=30
    )
    assert proc.returncode == 128
    listed = [line.strip() for line in proc.stderr.decode().splitlines() if line.startswith("  ")]
    assert listed == ["app", "private", "public/lib", "team/app", "w"]


def test_invalid_user_in_forced_command(gitbase):
    proc = subprocess.run(
        [*shell_argv(), "--gitbase", str(gitbase), "--", "-x"],
        env={"SSH_ORIGINAL_COMMAND": "git-upload-pack 'app'"},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 128
    assert proc.stderr.startswith(b"gittornado-shell: ") and proc.stderr.count(b"\n") == 1
