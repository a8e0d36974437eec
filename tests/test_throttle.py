"""The login throttle under parallel guessing, and across worker processes (finding 1).

An attack run sent 200 wrong passwords at once from one address: all 200 were
checked (the block was checked before, the failure recorded after bcrypt), a
correct login from another address took 19.3 s instead of 0.23 s, and with
``--processes 2`` each worker counted on its own. These tests send the same
bursts: to the gate, to an in-process server, and to the real command with
two workers.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import wait_for, write_access_file
from passlib.hash import bcrypt

from gittornado import BadCredentials, Credentials, Gate, Grant
from gittornado.access.repos import Repository
from gittornado.access.rights import AccessRequest
from gittornado.access.throttle import LoginsBusy, MemoryStore, SQLiteStore, Throttle, address_key
from gittornado.errors import GitAccessError
from gittornado.protocol.services import READ

INFO_REFS = "/app/info/refs?service=git-upload-pack"


class SlowPolicy:
    """An authenticator that takes ``delay`` s per check and counts how many run at once."""

    def __init__(self, delay: float = 0.02, good: dict[str, str] | None = None) -> None:
        self.delay = delay
        self.good = good or {"ann": "pw", "bea": "pw"}
        self.checked: list[tuple[str, str]] = []
        self.running = 0
        self.most = 0

    async def authenticate(self, credentials: Credentials) -> str:
        self.checked.append((credentials.username, credentials.password))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.running -= 1
        if self.good.get(credentials.username) != credentials.password:
            raise BadCredentials(credentials.username)
        return credentials.username

    async def authorize(self, request: AccessRequest) -> Grant:
        return Grant(user=request.user, read=True, write=False)


class OneRepo:
    def lookup(self, name: str) -> Repository | None:
        return Repository(name, "/srv/git/app.git") if name == "app" else None


def req(user: str, password: str, addr: str) -> AccessRequest:
    return AccessRequest("app", READ, Credentials(user, password), remote_addr=addr)


async def outcome(gate: Gate, request: AccessRequest) -> int:
    try:
        await gate.decide(request)
        return 200
    except GitAccessError as exc:
        return exc.status


# -- the gate ------------------------------------------------------------------------------------


async def test_parallel_guesses_are_cut_at_the_limit():
    """200 guesses at once: at most ``limit`` reach the password check, the rest are 429."""
    policy = SlowPolicy()
    gate = Gate(policy, OneRepo(), throttle=Throttle(limit=10))
    statuses = await asyncio.gather(
        *(outcome(gate, req("ann", f"guess{i}", "192.0.2.1")) for i in range(200))
    )
    assert len(policy.checked) <= 10, f"{len(policy.checked)} of 200 parallel guesses were checked"
    assert statuses.count(401) == len(policy.checked)
    assert statuses.count(429) == 200 - len(policy.checked)
    # The address is now blocked, even with the right password.
    assert await outcome(gate, req("ann", "pw", "192.0.2.1")) == 429


async def test_logins_at_once_from_one_address_wait_their_turn():
    """A CI farm behind one address: 30 logins at once (one user, or thirty) are all served,
    two checks at a time, none refused; the throttle is about failures, not numbers."""
    users = {f"u{i}": "pw" for i in range(30)}
    policy = SlowPolicy(delay=0.005, good=users)
    gate = Gate(policy, OneRepo(), throttle=Throttle(limit=10))
    same = await asyncio.gather(*(outcome(gate, req("u0", "pw", "192.0.2.1")) for _ in range(30)))
    distinct = await asyncio.gather(*(outcome(gate, req(u, "pw", "192.0.2.1")) for u in users))
    assert set(same) == set(distinct) == {200}
    assert policy.most == 2


async def test_a_guess_near_the_limit_waits_for_the_running_check():
    """With 9 failures on record and one check running, the next waits for it instead of being
    refused: if the running one was right, the next is checked; if wrong, it is blocked."""
    policy = SlowPolicy(delay=0.02, good={"ann": "pw"})
    throttle = Throttle(limit=10)
    gate = Gate(policy, OneRepo(), throttle=throttle)
    for _ in range(8):
        assert await outcome(gate, req("ann", "bad", "192.0.2.1")) == 401
    first = asyncio.ensure_future(outcome(gate, req("ann", "bad", "192.0.2.1")))  # the 9th failure
    second = asyncio.ensure_future(outcome(gate, req("ann", "pw", "192.0.2.1")))  # right, queued
    third = asyncio.ensure_future(outcome(gate, req("ann", "bad", "192.0.2.1")))  # the 10th failure
    assert await asyncio.gather(first, second, third) == [401, 200, 401]
    assert await outcome(gate, req("ann", "pw", "192.0.2.1")) == 429


async def test_checks_run_a_few_at_a_time_per_address_and_overall():
    policy = SlowPolicy(delay=0.01)
    throttle = Throttle(limit=1000, per_address=2, concurrency=3)
    gate = Gate(policy, OneRepo(), throttle=throttle)
    one = [outcome(gate, req("ann", "pw", "192.0.2.1")) for _ in range(20)]
    assert set(await asyncio.gather(*one)) == {200}
    assert policy.most == 2  # one address: two checks at a time
    policy.most = 0
    many = [outcome(gate, req("ann", "pw", f"192.0.2.{i}")) for i in range(30)]
    assert set(await asyncio.gather(*many)) == {200}
    assert policy.most == 3  # overall: three at a time
    assert not throttle._pending and not throttle._running and not throttle._address_slots


async def test_a_clean_address_jumps_the_queue_of_a_guessing_one():
    """Slots go to addresses without recent failures first: a guesser delays others by one check."""
    policy = SlowPolicy(delay=0.05)
    gate = Gate(policy, OneRepo(), throttle=Throttle(limit=50, per_address=1, concurrency=1))
    # A failure on record for each guessing address, then a queue of their guesses.
    for i in range(5):
        assert await outcome(gate, req("ann", "wrong", f"198.51.100.{i}")) == 401
    guesses = [
        asyncio.ensure_future(outcome(gate, req("ann", f"g{n}", f"198.51.100.{n % 5}"))) for n in range(20)
    ]
    await asyncio.sleep(0.01)  # the guesses are queued now
    started = time.monotonic()
    assert await outcome(gate, req("bea", "pw", "203.0.113.9")) == 200
    waited = time.monotonic() - started
    assert waited < 3 * policy.delay, f"a clean login waited {waited:.2f}s behind the guesses"
    await asyncio.gather(*guesses)


async def test_too_many_waiting_checks_are_refused_with_503():
    policy = SlowPolicy(delay=0.05)
    gate = Gate(policy, OneRepo(), throttle=Throttle(limit=10, concurrency=1, max_waiting=5))
    statuses = await asyncio.gather(*(outcome(gate, req("ann", "pw", f"192.0.2.{i}")) for i in range(20)))
    assert statuses.count(503) >= 1 and set(statuses) <= {200, 503}
    assert LoginsBusy(5).status == 503


async def test_an_abandoned_wait_gives_its_slot_back():
    policy = SlowPolicy(delay=0.05)
    throttle = Throttle(limit=100, concurrency=1)
    gate = Gate(policy, OneRepo(), throttle=throttle)
    first = asyncio.ensure_future(outcome(gate, req("ann", "pw", "192.0.2.1")))
    waiting = asyncio.ensure_future(outcome(gate, req("ann", "pw", "192.0.2.2")))
    await asyncio.sleep(0.01)
    waiting.cancel()
    assert await first == 200
    assert await outcome(gate, req("ann", "pw", "192.0.2.3")) == 200
    assert throttle._slots.free == 1 and not throttle._pending


def test_ipv6_addresses_count_per_64():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7" and address_key("unix") == "unix"


# -- the shared store ----------------------------------------------------------------------------


def test_sqlite_store_is_shared_between_throttles(tmp_path):
    """Two throttles on one file (two workers): failures from either count for both."""
    a = Throttle(limit=4, store=SQLiteStore.in_directory(str(tmp_path)))
    b = Throttle(limit=4, store=SQLiteStore.in_directory(str(tmp_path)))
    assert [a.failure("192.0.2.1"), b.failure("192.0.2.1"), a.failure("192.0.2.1")] == [False] * 3
    assert b.retry_after("192.0.2.1", fresh=True) is None
    assert b.failure("192.0.2.1") is True  # the 4th, wherever it happened
    assert a.retry_after("192.0.2.1", fresh=True) == 60
    assert b.retry_after("192.0.2.2", fresh=True) is None
    rows = sqlite3.connect(tmp_path / "logins.sqlite3").execute("SELECT count(*) FROM failures").fetchone()
    assert rows == (0,)  # a block replaces its failures


def test_sqlite_store_reads_are_cached_briefly(tmp_path):
    now = [1000.0]
    a = Throttle(limit=2, clock=lambda: now[0], store=SQLiteStore.in_directory(str(tmp_path), read_ttl=0.5))
    b = Throttle(limit=2, clock=lambda: now[0], store=SQLiteStore.in_directory(str(tmp_path), read_ttl=0.5))
    assert a.retry_after("192.0.2.1") is None  # cached: not blocked
    b.failure("192.0.2.1")
    b.failure("192.0.2.1")
    assert a.retry_after("192.0.2.1") is None  # still the cached answer
    assert a.retry_after("192.0.2.1", fresh=True) == 60  # a password check reads fresh
    now[0] += 0.6
    assert a.retry_after("192.0.2.1") is not None


@pytest.mark.allow_errors
def test_a_broken_store_keeps_counting_in_memory(tmp_path, log_watch):
    """A state file that cannot be opened (its directory gone): one ERROR, then per-process counting."""
    throttle = Throttle(limit=2, store=SQLiteStore(str(tmp_path / "gone" / "logins.sqlite3")))
    assert throttle.retry_after("192.0.2.1") is None
    assert throttle.failure("192.0.2.1") is False
    assert throttle.failure("192.0.2.1") is True
    assert throttle.retry_after("192.0.2.1") == 60
    errors = [r for r in log_watch.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "counting in this process only" in errors[0].getMessage()


def test_memory_store_stays_bounded():
    store = MemoryStore(max_entries=100)
    for i in range(1000):
        store.fail(f"10.0.{i // 250}.{i % 250}", 1000.0, 60.0, 10, 60.0)
    assert len(store._failures) <= 101


# -- over HTTP ------------------------------------------------------------------------------------


def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _get(port: int, headers: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {INFO_REFS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 120)
        await asyncio.wait_for(reader.read(), 120)
        return int(line.split()[1]), time.monotonic() - started
    finally:
        writer.close()


def _burst(port: int, guesses: int, guess_addr: str, login: tuple[str, str, str] | None = None):
    """``guesses`` wrong passwords for alice at once from ``guess_addr``, and maybe one login meanwhile."""

    async def run():
        tasks = [
            asyncio.ensure_future(
                _get(port, {"Authorization": _auth("alice", f"guess-{i}"), "X-Forwarded-For": guess_addr})
            )
            for i in range(guesses)
        ]
        other = None
        if login is not None:
            await asyncio.sleep(0.05)  # the burst is in; now someone else logs in
            user, password, addr = login
            other = await _get(port, {"Authorization": _auth(user, password), "X-Forwarded-For": addr})
        return [s for s, _ in await asyncio.gather(*tasks)], other

    return asyncio.run(run())


def test_200_parallel_guesses_over_http_are_cut_and_others_stay_fast(serve, tmp_path):
    """The attack run's burst against a server with real bcrypt costs (cost 10).

    Before: all 200 were checked and the other login waited for all of them.
    """
    slow = bcrypt.using(rounds=10)
    path = tmp_path / "access.ini"
    users = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
    path.write_text(
        "[users]\n" + "".join(f"{u} = {slow.hash(p)}\n" for u, p in users.items()) + "[access]\n* = app=r\n"
    )
    server = serve(xheaders=True, accessfile=str(path))
    # The unloaded baseline: bob's first login (a real bcrypt check, nothing cached).
    _, (status, baseline) = _burst(server.port, 0, "-", ("bob", "bob-pw", "10.1.0.2"))
    assert status == 200
    statuses, (status, loaded) = _burst(server.port, 200, "10.1.0.1", ("carol", "carol-pw", "10.1.0.3"))
    assert status == 200
    checked = statuses.count(401)
    assert checked <= 10 + 2, f"{checked} of 200 parallel guesses were checked (limit 10)"
    assert statuses.count(429) == 200 - checked, sorted(set(statuses))
    assert loaded < max(5 * baseline, baseline + 1.0), (
        f"a login from elsewhere took {loaded:.2f}s during the burst (unloaded: {baseline:.2f}s)"
    )


# -- across worker processes -----------------------------------------------------------------------


def _start(args: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gittornado", "--address", "127.0.0.1", "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )

    def port():
        assert proc.poll() is None, log.read_text()
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", log.read_text())
        return m and int(m.group(1))

    return proc, wait_for(port, message="the server's 'serving' line")


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_count_holds_across_worker_processes(gitbase, tmp_path):
    """``--processes 2``: failures counted in one worker count in the other.

    Sequential guesses from one address on fresh connections land on both
    workers; before, each worker allowed ten (up to twenty 401s). A parallel
    burst is cut at the limit plus one check per extra worker's slots.
    """
    access = write_access_file(tmp_path / "access.ini", {"alice": "alice-pw"}, "* = app=r\n")
    log = tmp_path / "server.log"
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "gittornado-state-*")))
    proc, port = _start(["--processes", "2", "--xheaders", "--accessfile", access], gitbase, log)
    try:

        async def sequential():
            return [
                (await _get(port, {"Authorization": _auth("alice", f"g{i}"), "X-Forwarded-For": "10.2.0.1"}))[
                    0
                ]
                for i in range(25)
            ]

        statuses = asyncio.run(sequential())
        assert statuses == [401] * 10 + [429] * 15, statuses
        burst, _ = _burst(port, 200, "10.2.0.2")
        assert burst.count(401) <= 10 + 2 and burst.count(401) + burst.count(429) == 200, (
            f"{burst.count(401)} of 200 parallel guesses were checked"
        )
        workers = set(re.findall(r"\[(\d+)\] (?:INFO|WARNING) gittornado\.access: ", log.read_text()))
        assert len(workers) == 2, f"one worker answered everything: {workers}"
    finally:
        assert _stop(proc) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("too many failed logins from 10.2.0.1") == 1
    # The supervisor's temporary state directory goes with it.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gittornado-state-*"))) <= before


def test_state_dir_option_keeps_the_count_in_a_file(gitbase, tmp_path):
    access = write_access_file(tmp_path / "access.ini", {"alice": "alice-pw"}, "* = app=r\n")
    state = tmp_path / "state"
    proc, port = _start(
        ["--state-dir", str(state), "--login-failures", "3", "--accessfile", access],
        gitbase,
        tmp_path / "server.log",
    )
    try:

        async def guesses():
            return [(await _get(port, {"Authorization": _auth("alice", "x")}))[0] for _ in range(4)]

        assert asyncio.run(guesses()) == [401, 401, 401, 429]
    finally:
        assert _stop(proc) == 0
    db = sqlite3.connect(state / "logins.sqlite3")
    assert db.execute("SELECT addr FROM blocks").fetchall() == [("127.0.0.1",)]


async def test_an_error_that_is_not_wrong_credentials_is_not_a_failure():
    """A policy that breaks (its database is down) is not the client's failed login."""

    class Broken(SlowPolicy):
        async def authenticate(self, credentials):
            raise RuntimeError("database down")

    throttle = Throttle(limit=2)
    gate = Gate(Broken(), OneRepo(), throttle=throttle)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await gate.decide(req("ann", "pw", "192.0.2.1"))
    assert throttle.retry_after("192.0.2.1") is None
    assert not throttle._pending and throttle._slots.free == throttle.concurrency
