"""The access file and the gate, without HTTP: parsing, rules, hashes, throttle, reload.

The truth table at the end drives ``Gate.decide`` with a live ``AccessFile``
and the real repository lookup, so it checks SPEC "Status codes" exactly as
every transport will see it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import statistics
import time

import pytest
from passlib.hash import apr_md5_crypt, argon2, bcrypt, ldap_salted_sha1, ldap_sha1, sha512_crypt

from gittornado.access.accessfile import AccessFile
from gittornado.access.accessrules import (
    AccessFileError,
    Policy,
    hash_password,
    hash_weakness,
    parse_access_file,
    strip_comment,
)
from gittornado.access.gate import AccessRequest, BadCredentials, Credentials, Gate, OpenAccess, Throttle
from gittornado.access.repos import RepositoryLookup
from gittornado.access.rights import Authenticator, Authorizer
from gittornado.errors import GitAccessError, TooManyRequests
from gittornado.protocol.services import READ, WRITE

#: Cheap hashes for fixtures (cost 4); the timing test makes its own.
FAST = bcrypt.using(rounds=4)
SHA1_OF_PASSWORD = "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def errors(log_watch) -> list[logging.LogRecord]:
    return [r for r in log_watch.records if r.levelno >= logging.ERROR]


# -- parsing ---------------------------------------------------------------------------------


def test_colon_and_equals_separators():
    policy = parse_access_file(
        "[users]\n"
        f"alice: {FAST.hash('a')}\n"
        f"bob = {FAST.hash('b')}\n"
        "[groups]\n"
        "devs: alice, bob\n"
        "[access]\n"
        "alice: repo=r,repo2=rw\n"  # the original GitTornado example
        "bob = docs = rw , app=r\n"
        "@devs: team/*=rw\n"
    )
    assert set(policy.users) == {"alice", "bob"}
    assert policy.groups == {"devs": {"alice", "bob"}}
    assert policy.rights("alice", "repo")[:2] == (True, False)
    assert policy.rights("alice", "repo2")[:2] == (True, True)
    assert policy.rights("bob", "docs")[:2] == (True, True)
    assert policy.rights("bob", "app")[:2] == (True, False)
    assert policy.rights("bob", "team/app")[:2] == (True, True)
    assert policy.rights("alice", "docs")[:2] == (False, False)


def test_comments_and_blank_lines():
    policy = parse_access_file(
        "; a comment\n# another\n\n[access]   ; trailing comment\n  alice = app=rw   # why alice may push\n"
    )
    assert policy.rights("alice", "app")[:2] == (True, True)
    assert policy.rules[0].line == 5


@pytest.mark.parametrize(
    "line, content",
    [
        ("", ""),
        ("   \r\n", ""),
        ("; a comment", ""),
        ("  # another", ""),
        ("[access]   ; trailing comment", "[access]"),
        ("  alice = app=rw   # why\n", "alice = app=rw"),
        ("alice = $2b$12$abc;#def", "alice = $2b$12$abc;#def"),  # no whitespace: part of the value
        ("bob:x\t;tab before", "bob:x"),
    ],
)
def test_strip_comment_is_what_the_parser_reads(line, content):
    assert strip_comment(line) == content


def test_star_subject_includes_anonymous_and_everyone():
    policy = parse_access_file(f"[users]\nalice = {FAST.hash('a')}\n[access]\n* = public/*=r\n")
    for user in (None, "alice", "nobody-in-the-file"):
        assert policy.rights(user, "public/lib")[:2] == (True, False)
        assert policy.rights(user, "app")[:2] == (False, False)


@pytest.mark.parametrize(
    "pattern, repo, matches",
    [
        ("team/*", "team/app", True),
        ("team/*", "team/a/b", False),  # '*' stays within one segment
        ("team/*", "team", False),
        ("team/**", "team/a/b", True),  # '**' crosses segments
        ("team/**", "team/app", True),
        ("*", "app", True),
        ("*", "team/app", False),
        ("**", "app", True),  # '**' alone: every repository
        ("**", "team/a/b/c", True),
        ("*/app", "team/app", True),
        ("*/app", "team/x/app", False),
        ("**/app", "team/x/app", True),
        ("a*p", "app", True),
        ("a*p", "a/p", False),
        ("app.git", "app", True),  # '.git' in a rule is ignored
        ("team/*.git", "team/app", True),
        ("app", "app2", False),  # anchored at both ends
        ("app", "x/app", False),
        ("a.p", "axp", False),  # '.' is literal, not a regex
    ],
)
def test_globs(pattern, repo, matches):
    policy = parse_access_file(f"[access]\n* = {pattern}=r\n")
    assert policy.rights(None, repo)[0] is matches


def test_most_permissive_rule_wins():
    policy = parse_access_file(
        "[groups]\ndevs = alice\n[access]\n"
        "alice = app=r, docs=none\n"
        "@devs = app=rw\n"
        "* = docs=r, lib=r\n"
        "alice = lib=-\n"
    )
    read, write, rule = policy.rights("alice", "app")
    assert (read, write) == (True, True)
    assert rule.line == 5 and rule.subject == "@devs"
    # A 'none' rule cannot take away what another rule grants.
    assert policy.rights("alice", "docs")[:2] == (True, False)
    assert policy.rights("alice", "lib")[:2] == (True, False)
    assert len(policy.matching_rules("alice", "app")) == 2


def test_nested_groups():
    policy = parse_access_file(
        "[groups]\nadmins = root\ndevs = alice, @admins\nall = @devs, bob\n"
        "loop1 = x, @loop2\nloop2 = y, @loop1\n"
        "[access]\n@all = app=r\n@loop1 = cyc=r\n"
    )
    assert policy.groups["all"] == {"root", "alice", "bob"}
    assert policy.rights("root", "app")[0]
    assert policy.rights("y", "cyc")[0]


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("[access]\nalice = app=rx\n", 2, "malformed rule"),
        ("[access]\nalice = app\n", 2, "malformed rule"),
        ("[access]\nalice = =rw\n", 2, "malformed rule"),
        ("[access]\nalice = .git=rw\n", 2, "malformed rule"),
        ("; ok\n[access]\n* = app=r\n[permissions]\n", 4, "unknown section"),
        ("[users\n", 1, "section"),
        ("alice = app=r\n[access]\n", 1, "outside any section"),
        ("[users]\nalice = secret\n", 2, "not a recognised hash"),
        ("[users]\n\nalice = password123\n", 3, "not a recognised hash"),
        ("[users]\nalice =\n", 2, "not a recognised hash"),
        (f"[users]\nalice = {SHA1_OF_PASSWORD}\nalice = {SHA1_OF_PASSWORD}\n", 3, "twice"),
        ("[users]\nalice\n", 2, "key = value"),
        ("[access]\n\n\n@nobody = app=r\n", 4, "unknown group"),
        ("[groups]\ndevs = alice, @ghosts\n", 2, "unknown group"),
        ("[groups]\ndevs = al ice\n", 2, "invalid member"),
        ("[access]\n** = app=r\n", 2, "invalid subject"),
    ],
)
def test_broken_file_names_the_line(text, line, words):
    with pytest.raises(AccessFileError) as info:
        parse_access_file(text)
    assert info.value.line == line
    assert f"line {line}:" in str(info.value)
    assert words in str(info.value)


def test_empty_file_is_valid_and_grants_nothing():
    for text in ("", "\n\n", "; nothing yet\n", "[users]\n[groups]\n[access]\n"):
        policy = parse_access_file(text)
        assert policy.users == {} and policy.rules == []
        assert policy.rights(None, "app") == (False, False, None)


def test_rule_describe_names_the_line():
    policy = parse_access_file("[access]\n\nalice = app.git=rw\n")
    assert policy.rules[0].describe() == "line 3: alice = app=rw"


# -- password hashes -------------------------------------------------------------------------

HASHES = {
    "bcrypt": lambda pw: FAST.hash(pw),
    "argon2": lambda pw: argon2.using(memory_cost=1024, rounds=1, parallelism=1).hash(pw),
    "sha512_crypt": lambda pw: sha512_crypt.using(rounds=5000).hash(pw),
    "apr1": lambda pw: apr_md5_crypt.hash(pw),
    "ssha": lambda pw: ldap_salted_sha1.hash(pw),
    "sha": lambda pw: ldap_sha1.hash(pw),
    "hex_sha1": lambda pw: hashlib.sha1(pw.encode()).hexdigest(),
    "HEX_SHA1": lambda pw: hashlib.sha1(pw.encode()).hexdigest().upper(),
}
WEAK = {"argon2", "apr1", "ssha", "sha", "hex_sha1", "HEX_SHA1", "bcrypt"}  # bcrypt cost 4


@pytest.mark.parametrize("kind", sorted(HASHES))
def test_every_hash_kind_verifies(kind, tmp_path, log_watch):
    hashed = HASHES[kind]("s3cret:pw")
    path = write(tmp_path / "access.ini", f"[users]\nalice = {hashed}\n[access]\nalice = **=rw\n")
    access = AccessFile(path)
    assert access.verify_password("alice", "s3cret:pw")
    assert not access.verify_password("alice", "s3cret:pW")
    assert not access.verify_password("alice", "")
    assert not access.verify_password("bob", "s3cret:pw")
    warnings = [
        r.getMessage()
        for r in log_watch.records
        if r.levelno == logging.WARNING and "gittornado-passwd" in r.getMessage()
    ]
    if kind in WEAK:
        assert len(warnings) == 1 and "'alice'" in warnings[0], warnings
        assert f"gittornado-passwd {path} alice" in warnings[0]
    else:
        assert warnings == []


def test_legacy_sha1_of_password():
    policy = parse_access_file(f"[users]\ncarol = {SHA1_OF_PASSWORD}\n")
    assert hash_weakness(policy.users["carol"]) == "legacy scheme hex_sha1"


def test_weakness_is_about_cost_not_difference():
    cheap = FAST.hash("x")
    assert hash_weakness(cheap.replace("$04$", "$10$")) is None
    assert hash_weakness(cheap.replace("$04$", "$13$")) is None  # stronger is fine
    assert "cost 4" in hash_weakness(FAST.hash("x"))
    assert hash_weakness(sha512_crypt.using(rounds=1000).hash("x")) is not None
    assert hash_weakness(sha512_crypt.using(rounds=5000).hash("x")) is None


def test_hash_password_schemes():
    assert hash_password("pw").startswith("$2b$12$")
    assert hash_password("pw", "argon2").startswith("$argon2id$")
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password("x" * 73)


def test_password_over_72_bytes_is_refused_not_an_error(tmp_path):
    path = write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('x' * 72)}\n")
    access = AccessFile(path)
    assert access.verify_password("alice", "x" * 72)
    assert not access.verify_password("alice", "x" * 73)


def test_unknown_user_costs_the_same_as_a_known_one(tmp_path):
    """One hash verification whatever the name: timing does not tell who exists.

    The file's first user has a cheap legacy hash; unknown users must still be
    checked against a hash of the common (bcrypt cost 10) kind.
    """
    cost10 = bcrypt.using(rounds=10)
    path = write(
        tmp_path / "access.ini",
        f"[users]\nlegacy = {SHA1_OF_PASSWORD}\n"
        f"alice = {cost10.hash('alice-pw')}\nbob = {cost10.hash('bob-pw')}\n",
    )
    access = AccessFile(path)
    # CPU time of this thread (bcrypt runs here), interleaved: a busy machine
    # slows wall time, not the work done, and drifts hit all three alike.
    samples: dict[str, list[float]] = {"known-wrong": [], "known-right": [], "unknown": []}
    attempts = {
        "known-wrong": ("alice", "wrong"),
        "known-right": ("alice", "alice-pw"),
        "unknown": ("mallory", "alice-pw"),
    }
    access.verify_password("alice", "warm-up")
    for _ in range(3):
        for kind, (user, password) in attempts.items():
            start = time.thread_time()
            access.verify_password(user, password)
            samples[kind].append(time.thread_time() - start)
    known_wrong, known_right, unknown = (statistics.median(samples[k]) for k in attempts)
    assert 0.5 < unknown / known_wrong < 2, samples
    assert 0.5 < unknown / known_right < 2, samples
    # And the legacy user really is much cheaper: the check above is not vacuous.
    start = time.thread_time()
    access.verify_password("legacy", "password")
    assert time.thread_time() - start < known_right / 5
    assert not access.verify_password("mallory", "alice-pw")


def test_no_users_still_verifies_something(tmp_path):
    access = AccessFile(write(tmp_path / "a.ini", ""))
    assert not access.verify_password("alice", "pw")


async def test_successful_logins_are_cached(tmp_path, monkeypatch):
    path = write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n")
    access = AccessFile(path, check_interval=0)
    calls = []
    real = access.verify_password
    monkeypatch.setattr(access, "verify_password", lambda u, p: calls.append(u) or real(u, p))
    assert await access.check_password("alice", "pw")
    assert await access.authenticate(Credentials("alice", "pw")) == "alice"
    assert calls == ["alice"]
    assert not await access.check_password("alice", "other")  # failures are never cached
    assert not await access.check_password("alice", "other")
    assert calls == ["alice"] * 3
    # A new file (another password for alice) empties the cache.
    write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('new')}\n\n")
    assert not await access.check_password("alice", "pw")
    assert await access.check_password("alice", "new")


async def test_authorize_uses_the_authenticated_user_only(tmp_path):
    access = AccessFile(write(tmp_path / "a.ini", "[access]\nalice = app=rw\n"))
    assert isinstance(access, Authenticator) and isinstance(access, Authorizer)
    grant = await access.authorize(AccessRequest("app", WRITE, user="alice", transport="ssh"))
    assert (grant.user, grant.read, grant.write) == ("alice", True, True)
    assert grant.rule == "line 2: alice = app=rw"
    # Unverified credentials are not a user: authorize never looks at them.
    grant = await access.authorize(AccessRequest("app", WRITE, Credentials("alice", "x")))
    assert (grant.user, grant.read, grant.write, grant.ask_credentials) == (None, False, False, True)


async def test_wrong_password_raises_bad_credentials(tmp_path):
    access = AccessFile(write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n"))
    with pytest.raises(BadCredentials):
        await access.authenticate(Credentials("alice", "nope"))
    with pytest.raises(BadCredentials):
        await access.authenticate(Credentials("nobody", "pw"))


async def test_check_is_authenticate_then_authorize(tmp_path):
    """``check`` (the 0.2 access protocol) still works for code that calls it directly."""
    access = AccessFile(
        write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n[access]\nalice = app=rw\n")
    )
    grant = await access.check(AccessRequest("app", WRITE, Credentials("alice", "pw")))
    assert (grant.user, grant.write) == ("alice", True)
    grant = await access.check(AccessRequest("app", WRITE, user="alice", transport="ssh"))
    assert (grant.user, grant.write) == ("alice", True)
    with pytest.raises(BadCredentials):
        await access.check(AccessRequest("app", READ, Credentials("alice", "nope")))
    with pytest.raises(BadCredentials):
        await access.check(AccessRequest("app", READ, Credentials("nobody", "pw")))


async def test_two_argument_authenticate_still_answers_a_bool(tmp_path):
    access = AccessFile(write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n"))
    assert await access.authenticate("alice", "pw") is True
    assert await access.authenticate("alice", "nope") is False


# -- hot reload ------------------------------------------------------------------------------


async def rights(access: AccessFile, user: str | None, repo: str) -> tuple[bool, bool]:
    grant = await access.authorize(AccessRequest(repo, READ, user=user))
    return grant.read, grant.write


async def test_edit_takes_effect(tmp_path):
    path = write(tmp_path / "a.ini", "[access]\nalice = app=r\n")
    access = AccessFile(path, check_interval=0)
    assert await rights(access, "alice", "app") == (True, False)
    write(tmp_path / "a.ini", "[access]\nalice = app=rw, docs=r\n")
    assert await rights(access, "alice", "app") == (True, True)
    assert await rights(access, "alice", "docs") == (True, False)


async def test_default_interval_picks_up_edits_within_two_seconds(tmp_path):
    path = write(tmp_path / "a.ini", "[access]\nalice = app=r\n")
    access = AccessFile(path)
    assert access.check_interval <= 2
    write(tmp_path / "a.ini", "[access]\nalice = app=rw\n")
    access._next_check = time.monotonic()  # as if check_interval had passed
    assert await rights(access, "alice", "app") == (True, True)


async def test_same_size_edit_with_unchanged_stat_is_seen(tmp_path, monkeypatch):
    """Two writes in one timestamp tick leave the stat alone; the content check catches it."""
    path = write(tmp_path / "a.ini", "[access]\nalice = app=r \n")
    frozen = (time.time_ns(), 1, 2, 3)
    monkeypatch.setattr(AccessFile, "_read_stat", lambda self: frozen)
    access = AccessFile(path, check_interval=0)
    assert await rights(access, "alice", "app") == (True, False)
    write(tmp_path / "a.ini", "[access]\nalice = app=rw\n")
    assert await rights(access, "alice", "app") == (True, True)


@pytest.mark.allow_errors
async def test_broken_edit_is_refused_and_last_good_policy_stays(tmp_path, log_watch):
    path = write(tmp_path / "a.ini", "[access]\nalice = app=rw\n")
    access = AccessFile(path, check_interval=0)
    write(tmp_path / "a.ini", "[access]\nalice = app=rw\nbob = docs=maybe\n")
    for _ in range(3):  # checked again and again, refused (and logged) once
        assert await rights(access, "alice", "app") == (True, True)
        assert await rights(access, "bob", "docs") == (False, False)
    logged = errors(log_watch)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert "line 3" in message and path in message and "previous" in message
    # Fixed: it loads.
    write(tmp_path / "a.ini", "[access]\nalice = app=rw\nbob = docs=r\n")
    assert await rights(access, "bob", "docs") == (True, False)
    assert len(errors(log_watch)) == 1


@pytest.mark.allow_errors
async def test_plaintext_password_edit_is_refused(tmp_path, log_watch):
    path = write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n")
    access = AccessFile(path, check_interval=0)
    write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\nbob = hunter2\n")
    assert await access.check_password("alice", "pw")
    assert not await access.check_password("bob", "hunter2")
    assert len(errors(log_watch)) == 1 and "line 3" in errors(log_watch)[0].getMessage()


@pytest.mark.allow_errors
async def test_deleted_file_keeps_the_last_policy(tmp_path, log_watch):
    path = write(tmp_path / "a.ini", "[access]\nalice = app=rw\n")
    access = AccessFile(path, check_interval=0)
    os.unlink(path)
    for _ in range(3):
        assert await rights(access, "alice", "app") == (True, True)
    assert len(errors(log_watch)) == 1


@pytest.mark.allow_errors
def test_broken_file_at_start_is_an_error(tmp_path, log_watch):
    path = write(tmp_path / "a.ini", "[access]\nalice = app\n")
    with pytest.raises(AccessFileError):
        AccessFile(path)
    with pytest.raises(AccessFileError):
        AccessFile(str(tmp_path / "missing.ini"))
    assert "line 2" in errors(log_watch)[0].getMessage()


# -- the throttle ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_blocks_after_ten_failures_in_a_minute():
    clock = FakeClock()
    throttle = Throttle(clock=clock)
    for _ in range(9):
        assert throttle.failure("10.0.0.1") is False
        clock.now += 5
        assert throttle.retry_after("10.0.0.1") is None
    assert throttle.failure("10.0.0.1") is True  # the 10th starts the block
    assert throttle.retry_after("10.0.0.1") == 60
    assert throttle.retry_after("10.0.0.2") is None  # other addresses unaffected
    clock.now += 59.5
    assert throttle.retry_after("10.0.0.1") == 1
    clock.now += 0.5
    assert throttle.retry_after("10.0.0.1") is None  # unblocked after the block time
    assert throttle.failure("10.0.0.1") is False  # and counting starts afresh


def test_throttle_forgets_failures_outside_the_window():
    clock = FakeClock()
    throttle = Throttle(clock=clock)
    for _ in range(9):
        throttle.failure("a")
    clock.now += 61
    assert throttle.failure("a") is False
    assert throttle.retry_after("a") is None


async def test_gate_throttles_wrong_passwords(tmp_path, gitbase, log_watch):
    clock = FakeClock()
    access = AccessFile(
        write(tmp_path / "a.ini", f"[users]\nalice = {FAST.hash('pw')}\n[access]\nalice = app=rw\n")
    )
    gate = Gate(access, RepositoryLookup(str(gitbase)), throttle=Throttle(clock=clock))

    def req(password: str, addr: str = "192.0.2.1") -> AccessRequest:
        return AccessRequest("app", READ, Credentials("alice", password), remote_addr=addr)

    statuses = []
    for _ in range(11):
        try:
            await gate.decide(req("wrong"))
        except GitAccessError as exc:
            statuses.append(exc.status)
    assert statuses == [401] * 10 + [429]
    with pytest.raises(TooManyRequests) as info:  # even the right password now
        await gate.decide(req("pw"))
    assert info.value.retry_after == 60
    assert (await gate.decide(req("pw", addr="192.0.2.2"))).user == "alice"
    # Anonymous requests carry no password to guess: not throttled.
    with pytest.raises(GitAccessError) as info:
        await gate.decide(AccessRequest("app", READ, remote_addr="192.0.2.1"))
    assert info.value.status == 401
    warnings = [r for r in log_watch.records if "too many failed logins" in r.getMessage()]
    assert len(warnings) == 1 and "192.0.2.1" in warnings[0].getMessage()
    clock.now += 60
    assert (await gate.decide(req("pw"))).user == "alice"


# -- the truth table (SPEC "Status codes") ---------------------------------------------------

TABLE_FILE = """\
[users]
alice = {alice}
bob = {bob}
carol = {carol}
[access]
alice = **=rw
bob = private=r
* = public/*=r
"""

USERS = {
    "anonymous": None,
    "alice": Credentials("alice", "alice-pw"),
    "alice-wrong-password": Credentials("alice", "bob-pw"),
    "bob": Credentials("bob", "bob-pw"),
    "carol": Credentials("carol", "carol-pw"),
}
REPOS = {"public": "public/lib", "private": "private", "missing": "nothere"}

EXPECTED = {
    #                      public       private      missing
    #                      r    w       r    w       r    w
    "anonymous": (200, 401, 401, 401, 401, 401),
    "alice": (200, 200, 200, 200, 404, 404),
    "alice-wrong-password": (401, 401, 401, 401, 401, 401),
    "bob": (200, 403, 200, 403, 404, 404),
    "carol": (200, 403, 404, 404, 404, 404),
}

CASES = [
    (user, repo, op, EXPECTED[user][2 * i + j])
    for user in USERS
    for i, repo in enumerate(REPOS)
    for j, op in enumerate((READ, WRITE))
]


async def status_of(gate: Gate, request: AccessRequest) -> int:
    try:
        session = await gate.decide(request)
    except GitAccessError as exc:
        return exc.status
    assert os.path.isdir(session.repo.path)
    return 200


@pytest.fixture(scope="module")
def readonly_base(tmp_path_factory, fixture_repo):
    """Repositories the table only reads, built once for the module."""
    base = tmp_path_factory.mktemp("table") / "repos"
    for name in ("public/lib.git", "private.git"):
        shutil.copytree(fixture_repo, base / name)
    return base


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    hashes = {u: FAST.hash(f"{u}-pw") for u in ("alice", "bob", "carol")}
    return write(tmp_path_factory.mktemp("table") / "table.ini", TABLE_FILE.format(**hashes))


class CheckOnly:
    """The access file seen through the 0.2 access protocol (``check`` alone), as
    an embedding app's own wrapper would: the adapted path must decide alike."""

    def __init__(self, access: AccessFile) -> None:
        self.check = access.check


@pytest.fixture(params=["typed", "check-only"])
def table_gate(request, table_file, readonly_base):
    access = AccessFile(table_file)
    return Gate(
        access if request.param == "typed" else CheckOnly(access), RepositoryLookup(str(readonly_base))
    )


@pytest.mark.parametrize("user, repo, op, expected", CASES, ids=[f"{u}-{r}-{o}" for u, r, o, _ in CASES])
async def test_truth_table(table_gate, user, repo, op, expected):
    request = AccessRequest(REPOS[repo], op, USERS[user], remote_addr="127.0.0.1")
    assert await status_of(table_gate, request) == expected


async def test_truth_table_ignores_dot_git_and_missing_under_public(table_gate):
    anon = lambda repo, op=READ: AccessRequest(repo, op)  # noqa: E731
    assert await status_of(table_gate, anon("public/lib.git")) == 200
    # Anonymous may read public/*: a missing one there is a plain 404.
    assert await status_of(table_gate, anon("public/nothere")) == 404


async def test_anonymous_push_to_missing_readable_repo_asks_for_credentials(table_gate):
    assert await status_of(table_gate, AccessRequest("public/nothere", WRITE)) == 401


@pytest.mark.parametrize("credentials", [None, Credentials("alice", "whatever")])
@pytest.mark.parametrize(
    "repo, op, expected",
    [
        ("public/lib", READ, 200),
        ("private", READ, 200),
        ("nothere", READ, 404),
        ("public/lib", WRITE, 403),
        ("private", WRITE, 403),
        ("nothere", WRITE, 403),
    ],
)
async def test_no_access_file(readonly_base, credentials, repo, op, expected):
    """OpenAccess: everyone reads, nobody pushes, credentials are ignored (no 401 ever)."""
    gate = Gate(OpenAccess(), RepositoryLookup(str(readonly_base)))
    assert await status_of(gate, AccessRequest(repo, op, credentials)) == expected


def test_policy_defaults():
    assert Policy().rights("alice", "app") == (False, False, None)


def test_example_access_file_parses():
    """conf/access.ini documents every feature; it must stay a valid file."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "conf", "access.ini")
    with open(path, encoding="utf-8") as fh:
        policy = parse_access_file(fh.read())
    assert set(policy.users) == {"alice", "bob", "frank", "dave", "erin", "carol"}
    assert policy.groups["staff"] == {"alice", "bob", "frank", "dave"}
    assert policy.rights("alice", "docs")[:2] == (True, True)
    assert policy.rights("erin", "app")[:2] == (True, False)
    assert policy.rights("bob", "team/web/site")[:2] == (True, True)
    assert policy.rights("dave", "tools/x")[:2] == (True, False)
    assert policy.rights("dave", "tools/x/y")[:2] == (False, False)
    assert policy.rights("frank", "anything/at/all")[:2] == (True, True)
    assert policy.rights(None, "public/lib")[:2] == (True, False)
    assert policy.rights(None, "private")[:2] == (False, False)
    assert policy.weak_users() == ["carol", "dave", "erin"]
