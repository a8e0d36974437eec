"""The code browser (``--web``): klaus on the repositories' own URLs, behind the gate.

Plain HTTP for every kind of klaus page under every answer of SPEC's status
table, git still served on the same URLs, and a real browser (Debian's
``chromium``, headless, ``--dump-dom``) on the index page and klaus's pages.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest
from conftest import git, rev, wait_for, write_access_file
from test_index import IndexPage

pytest.importorskip("klaus", reason="the [web] extra (klaus) is not installed")

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
RULES = "alice = **=rw\nbob = app=r, private=r\n* = public/*=r\n"

#: A secret only ``private`` holds, and a branch with a submodule (for klaus's submodule page).
EXTRA_COMMITS = """\
commit refs/heads/main
committer Alice <alice@example.com> 1700000400 +0000
data 6
secret
from refs/heads/main^0
M 100644 inline secret.txt
data 11
TOP SECRET

"""
GITMODULES = b'[submodule "vendor/lib"]\n\tpath = vendor/lib\n\turl = https://example.com/lib.git\n'
SUBMODULE_BRANCH = (
    b"commit refs/heads/with-submodule\n"
    b"committer Alice <alice@example.com> 1700000500 +0000\n"
    b"data 9\nsubmodule\n"
    b"from refs/heads/main^0\n"
    b"M 100644 inline .gitmodules\n"
    b"data %d\n%s\n"
    % (len(GITMODULES), GITMODULES)
    + b"M 160000 0123456789abcdef0123456789abcdef01234567 vendor/lib\n\n"
)


@pytest.fixture
def web(serve, gitbase, tmp_path):
    """``--web`` under an access file: alice reads all, bob app and private, carol nothing,
    anyone public/*. ``private`` has a ``secret.txt``; three repositories a submodule branch."""
    git("fast-import", "--quiet", cwd=gitbase / "private.git", input=EXTRA_COMMITS.encode())
    for repo in ("private.git", "public/lib.git", "team/app.git"):
        git("fast-import", "--quiet", cwd=gitbase / repo, input=SUBMODULE_BRANCH)
    path = write_access_file(tmp_path / "acl.ini", PASSWORDS, RULES)
    return serve(accessfile=path, web=True)


def basic(user: str, password: str | None = None) -> dict:
    password = PASSWORDS[user] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get(server, path: str, headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# -- every klaus URL kind, every row of the status table --------------------------------------

#: klaus's URL kinds (after ``/<repo>.git``) and a check of the page a reader gets.
KINDS: dict[str, tuple[str, bytes]] = {
    "summary": ("/", b"A README for the fixture repository"),
    "summary at a branch": ("/feature", b"feature.txt"),
    "history": ("/tree/main/", b"second"),
    "history of a path": ("/tree/main/hello.txt", b"second"),
    "blob": ("/blob/main/hello.txt", b"hello again"),
    "blame": ("/blame/main/hello.txt", b"hello again"),
    "raw": ("/raw/main/hello.txt", b"hello again\n"),
    "commit": ("/commit/{main}/", b"hello.txt"),
    "commit diff": ("/commit/{main}.diff", b"diff --git"),
    "commit patch": ("/commit/{main}.patch", b"+hello again"),
    "tarball": ("/tarball/main/", b"\x1f\x8b"),
    "submodule": ("/submodule/with-submodule/vendor/lib", b"https://example.com/lib.git"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_page_kind_obeys_the_status_table(web, gitbase, kind):
    suffix, expected = KINDS[kind]
    suffix = suffix.format(main=rev(gitbase / "public" / "lib.git", "main"))

    def page(repo: str, headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        return get(web, f"/{repo}.git{suffix}", headers)

    # readers get klaus's page
    for repo, headers in (("public/lib", None), ("private", basic("bob")), ("team/app", basic("alice"))):
        status, _, body = page(repo, headers)
        assert status == 200, (repo, body[:300])
        assert expected in body if expected != b"\x1f\x8b" else body.startswith(expected)
    # anonymous, not readable: 401 with a Basic challenge, whether or not it exists
    refusals = []
    for repo in ("private", "no-such-repo", "team/no-such"):
        status, headers, body = page(repo)
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="gittornado"')
        refusals.append(body)
    assert len(set(refusals)) == 1
    # authenticated without rights, or missing: 404, the same answer
    for repo, user in (
        ("private", "carol"),
        ("no-such-repo", "carol"),
        ("team/app", "bob"),
        ("nothere", "alice"),
    ):
        status, _, body = page(repo, basic(user))
        assert status == 404 and body == b"repository not found\n", (repo, user)
    # a wrong password is asked again
    assert page("public/lib", basic("alice", "wrong"))[0] == 401


def test_a_repository_url_without_git_redirects_to_its_page(web):
    status, headers, _ = get(web, "/team/app", basic("alice"))
    assert status == 302 and headers["Location"] == "/team/app.git/"
    assert get(web, "/private")[0] == 401
    assert get(web, "/private/", basic("carol"))[0] == 404
    status, headers, _ = get(web, "/app.git", basic("bob"))  # klaus's own: the page is the directory
    assert status in (301, 308) and headers["Location"].endswith("/app.git/")


def test_the_same_url_clones_and_browses(web, tmp_path):
    url = f"http://alice:alice-pw@127.0.0.1:{web.port}/team/app.git"
    git("clone", "-q", url, str(tmp_path / "c"))
    git("ls-remote", f"{web.url}/public/lib.git")
    status, _, body = get(web, "/team/app.git/", basic("alice"))
    assert status == 200 and f"git clone {web.url}/team/app.git/".encode() in body
    # git's own URLs under it are still git's (dumb HTTP here), not klaus's
    status, _, body = get(web, "/public/lib.git/HEAD")
    assert (status, body) == (200, b"ref: refs/heads/main\n")


def test_links_stay_under_the_repository(web):
    """klaus's links for a nested repository keep its whole path; the site's go to the root."""
    status, _, body = get(web, "/team/app.git/tree/main/", basic("alice"))
    assert status == 200
    links = set(re.findall(rb'href="?([^" >]+)', body))
    assert b"/team/app.git/blob/main/hello.txt" in links and b"/" in links
    assert b"/-/web/static/klaus.css" in links
    assert all(
        link.startswith((b"/team/app.git/", b"/-/web/static/", b"#", b"https://")) or link == b"/"
        for link in links
    ), links
    for link in (b"/-/web/static/klaus.css", b"/-/web/static/klaus.js"):
        assert get(web, link.decode())[0] == 200
    assert get(web, "/-/web/other")[0] == 404


def test_work_trees_and_prefix(serve, gitbase):
    server = serve(web=True, prefix="/git")
    status, _, body = get(server, "/git/w.git/blob/main/hello.txt")
    assert status == 200 and b"hello again" in body
    assert b'href="/git/w.git/' in body and b"/git/-/web/static/klaus.css" in body
    index = IndexPage(get(server, "/git/")[2])
    assert index.row("team/app").href == "/git/team/app.git/"
    assert get(server, "/w.git/")[0] == 404


def test_no_url_shows_another_repository(web):
    """klaus sees only the repository the gate decided on, however the URL is spelled."""
    tricky = [
        "/public/lib.git/../../private.git/raw/main/secret.txt",
        "/public/lib.git/%2e%2e/%2e%2e/private.git/raw/main/secret.txt",
        "/public/lib.git/raw/main/..%2f..%2fprivate.git%2fraw%2fmain%2fsecret.txt",
        "/public/lib.git/~x/private.git/raw/main/secret.txt",
        "/~public/private.git/raw/main/secret.txt",
        "/public%2flib.git/raw/main/hello.txt",
        "/private.git/raw/main/secret.txt",
        "/public/../private.git/raw/main/secret.txt",
    ]
    for path in tricky:
        status, _, body = get(web, path)
        assert b"TOP SECRET" not in body, path
        assert status in (400, 401, 404), (path, status)
    assert get(web, "/private.git/raw/main/secret.txt", basic("bob"))[2] == b"TOP SECRET\n"


# -- what a pusher writes runs nothing and reads nothing --------------------------------------

HOSTILE = """\
blob
mark :1
data <<EOT
Title
=====

.. include:: {secret}

.. raw:: html

   <script>document.title='pwned'</script>
EOT

blob
mark :2
data <<EOT
# Hi

<script>document.title='pwned'</script>

<img src=x onerror="document.title='pwned'">
EOT

blob
mark :3
data <<EOT
<html><script>document.title='pwned'</script></html>
EOT

commit refs/heads/main
committer Mallory <m@example.com> 1700000000 +0000
data 7
hostile
M 100644 :1 README.rst
M 100644 :2 NOTES.md
M 100644 :3 page.html
M 100644 :3 page.svg

"""


@pytest.fixture
def hostile(serve, gitbase, tmp_path):
    """An open server with ``public/hostile``: a README.rst that includes a server file and
    raw HTML, a Markdown file with script, and HTML/SVG files."""
    secret = tmp_path / "server-secret.txt"
    secret.write_text("SERVER SECRET\n")
    repo = gitbase / "public" / "hostile.git"
    git("init", "-q", "--bare", str(repo))
    git("fast-import", "--quiet", cwd=repo, input=HOSTILE.format(secret=secret).encode())
    return serve(web=True)


def test_rst_reads_no_server_file_and_embeds_no_html(hostile):
    pytest.importorskip("docutils", reason="docutils (klaus's reStructuredText renderer) is not installed")
    for path in ("/public/hostile.git/", "/public/hostile.git/blob/main/README.rst"):
        status, _, body = get(hostile, path)
        assert status == 200 and b"Title" in body
        assert b"SERVER SECRET" not in body and b"<script>document.title" not in body


def test_markdown_shows_html_as_text(hostile):
    pytest.importorskip("markdown", reason="markdown (klaus's Markdown renderer) is not installed")
    status, _, body = get(hostile, "/public/hostile.git/blob/main/NOTES.md")
    assert status == 200 and b'<h1 id="hi">Hi</h1>' in body
    assert b"<script>document.title" not in body and b"<img src=x" not in body
    assert b"&lt;script&gt;document.title" in body


def test_pages_allow_only_klaus_scripts(hostile):
    _, headers, _ = get(hostile, "/public/hostile.git/commit/main/")
    policy = headers["Content-Security-Policy"]
    assert (
        "script-src 'self' 'unsafe-hashes' 'sha256-" in policy and "unsafe-inline" not in policy.split(";")[1]
    )
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "name, ctype", [("page.html", "text/plain; charset=utf-8"), ("page.svg", "image/svg+xml")]
)
def test_raw_files_are_never_html_or_script(hostile, name, ctype):
    status, headers, body = get(hostile, f"/public/hostile.git/raw/main/{name}")
    assert status == 200 and body.startswith(b"<html><script>")
    assert headers["Content-Type"] == ctype and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("sandbox;")


def test_new_repositories_appear_without_a_restart(web, gitbase, fixture_repo):
    assert get(web, "/public/new.git/")[0] == 404  # readable by anyone, not there yet
    shutil.copytree(fixture_repo, gitbase / "public" / "new.git")
    status, _, body = get(web, "/public/new.git/blob/main/hello.txt")
    assert status == 200 and b"hello again" in body
    assert "public/new" in IndexPage(get(web, "/")[2]).names()


def test_index_links_to_the_browser(web):
    index = IndexPage(get(web, "/", basic("alice"))[2])
    assert index.row("team/app").href == "/team/app.git/"
    assert index.row("w").href == "/w.git/"


def test_server_py_embeds_klaus_as_the_fallback(gitbase):
    """server.py: klaus on the repositories' URLs inside one's own app, the app's UI elsewhere."""
    import importlib.util

    from conftest import ServerThread

    path = os.path.join(os.path.dirname(__file__), "..", "server.py")
    spec = importlib.util.spec_from_file_location("example_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = ServerThread(module.make_app(str(gitbase)))
    try:
        status, _, body = get(server, "/team/app.git/blob/main/hello.txt")
        assert status == 200 and b"hello again" in body and b"/-/web/static/klaus.css" in body
        assert get(server, "/-/web/static/klaus.css")[0] == 200
        assert get(server, "/nothere.git/")[0] == 404
        assert get(server, "/anything")[2].startswith(b"Your web UI here")
        git("ls-remote", f"{server.url}/team/app.git")
    finally:
        server.stop()


# -- the command line --------------------------------------------------------------------------


def test_gittornado_web_serves_and_clones_from_one_url(gitbase, tmp_path):
    """``gittornado --web`` in a directory of repositories: browse and clone the same URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gittornado", "--web", "--address", "127.0.0.1", "--port", "0"],
        cwd=gitbase,
        stderr=subprocess.PIPE,
        text=True,
    )

    def port():
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)/", proc.stderr.readline())
        return m and int(m.group(1))

    try:
        base = f"http://127.0.0.1:{wait_for(port, message='the serving line')}"
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=60)
        conn.request("GET", "/team/app.git/blob/main/hello.txt")
        resp = conn.getresponse()
        assert resp.status == 200 and b"hello again" in resp.read()
        conn.close()
        git("clone", "-q", f"{base}/team/app.git", str(tmp_path / "c"))
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()


def test_web_without_klaus_fails_at_start_with_one_line(tmp_path, gitbase):
    shadow = tmp_path / "shadow"
    (shadow / "klaus").mkdir(parents=True)
    (shadow / "klaus" / "__init__.py").write_text("raise ImportError('No module named klaus')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow))
    proc = subprocess.run(
        [sys.executable, "-m", "gittornado", "--web", "--port", "0", "--gitbase", str(gitbase)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "gittornado: the code browser (--web) needs klaus: pip install 'gittornado[web]'"
    ]
    proc = subprocess.run(
        [sys.executable, "-c", "import gittornado; gittornado.make_app('.', web=True)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "ValueError: the code browser (--web) needs klaus: pip install 'gittornado[web]'"
    )


def test_web_and_fallback_exclude_each_other():
    import gittornado

    with pytest.raises(ValueError, match="either web or fallback"):
        gittornado.make_app(".", web=True, fallback=lambda environ, start_response: [])


# -- a real browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium to run headless (Debian: apt-get install chromium)"
)


def dump_dom(url: str, profile, console: list[str] | None = None) -> str:
    """The DOM chromium built for ``url`` after its load event (scripts run, subresources loaded).

    ``console``, when given, receives the page's console messages (CSP refusals among them).
    """
    proc = subprocess.run(
        [
            CHROMIUM,
            "--enable-logging=stderr",
            "--v=0",
            "--disable-dev-shm-usage",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    if console is not None:
        console += [line for line in proc.stderr.decode(errors="replace").splitlines() if "CONSOLE" in line]
    return proc.stdout.decode("utf-8")


def title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    return m.group(1).strip() if m else ""


@needs_chromium
def test_browser_index_anonymous_and_signed_in(web, tmp_path):
    console: list[str] = []
    anonymous = IndexPage(dump_dom(f"{web.url}/", tmp_path / "p1", console).encode())
    assert not console, console  # nothing refused, nothing failed to load
    assert anonymous.names() == ["public/lib"]
    assert "Sign in" in anonymous.text
    # "Sign in" (?login) answers 401; the browser then sends the URL's credentials
    alice = IndexPage(
        dump_dom(f"http://alice:alice-pw@127.0.0.1:{web.port}/?login", tmp_path / "p2").encode()
    )
    assert alice.names() == ["app", "private", "public/lib", "team/app", "w"]
    assert "Signed in as alice" in alice.text


@needs_chromium
def test_browser_klaus_pages(web, tmp_path):
    dom = dump_dom(
        f"http://bob:bob-pw@127.0.0.1:{web.port}/private.git/blob/main/secret.txt", tmp_path / "p1"
    )
    assert "TOP SECRET" in dom and 'href="/private.git/raw/main/secret.txt"' in dom
    assert "secret.txt - private.git (main) - gittornado" in re.sub(r"\s+", " ", title(dom))
    # klaus's stylesheet reached the page (served under /-/web/static/)
    assert 'href="/-/web/static/klaus.css"' in dom
    dom = dump_dom(f"{web.url}/private.git/blob/main/secret.txt", tmp_path / "p2")  # no password: 401
    assert "TOP SECRET" not in dom and "hello" not in dom
    # klaus's own inline scripts and onclick handlers pass the page's policy
    console: list[str] = []
    dom = dump_dom(f"{web.url}/public/lib.git/commit/main/", tmp_path / "p3", console)
    assert "hello again" in dom and "second" in dom
    assert not [line for line in console if "Content Security Policy" in line], console


@needs_chromium
def test_browser_runs_nothing_a_pusher_wrote(hostile, tmp_path):
    for i, path in enumerate(["/", "/blob/main/NOTES.md", "/raw/main/page.html", "/blob/main/page.html"]):
        dom = dump_dom(f"{hostile.url}/public/hostile.git{path}", tmp_path / f"p{i}")
        assert "pwned" not in title(dom) and "SERVER SECRET" not in dom, path


@needs_chromium
def test_browser_shows_markup_names_as_text(serve, gitbase, fixture_repo, tmp_path):
    names = ["<script>", "<img src=x onerror=document.title='pwned'>"]
    for name in names:
        shutil.copytree(fixture_repo, gitbase / f"{name}.git")
    server = serve(web=True)
    dom = dump_dom(f"{server.url}/", tmp_path / "p1")
    index = IndexPage(dom.encode())
    assert all(name in index.names() for name in names)
    assert title(dom) == "gittornado" and "script" not in index.tags and "img" not in index.tags
    page = f"{server.url}/{urllib.parse.quote(names[1])}.git/blob/main/hello.txt"
    dom = dump_dom(page, tmp_path / "p2")
    assert "hello again" in dom and title(dom) != "pwned"
    assert "&lt;img src=x onerror=document.title='pwned'&gt;.git" in dom
