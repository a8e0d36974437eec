"""The index page (``GET /``): the repositories the requester may read, and how to clone them.

One HTML page, no JavaScript and no external assets, so it reads the same in
a phone's browser, in lynx and in a test's ``--dump-dom``. For each
repository: its name, description, default branch, the time of its last
commit and a copy-ready ``git clone`` line per transport the server offers.

It has to stay fast with 10,000 repositories, so nothing it shows costs a
git process per repository per request:

* the names come from the lookup's ``names()`` walk, repeated only when a
  directory it walked changed (``_NameCache``: one ``stat`` per directory
  instead of the lookup's full check of every repository);
* the requester is authenticated once, then authorised per name in batches,
  each a short slice of event-loop time (git transfers keep flowing);
* only the rows of the page shown (``per_page``) are looked at on disk, and
  what is read there (``description``, ``HEAD``, the last commit's time from
  one ``git for-each-ref``) is cached per repository until the files it came
  from change (``SummaryCache``).

Everything on disk is read in the WSGI thread pool, never on the event loop.
"""

from __future__ import annotations

import html
import inspect
import logging
import os
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..access.gate import Gate, OpenAccess
from ..access.repos import Repository, RepositoryLookup, is_git_dir
from ..access.rights import AccessRequest
from ..errors import GitAccessError
from .wsgi import access_request, refuse, respond, run_on_loop

__all__ = ["IndexApp", "RepoSummary", "SummaryCache", "read_description", "read_default_branch"]

app_log = logging.getLogger("gittornado.application")

#: git's own text in a new repository's ``description``: not worth showing.
_DEFAULT_DESCRIPTION = "Unnamed repository;"
#: Names authorised per trip to the event loop (each trip is one short slice of loop time).
_BATCH = 500
#: The page needs no script and nothing from elsewhere: the browser may run and load none.
_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'self'"
)
#: A Host header we repeat in clone URLs: host name or address, optional port.
_HOST = re.compile(r"[A-Za-z0-9._~\-]+(?::\d{1,5})?\Z|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?\Z")


# -- what the page reads from disk ------------------------------------------------------------


@dataclass(frozen=True)
class RepoSummary:
    """What the index shows about one repository besides its name."""

    description: str | None = None
    default_branch: str | None = None
    last_commit: int | None = None  #: committer time (Unix seconds) of the newest branch tip


