"""The advertisement cache: never stale, never spawns git on a hit, never answers a refusal.

Pure parts (the racy rule, the request key) as unit tests; the rest against a
real server whose git is a wrapper that counts its runs, with "truth" taken
from ``git upload-pack`` run directly on the repository at that moment.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import shutil
import socket
import subprocess
import time

import pytest
from conftest import AllowAll, git, refs, rev, wait_settled, write_access_file

from gittornado.engine import gitargs
from gittornado.engine.advertcache import (
    AdvertCache,
    config_files,
    fingerprint,
    is_ls_refs,
    request_key,
    settled,
)
from gittornado.protocol import pktline

UPLOAD_REQ = "application/x-git-upload-pack-request"
PREAMBLE = pktline.encode(b"# service=git-upload-pack\n") + pktline.FLUSH
MARGIN = 0.15  # well above this kernel's timestamp tick; 1 s in production


def ls_refs(*args: bytes) -> bytes:
    body = pktline.encode(b"command=ls-refs\n") + pktline.encode(b"object-format=sha1\n") + pktline.DELIM
    return body + b"".join(pktline.encode(a + b"\n") for a in args) + pktline.FLUSH


LS_REFS = ls_refs(b"peel", b"symrefs", b"unborn", b"ref-prefix HEAD", b"ref-prefix refs/heads/")


# -- pure parts ------------------------------------------------------------------------------


def test_settled_only_when_every_stamp_is_older_than_start_minus_margin():
    start, margin = 10_000_000_000, 1_000_000_000
    old = (1, 10, start - margin - 1, start - margin - 1)
    assert settled((("a", old), ("b", None)), start, margin)
    assert not settled((("a", old), ("b", (2, 1, start - margin, 0))), start, margin)  # mtime at the edge
    assert not settled((("a", (1, 1, 0, start - 5)),), start, margin)  # ctime recent: touch -d cannot hide it
    assert not settled((("a", (1, 1, start + 10**9, start + 10**9)),), start, margin)  # from the future
    assert settled((), start, margin)


def test_fingerprint_tells_states_apart():
    a = (("HEAD", (1, 2, 3, 4)), ("refs", None))
    assert fingerprint(a) == fingerprint(tuple(a)) and len(fingerprint(a)) == 16
    for other in (
        (("HEAD", (1, 2, 3, 5)), ("refs", None)),
        (("HEAD", (1, 2, 3, 4)), ("refs", (0, 0, 0, 0))),
        (("HEAD", (1, 2, 3, 4)), ("refz", None)),
        (("HEAD", (2**64 + 1, 2, 3, 4)), ("refs", None)),  # beyond 64 bits: still a digest
    ):
        assert fingerprint(other) != fingerprint(a)


def test_request_key_separates_what_changes_the_answer():
    base = request_key("git-upload-pack", None, None, {"A": "1", "B": "2"}, "git", ("x=1",))
    assert base == request_key("git-upload-pack", None, None, {"B": "2", "A": "1"}, "git", ("x=1",))
    for other in (
        request_key("git-upload-pack", "version=2", None, {"A": "1", "B": "2"}, "git", ("x=1",)),
        request_key("git-upload-pack", None, b"body", {"A": "1", "B": "2"}, "git", ("x=1",)),
        request_key("git-upload-pack", None, None, {"A": "1", "GIT_NAMESPACE": "n"}, "git", ("x=1",)),
        request_key("git-upload-pack", None, None, {"A": "1", "B": "2"}, "/opt/git", ("x=1",)),
        request_key("git-upload-pack", None, None, {"A": "1", "B": "2"}, "git", ("x=2",)),
    ):
        assert other != base


def test_is_ls_refs_reads_the_first_pkt_line():
    assert is_ls_refs(LS_REFS)
    assert is_ls_refs(pktline.encode(b"command=ls-refs") + pktline.FLUSH)
    assert not is_ls_refs(pktline.encode(b"command=fetch\n") + pktline.FLUSH)
    assert not is_ls_refs(pktline.FLUSH + LS_REFS)
    assert not is_ls_refs(b"0014command=ls-ref")  # cut short
    assert not is_ls_refs(b"+014command=ls-refs\n")
    assert not is_ls_refs(b"")


def test_config_files_follow_gits_environment():
    assert config_files(None, None, "/h", None) == (
        "/etc/gitconfig",
        "/h/.config/git/config",
        "/h/.gitconfig",
    )
    assert config_files("/s", "/g", "/h", "/x") == ("/s", "/g")
    assert config_files(None, os.devnull, "/h", None) == ("/etc/gitconfig",)


def _repo(tmp_path, name="r.git"):
    path = tmp_path / name
    git("init", "--bare", "-q", str(path))
    return str(path)


def test_state_sees_ref_dirs_packed_refs_head_and_config(tmp_path):
    repo = _repo(tmp_path)
    cache = AdvertCache(margin=0)
    before = cache.state(repo, "git", {})
    assert before is not None and cache.state(repo, "git", {}) == before
    os.makedirs(os.path.join(repo, "refs/heads/deep/er"))
    deeper = cache.state(repo, "git", {})
    assert deeper != before
    with open(os.path.join(repo, "refs/heads/deep/er/x.lock"), "w"):
        pass
    assert cache.state(repo, "git", {}) != deeper  # a ref two levels down: its directory's stamp
    for name in ("packed-refs", "HEAD", "config", "shallow"):
        state = cache.state(repo, "git", {})
        with open(os.path.join(repo, name + ".new"), "w") as fh:
            fh.write("x\n")
        os.replace(os.path.join(repo, name + ".new"), os.path.join(repo, name))
        assert cache.state(repo, "git", {}) != state, name
    os.symlink("heads", os.path.join(repo, "refs/alias"))
    assert cache.state(repo, "git", {}) is None  # a symlink under refs/: not cached
    assert AdvertCache().state(str(tmp_path / "missing"), "git", {}) is not None  # no crash


def test_lru_is_bounded_in_bytes_and_skips_big_answers(tmp_path):
    repos = [_repo(tmp_path, f"r{i}.git") for i in range(6)]
    cache = AdvertCache(max_bytes=10_000, margin=0, max_entry=4_000)
    time.sleep(0.01)
    for repo in repos:
        answer, ticket = cache.lookup(repo, ("k",))
        assert answer is None and ticket is not None
        assert cache.store(ticket, b"x" * 2_000)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) < 6 and cache.evictions > 0
    assert cache.lookup(repos[-1], ("k",))[0] == b"x" * 2_000  # the newest stays
    assert cache.lookup(repos[0], ("k",))[0] is None  # the oldest went
    _, ticket = cache.lookup(repos[0], ("k",))
    assert not cache.store(ticket, b"x" * 5_000)  # over max_entry


def test_store_refuses_when_the_repository_changed_or_was_pushed(tmp_path):
    repo = _repo(tmp_path)
    cache = AdvertCache(margin=0)
    time.sleep(0.01)
    _, ticket = cache.lookup(repo, ("k",))
    os.makedirs(os.path.join(repo, "refs/heads/new"))
    assert not cache.store(ticket, b"answer")  # changed while git ran
    time.sleep(0.01)
    _, ticket = cache.lookup(repo, ("k",))
    cache.invalidate(repo)
    assert not cache.store(ticket, b"answer")  # a push ended while git ran
    _, ticket = cache.lookup(repo, ("k",))
    assert cache.store(ticket, b"answer") and cache.lookup(repo, ("k",))[0] == b"answer"
    assert AdvertCache(margin=3600).lookup(repo, ("k",)) == (None, None)  # not settled: no ticket


# -- a real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counting_git(tmp_path_factory):
    """A git that appends a line to a file per run: hits must not add any."""
    d = tmp_path_factory.mktemp("gitwrap")
    count = d / "count"
    count.write_text("")
    wrapper = d / "git"
    wrapper.write_text(f'#!/bin/sh\necho x >> "{count}"\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), count


def runs(counting_git) -> int:
    return len(counting_git[1].read_text().splitlines())


@pytest.fixture
def server(serve, gitbase, counting_git):
    cache = AdvertCache(margin=MARGIN)
    server = serve(access=AllowAll(), git=counting_git[0], advert_cache=cache)
    server.cache = cache
    server.git_path = counting_git[0]
    repos = [head.parent for head in gitbase.glob("**/*.git/HEAD")]
    wait_settled(cache, repos, counting_git[0])
    return server


def request(server, method, path, body=None, headers=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        if own:
            conn.close()


def info_refs(server, repo="app", protocol=None, conn=None, headers=None):
    h = dict(headers or {})
    if protocol:
        h["Git-Protocol"] = protocol
    return request(server, "GET", f"/{repo}/info/refs?service=git-upload-pack", headers=h, conn=conn)


def post_ls_refs(server, body=LS_REFS, repo="app", conn=None, headers=None):
    h = {"Content-Type": UPLOAD_REQ, "Git-Protocol": "version=2", **(headers or {})}
    return request(server, "POST", f"/{repo}/git-upload-pack", body=body, headers=h, conn=conn)


def truth(repo, protocol=None, body=None) -> bytes:
    """git's own answer on the repository now, as the server would send it."""
    argv = ["git"]
    for opt in gitargs.GIT_OPTIONS:
        argv += ["-c", opt]
    argv += ["upload-pack", "--stateless-rpc"]
    if body is None:
        argv.append("--advertise-refs")
    env = dict(os.environ)
    if protocol:
        env["GIT_PROTOCOL"] = protocol
    out = subprocess.run(
        [*argv, str(repo)], input=body or b"", env=env, capture_output=True, check=True
    ).stdout
    return PREAMBLE + out if body is None and protocol != "version=2" else out


