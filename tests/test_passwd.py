"""``gittornado-passwd`` and ``gittornado check-access``, run as the installed console scripts."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
from passlib.hash import bcrypt

from gittornado.access.accessfile import AccessFile
from gittornado.access.accessrules import PASSWORD_CONTEXT, parse_access_file
from gittornado.server.passwd import update_users_section


def script(name: str) -> str:
    """The console script installed beside this interpreter (else on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.exists(beside) else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e .)"
    return found


def passwd(path, user: str, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    stdin = None if password is None else (password + "\n").encode("utf-8")
    extra = ["--password-stdin"] if password is not None else []
    return subprocess.run(
        [script("gittornado-passwd"), str(path), user, *extra, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )


def check_access(path, user: str, repo: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("gittornado"), "check-access", str(path), user, repo],
        capture_output=True,
        timeout=60,
        text=True,
    )


CHEAP = bcrypt.using(rounds=4)

ORIGINAL = (
    "; site access file — édité à la main\n"
    "\n"
    "[users]   ; people\n"
    f"  alice: {CHEAP.hash('old')}   ; alice's line keeps its comment\n"
    f"bob = {CHEAP.hash('bob')}\n"
    "\t\n"
    "; the groups\n"
    "[groups]\n"
    "devs = alice, bob   \n"
    "[access]\n"
    "# nothing below changes\n"
    "@devs = team/**=rw\n"
    "* = public/*=r"  # no final newline
)


def user_line(text: str, user: str) -> str:
    found = [line for line in text.splitlines() if line.strip().startswith(user)]
    assert len(found) == 1, found
    return found[0]


def hash_of(text: str, user: str) -> str:
    return parse_access_file(text).users[user]


# -- gittornado-passwd -----------------------------------------------------------------------


def test_new_file_gets_a_bcrypt_hash(tmp_path):
    path = tmp_path / "access.ini"
    proc = passwd(path, "alice", password="correct horse")
    assert proc.returncode == 0, proc.stderr
    text = path.read_text()
    hashed = hash_of(text, "alice")
    assert hashed.startswith("$2b$12$")
    assert PASSWORD_CONTEXT.verify("correct horse", hashed)
    assert "correct horse" not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # a new file is private


def test_argon2_scheme(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text("[access]\nalice = app=rw\n")
    assert passwd(path, "alice", "--scheme", "argon2", password="pässwörd").returncode == 0
    text = path.read_text()
    hashed = hash_of(text, "alice")
    assert hashed.startswith("$argon2id$")
    assert PASSWORD_CONTEXT.verify("pässwörd", hashed)
    assert "pässwörd" not in text
    # The new [users] section goes before the first section; the rest is untouched.
    assert text.startswith("[users]\nalice = $argon2id$")
    assert text.endswith("\n[access]\nalice = app=rw\n")


def test_replace_keeps_every_other_byte(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    assert passwd(path, "alice", password="new secret").returncode == 0
    text = path.read_text(encoding="utf-8")
    before, after = ORIGINAL.splitlines(keepends=True), text.splitlines(keepends=True)
    assert len(before) == len(after)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [3]
    line = after[3]
    assert line.startswith("  alice: $2b$12$") and line.endswith("   ; alice's line keeps its comment\n")
    assert PASSWORD_CONTEXT.verify("new secret", hash_of(text, "alice"))
    assert not PASSWORD_CONTEXT.verify("old", hash_of(text, "alice"))
    assert "new secret" not in text


def test_add_user_to_existing_section(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    assert passwd(path, "carol", password="c").returncode == 0
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    assert lines[5].startswith("carol = $2b$")  # right after bob, before the blank
    assert "".join(lines[:5] + lines[6:]) == ORIGINAL
    assert set(parse_access_file(text).users) == {"alice", "bob", "carol"}


def test_crlf_file_stays_crlf(tmp_path):
    path = tmp_path / "access.ini"
    original = ORIGINAL.replace("\n", "\r\n").encode("utf-8")
    path.write_bytes(original)
    assert passwd(path, "bob", password="b2").returncode == 0
    assert passwd(path, "dave", password="d").returncode == 0
    data = path.read_bytes()
    assert data.count(b"\r\n") == original.count(b"\r\n") + 1
    assert b"\n" not in data.replace(b"\r\n", b"")
    text = data.decode()
    assert PASSWORD_CONTEXT.verify("b2", hash_of(text, "bob"))


def test_delete(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    proc = passwd(path, "bob", "--delete")
    assert proc.returncode == 0, proc.stderr
    text = path.read_text(encoding="utf-8")
    assert set(parse_access_file(text).users) == {"alice"}
    expected = "".join(line for line in ORIGINAL.splitlines(keepends=True) if not line.startswith("bob ="))
    assert text == expected
    # Deleting someone who is not there changes nothing.
    proc = passwd(path, "bob", "--delete")
    assert proc.returncode == 1 and "no user 'bob'" in proc.stderr.decode()
    assert path.read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("password", ["", "\r"])
def test_empty_password_is_refused(tmp_path, password):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    inode = os.stat(path).st_ino
    proc = passwd(path, "alice", password=password)
    assert proc.returncode != 0
    assert "empty password" in proc.stderr.decode()
    assert path.read_text(encoding="utf-8") == ORIGINAL
    assert os.stat(path).st_ino == inode
    assert os.listdir(tmp_path) == ["access.ini"]


def test_password_too_long_for_bcrypt_is_refused(tmp_path):
    path = tmp_path / "access.ini"
    proc = passwd(path, "alice", password="x" * 73)
    assert proc.returncode == 1 and "72 bytes" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert not path.exists()
    assert passwd(path, "alice", "--scheme", "argon2", password="x" * 73).returncode == 0


def test_atomic_replace_keeps_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    assert passwd(path, "alice", password="pw").returncode == 0
    st = os.stat(path)
    assert st.st_ino != inode  # replaced by rename, not rewritten
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert os.listdir(tmp_path) == ["access.ini"]


def test_symlinked_file_is_updated_through_the_link(tmp_path):
    real = tmp_path / "real.ini"
    real.write_text(ORIGINAL, encoding="utf-8")
    link = tmp_path / "access.ini"
    link.symlink_to(real)
    assert passwd(link, "alice", password="pw").returncode == 0
    assert link.is_symlink()
    assert PASSWORD_CONTEXT.verify("pw", hash_of(real.read_text(encoding="utf-8"), "alice"))
    assert sorted(os.listdir(tmp_path)) == ["access.ini", "real.ini"]


def test_broken_file_is_not_touched(tmp_path):
    path = tmp_path / "access.ini"
    broken = "[users]\nbob = hunter2\n"
    path.write_text(broken)
    proc = passwd(path, "alice", password="pw")
    assert proc.returncode == 1
    assert "line 2" in proc.stderr.decode() and "nothing changed" in proc.stderr.decode()
    assert path.read_text() == broken
    assert os.listdir(tmp_path) == ["access.ini"]


@pytest.mark.parametrize("user", ["al ice", "@devs", "*", "a=b", "a:b", "[x]", "a,b"])
def test_invalid_user_name(tmp_path, user):
    path = tmp_path / "access.ini"
    proc = passwd(path, user, password="pw")
    assert proc.returncode == 2 and "invalid user name" in proc.stderr.decode()
    assert not path.exists()


def test_unicode_user_name(tmp_path):
    path = tmp_path / "access.ini"
    assert passwd(path, "jürgen", password="pw").returncode == 0
    assert PASSWORD_CONTEXT.verify("pw", hash_of(path.read_text(encoding="utf-8"), "jürgen"))


async def test_running_server_picks_up_the_change(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(ORIGINAL, encoding="utf-8")
    access = AccessFile(str(path), check_interval=0)
    assert await access.authenticate("alice", "old")
    assert passwd(path, "alice", password="rotated").returncode == 0
    assert not await access.authenticate("alice", "old")
    assert await access.authenticate("alice", "rotated")


def test_update_users_section_is_pure_and_exact():
    text = "[users]\nalice = H1\n[access]\n"
    assert update_users_section(text, "alice", "H2") == "[users]\nalice = H2\n[access]\n"
    assert update_users_section(text, "bob", "H3") == "[users]\nalice = H1\nbob = H3\n[access]\n"
    assert update_users_section(text, "alice", None) == "[users]\n[access]\n"
    assert update_users_section("", "a", "H") == "[users]\na = H\n"
    assert update_users_section("; only a comment", "a", "H") == "; only a comment\n\n[users]\na = H\n"
    # A user name inside a comment or another section is not the user's line.
    tricky = "[users]\n; alice = old\n[access]\nalice = app=r\n"
    assert (
        update_users_section(tricky, "alice", "H")
        == "[users]\nalice = H\n; alice = old\n[access]\nalice = app=r\n"
    )
    with pytest.raises(KeyError):
        update_users_section(text, "bob", None)


# -- gittornado check-access -----------------------------------------------------------------

CHECK_FILE = f"""\
[users]
alice = {CHEAP.hash("a")}
[groups]
devs = alice
[access]
alice = app=r
@devs = app=rw, team/*=r
* = public/*=r
"""


def test_check_access_names_the_granting_rule(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(CHECK_FILE)
    proc = check_access(path, "alice", "app.git")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "alice on app: read and write"
    assert lines[1] == "  granted by line 7: @devs = app=rw"
    assert "  also matches line 6: alice = app=r" in lines


def test_check_access_anonymous_and_denied(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text(CHECK_FILE)
    proc = check_access(path, "-", "public/lib")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[:2] == [
        "anonymous on public/lib: read only",
        "  granted by line 8: * = public/*=r",
    ]
    proc = check_access(path, "-", "app")
    assert proc.returncode == 3
    assert proc.stdout.splitlines() == ["anonymous on app: no access", "  no rule grants access"]
    proc = check_access(path, "zed", "team/x")
    assert proc.returncode == 3
    assert proc.stdout.splitlines()[0] == "zed on team/x: no access"
    assert "note: 'zed' has no password in [users], so cannot log in over HTTP" in proc.stdout


def test_check_access_broken_file_names_the_line(tmp_path):
    path = tmp_path / "access.ini"
    path.write_text("[access]\nalice = app=rw\nbob = app=xx\n")
    proc = check_access(path, "alice", "app")
    assert proc.returncode == 1
    assert "line 3" in proc.stderr and "Traceback" not in proc.stderr
    proc = check_access(tmp_path / "missing.ini", "alice", "app")
    assert proc.returncode == 1 and "cannot read" in proc.stderr
    path.write_text("[access]\nalice = app=rw\n")
    proc = check_access(path, "alice", "../etc")
    assert proc.returncode == 1 and "not a valid repository name" in proc.stderr
