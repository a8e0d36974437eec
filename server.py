"""gittornado inside your own Tornado app: git URLs beside your handlers, a WSGI UI behind.

Run ``python server.py [GITBASE]`` and ``git clone http://127.0.0.1:8080/<repo>.git``;
with klaus installed (``pip install 'gittornado[web]'``) open the same URL in a browser.
"""

import asyncio
import hmac
import sys

import tornado.web

import gittornado


def hello_wsgi(environ, start_response):  # any WSGI app: Flask, Django, klaus, ...
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Your web UI here. git URLs on this server are handled by gittornado.\n"]


class Access:
    """An access object as an app would write it: the two protocols of ``gittornado.access.rights``.

    (The older ``check(request) -> Grant | (read, write)`` shape still works too.)
    """

    async def authenticate(self, credentials: gittornado.Credentials) -> str:
        # Look the user up in your own database here; compare in constant time.
        if not hmac.compare_digest(credentials.password.encode(), b"secret"):
            raise gittornado.BadCredentials(credentials.username)
        return credentials.username

    async def authorize(self, request: gittornado.AccessRequest) -> gittornado.Grant:
        if request.user is not None:
            return gittornado.Grant(user=request.user, read=True, write=True)
        return gittornado.Grant(user=None, read=True, write=False)  # anonymous: read only


def legacy_config(gitbase: str) -> dict:
    """The original GitTornado's config dict works unchanged:
    auth(request) -> (read, write) and gitlookup(request) -> path on disk or None."""
    repos = gittornado.RepositoryLookup(gitbase)

    def auth(request):
        return True, False  # everyone reads, nobody pushes

    def gitlookup(request):  # /legacy/<name>/...
        repo = repos.lookup(request.path.split("/")[2])
        return repo.path if repo else None

    return {"auth": auth, "gitlookup": gitlookup, "gitcommand": "git"}


class StatusHandler(tornado.web.RequestHandler):
    def get(self):
        self.write({"status": "ok"})


def make_app(gitbase: str) -> tornado.web.Application:
    # The same keyword arguments drop into any URLSpec using InfoRefsHandler,
    # RPCHandler and FileHandler directly, as the original GitTornado's did.
    config = gittornado.GitConfig.build(access=Access(), gitbase=gitbase, realm="example")
    git_routes = gittornado.routes(config=config)
    conf = legacy_config(gitbase)
    legacy_routes = [
        (r"/legacy/(?P<repo>[^/]+)/info/refs", gittornado.InfoRefsHandler, conf),
        (r"/legacy/(?P<repo>[^/]+)/(?P<service>git-[a-z-]+)", gittornado.RPCHandler, conf),
    ]
    return tornado.web.Application(
        [(r"/status", StatusHandler)]
        + legacy_routes
        + git_routes
        + browser_routes(config.gate)
        + [(r".*", gittornado.FallbackHandler, {"fallback": hello_wsgi})]
    )


def browser_routes(gate: gittornado.Gate) -> list:
    """klaus as the fallback for repository URLs (``/app.git/tree/main/``), behind the
    same gate as git: what git may not read, the browser may not see."""
    try:
        browser = gittornado.BrowseApp(gate, realm="example")
    except ValueError:  # klaus is not installed
        return []
    route = {"fallback": browser}  # one object: one thread pool for both routes
    return [
        (r"/-/web/static/.*", gittornado.FallbackHandler, route),  # its CSS and JS
        (r"/.+?\.git(?:/.*)?", gittornado.FallbackHandler, route),  # a repository's pages
    ]


async def main() -> None:
    make_app(sys.argv[1] if len(sys.argv) > 1 else ".").listen(8080)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
