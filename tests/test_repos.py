"""Repository lookup: names, nesting, work trees, and every way out of the root refused.

Also what an attack run found: repositories that read outside the root
through symlinks, and refusals whose timing told an existing private
repository from a missing one.
"""

import gc
import http.client
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

import pytest
from conftest import git, wait_for, write_access_file

import gittornado
from gittornado.access.accessfile import AccessFile
from gittornado.access.gate import Gate
from gittornado.access.repos import RepositoryLookup, has_encoded_separator, normalize_name
from gittornado.access.rights import AccessRequest, Credentials
from gittornado.errors import NotFound, Unauthorized
from gittornado.protocol.services import READ


@pytest.mark.parametrize(
    "name,expected",
    [
        ("app", "app"),
        ("app.git", "app"),
        ("/app.git/", "app"),
        ("team/app.git", "team/app"),
        ("a/b/c", "a/b/c"),
    ],
)
def test_normalize_name(name, expected):
    assert normalize_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "..",
        "../app",
        "team/../app",
        "./app",
        "a//b",
        "app\x00",
        "a\\b",
        ".git",
        "-app",
        "team/-x",
        "..git/..",
        "x/.git/..",
    ],
)
def test_normalize_name_refuses(name):
    assert normalize_name(name) is None


@pytest.mark.parametrize(
    "raw,bad",
    [
        ("/team%2fapp/info/refs", True),
        ("/a%2F", True),
        ("/a%5cb", True),
        ("/a%00", True),
        ("/a%2e%2e/b", False),
        ("/team/app", False),
    ],
)
def test_encoded_separator(raw, bad):
    assert has_encoded_separator(raw) is bad


def test_lookup_forms(gitbase):
    lookup = RepositoryLookup(str(gitbase))
    app = lookup.lookup("app")
    assert app is not None and app.path == os.path.realpath(gitbase / "app.git") and app.name == "app"
    assert lookup.lookup("app.git") == app
    assert lookup.lookup("team/app").path == os.path.realpath(gitbase / "team" / "app.git")
    w = lookup.lookup("w")
    assert w.path == os.path.realpath(gitbase / "w" / ".git")
    assert lookup.lookup("missing") is None
    assert lookup.lookup("team") is None  # a plain directory is not a repository


def test_names_lists_every_repository(gitbase):
    assert RepositoryLookup(str(gitbase)).names() == ["app", "private", "public/lib", "team/app", "w"]


def test_symlink_out_of_root_is_not_found(tmp_path, gitbase, fixture_repo):
    outside = tmp_path / "outside.git"
    git("clone", "-q", "--bare", str(fixture_repo), str(outside))
    (gitbase / "evil.git").symlink_to(outside)
    (gitbase / "team" / "up").symlink_to(tmp_path)
    lookup = RepositoryLookup(str(gitbase))
    assert lookup.lookup("evil") is None
    assert lookup.lookup("team/up/outside") is None
    assert "evil" not in lookup.names()


def test_symlink_inside_root_is_followed(gitbase):
    (gitbase / "alias.git").symlink_to(gitbase / "app.git")
    assert RepositoryLookup(str(gitbase)).lookup("alias").path == os.path.realpath(gitbase / "app.git")


def test_root_given_through_a_symlink(tmp_path, gitbase):
    link = tmp_path / "link"
    link.symlink_to(gitbase)
    assert RepositoryLookup(str(link)).lookup("app") is not None


def test_dotdot_never_reaches_a_sibling(tmp_path, gitbase, fixture_repo):
    git("clone", "-q", "--bare", str(fixture_repo), str(tmp_path / "sibling.git"))
    lookup = RepositoryLookup(str(gitbase))
    for name in ("../sibling", "../sibling.git", "team/../../sibling", "app/../../sibling"):
        assert lookup.lookup(name) is None


# -- links that lead out of the root (finding 4) ---------------------------------------------------


def _outside_repo(tmp_path, fixture_repo):
    outside = tmp_path / "outside" / "secret.git"
    git("clone", "-q", "--bare", str(fixture_repo), str(outside))
    return outside


