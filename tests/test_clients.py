"""Client families other than git's own: libgit2 (through pygit2) and dulwich.

git's curl-based client forgives a lot of HTTP: it reads a close-delimited
body, for one. Other clients do not: libgit2 >= 1.9.3 takes a fetch answer
with neither ``Content-Length`` nor chunked framing for an empty body and
fails with "could not read from remote repository". The server's promise is
that *every* client library reads it (SPEC, "URLs"), so each family here
clones, fetches and pushes against a real server, with and without
credentials, and the result is checked with real git (``fsck``, ``rev-parse``)
against the repository on disk.
"""

from __future__ import annotations

import io
import urllib.parse

import pytest
from conftest import AllowAll, git, refs, rev, wait_settled

pygit2 = pytest.importorskip("pygit2")
porcelain = pytest.importorskip("dulwich.porcelain")


def _verify_clone(dest, upstream, bare: bool = False) -> None:
    """The clone is complete and sound, and its main is upstream's main."""
    git("fsck", "--full", "--strict", cwd=dest)
    main = "refs/heads/main" if bare else "HEAD"
    assert rev(dest, main) == rev(upstream, "main")
    if not bare:
        assert (dest / "hello.txt").read_text() == "hello again\n"


def _push_upstream_commit(upstream, tmp_path, name: str = "new.txt") -> str:
    """A new commit on upstream's main, pushed there with plain git (no server)."""
    work = tmp_path / f"upstream-work-{name}"
    git("clone", "-q", str(upstream), str(work))
    (work / name).write_text(f"{name}\n")
    git("add", name, cwd=work)
    git("commit", "-qm", f"add {name}", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return rev(work, "HEAD")


def _local_commit(gitbase, tmp_path, name: str = "pushed.txt"):
    """A clone of app.git (made with plain git) with one new commit on main."""
    work = tmp_path / f"work-{name}"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / name).write_text(f"{name}\n")
    git("add", name, cwd=work)
    git("commit", "-qm", f"add {name}", cwd=work)
    return work


def _with_userinfo(server, repo: str, user: str, password: str) -> str:
    quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    return f"http://{quote(user)}:{quote(password)}@127.0.0.1:{server.port}/{repo}"


# -- libgit2 (pygit2) ----------------------------------------------------------------------


class _CredentialsRefused(Exception):
    """The server answered our credentials with another 401."""


class _OneTry(pygit2.RemoteCallbacks):
    """Answers the first 401 with one user/password; a second 401 means they were refused.

    libgit2 asks again after every 401; answering the same pair forever would
    only trip the server's brute-force throttle.
    """

    def __init__(self, user: str, password: str) -> None:
        super().__init__()
        self.user, self.password = user, password
        self.asked = 0

    def credentials(self, url, username_from_url, allowed_types):
        self.asked += 1
        if self.asked > 1:
            raise _CredentialsRefused(self.user)
        return pygit2.UserPass(self.user, self.password)


def test_libgit2_clone(serve, gitbase, tmp_path):
    """The answer that broke libgit2 >= 1.9.3: a fetch over plain HTTP must be framed."""
    server = serve()
    dest = tmp_path / "clone"
    pygit2.clone_repository(f"{server.url}/app", str(dest))
    _verify_clone(dest, gitbase / "app.git")
    assert rev(dest, "refs/remotes/origin/feature") == rev(gitbase / "app.git", "feature")


def test_libgit2_clone_with_credentials(acl_server, gitbase, tmp_path):
    """libgit2 answers the 401 challenge from its credentials callback and clones."""
    dest = tmp_path / "clone"
    callbacks = _OneTry("bob", acl_server.passwords["bob"])
    pygit2.clone_repository(f"{acl_server.url}/private", str(dest), callbacks=callbacks)
    assert callbacks.asked == 1  # challenged once, and the answer was accepted
    _verify_clone(dest, gitbase / "private.git")


def test_libgit2_fetch_new_commit(serve, gitbase, tmp_path):
    """A second fetch negotiates (haves) against an existing clone and gets only what is new."""
    server = serve()
    upstream = gitbase / "app.git"
    dest = tmp_path / "clone"
    repo = pygit2.clone_repository(f"{server.url}/app", str(dest))
    new = _push_upstream_commit(upstream, tmp_path)
    repo.remotes["origin"].fetch()
    assert rev(dest, "refs/remotes/origin/main") == new == rev(upstream, "main")
    git("fsck", "--full", "--strict", cwd=dest)


def test_libgit2_push(serve, gitbase, tmp_path):
    """libgit2 pushes (receive-pack over HTTP): a branch update and a new branch land on disk."""
    server = serve(access=AllowAll())
    upstream = gitbase / "app.git"
    work = _local_commit(gitbase, tmp_path)
    repo = pygit2.Repository(str(work))
    remote = repo.remotes.create_anonymous(f"{server.url}/app")
    remote.push(["refs/heads/main:refs/heads/main", "refs/heads/main:refs/heads/topic"])
    pushed = rev(work, "HEAD")
    assert refs(upstream)["refs/heads/main"] == pushed
    assert refs(upstream)["refs/heads/topic"] == pushed
    git("fsck", "--full", "--strict", cwd=upstream)


def test_libgit2_wrong_password_fails(acl_server, tmp_path):
    """A wrong password is answered with another 401, never with the repository."""
    callbacks = _OneTry("bob", "not-the-password")
    with pytest.raises(_CredentialsRefused):
        pygit2.clone_repository(f"{acl_server.url}/private", str(tmp_path / "clone"), callbacks=callbacks)
    assert callbacks.asked == 2


