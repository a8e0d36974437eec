"""The index page (``GET /``): the repositories the requester may read, and how to clone them.

One HTML page, no JavaScript and no external assets, so it reads the same in
a phone's browser, in lynx and in a test's ``--dump-dom``. For each
repository: its name, description, default branch, the time of its last
commit and a copy-ready ``git clone`` line per transport the server offers.

It has to stay fast with 10,000 repositories, so nothing it shows costs a
git process per repository per request:

* the names come from the lookup's ``names()`` walk, repeated only when a
  directory it walked changed (``summaries._NameCache``);
* the requester is authenticated once, then authorised per name in batches,
  each a short slice of event-loop time (git transfers keep flowing);
* only the rows of the page shown (``per_page``) are looked at on disk, and
  what is read there is cached per repository until the files it came from
  change (``summaries.SummaryCache``).

The names and the summaries are read in the WSGI thread pool. The gate's
decisions and the repository lookup run on the event loop, one short trip
each, the way the gate itself calls them (``legacy.call_hook``).
"""

from __future__ import annotations

import html
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable

from ..access.gate import Gate, OpenAccess
from ..access.legacy import call_hook
from ..access.repos import Repository
from ..access.rights import AccessRequest
from ..errors import GitAccessError
from .summaries import RepoSummary, SummaryCache, cached_names
from .wsgi import access_request, refuse, respond, run_on_loop

__all__ = ["IndexApp", "clone_urls"]

app_log = logging.getLogger("gittornado.application")

#: Names authorised per trip to the event loop (each trip is one short slice of loop time).
_BATCH = 500
#: The page needs no script and nothing from elsewhere: the browser may run and load none.
_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'self'"
)
#: A Host header we repeat in clone URLs: host name or address, optional port.
_HOST = re.compile(r"[A-Za-z0-9._~\-]+(?::\d{1,5})?\Z|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?\Z")


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
        directory mtimes, see ``summaries._NameCache``).
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
            found = run_on_loop(environ, call_hook(self.gate.lookup, "lookup", name))
        except Exception:
            app_log.exception("index: looking up %r failed", name)
            return None
        if found is None:
            return None
        return self.summaries.summary(found.path if isinstance(found, Repository) else str(found))

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