def _borrowing(gitbase, name: str) -> "os.PathLike":
    """A bare repository in the root made by hand (HEAD, config), to be given borrowed parts."""
    repo = gitbase / name
    repo.mkdir()
    (repo / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
    return repo


@pytest.mark.parametrize(
    "what", ["objects", "refs", "both", "pack", "pack-file", "alternates", "commondir", "HEAD"]
)
def test_repository_reading_outside_the_root_is_not_found(tmp_path, gitbase, fixture_repo, what, log_watch):
    """Symlinks (or alternates, commondir) that make a repository in the root read one outside.

    Before: served (git http-backend does the same). Now: as missing as no
    repository, with one warning naming the link, unless the admin allows it.
    """
    outside = _outside_repo(tmp_path, fixture_repo)
    if what in ("objects", "refs", "both"):
        repo = _borrowing(gitbase, "borrow.git")
        for part in ("objects", "refs") if what == "both" else (what,):
            (repo / part).symlink_to(outside / part)
        if what != "both":  # the other part: a real, empty one
            other = "refs" if what == "objects" else "objects"
            (repo / other).mkdir()
            if other == "objects":
                (repo / "objects" / "pack").mkdir()
    else:
        repo = gitbase / "borrow.git"
        shutil.copytree(gitbase / "app.git", repo)
        if what == "pack":
            shutil.rmtree(repo / "objects" / "pack")
            (repo / "objects" / "pack").symlink_to(outside / "objects" / "pack")
        elif what == "pack-file":
            packs = outside / "objects" / "pack"
            for f in os.listdir(packs):
                if f.endswith(".pack"):
                    (repo / "objects" / "pack" / ("pack-0000" + f[9:])).symlink_to(packs / f)
        elif what == "alternates":
            (repo / "objects" / "info").mkdir(exist_ok=True)
            (repo / "objects" / "info" / "alternates").write_text(f"{outside / 'objects'}\n")
        elif what == "commondir":
            (repo / "commondir").write_text("../../outside/secret.git\n")
        else:
            (repo / "HEAD").unlink()
            (repo / "HEAD").symlink_to(outside / "HEAD")
    assert RepositoryLookup(str(gitbase)).lookup("borrow") is None
    lookup = RepositoryLookup(str(gitbase))
    lookup.lookup("borrow")
    lookup.lookup("borrow")
    warnings = [r.getMessage() for r in log_watch.records if "resolves outside" in r.getMessage()]
    assert len(warnings) == 2 and "--allow-external-links" in warnings[0]  # once per lookup object
    allowed = RepositoryLookup(str(gitbase), allow_external_links=True).lookup("borrow")
    assert allowed is not None and allowed.path == os.path.realpath(repo)
    assert "borrow" not in RepositoryLookup(str(gitbase)).names()


def test_links_that_stay_inside_the_root_are_fine(gitbase):
    """Sharing objects between repositories of one root (a symlink, or alternates) is the admin's own."""
    repo = _borrowing(gitbase, "fork.git")
    (repo / "objects").symlink_to(gitbase / "app.git" / "objects")
    (repo / "refs").symlink_to(gitbase / "app.git" / "refs")
    alt = gitbase / "alt.git"
    git("init", "-q", "--bare", str(alt))
    (alt / "objects" / "info" / "alternates").write_text("../../app.git/objects\n")
    lookup = RepositoryLookup(str(gitbase))
    assert lookup.lookup("fork") is not None and lookup.lookup("alt") is not None


def test_allow_external_links_also_serves_a_symlinked_repository(tmp_path, gitbase, fixture_repo):
    outside = _outside_repo(tmp_path, fixture_repo)
    (gitbase / "evil.git").symlink_to(outside)
    assert RepositoryLookup(str(gitbase)).lookup("evil") is None
    found = RepositoryLookup(str(gitbase), allow_external_links=True).lookup("evil")
    assert found is not None and found.path == os.path.realpath(outside)


def test_external_links_over_http(serve, tmp_path, gitbase, fixture_repo):
    """make_app's option end to end: refused by default (404 whoever asks), cloned when allowed."""
    outside = _outside_repo(tmp_path, fixture_repo)
    repo = _borrowing(gitbase, "borrow.git")
    (repo / "objects").symlink_to(outside / "objects")
    (repo / "refs").symlink_to(outside / "refs")
    if (outside / "packed-refs").exists():
        (repo / "packed-refs").symlink_to(outside / "packed-refs")
    refused = serve()
    proc = git("clone", "-q", f"{refused.url}/borrow", str(tmp_path / "a"), check=False)
    assert proc.returncode != 0 and b"not found" in proc.stderr
    allowed = serve(allow_external_links=True)
    git("clone", "-q", f"{allowed.url}/borrow", str(tmp_path / "b"))
    with pytest.raises(ValueError, match="allow_external_links"):
        gittornado.make_app(str(gitbase), lookup=RepositoryLookup(str(gitbase)), allow_external_links=True)


def test_cli_allow_external_links(tmp_path, gitbase, fixture_repo):
    outside = _outside_repo(tmp_path, fixture_repo)
    (gitbase / "evil.git").symlink_to(outside)
    for flag, ok in (([], False), (["--allow-external-links"], True)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "gittornado", "--address", "127.0.0.1", "--port", "0", *flag],
            cwd=gitbase,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = wait_for(
                lambda p=proc: (
                    (m := re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", p.stderr.readline()))
                    and int(m.group(1))
                ),
                message="the serving line",
            )
            result = git("ls-remote", f"http://127.0.0.1:{port}/evil", check=False)
            assert (result.returncode == 0) is ok, result.stderr
        finally:
            proc.terminate()
            proc.wait(15)


# -- timing does not tell a private repository from a missing one (finding 3) -------------------


def _mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, ties corrected)."""
    pooled = sorted([(x, 0) for x in a] + [(x, 1) for x in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    n1, n2 = len(a), len(b)
    r1 = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (u - n1 * n2 / 2) / sigma if sigma else 0.0
    return math.erfc(abs(z) / math.sqrt(2))


def _same_timing(first: list[float], second: list[float], floor: float) -> tuple[bool, str]:
    """False when the samples differ beyond noise: p < 0.001 and medians over ``floor`` apart."""
    p = _mann_whitney_p(first, second)
    gap = statistics.median(first) - statistics.median(second)
    text = (
        f"medians {1e6 * statistics.median(first):.1f} vs {1e6 * statistics.median(second):.1f} us, "
        f"p={p:.2g}, n={len(first)}"
    )
    return not (p < 1e-3 and abs(gap) > floor), text


def test_mann_whitney_sees_a_real_difference():
    rng = random.Random(5)
    same = [rng.gauss(10, 1) for _ in range(500)]
    assert _same_timing(same, [rng.gauss(10, 1) for _ in range(500)], 0.0)[0]
    assert not _same_timing(same, [rng.gauss(10.5, 1) for _ in range(500)], 0.1)[0]


@pytest.mark.parametrize("who", ["anonymous", "carol"])
async def test_refusal_time_does_not_tell_a_private_repository_from_a_missing_one(gitbase, tmp_path, who):
    """The gate, in process, many interleaved samples: a name the requester may not read is
    refused (401 anonymous, 404 for carol) in the same time whether or not it exists.

    Before, the lookup stopped at the first candidate that existed: ~20 us sooner for an
    existing repository, enough to classify a name from 25 samples over loopback.
    """
    access = AccessFile(
        write_access_file(
            tmp_path / "acl.ini", {"alice": "a", "carol": "c"}, "alice = **=rw\n* = public/*=r\n"
        )
    )
    gate = Gate(access, RepositoryLookup(str(gitbase)))
    creds = None if who == "anonymous" else Credentials("carol", "c")
    expected = Unauthorized if who == "anonymous" else NotFound
    names = {"private": [], "privat3": []}  # exists / missing; same length, same rule matching
    rng = random.Random(7)
    order = [name for _ in range(3000) for name in rng.sample(list(names), 2)]
    for name in order[:200]:  # warm caches (and the password cache) first
        with pytest.raises(expected):
            await gate.decide(AccessRequest(name, READ, creds, remote_addr="192.0.2.1"))
    gc.disable()
    try:
        for name in order:
            started = time.perf_counter()
            try:
                await gate.decide(AccessRequest(name, READ, creds, remote_addr="192.0.2.1"))
            except expected:
                pass
            names[name].append(time.perf_counter() - started)
    finally:
        gc.enable()
    same, text = _same_timing(names["private"], names["privat3"], floor=1e-6)
    assert same, f"existing and missing private names are told apart: {text}"


def test_refusal_time_over_http_is_the_same_for_existing_and_missing(acl_server):
    """The coarse end-to-end check: anonymous 401s on one keep-alive connection, interleaved."""
    conn = http.client.HTTPConnection("127.0.0.1", acl_server.port, timeout=30)
    names = {"private": [], "privat3": []}
    rng = random.Random(11)
    try:
        for i, name in enumerate(n for _ in range(600) for n in rng.sample(list(names), 2)):
            started = time.perf_counter()
            conn.request("GET", f"/{name}/info/refs?service=git-upload-pack")
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - started
            assert resp.status == 401
            if i >= 100:
                names[name].append(elapsed)
    finally:
        conn.close()
    same, text = _same_timing(names["private"], names["privat3"], floor=10e-6)
    assert same, f"existing and missing private names are told apart over HTTP: {text}"