def test_libgit2_anonymous_clone_of_private_repo_fails(acl_server, tmp_path):
    """Without credentials a private repository is a 401: libgit2 reports an auth failure."""
    dest = tmp_path / "clone"
    # AuthError is what libgit2 raises for a 401 it has no credentials for.
    with pytest.raises(pygit2.AuthError, match="authentication required"):
        pygit2.clone_repository(f"{acl_server.url}/private", str(dest))


# -- dulwich --------------------------------------------------------------------------------


def _quiet() -> dict:
    return {"errstream": io.BytesIO()}


@pytest.mark.parametrize("protocol_version", [0, 2])
def test_dulwich_clone(serve, gitbase, tmp_path, protocol_version):
    """dulwich reads both protocol versions' fetch answers (v2: ls-refs then fetch)."""
    server = serve()
    dest = tmp_path / "clone"
    porcelain.clone(f"{server.url}/app", str(dest), protocol_version=protocol_version, **_quiet()).close()
    _verify_clone(dest, gitbase / "app.git")
    assert rev(dest, "refs/tags/v1.0^{}") == rev(gitbase / "app.git", "main")


def test_dulwich_fetch_new_commit(serve, gitbase, tmp_path):
    """A fetch into an existing clone brings upstream's new commit (with haves sent)."""
    server = serve()
    upstream = gitbase / "app.git"
    dest = tmp_path / "clone"
    porcelain.clone(f"{server.url}/app", str(dest), **_quiet()).close()
    new = _push_upstream_commit(upstream, tmp_path)
    result = porcelain.fetch(str(dest), "origin", **_quiet())
    assert result.refs[b"refs/heads/main"].decode() == new
    assert rev(dest, "refs/remotes/origin/main") == new
    git("fsck", "--full", "--strict", cwd=dest)


@pytest.mark.parametrize("how", ["arguments", "url"])
def test_dulwich_clone_with_credentials(acl_server, gitbase, tmp_path, how):
    """Credentials given as arguments or in the URL both get through the 401."""
    password = acl_server.passwords["bob"]
    dest = tmp_path / "clone"
    if how == "arguments":
        porcelain.clone(
            f"{acl_server.url}/private", str(dest), username="bob", password=password, **_quiet()
        ).close()
    else:
        porcelain.clone(_with_userinfo(acl_server, "private", "bob", password), str(dest), **_quiet()).close()
    _verify_clone(dest, gitbase / "private.git")


def test_dulwich_wrong_password_fails(acl_server, tmp_path):
    """dulwich surfaces the 401 as an error instead of an empty clone."""
    from dulwich.client import HTTPUnauthorized

    with pytest.raises(HTTPUnauthorized):
        porcelain.clone(
            f"{acl_server.url}/private",
            str(tmp_path / "clone"),
            username="bob",
            password="not-the-password",
            **_quiet(),
        )


def test_dulwich_push(serve, gitbase, tmp_path):
    """dulwich's receive-pack request (Content-Length body, no probe) updates the ref."""
    server = serve(access=AllowAll())
    upstream = gitbase / "app.git"
    work = _local_commit(gitbase, tmp_path)
    porcelain.push(str(work), f"{server.url}/app", "refs/heads/main:refs/heads/main", **_quiet())
    assert refs(upstream)["refs/heads/main"] == rev(work, "HEAD")
    git("fsck", "--full", "--strict", cwd=upstream)


def test_dulwich_authenticated_push(acl_server, gitbase, tmp_path):
    """A push with credentials, to a server that refuses anonymous writes, lands."""
    upstream = gitbase / "app.git"
    work = _local_commit(gitbase, tmp_path)
    porcelain.push(
        str(work),
        f"{acl_server.url}/app",
        "refs/heads/main:refs/heads/topic",
        username="alice",
        password=acl_server.passwords["alice"],
        **_quiet(),
    )
    assert refs(upstream)["refs/heads/topic"] == rev(work, "HEAD")
    git("fsck", "--full", "--strict", cwd=upstream)


@pytest.mark.parametrize("protocol_version", [0, 2])
def test_libgit2_and_dulwich_clone_from_warm_caches(serve, gitbase, tmp_path, protocol_version):
    """Answers from the pack and advertisement caches read the same to other client families."""
    from gittornado.engine.advertcache import AdvertCache
    from gittornado.engine.packcache import PackCache

    packs = PackCache(str(tmp_path / "packs"))
    adverts = AdvertCache(margin=0)
    server = serve(pack_cache=packs, advert_cache=adverts)
    wait_settled(adverts, [gitbase / "app.git"])
    for i in range(2):  # the first clone fills the caches, the second is answered from them
        dest = tmp_path / f"dulwich{i}"
        porcelain.clone(f"{server.url}/app", str(dest), protocol_version=protocol_version, **_quiet()).close()
        _verify_clone(dest, gitbase / "app.git")
    for i in range(2):
        dest = tmp_path / f"libgit2-{i}"
        pygit2.clone_repository(f"{server.url}/app", str(dest))
        _verify_clone(dest, gitbase / "app.git")
    assert 1 <= packs.usage()[0] <= 2  # one pack per client family: each second clone was a hit
    assert adverts.stats()["hits"] >= 2