def assert_fresh(server, repo_path, repo="app"):
    """Every cached kind of answer equals git's, now (twice: the second may be a hit)."""
    for _ in range(2):
        assert info_refs(server, repo)[2] == truth(repo_path)
        assert info_refs(server, repo, "version=1")[2] == truth(repo_path, "version=1")
        assert info_refs(server, repo, "version=2")[2] == truth(repo_path, "version=2")
        assert post_ls_refs(server, repo=repo)[2] == truth(repo_path, "version=2", LS_REFS)


def test_hits_answer_the_same_bytes_and_headers_without_git(server, gitbase, counting_git):
    repo = gitbase / "app.git"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for kind in (
        lambda: info_refs(server, conn=conn),
        lambda: info_refs(server, protocol="version=2", conn=conn),
        lambda: post_ls_refs(server, conn=conn),
    ):
        first = kind()
        n = runs(counting_git)
        second = kind()
        third = kind()
        assert runs(counting_git) == n, "a hit ran git"
        assert first[0] == second[0] == third[0] == 200
        assert first[2] == second[2] == third[2]
        for header in ("Content-Type", "Cache-Control", "Expires", "Pragma"):
            assert first[1][header] == second[1][header], header
        assert "Etag" not in second[1]
        assert int(second[1]["Content-Length"]) == len(second[2])  # keep-alive: the next request follows
    conn.close()
    assert info_refs(server)[2] == truth(repo)
    assert post_ls_refs(server)[2] == truth(repo, "version=2", LS_REFS)
    assert server.cache.hits >= 6 and len(server.cache) >= 3


