"""The code browser: klaus on the repositories' own URLs, behind the same gate as git.

``https://host/team/app.git`` is a clone URL (git's own requests under it are
routed to the git handlers first) and, for a browser, klaus's page of that
repository: ``/team/app.git/tree/main/``, ``/team/app.git/blob/main/README``,
``/team/app.git/commit/<sha>/``, ``/team/app.git/raw/main/README``, ...

The repository is read off the URL syntactically, never by looking on disk:
its name runs up to the first segment ending in ``.git``. So the gate is asked
about the same name whether or not such a repository exists, and answers as
SPEC's status table says (anonymous: 401 with a Basic challenge, so the
browser asks for a password; authenticated without rights, or missing: 404)
before klaus sees the request. A path with no ``.git`` segment names a
repository as a whole (``/team/app``) and is redirected to its page.

klaus is built once, with no repositories of its own: each request hands it
the one repository the gate allowed (its ``valid_repos`` answers only for
that), opened for the request and closed after it. So repositories created
later appear without a restart, and no URL trick can make klaus show a
repository the gate did not decide on. klaus never serves git (its dulwich
smart HTTP is off) and never sees proxy headers (no ``ProxyFix``): Tornado
already applied ``--xheaders``.

What a repository holds is written by whoever may push to it, and shown to
everyone who may read it, on the server's own origin (where the browser
keeps the reader's password). So:

* READMEs are rendered without raw HTML, and reStructuredText without file
  inclusion (as klaus calls docutils, ``.. include:: /etc/...`` would put
  the server's files into the page);
* every page carries a Content-Security-Policy that allows only klaus's own
  scripts (its file, and its inline snippets by hash), so injected markup
  or a ``javascript:`` link runs nothing;
* ``raw`` files are never served as HTML or script: a safe type,
  ``nosniff``, and a sandbox policy (an HTML file opened raw runs nothing
  and reaches nothing of the site).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..access.gate import Gate, Session
from ..access.repos import has_encoded_separator
from ..errors import GitAccessError, NotFound
from .wsgi import RAW_PATH_KEY, access_request, refuse, respond, run_on_loop

__all__ = ["BrowseApp", "klaus_missing", "KLAUS_MISSING"]

app_log = logging.getLogger("gittornado.application")

KLAUS_MISSING = "the code browser (--web) needs klaus: pip install 'gittornado[web]'"

#: WSGI environ keys: the repository klaus may show, and where the site is mounted.
_REPO_KEY = "gittornado.browse.repo"
_ROOT_KEY = "gittornado.browse.root"
#: klaus's CSS, JS and icon, under the server's own names (never a repository).
_STATIC = "/-/web"

try:
    import flask
    import klaus
    import klaus.repo
    from dulwich.errors import NotGitRepository
    from werkzeug.wsgi import ClosingIterator
except ImportError:  # the [web] extra is not installed: BrowseApp says so
    klaus = None  # type: ignore[assignment]
else:

    class _Repo(klaus.repo.FancyRepo):
        """A klaus repository named by its URL segment (``app.git``), for the one request."""

        def __init__(self, path: str, url_name: str) -> None:
            super().__init__(path, None)
            self._url_name = url_name

        @property
        def name(self) -> str:
            return self._url_name

        @property
        def namespaced_name(self) -> str:
            return self._url_name

    class _ThisRequestsRepo(Mapping):
        """klaus's ``valid_repos``: only the repository the gate allowed for this request."""

        def _repo(self) -> Any:
            return flask.request.environ.get(_REPO_KEY) if flask.has_request_context() else None

        def __getitem__(self, key: str) -> Any:
            repo = self._repo()
            if repo is None or repo.name != key:
                raise KeyError(key)
            return repo

        def __iter__(self) -> Iterator[str]:
            repo = self._repo()
            return iter([repo.name] if repo is not None else [])

        def __len__(self) -> int:
            return 1 if self._repo() is not None else 0

    class _Klaus(klaus.Klaus):
        """klaus with no repository list: the repository comes with each request."""

        def __init__(self, site_name: str) -> None:
            super().__init__({}, site_name, use_smarthttp=False)
            self.valid_repos = _ThisRequestsRepo()
            self.invalid_repos = {}

        def create_jinja_environment(self) -> Any:
            env = super().create_jinja_environment()
            # The pages' "git clone URL" lines: gittornado serves git on these URLs.
            env.globals["USE_SMARTHTTP"] = True
            return env

        def url_for(self, endpoint: str, /, **values: Any) -> str:
            # Pages of one repository are built relative to its parent (SCRIPT_NAME);
            # the site's own links go to the server's root instead.
            root = flask.request.environ.get(_ROOT_KEY, "") if flask.has_request_context() else ""
            if endpoint == "static":
                return f"{root}{_STATIC}/static/{urllib.parse.quote(values['filename'])}"
            if endpoint == "repo_list":
                return f"{root}/"
            return super().url_for(endpoint, **values)