def _read_small(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def read_description(git_dir: str) -> str | None:
    """The first line of ``description``, unless it is git's placeholder text."""
    text = _read_small(os.path.join(git_dir, "description"))
    if not text:
        return None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line or line.startswith(_DEFAULT_DESCRIPTION):
        return None
    return line[:300]


def read_default_branch(git_dir: str) -> str | None:
    """HEAD's branch, read from the file (no git process); None when HEAD names none."""
    head = os.path.join(git_dir, "HEAD")
    if os.path.islink(head):  # git before 1.5 wrote HEAD as a symlink
        target = os.readlink(head)
        return target[len("refs/heads/") :] if target.startswith("refs/heads/") else None
    text = _read_small(head, 1024)
    if text is None or not text.startswith("ref:"):
        return None
    ref = text[4:].strip()
    if not ref.startswith("refs/heads/") or ref == "refs/heads/.invalid":  # reftable's stub
        return None
    return ref[len("refs/heads/") :]


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _validators(git_dir: str) -> tuple:
    """What changes whenever HEAD, the description or a branch does.

    git moves a ref by renaming a lock file in the ref's directory, so the
    mtime of ``refs/heads`` and each directory below it changes with every
    branch update; ``packed-refs`` and ``HEAD`` are replaced the same way;
    reftable repositories rewrite ``reftable/tables.list``.
    """
    heads = os.path.join(git_dir, "refs", "heads")
    dirs = []
    for dirpath, _dirnames, _files in os.walk(heads):
        dirs.append((dirpath, _stamp(dirpath)))
    return (
        _stamp(os.path.join(git_dir, "HEAD")),
        _stamp(os.path.join(git_dir, "description")),
        _stamp(os.path.join(git_dir, "packed-refs")),
        _stamp(os.path.join(git_dir, "reftable", "tables.list")),
        tuple(dirs),
    )


class SummaryCache:
    """``summary(git_dir)``, recomputed only when the files it was read from change.

    Safe to share between the WSGI threads: two threads may compute the same
    entry at once, and either answer is right.
    """

    def __init__(self, git: str = "git", max_entries: int = 100_000) -> None:
        self.git = git
        self.max_entries = max_entries
        self._entries: dict[str, tuple[tuple, RepoSummary]] = {}
        self.computed = 0  #: summaries computed (not served from the cache): for tests

    def summary(self, git_dir: str) -> RepoSummary:
        validators = _validators(git_dir)
        hit = self._entries.get(git_dir)
        if hit is not None and hit[0] == validators:
            return hit[1]
        summary = RepoSummary(
            description=read_description(git_dir),
            default_branch=read_default_branch(git_dir),
            last_commit=self._last_commit(git_dir),
        )
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[git_dir] = (validators, summary)
        self.computed += 1
        return summary

    def _last_commit(self, git_dir: str) -> int | None:
        """The newest branch tip's committer time: one ``git for-each-ref``.

        Reading it without git means inflating a loose or packed (possibly
        deltified) commit; git does that right for every repository format,
        and the cache makes it once per change, not once per request.
        """
        argv = [
            self.git,
            "--git-dir",
            git_dir,
            "-c",
            f"safe.directory={git_dir}",
            "for-each-ref",
            "--count=1",
            "--sort=-committerdate",
            "--format=%(committerdate:unix)",
            "refs/heads",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, env=env, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            app_log.warning("index: cannot read the last commit of %s: %s", git_dir, exc)
            return None
        out = proc.stdout.strip()
        if proc.returncode != 0 or not out.isdigit():
            if proc.returncode != 0:
                app_log.info(
                    "index: git for-each-ref in %s failed: %s",
                    git_dir,
                    proc.stderr.decode("utf-8", "replace").strip()[:200],
                )
            return None
        return int(out)


class _NameCache:
    """``RepositoryLookup.names()``, walked again only when a directory it walked changed.

    ``names()`` checks every repository in full (containment, symlinks,
    alternates): about 150 µs each, 1.5 s for 10,000. Creating, removing or
    renaming a repository changes the mtime of its parent directory, and
    ``git init`` in an existing directory changes that directory's, so one
    ``stat`` per directory (walked the way ``names()`` walks) tells when the
    list may have changed. A change deeper inside a repository (a symlink
    swapped into ``objects/pack``) shows on the next change of the tree; the
    gate still checks the repository itself on every request for it.
    """

    def __init__(self, lookup: RepositoryLookup, max_depth: int = 4) -> None:
        self.lookup = lookup
        self.max_depth = max_depth
        self._lock = threading.Lock()
        self._signature: list | None = None
        self._names: list[str] = []
        self._is_repo: dict[str, tuple[int, bool]] = {}
        self.walks = 0  #: full ``names()`` walks so far: for tests

    def __call__(self) -> list[str]:
        signature = self._walk()  # before names(): a change during it shows next time
        with self._lock:
            if signature != self._signature:
                self._names = self.lookup.names(self.max_depth)
                self._signature = signature
                self.walks += 1
            return self._names

    def _repo(self, path: str, mtime: int, seen: dict[str, tuple[int, bool]]) -> bool:
        # A directory becomes (or stops being) a git directory only by gaining or
        # losing HEAD, objects/ or refs/, which changes its own mtime.
        hit = self._is_repo.get(path)
        found = hit[1] if hit is not None and hit[0] == mtime else is_git_dir(path)
        seen[path] = (mtime, found)
        return found

    def _walk(self) -> list[tuple[str, int]]:
        signature: list[tuple[str, int]] = []
        seen: dict[str, tuple[int, bool]] = {}
        try:
            root_mtime = os.stat(self.lookup.gitbase).st_mtime_ns
        except OSError:
            return signature
        stack = [(self.lookup.gitbase, 0, root_mtime)]
        while stack:
            path, depth, mtime = stack.pop()
            signature.append((path, mtime))
            if depth > 0 and self._repo(path, mtime, seen):
                continue
            if depth >= self.max_depth:
                continue
            try:
                with os.scandir(path) as it:
                    subdirs = [
                        e
                        for e in it
                        if e.is_dir(follow_symlinks=False)
                        and (not e.name.startswith(".") or e.name == ".git")
                    ]
            except OSError:
                continue
            if any(e.name == ".git" for e in subdirs):  # a work tree: only its .git counts
                subdirs = [e for e in subdirs if e.name == ".git"]
            for entry in subdirs:
                try:
                    child_mtime = entry.stat(follow_symlinks=False).st_mtime_ns
                except OSError:
                    continue
                stack.append((entry.path, depth + 1, child_mtime))
        self._is_repo = seen
        signature.sort()
        return signature


def cached_names(names: Callable[[], Iterable[str]]) -> Callable[[], Iterable[str]]:
    """``names`` with ``_NameCache`` in front when it is the default lookup's own walk."""
    owner = getattr(names, "__self__", None)
    if isinstance(owner, RepositoryLookup) and getattr(names, "__func__", None) is RepositoryLookup.names:
        return _NameCache(owner)
    return names


# -- the page ---------------------------------------------------------------------------------

_CSS = """\
:root{color-scheme:light dark;font-family:system-ui,sans-serif;line-height:1.45}
body{max-width:64rem;margin:0 auto;padding:.5rem 1rem}
h1{font-size:1.5rem;margin:.5rem 0}
form{margin:.5rem 0}input{font-size:1rem;max-width:100%}button{font-size:1rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.5rem .4rem;border-bottom:1px solid #8886}
td:first-child{font-weight:600;overflow-wrap:anywhere}
p{margin:0 0 .3rem}.meta{opacity:.8;font-size:.9em}
ul{list-style:none;margin:0;padding:0}li{margin:.15rem 0}
code{user-select:all;overflow-wrap:anywhere;font-size:.9em}
nav a{margin-right:1rem}footer{margin:1rem 0;font-size:.85em;opacity:.8}
@media (max-width:40rem){thead{display:none}tr,td{display:block}td{border:0;padding:.15rem 0}
tr{border-bottom:1px solid #8886;padding:.5rem 0}}
"""


def _host(environ: dict) -> str:
    """The host clients reached: the Host header when it is one, else the server's name."""
    host = environ.get("HTTP_HOST", "")
    if host and _HOST.match(host):
        return host
    name, port = environ.get("SERVER_NAME", "localhost"), environ.get("SERVER_PORT", "")
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


def clone_urls(environ: dict, prefix: str, name: str, ssh_url: str | None = None) -> list[tuple[str, str]]:
    """(transport, URL) for every transport the server offers, as the client sees the server.

    ``wsgi.url_scheme`` is already the client's scheme behind a proxy with
    ``--xheaders`` (Tornado applies ``X-Forwarded-Proto``); ws(s) follows it.
    """
    scheme = "https" if environ.get("wsgi.url_scheme") == "https" else "http"
    path = f"{prefix}/{urllib.parse.quote(name, safe='/')}.git"
    host = _host(environ)
    urls = [("HTTP" if scheme == "http" else "HTTPS", f"{scheme}://{host}{path}")]
    urls.append(("WebSocket", f"{'wss' if scheme == 'https' else 'ws'}://{host}{path}"))
    if ssh_url:
        urls.append(("SSH", f"{ssh_url}{name}.git"))
    return urls


def _when(ts: int) -> str:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return f'<time datetime="{iso}">{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))}</time>'


class IndexApp:
    """The default WSGI app: an HTML list of the repositories the requester may read.

    Credentials are honoured when sent (checked once per page, however many
    repositories it lists); a request with wrong ones is asked again (401).

    :arg names: the repository names (``RepositoryLookup.names``: cached by
        directory mtimes, see ``_NameCache``).
    :arg ssh_url: prefix of SSH clone URLs (``git@host:``) when SSH is offered.
    :arg browse: link each name to its page in the code browser (``--web``).
    :arg per_page: rows per page (``?page=N``); ``?q=text`` filters by name.
    :arg git: the git executable (for the last commit's time).
    """

    def __init__(
        self,
        gate: Gate,
        names: Callable[[], Iterable[str]],
        prefix: str = "",
        realm: str = "gittornado",
        title: str = "gittornado",
        *,
        ssh_url: str | None = None,
        browse: bool = False,
        per_page: int = 100,
        git: str = "git",
        summaries: SummaryCache | None = None,
    ) -> None:
        if per_page < 1:
            raise ValueError("per_page must be at least 1")
        self.gate, self.names, self.prefix = gate, cached_names(names), prefix.rstrip("/")
        self.realm, self.title, self.ssh_url, self.browse = realm, title, ssh_url, browse
        self.per_page = per_page
        self.summaries = summaries if summaries is not None else SummaryCache(git)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (self.prefix + "/", self.prefix or "/"):
            return respond(start_response, 404, "not found\n")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return respond(start_response, 405, "method not allowed\n", headers=[("Allow", "GET, HEAD")])
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        search = query.get("q", [""])[0].strip()[:200]
        try:
            page = max(1, min(int(query.get("page", ["1"])[0]), 1_000_000))
        except ValueError:
            page = 1
        try:
            request = run_on_loop(environ, self.gate.authenticate(access_request(environ)))
            if "login" in query and request.credentials is None and self.signs_in:
                return self._challenge(start_response)
            names = self._readable(environ, request, search)
        except GitAccessError as exc:
            return refuse(start_response, exc, self.realm)
        pages = max(1, -(-len(names) // self.per_page))
        page = min(page, pages)
        shown = names[(page - 1) * self.per_page : page * self.per_page]
        rows = [(name, self._summary(environ, name)) for name in shown]
        body = self.render(
            environ,
            rows,
            total=len(names),
            page=page,
            pages=pages,
            search=search,
            signed_in=request.credentials is not None,
            user=request.user,
        )
        headers = [
            ("Vary", "Authorization"),
            ("Content-Security-Policy", _POLICY),
            ("X-Content-Type-Options", "nosniff"),
        ]
        return respond(start_response, 200, body, "text/html; charset=utf-8", headers)

    @property
    def signs_in(self) -> bool:
        """Whether credentials can change what the page lists (not with the open policy)."""
        return not isinstance(self.gate.access, OpenAccess)

    def _challenge(self, start_response: Callable) -> list[bytes]:
        """401 for ``?login``: the browser asks for a password and shows the page again with it.

        Browsers send Basic credentials only after a challenge, and then to
        every URL at or below the challenged one's directory: a challenge on
        the root's own URL makes them send credentials for the whole site
        (the repositories' pages included).
        """
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>Sign in</title></head><body><p>Sign-in needed. "
            f'<a href="{html.escape(self.prefix)}/">Back to the list</a></p></body></html>\n'
        )
        challenge = ("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"')
        return respond(start_response, 401, page, "text/html; charset=utf-8", [challenge])

    def _readable(self, environ: dict, request: AccessRequest, search: str) -> list[str]:
        """The names matching ``search`` that ``request`` (authenticated) may read, in order.

        Walking the directory tree happens here, in the WSGI thread pool; only
        the access decisions run on the event loop, a batch at a time.
        """
        names = list(self.names())
        if search:
            needle = search.casefold()
            names = [n for n in names if needle in n.casefold()]
        readable: list[str] = []
        for start in range(0, len(names), _BATCH):
            readable += run_on_loop(environ, self.gate.readable(names[start : start + _BATCH], request))
        return readable

    def _summary(self, environ: dict, name: str) -> RepoSummary | None:
        try:
            found = self._lookup(environ, name)
        except Exception:
            app_log.exception("index: looking up %r failed", name)
            return None
        if found is None:
            return None
        return self.summaries.summary(found.path if isinstance(found, Repository) else str(found))

    def _lookup(self, environ: dict, name: str) -> Any:
        lookup = self.gate.lookup
        result = (getattr(lookup, "lookup", None) or lookup)(name)
        if inspect.isawaitable(result):

            async def wait() -> Any:
                return await result

            result = run_on_loop(environ, wait())
        return result

    # -- HTML -----------------------------------------------------------------------------------
    def _row(self, environ: dict, name: str, summary: RepoSummary | None) -> str:
        esc = html.escape
        if self.browse:
            href = f"{self.prefix}/{urllib.parse.quote(name, safe='/')}.git/"
            title = f'<a href="{esc(href)}">{esc(name)}</a>'
        else:
            title = esc(name)
        parts = []
        if summary is not None:
            if summary.description:
                parts.append(f'<p class="desc">{esc(summary.description)}</p>')
            meta = []
            if summary.default_branch:
                meta.append(f"default branch <b>{esc(summary.default_branch)}</b>")
            meta.append(
                f"last commit {_when(summary.last_commit)}" if summary.last_commit else "no commits yet"
            )
            parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
        urls = "".join(
            f"<li>{esc(label)}: <code>git clone {esc(url)}</code></li>"
            for label, url in clone_urls(environ, self.prefix, name, self.ssh_url)
        )
        parts.append(f'<ul class="clone">{urls}</ul>')
        return f"<tr><td>{title}</td><td>{''.join(parts)}</td></tr>"

    def _link(self, page: int, search: str) -> str:
        query = urllib.parse.urlencode([("q", search)] * bool(search) + [("page", str(page))])
        return html.escape(f"{self.prefix}/?{query}")

    def render(
        self,
        environ: dict,
        rows: list[tuple[str, RepoSummary | None]],
        *,
        total: int,
        page: int = 1,
        pages: int = 1,
        search: str = "",
        signed_in: bool = False,
        user: str | None = None,
    ) -> str:
        esc = html.escape
        title = esc(self.title)
        if signed_in:
            who = f"<p>Signed in as <b>{esc(user)}</b>.</p>" if user else ""
        elif self.signs_in:
            who = f'<p><a href="{esc(self.prefix)}/?login">Sign in</a> to see private repositories.</p>'
        else:
            who = ""
        body = "\n".join(self._row(environ, name, summary) for name, summary in rows)
        if not body:
            what = "matching that name" if search else "you may read"
            body = f'<tr><td colspan="2">No repositories {what}.</td></tr>'
        count = f"{total} repositor{'y' if total == 1 else 'ies'}"
        if search:
            count += f" matching “{esc(search)}”"
        if pages > 1:
            count += f", page {page} of {pages}"
        nav = []
        if page > 1:
            nav.append(f'<a href="{self._link(page - 1, search)}" rel="prev">« previous</a>')
        if page < pages:
            nav.append(f'<a href="{self._link(page + 1, search)}" rel="next">next »</a>')
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{title}</title>\n<style>\n{_CSS}</style></head>\n'
            f"<body><header><h1>{title}</h1>\n"
            f'<form method="get" action="{esc(self.prefix)}/" role="search">'
            f'<input type="search" name="q" value="{esc(search)}" placeholder="name contains…" '
            'aria-label="Filter repositories by name"> <button type="submit">Filter</button></form>'
            f"{who}</header>\n<main>\n<p>{count}</p>\n<table>\n"
            "<thead><tr><th>Repository</th><th>About and clone</th></tr></thead>\n<tbody>\n"
            f"{body}\n</tbody></table>\n"
            + (f"<nav>{' '.join(nav)}</nav>\n" if nav else "")
            + "</main>\n<footer>ws:// and wss:// URLs need git's remote helper for WebSocket: "
            "<code>pip install gittornado</code>.</footer>\n</body></html>\n"
        )