def test_ls_refs_arguments_are_keyed_apart(server, gitbase, counting_git):
    repo = gitbase / "app.git"
    heads, tags = ls_refs(b"ref-prefix refs/heads/"), ls_refs(b"ref-prefix refs/tags/", b"peel")
    for body in (heads, tags, heads, tags):
        status, _, answer = post_ls_refs(server, body)
        assert status == 200 and answer == truth(repo, "version=2", body)
    assert b"refs/tags/v1.0" in post_ls_refs(server, tags)[2]
    assert b"refs/tags/" not in post_ls_refs(server, heads)[2]
    n = runs(counting_git)
    post_ls_refs(server, heads), post_ls_refs(server, tags)
    assert runs(counting_git) == n


def test_fetch_requests_are_never_answered_from_the_cache(server, gitbase, counting_git):
    repo = gitbase / "app.git"
    body = (
        pktline.encode(b"command=fetch\n")
        + pktline.DELIM
        + pktline.encode(f"want {rev(repo, 'main')}\n".encode())
        + pktline.encode(b"done\n")
        + pktline.FLUSH
    )
    for _ in range(2):
        n = runs(counting_git)
        status, _, answer = post_ls_refs(server, body)
        assert status == 200 and b"packfile\n" in answer and runs(counting_git) == n + 1