def klaus_missing() -> str | None:
    """The one-line reason ``--web`` cannot start, or None when klaus is installed."""
    return KLAUS_MISSING if klaus is None else None


def _render_rst(content: str) -> str:
    """klaus's reStructuredText rendering, without raw HTML and without reading files."""
    from docutils.core import publish_parts
    from docutils.writers.html4css1 import Writer

    settings = {
        "initial_header_level": 2,
        "report_level": 0,
        "raw_enabled": False,
        "file_insertion_enabled": False,
        "_disable_config": True,
        "warning_stream": False,  # not onto the server's stderr
    }
    return publish_parts(content, writer=Writer(), settings_overrides=settings).get("html_body")


def _render_markdown(content: str) -> str:
    """klaus's Markdown rendering, with raw HTML shown as text."""
    import markdown

    md = markdown.Markdown(extensions=["toc", "extra"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(content)


def _safe_markup() -> None:
    """Swap klaus's README renderers (those whose library is installed) for the safe ones."""
    import klaus.markup

    safe = {".rst": _render_rst, ".md": _render_markdown}
    klaus.markup.LANGUAGES[:] = [
        (extensions, next((f for ext, f in safe.items() if ext in extensions), renderer))
        for extensions, renderer in klaus.markup.LANGUAGES
    ]


def _page_policy() -> str:
    """The Content-Security-Policy of klaus's pages: only klaus's own scripts run.

    klaus's templates have a few inline ``<script>`` blocks and ``onclick``
    handlers; they are allowed by the hash of their text (read from the
    installed templates, so they match the klaus in use). Anything else
    inline, pushed in a README for instance, is refused by the browser.
    """
    folder = os.path.join(os.path.dirname(klaus.__file__), "templates")
    hashes = set()
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            text = fh.read()
        snippets = re.findall(r"<script>(.*?)</script>", text, re.S)
        snippets += re.findall(r"\son[a-z]+=\"([^\"]*)\"", text)
        for snippet in snippets:
            if "{{" not in snippet and "{%" not in snippet:  # only text rendered as written
                digest = base64.b64encode(hashlib.sha256(snippet.encode("utf-8")).digest()).decode()
                hashes.add(f"'sha256-{digest}'")
    return (
        f"default-src 'self'; script-src 'self' 'unsafe-hashes' {' '.join(sorted(hashes))}; "
        "style-src 'self' 'unsafe-inline'; img-src * data:; object-src 'none'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
    )


#: A raw file opened in the browser: its own opaque origin, no scripts, nothing loaded.
_RAW_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: Types a raw file keeps (shown or downloaded, never run); anything else is plain text.
_RAW_KEPT = (
    "image/",
    "audio/",
    "video/",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/octet-stream",
)


def _raw_type(path: str) -> str:
    guessed = mimetypes.guess_type(path)[0] or ""
    return guessed if guessed.startswith(_RAW_KEPT) else "text/plain; charset=utf-8"


def _text(wsgi_str: str) -> str:
    """A WSGI (latin-1) path string as the UTF-8 text the client meant; NotFound if it is not."""
    try:
        return wsgi_str.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise NotFound() from None


class BrowseApp:
    """WSGI app: the index page at the root, klaus on each repository's URL, the gate first.

    :arg gate: the same ``Gate`` the git handlers use.
    :arg index: the WSGI app for the root (``IndexApp``), or None for a 404 there.
    :arg prefix: mount point (``--prefix``).
    :arg realm: Basic auth realm of the 401 challenge.
    :arg site_name: the name klaus shows on every page.
    """

    def __init__(
        self,
        gate: Gate,
        *,
        index: Callable | None = None,
        prefix: str = "",
        realm: str = "gittornado",
        site_name: str = "gittornado",
    ) -> None:
        if klaus is None:
            raise ValueError(KLAUS_MISSING)
        self.gate, self.index, self.prefix, self.realm = gate, index, prefix.rstrip("/"), realm
        self.klaus = _Klaus(site_name)
        _safe_markup()
        self.page_policy = _page_policy()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return respond(start_response, 404, "not found\n")
        rel = path[len(self.prefix) :]
        if rel in ("", "/"):
            if self.index is None:
                return respond(start_response, 404, "not found\n")
            return self.index(environ, start_response)
        if rel.startswith("/-/"):  # the server's own names: only klaus's static files here
            if not rel.startswith(_STATIC + "/static/"):
                return respond(start_response, 404, "not found\n")
            return self._klaus(environ, start_response, self.prefix + _STATIC, rel[len(_STATIC) :])
        try:
            if has_encoded_separator(environ.get(RAW_PATH_KEY, "")):
                raise NotFound()
            return self._repository(environ, start_response, rel)
        except GitAccessError as exc:
            return refuse(start_response, exc, self.realm)

    def _decide(self, environ: dict, name: str) -> Session:
        return run_on_loop(environ, self.gate.decide(access_request(environ, name)))

    def _repository(self, environ: dict, start_response: Callable, rel: str) -> Any:
        segments = rel[1:].split("/")
        at = next((i for i, s in enumerate(segments) if s.endswith(".git") and s != ".git"), None)
        if at is None:
            # "/team/app": the repository as a whole; its pages live under "team/app.git/".
            name = _text(rel.strip("/"))
            self._decide(environ, name)
            location = f"{self.prefix}/{urllib.parse.quote(name)}.git/"
            return respond(start_response, 302, f"see {location}\n", headers=[("Location", location)])
        session = self._decide(environ, _text("/".join(segments[: at + 1])))
        parent = "/".join(segments[:at])
        try:
            repo = _Repo(session.repo.path, _text(segments[at]))
        except (OSError, NotGitRepository) as exc:  # e.g. a layout dulwich does not read
            app_log.warning("browse: cannot open %s: %s", session.repo.path, exc)
            raise NotFound() from None
        environ[_REPO_KEY] = repo
        raw = len(segments) > at + 1 and segments[at + 1] == "raw"
        policy = self.page_policy

        def safe_start(status: str, headers: list, exc_info: Any = None) -> Any:
            # klaus serves a file's bytes with no type at all (the browser would sniff
            # one); by URL or by that, such an answer gets a type that never runs.
            typed = any(k.lower() == "content-type" and v.strip() for k, v in headers)
            file_bytes = raw or not typed
            headers = [(k, v) for k, v in headers if not file_bytes or k.lower() != "content-type"]
            if file_bytes:
                headers += [
                    ("Content-Type", _raw_type(segments[-1])),
                    ("Content-Security-Policy", _RAW_POLICY),
                ]
            else:
                headers.append(("Content-Security-Policy", policy))
            headers.append(("X-Content-Type-Options", "nosniff"))
            return start_response(status, headers, exc_info)

        try:
            rest = "/" + "/".join(segments[at:])
            result = self._klaus(environ, safe_start, self.prefix + ("/" + parent if parent else ""), rest)
        except BaseException:
            repo.close()
            raise
        return ClosingIterator(result, [repo.close])

    def _klaus(self, environ: dict, start_response: Callable, script_name: str, path_info: str) -> Any:
        environ[_ROOT_KEY] = self.prefix
        environ["SCRIPT_NAME"] = script_name
        environ["PATH_INFO"] = path_info
        return self.klaus(environ, start_response)
