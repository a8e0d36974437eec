"""The index page: what it shows per repository, that its clone lines work, and its caches.

Plain HTTP against a real server. The page is parsed as HTML (not matched
with regexes) the way a browser would see it: names, descriptions and clone
lines are text, whatever characters the repository names hold. The same page
in a real browser is in ``test_web.py``.
"""

from __future__ import annotations

import base64
import html.parser
import http.client
import os
import shutil
import time

import pytest
from conftest import git, rev, write_access_file

from gittornado.access.gate import Gate
from gittornado.access.repos import RepositoryLookup
from gittornado.web.index import IndexApp
from gittornado.web.summaries import SummaryCache, _NameCache, read_default_branch, read_description

#: The fixture's newest branch tip (``feature``): 1700000200 is 2023-11-14 22:16:40 UTC.
LAST_COMMIT = "2023-11-14 22:16 UTC"


class Row:
    def __init__(self) -> None:
        self.name = ""
        self.href: str | None = None
        self.description = ""
        self.meta = ""
        self.clone: list[str] = []


class IndexPage(html.parser.HTMLParser):
    """The rows of the index page's table, as text (entities decoded, as a browser shows them)."""

    def __init__(self, body: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[Row] = []
        self.text = ""
        self._cell = -1
        self._in: list[str] = []
        self.tags: list[str] = []
        self.feed(body.decode("utf-8"))
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "tr":
            self._cell = -1
        elif tag == "td":
            self._cell += 1
            if self._cell == 0:
                self.rows.append(Row())
        elif tag == "a" and self._cell == 0 and self.rows:
            self.rows[-1].href = attrs.get("href")
        self._in.append(f"{tag}.{attrs.get('class', '')}")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._cell = -1
        while self._in and not self._in.pop().startswith(tag + "."):
            pass

    def handle_data(self, data):
        self.text += data
        if self._cell < 0 or not self.rows or "th." in self._in:
            return
        row = self.rows[-1]
        if self._cell == 0:
            row.name += data
        elif "code." in self._in:
            row.clone.append(data)
        elif "p.desc" in self._in:
            row.description += data
        elif "p.meta" in self._in:
            row.meta += data

    def names(self) -> list[str]:
        return [r.name for r in self.rows if r.clone]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def get(server, path: str = "/", headers: dict | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def page(server, path: str = "/", headers: dict | None = None) -> IndexPage:
    status, resp_headers, body = get(server, path, headers)
    assert status == 200, body
    assert resp_headers["Content-Type"] == "text/html; charset=utf-8"
    return IndexPage(body)


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def fallback_of(app):
    """The WSGI app ``make_app`` put behind its catch-all route."""
    import gittornado

    rule = next(r for r in app.wildcard_router.rules if r.target is gittornado.FallbackHandler)
    return rule.target_kwargs["fallback"]


# -- what a row shows -------------------------------------------------------------------------


def test_a_row_shows_description_branch_last_commit_and_clone_lines(serve, gitbase):
    (gitbase / "app.git" / "description").write_text("The app: <b>bold</b> & more\n")
    server = serve(ssh_url="git@git.example.com:")
    index = page(server)
    assert index.names() == ["app", "private", "public/lib", "team/app", "w"]
    app = index.row("app")
    assert app.description == "The app: <b>bold</b> & more"  # shown as text, not markup
    assert "default branch main" in app.meta and f"last commit {LAST_COMMIT}" in app.meta
    assert app.clone == [
        f"git clone {server.url}/app.git",
        f"git clone ws://127.0.0.1:{server.port}/app.git",
        "git clone git@git.example.com:app.git",
    ]
    # git's placeholder description is not shown; a work tree is cloned by its own name
    assert index.row("team/app").description == ""
    assert index.row("w").clone[0] == f"git clone {server.url}/w.git"
    assert index.row("app").href is None  # nothing to link to without --web


def test_the_clone_lines_clone(serve, gitbase, tmp_path):
    """Copy-ready: each line, run as it is, clones (HTTP and WebSocket)."""
    server = serve()
    for i, line in enumerate(page(server).row("team/app").clone):
        dest = tmp_path / f"c{i}"
        git(*line.split()[1:], str(dest))
        assert rev(dest, "HEAD") == rev(gitbase / "team" / "app.git", "main")


def test_clone_urls_as_the_client_sees_the_server_behind_a_proxy(serve):
    server = serve(xheaders=True)
    headers = {"Host": "git.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    app = page(server, headers=headers).row("app")
    assert app.clone == [
        "git clone https://git.example.com/app.git",
        "git clone wss://git.example.com/app.git",
    ]


def test_prefix(serve):
    server = serve(prefix="/git", web=False)
    index = page(server, "/git/")
    assert index.row("team/app").clone[0] == f"git clone {server.url}/git/team/app.git"
    assert get(server, "/")[0] == 404


def test_names_are_text_never_markup(serve, gitbase, fixture_repo):
    """A repository may be named like markup; the page shows the name and runs nothing."""
    for name in ("<script>.git", "<img src=x onerror=alert(1)>.git", 'a&b "q".git', "grüße.git"):
        shutil.copytree(fixture_repo, gitbase / name)
    server = serve()
    status, _, body = get(server)
    assert status == 200
    index = IndexPage(body)
    for name in ("<script>", "<img src=x onerror=alert(1)>", 'a&b "q"', "grüße"):
        assert name in index.names()
    assert "script" not in index.tags and "img" not in index.tags
    assert b"<script>" not in body and b"<img" not in body
    # A name that needs it is percent-encoded in its clone URL, and that URL clones
    assert index.row("grüße").clone[0] == f"git clone {server.url}/gr%C3%BC%C3%9Fe.git"


def test_empty_repository_and_detached_head(serve, gitbase, fixture_repo):
    git("init", "-q", "--bare", str(gitbase / "empty.git"))
    shutil.copytree(fixture_repo, gitbase / "detached.git")
    sha = rev(fixture_repo, "main")
    (gitbase / "detached.git" / "HEAD").write_text(sha + "\n")
    index = page(serve())
    assert index.row("empty").meta == "default branch main · no commits yet"
    assert index.row("detached").meta == f"last commit {LAST_COMMIT}"


def test_read_helpers(tmp_path):
    (tmp_path / "description").write_text("Unnamed repository; edit this file 'description' to name it.\n")
    (tmp_path / "HEAD").write_text("ref: refs/heads/trunk\n")
    assert read_description(str(tmp_path)) is None
    assert read_default_branch(str(tmp_path)) == "trunk"
    (tmp_path / "description").write_text("\n  first line  \nsecond\n")
    assert read_description(str(tmp_path)) == "first line"
    (tmp_path / "HEAD").write_text("ref: refs/heads/.invalid\n")  # a reftable repository
    assert read_default_branch(str(tmp_path)) is None
    os.remove(tmp_path / "description")
    assert read_description(str(tmp_path)) is None


# -- who sees what ----------------------------------------------------------------------------


@pytest.fixture
def acl(serve, tmp_path):
    path = write_access_file(
        tmp_path / "acl.ini",
        {"alice": "alice-pw", "carol": "carol-pw"},
        "alice = **=r\n* = public/*=r\n",
    )
    return serve(accessfile=path)


def test_credentials_and_sign_in(acl):
    anonymous = page(acl)
    assert anonymous.names() == ["public/lib"]
    assert "Sign in" in anonymous.text
    assert page(acl, headers=basic("alice", "alice-pw")).names() == [
        "app",
        "private",
        "public/lib",
        "team/app",
        "w",
    ]
    assert "Signed in as alice" in page(acl, headers=basic("alice", "alice-pw")).text
    assert page(acl, headers=basic("carol", "carol-pw")).names() == ["public/lib"]
    status, headers, _ = get(acl, "/", basic("alice", "wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="gittornado"')
    # "Sign in" asks the browser for a password: 401 without credentials, the page with them
    status, headers, body = get(acl, "/?login")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert b"Back to the list" in body
    status, _, body = get(acl, "/?login", basic("alice", "alice-pw"))
    assert status == 200 and "private" in IndexPage(body).names()


def test_no_sign_in_without_an_access_policy(serve):
    server = serve()
    assert "Sign in" not in page(server).text
    assert get(server, "/?login")[0] == 200  # no credentials could change the page


def test_other_methods_and_paths(serve):
    server = serve()
    status, headers, _ = get(server, "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(server, "/nothing/here")[0] == 404


# -- many repositories: pages, filter, caches -------------------------------------------------


def make_repositories(base, template, count: int) -> None:
    """``count`` bare repositories fast: hard-linked copies of one (``git init`` each is slow)."""
    for i in range(count):
        shutil.copytree(template, base / f"repo{i:04d}.git", copy_function=os.link)


@pytest.fixture
def many(tmp_path, fixture_repo):
    base = tmp_path / "many"
    base.mkdir()
    make_repositories(base, fixture_repo, 250)
    return base


def test_pages_and_filter(serve, many):
    lookup = RepositoryLookup(str(many))
    index_app = IndexApp(Gate(None, lookup), lookup.names, per_page=100)
    server = serve(gitbase=str(many), fallback=index_app)
    first = page(server)
    assert first.names() == [f"repo{i:04d}" for i in range(100)]
    assert "250 repositories, page 1 of 3" in first.text and "next »" in first.text
    third = page(server, "/?page=3")
    assert third.names() == [f"repo{i:04d}" for i in range(200, 250)]
    assert "« previous" in third.text and "next »" not in third.text
    assert page(server, "/?page=99").names() == third.names()  # past the end: the last page
    assert page(server, "/?page=x").names() == first.names()
    found = page(server, "/?q=REPO012")
    assert found.names() == [f"repo{i:04d}" for i in range(120, 130)]
    assert "10 repositories matching “REPO012”" in found.text
    assert "No repositories matching that name." in page(server, "/?q=nothing").text


def test_the_page_reads_disk_only_for_what_changed(serve, many, tmp_path, fixture_repo):
    """Warm: no names() walk and no git process; a push, a new repository show at once."""
    lookup = RepositoryLookup(str(many))
    summaries = SummaryCache()
    index_app = IndexApp(Gate(None, lookup), lookup.names, per_page=100, summaries=summaries)
    names = index_app.names
    assert isinstance(names, _NameCache)
    server = serve(gitbase=str(many), fallback=index_app)
    page(server)
    assert (names.walks, summaries.computed) == (1, 100)
    page(server)
    assert (names.walks, summaries.computed) == (1, 100)

    # A push moves a branch: that repository's row (only) is read again.
    work = tmp_path / "work"
    git("clone", "-q", str(many / "repo0000.git"), str(work))
    (work / "new.txt").write_text("new\n")
    git("add", "new.txt", cwd=work)
    env = {"GIT_COMMITTER_DATE": "1800000000 +0000"}
    git("commit", "-q", "-m", "later", cwd=work, env=env)
    git("push", "-q", "origin", "HEAD:refs/heads/topic/later", cwd=work)
    index = page(server)
    assert (names.walks, summaries.computed) == (1, 101)
    assert "last commit 2027-01-15 08:00 UTC" in index.row("repo0000").meta

    # A new repository (and one inside a new directory) is listed on the next request.
    shutil.copytree(fixture_repo, many / "aaa-new.git")
    (many / "group").mkdir()
    assert "aaa-new" in page(server).names()
    shutil.copytree(fixture_repo, many / "group" / "nested.git")
    assert "group/nested" in page(server, "/?q=nested").names()
    git("init", "-q", "--bare", str(many / "group" / "later"))
    assert "group/later" in page(server, "/?q=later").names()
    shutil.rmtree(many / "aaa-new.git")
    assert "aaa-new" not in page(server).names()
    walks = names.walks
    page(server)
    assert names.walks == walks


def test_many_repositories_in_reasonable_time(serve, tmp_path, fixture_repo):
    """1,000 repositories: a warm page well under a second (docs/web.rst has 10,000's numbers)."""
    base = tmp_path / "big"
    base.mkdir()
    make_repositories(base, fixture_repo, 1000)
    server = serve(gitbase=str(base))
    page(server)
    started = time.monotonic()
    index = page(server)
    assert time.monotonic() - started < 1.0
    assert "1000 repositories, page 1 of 10" in index.text