def test_receive_pack_advertisement_is_not_cached(server, counting_git):
    for _ in range(2):
        n = runs(counting_git)
        status, _, _ = request(server, "GET", "/app/info/refs?service=git-receive-pack")
        assert status == 200 and runs(counting_git) == n + 1


def _warm(server, repo_path, repo="app"):
    wait_settled(server.cache, [repo_path], server.git_path)
    assert_fresh(server, repo_path, repo)
    hits = server.cache.hits
    info_refs(server, repo)
    assert server.cache.hits == hits + 1, "not warm"


def test_never_stale_after_changes_on_disk(server, gitbase):
    repo = gitbase / "app.git"
    main, feature = rev(repo, "main"), rev(repo, "feature")
    changes = [
        ("update-ref -d", lambda: git("update-ref", "-d", "refs/heads/feature", cwd=repo)),
        ("new loose ref", lambda: git("update-ref", "refs/heads/x/y/z", feature, cwd=repo)),
        ("pack-refs --all", lambda: git("pack-refs", "--all", cwd=repo)),
        ("update a packed ref", lambda: git("update-ref", "refs/heads/main", feature, cwd=repo)),
        ("gc", lambda: git("gc", "-q", cwd=repo)),
        ("HEAD", lambda: git("symbolic-ref", "HEAD", "refs/heads/x/y/z", cwd=repo)),
        ("hideRefs", lambda: git("config", "transfer.hideRefs", "refs/tags", cwd=repo)),
        ("unhide", lambda: git("config", "--unset", "transfer.hideRefs", cwd=repo)),
        ("delete a packed ref", lambda: git("update-ref", "-d", "refs/heads/x/y/z", cwd=repo)),
        ("restore main", lambda: git("update-ref", "refs/heads/main", main, cwd=repo)),
    ]
    for name, change in changes:
        _warm(server, repo)
        before = info_refs(server)[2]
        change()
        after = info_refs(server)[2]
        assert after == truth(repo), f"stale after {name}"
        if name not in ("pack-refs --all", "gc"):  # these move refs, the list stays
            assert after != before, f"{name} changed nothing?"
        assert_fresh(server, repo)
    assert b"refs/tags/v1.0" in info_refs(server)[2]


def test_never_stale_when_refs_change_within_a_tick_of_a_cached_answer(serve, gitbase):
    """Refs change at every distance from a stored answer, down to the same tick.

    The margin here is 30 ms (production: 1 s), so answers are stored and
    changes land both inside and just outside it: a rule that let a racy
    stamp through would serve a stale list within a few dozen rounds.
    """
    margin = 0.03
    cache = AdvertCache(margin=margin)
    server = serve(access=AllowAll(), advert_cache=cache)
    repo = gitbase / "app.git"
    oids = [rev(repo, "main"), rev(repo, "feature"), rev(repo, "main~1")]
    rng = random.Random(11)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for i in range(120):
        ref = f"refs/heads/race/{rng.randrange(3)}"
        if rng.random() < 0.3:
            pass  # no change: the answer stored last round may be served
        elif rng.random() < 0.2:
            git("update-ref", "-d", ref, cwd=repo)
        else:
            git("update-ref", ref, rng.choice(oids), cwd=repo)
            if rng.random() < 0.3:  # two updates in one tick, maybe
                git("update-ref", ref, rng.choice(oids), cwd=repo)
        time.sleep(rng.choice((0, 0, margin * rng.random(), margin * (1 + rng.random()))))
        want = refs(repo)
        got = info_refs(server, conn=conn)[2]
        assert got == truth(repo), f"stale in round {i}"
        for name, oid in want.items():
            assert f"{oid} {name}".encode() in got
    conn.close()
    assert cache.hits > 10 and cache.stores > 10, cache.stats()  # the race was really run


def test_push_through_the_server_invalidates_at_once(server, gitbase, tmp_path, counting_git):
    repo = gitbase / "app.git"
    work = tmp_path / "w"
    git("clone", "-q", f"{server.url}/app", str(work))
    _warm(server, repo)
    invalidations = server.cache.invalidations
    (work / "new.txt").write_text("new\n")
    git("add", "new.txt", cwd=work)
    git("commit", "-q", "-m", "new", cwd=work)
    git("push", "-q", "origin", "main", "HEAD:refs/heads/pushed", cwd=work)
    assert server.cache.invalidations > invalidations
    assert len([k for k in server.cache._entries if k[0] == str(repo)]) == 0
    assert_fresh(server, repo)
    assert f"{rev(work, 'HEAD')} refs/heads/pushed".encode() in info_refs(server)[2]


@pytest.mark.parametrize("version", ["0", "1", "2"])
def test_clones_and_fetches_with_a_warm_cache(server, gitbase, tmp_path, version):
    repo = gitbase / "app.git"
    proto = ["-c", f"protocol.version={version}"]
    git(*proto, "clone", "-q", f"{server.url}/app", str(tmp_path / "a"))
    _warm(server, repo)
    git(*proto, "clone", "-q", f"{server.url}/app", str(tmp_path / "b"))
    assert refs(tmp_path / "b")["refs/remotes/origin/main"] == rev(repo, "main")
    git("update-ref", "refs/heads/main", rev(repo, "feature"), cwd=repo)
    git(*proto, "fetch", "-q", "origin", cwd=tmp_path / "b")
    assert refs(tmp_path / "b")["refs/remotes/origin/main"] == rev(repo, "feature")
    git("fsck", "--no-progress", cwd=tmp_path / "b")


def test_a_warm_cache_answers_no_one_the_gate_refuses(serve, gitbase, tmp_path, counting_git):
    passwords = {"alice": "alice-pw", "carol": "carol-pw"}
    path = write_access_file(tmp_path / "acl.ini", passwords, "alice = **=rw\n* = public/*=r\n")
    cold = serve(accessfile=path, advert_cache=None)
    warm_cache = AdvertCache(margin=MARGIN)
    warm = serve(accessfile=path, advert_cache=warm_cache, git=counting_git[0])
    wait_settled(warm_cache, [gitbase / "private.git"], counting_git[0])
    alice, carol, wrong = (
        {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        for pair in ("alice:alice-pw", "carol:carol-pw", "alice:wrong")
    )
    for _ in range(3):  # warm: alice's answers are in the cache
        assert info_refs(warm, "private", headers=alice)[0] == 200
        assert post_ls_refs(warm, repo="private", headers=alice)[0] == 200
    n = runs(counting_git)
    for headers in ({}, carol, wrong):
        for ask in (
            lambda s, h=headers: info_refs(s, "private", headers=h),
            lambda s, h=headers: info_refs(s, "private", "version=2", headers=h),
            lambda s, h=headers: post_ls_refs(s, repo="private", headers=h),
        ):
            got, want = ask(warm), ask(cold)
            assert got[0] == want[0] and got[0] in (401, 404), (got[0], want[0])
            assert got[2] == want[2] and b"refs/heads" not in got[2]
            assert {k: v for k, v in got[1].items() if k != "Date"} == {
                k: v for k, v in want[1].items() if k != "Date"
            }
    assert runs(counting_git) == n


def test_a_held_ls_refs_that_stalls_is_dropped_after_the_body_idle_timeout(serve, log_watch):
    """Held in memory (no git run yet), a v2 request keeps the engine's body idle timeout."""
    server = serve(advert_cache=AdvertCache(margin=MARGIN), body_idle_timeout=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /app/git-upload-pack HTTP/1.1\r\nHost: x\r\nGit-Protocol: version=2\r\n"
            b"Content-Type: "
            + UPLOAD_REQ.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(LS_REFS)
            + LS_REFS[:20]
        )
        started = time.monotonic()
        assert sock.recv(1024) == b""  # dropped, no answer
        assert time.monotonic() - started < 5
    assert "no request data" in log_watch.text()
