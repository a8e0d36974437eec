"""The Gitorious-style authorization API (``--auth-api``) against a real HTTP API server.

The API is a small Tornado app in the test process (``FakeAPI``) that records
every call. Through real git over smart HTTP, SSH (``gittornado-shell
--auth-api``) and ws:// it checks: the password goes in a POST form body and
never in a URL; a public path maps to the real path the API names, and no
further than the root; anonymous calls carry no ``username``; ``write`` decides
pushes; a denied, unreachable, slow or garbled API refuses (fails closed);
positive answers are cached; and custom hooks run after the repository's own
ones, with the same stdin, either refusing refusing the push.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

import pytest
import tornado.web
from conftest import ServerThread, git, refs, rev
from sshd_server import sshd  # noqa: F401  (the fixture)
from test_contract import config_env, credential_helper

from gittornado import AuthAPI
from gittornado.access.authapi import _Garbled, _parse_repo_config
from gittornado.access.hooks import HOOK_NAMES, HookChain

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


class FakeAPI:
    """What the API answers (``configs``) and what it was asked (``calls``)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        #: (user or None, repo_path) -> JSON-able answer (200), or (status, raw body)
        self.configs: dict[tuple[str | None, str], object] = {}
        self.server: ServerThread | None = None

    @property
    def url(self) -> str:
        return f"{self.server.url}/api/internal"

    def app(self) -> tornado.web.Application:
        api = self

        class Authenticate(tornado.web.RequestHandler):
            def post(self) -> None:
                form = {k: v[0].decode() for k, v in self.request.body_arguments.items()}
                api.calls.append(
                    {
                        "path": "authenticate",
                        "uri": self.request.uri,
                        "form": form,
                        "type": self.request.headers.get("Content-Type"),
                    }
                )
                if PASSWORDS.get(form.get("username")) != form.get("password"):
                    self.set_status(401)
                    return
                self.write({"username": form["username"]})

        class RepoConfig(tornado.web.RequestHandler):
            def get(self) -> None:
                query = {k: v[0].decode() for k, v in self.request.query_arguments.items()}
                api.calls.append({"path": "repo-config", "uri": self.request.uri, "query": query})
                answer = api.configs.get((query.get("username"), query.get("repo_path")))
                if answer is None:
                    self.set_status(404)
                elif isinstance(answer, tuple):
                    self.set_status(answer[0])
                    self.finish(answer[1])
                else:
                    self.set_header("Content-Type", "application/json")
                    self.finish(json.dumps(answer))

        return tornado.web.Application(
            [(r"/api/internal/authenticate", Authenticate), (r"/api/internal/repo-config", RepoConfig)],
            log_function=lambda handler: None,
        )  # its 5xx are on purpose

    def repo_calls(self) -> list[dict]:
        return [c for c in self.calls if c["path"] == "repo-config"]


@pytest.fixture
def api():
    fake = FakeAPI()
    fake.server = ServerThread(fake.app())
    yield fake
    fake.server.stop()


@pytest.fixture
def dead_url():
    """An API URL where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.fixture
def silent_url():
    """An API that takes the connection and never answers (slow past any timeout)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    sock.close()


# -- transports -----------------------------------------------------------------------------


class Transports:
    """URL and environment for git to reach ``repo`` as ``user`` over one transport, API mode."""

    def __init__(self, serve, gitbase: Path, tmp_path: Path, request) -> None:
        self.serve, self.gitbase, self.tmp, self.request = serve, gitbase, tmp_path, request
        self.servers: dict[str, ServerThread] = {}

    def _http(self, api_url: str) -> ServerThread:
        if api_url not in self.servers:
            self.servers[api_url] = self.serve(auth_api=api_url)
        return self.servers[api_url]

    def remote(
        self, transport: str, api_url: str, repo: str, user: str | None, password: str | None = None
    ) -> tuple[str, dict[str, str]]:
        password = PASSWORDS.get(user or "", "") if password is None else password
        helper = config_env(*credential_helper(user, password)) if user else {}
        if transport == "http":
            return f"{self._http(api_url).url}/{repo}", helper
        if transport == "ws":
            pytest.importorskip(
                "gittornado.transports.websocket", reason="the WebSocket transport is not there yet"
            )
            from test_contract import ws_env

            env = ws_env()
            env.update(helper)
            return f"ws://127.0.0.1:{self._http(api_url).port}/{repo}", env
        assert transport == "ssh" and user is not None
        server = self.request.getfixturevalue("sshd")
        server.authorize(
            {
                user: [
                    "--gitbase",
                    str(self.gitbase),
                    "--auth-api",
                    api_url,
                    "--auth-api-timeout",
                    "2",
                    "--log-file",
                    str(self.tmp / "shell.log"),
                    user,
                ]
            }
        )
        return server.url(repo), server.env(user)


@pytest.fixture
def via(serve, gitbase, tmp_path, request) -> Transports:
    return Transports(serve, gitbase, tmp_path, request)


TRANSPORTS = ["http", "ssh", "ws"]


def _commit(tmp_path: Path, gitbase: Path, name: str = "pushed.txt") -> Path:
    work = tmp_path / f"work-{name}"
    git("clone", "-q", str(gitbase / "app.git"), str(work))
    (work / name).write_text("pushed\n")
    git("add", name, cwd=work)
    git("commit", "-qm", f"add {name}", cwd=work)
    return work


# -- reads: authentication, the path mapping, anonymous, denial ----------------------------


def test_password_goes_in_a_form_body_and_the_public_path_maps(api, via, gitbase):
    git("branch", "only-in-team", "main", cwd=gitbase / "team/app.git")
    api.configs[("alice", "pub/app")] = {"real_path": "team/app.git"}
    url, env = via.remote("http", api.url, "pub/app.git", "alice")
    out = git("ls-remote", url, env=env).stdout.decode()
    assert "refs/heads/only-in-team" in out
    logins = [c for c in api.calls if c["path"] == "authenticate"]
    assert logins and logins[0]["form"] == {"username": "alice", "password": "alice-pw"}
    assert logins[0]["type"] == "application/x-www-form-urlencoded"
    assert all("alice-pw" not in c["uri"] for c in api.calls)  # never in a URL
    assert api.repo_calls()[-1]["query"] == {"username": "alice", "repo_path": "pub/app"}


def test_wrong_password_is_refused(api, via):
    api.configs[("bob", "app")] = {"real_path": "app.git"}
    url, env = via.remote("http", api.url, "app", "bob", password="not-bobs")
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0 and b"Authentication failed" in proc.stderr
    assert all("username" not in c["query"] for c in api.repo_calls())  # only git's anonymous probe


def test_anonymous_asks_without_a_username(api, via, gitbase):
    api.configs[(None, "public/lib")] = {"real_path": "public/lib.git"}
    url, env = via.remote("http", api.url, "public/lib", None)
    assert "refs/heads/main" in git("ls-remote", url, env=env).stdout.decode()
    assert api.repo_calls()[0]["query"] == {"repo_path": "public/lib"}
    # Denied to anonymous: 401, so git asks for credentials (and has none here).
    url, env = via.remote("http", api.url, "private", None)
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0 and b"could not read Username" in proc.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_denied_reads_as_not_found(api, via, transport):
    api.configs[("alice", "app")] = {"real_path": "app.git"}
    url, env = via.remote(transport, api.url, "private", "alice")  # the API says 404
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0
    assert b"not found" in proc.stderr.lower() or b"error: 404" in proc.stderr, proc.stderr


@pytest.mark.parametrize("real_path", ["../outside.git", "team/../../outside.git", "link.git"])
def test_real_path_stays_under_the_root(api, via, gitbase, tmp_path, real_path):
    shutil.copytree(gitbase / "app.git", tmp_path / "outside.git")
    os.symlink(tmp_path / "outside.git", gitbase / "link.git")
    api.configs[("alice", "app")] = {"real_path": real_path}
    url, env = via.remote("http", api.url, "app", "alice")
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0 and b"not found" in proc.stderr, proc.stderr


def test_positive_answers_are_cached(api, via, tmp_path):
    api.configs[("alice", "app")] = {"real_path": "app.git"}
    url, env = via.remote("http", api.url, "app", "alice")
    git("clone", "-q", url, str(tmp_path / "clone"), env=env)  # info/refs (twice: 401 first), a POST
    assert len([c for c in api.repo_calls() if "username" in c["query"]]) == 1
    assert len([c for c in api.calls if c["path"] == "authenticate"]) == 1


# -- writes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_write_decides_pushes(api, via, gitbase, tmp_path, transport):
    upstream = gitbase / "app.git"
    work = _commit(tmp_path, gitbase)
    api.configs[("bob", "app")] = {"real_path": "app.git", "write": False}
    api.configs[("alice", "app")] = {"real_path": "app.git", "write": True}
    before = refs(upstream)
    url, env = via.remote(transport, api.url, "app", "bob")
    proc = git("push", url, "main", cwd=work, env=env, check=False)
    assert proc.returncode != 0
    assert b"error: 403" in proc.stderr or b"may not push" in proc.stderr, proc.stderr
    assert refs(upstream) == before
    url, env = via.remote(transport, api.url, "app", "alice")
    git("push", "-q", url, "main", cwd=work, env=env)
    assert rev(upstream, "main") == rev(work, "HEAD")


# -- failing closed --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_api_refuses(via, dead_url, transport, log_watch):
    url, env = via.remote(transport, dead_url, "app", "alice")
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0
    assert b"503" in proc.stderr or b"authorization service is unavailable" in proc.stderr, proc.stderr
    if transport != "ssh":  # the shell logs to its own file
        assert "as anonymous failed (refusing): [Errno 111] Connection refused" in log_watch.text()


def test_slow_api_refuses(serve, silent_url, tmp_path):
    server = serve(access=AuthAPI(silent_url, timeout=0.3))
    env = config_env(*credential_helper("alice", "alice-pw"))
    proc = git("ls-remote", f"{server.url}/app", env=env, check=False)
    assert proc.returncode != 0 and b"503" in proc.stderr, proc.stderr


@pytest.mark.parametrize("repo", ["app", "no-such-repo"])
def test_unavailable_api_is_503_with_retry_after_for_every_repository(serve, dead_url, repo):
    """SPEC: fails closed with 503 and Retry-After, the same whether the repository exists."""
    import http.client

    server = serve(access=AuthAPI(dead_url, timeout=1))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/{repo}/info/refs?service=git-upload-pack")
    answer = conn.getresponse()
    body = answer.read()
    assert answer.status == 503, body
    assert answer.getheader("Retry-After") == "5"
    assert b"authorization service is unavailable" in body


@pytest.mark.parametrize(
    "answer",
    [
        (200, "this is not JSON"),
        (200, "[1, 2]"),
        (200, '{"write": true}'),
        (200, '{"real_path": "/srv/git/app.git"}'),
        (200, '{"real_path": "app.git", "write": "yes"}'),
        (200, '{"real_path": "app.git", "custom_pre_receive_path": "relative/hook"}'),
        (500, "oops"),
        (502, ""),
    ],
)
def test_garbled_or_failing_api_refuses(api, via, answer):
    api.configs[("alice", "app")] = answer
    url, env = via.remote("http", api.url, "app", "alice")
    proc = git("ls-remote", url, env=env, check=False)
    assert proc.returncode != 0 and b"503" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "body, error",
    [
        (b"\xff", "not JSON"),
        (b"null", "not a JSON object"),
        (b'{"real_path": ""}', "real_path"),
        (b'{"real_path": "a\\nb"}', "real_path"),
        (b'{"real_path": 7}', "real_path"),
        (b'{"real_path": "a", "write": 1}', "write"),
        (b'{"real_path": "a", "custom_update_path": ["/x"]}', "custom_update_path"),
        (b'{"real_path": "a", "custom_post_receive_path": "/x\\u0000"}', "custom_post_receive_path"),
        (b"{" + b" " * 70000 + b"}", "too large"),
    ],
)
def test_parse_repo_config_refuses(body, error):
    with pytest.raises(_Garbled, match=error):
        _parse_repo_config(body)


def test_parse_repo_config():
    config = _parse_repo_config(
        b'{"real_path": "x/y.git", "write": true, "custom_update_path": "/h/u",'
        b' "custom_pre_receive_path": null, "custom_post_receive_path": ""}'
    )
    assert (config.real_path, config.write, config.custom) == ("x/y.git", True, {"update": "/h/u"})
    assert _parse_repo_config(b'{"real_path": "a"}').write is False


@pytest.mark.parametrize("url", ["ftp://host/api", "localhost:3000", "http://host/api?x=1", "http:///api"])
def test_api_url_is_checked(url):
    with pytest.raises(ValueError):
        AuthAPI(url)


# -- custom hooks ----------------------------------------------------------------------------


def _hooks(gitbase: Path, tmp_path: Path, *, own_refuses: str = "", custom_refuses: str = "") -> Path:
    """Own and custom pre-receive/update/post-receive hooks that log "who name args" and stdin."""
    order = tmp_path / "order"
    custom_dir = tmp_path / "custom"
    custom_dir.mkdir()
    for who, directory, refuses in (
        ("own", gitbase / "app.git" / "hooks", own_refuses),
        ("custom", custom_dir, custom_refuses),
    ):
        for name in ("pre-receive", "update", "post-receive"):
            hook = directory / name
            body = f'echo "{who} {name} $*" >> "{order}"\n'
            if name != "update":
                body += f'sed "s/^/  {who} stdin: /" >> "{order}"\n'
            if name == refuses:
                body += f'echo "{who} {name} says no" >&2\nexit 1\n'
            hook.write_text(f"#!/bin/sh\n{body}")
            hook.chmod(0o755)
    return custom_dir


def _custom_config(custom_dir: Path) -> dict:
    return {
        "real_path": "app.git",
        "write": True,
        "custom_pre_receive_path": str(custom_dir / "pre-receive"),
        "custom_update_path": str(custom_dir / "update"),
        "custom_post_receive_path": str(custom_dir / "post-receive"),
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_custom_hooks_run_after_the_repositorys_own(api, via, gitbase, tmp_path, transport):
    custom_dir = _hooks(gitbase, tmp_path)
    api.configs[("alice", "app")] = _custom_config(custom_dir)
    upstream = gitbase / "app.git"
    old = rev(upstream, "main")
    work = _commit(tmp_path, gitbase)
    new = rev(work, "HEAD")
    url, env = via.remote(transport, api.url, "app", "alice")
    git("push", "-q", url, "main", cwd=work, env=env)
    assert rev(upstream, "main") == new
    line = f"{old} {new} refs/heads/main"
    assert (tmp_path / "order").read_text().splitlines() == [
        "own pre-receive ",
        f"  own stdin: {line}",
        "custom pre-receive ",
        f"  custom stdin: {line}",
        f"own update refs/heads/main {old} {new}",
        f"custom update refs/heads/main {old} {new}",
        "own post-receive ",
        f"  own stdin: {line}",
        "custom post-receive ",
        f"  custom stdin: {line}",
    ]


@pytest.mark.parametrize(
    "refuser, ran",
    [
        ("custom pre-receive", ["own pre-receive", "custom pre-receive"]),
        ("own pre-receive", ["own pre-receive"]),
        ("custom update", ["own pre-receive", "custom pre-receive", "own update", "custom update"]),
    ],
)
def test_either_refusing_refuses_the_push(api, via, gitbase, tmp_path, refuser, ran):
    who, name = refuser.split()
    custom_dir = _hooks(gitbase, tmp_path, **{f"{who}_refuses": name})
    api.configs[("alice", "app")] = _custom_config(custom_dir)
    before = refs(gitbase / "app.git")
    work = _commit(tmp_path, gitbase)
    url, env = via.remote("http", api.url, "app", "alice")
    proc = git("push", url, "main", cwd=work, env=env, check=False)
    assert proc.returncode != 0 and f"{refuser} says no".encode() in proc.stderr
    assert refs(gitbase / "app.git") == before
    logged = [
        line.rsplit(" ", 1)[0] if " refs/" in line else line.strip()
        for line in (tmp_path / "order").read_text().splitlines()
        if "stdin" not in line
    ]
    assert [" ".join(line.split()[:2]) for line in logged] == ran


def test_missing_custom_hook_refuses_the_push(api, via, gitbase, tmp_path):
    config = _custom_config(_hooks(gitbase, tmp_path))
    config["custom_pre_receive_path"] = str(tmp_path / "no-such-hook")
    api.configs[("alice", "app")] = config
    before = refs(gitbase / "app.git")
    work = _commit(tmp_path, gitbase)
    url, env = via.remote("http", api.url, "app", "alice")
    proc = git("push", url, "main", cwd=work, env=env, check=False)
    assert proc.returncode != 0 and b"custom pre-receive hook cannot be run" in proc.stderr
    assert refs(gitbase / "app.git") == before


def test_without_custom_hooks_git_runs_the_repository_as_it_is(api, via, gitbase, tmp_path):
    """No core.hooksPath when the API names no custom hook: the repository's hooks, untouched."""
    seen = tmp_path / "env"
    hook = gitbase / "app.git" / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nenv > '{seen}'\n")
    hook.chmod(0o755)
    api.configs[("alice", "app")] = {"real_path": "app.git", "write": True}
    work = _commit(tmp_path, gitbase)
    url, env = via.remote("http", api.url, "app", "alice")
    git("push", "-q", url, "main", cwd=work, env=env)
    env_seen = seen.read_text()
    assert "GIT_CONFIG_COUNT" not in env_seen and "GITTORNADO_CUSTOM" not in env_seen
    assert "GITTORNADO_USER=alice" in env_seen


def test_make_app_refuses_two_policies(tmp_path):
    import gittornado

    with pytest.raises(ValueError, match="auth_api"):
        gittornado.make_app(str(tmp_path), auth_api="http://127.0.0.1:1/api", access=object())


def test_query_is_url_encoded(api, via):
    api.configs[("alice", "team/app")] = {"real_path": "team/app.git"}
    url, env = via.remote("http", api.url, "team/app.git", "alice")
    git("ls-remote", url, env=env)
    uri = api.repo_calls()[-1]["uri"]
    assert urllib.parse.urlsplit(uri).query == "username=alice&repo_path=team%2Fapp"


def test_wrapper_directory_is_rebuilt_when_removed():
    """A temp cleaner removing the wrappers must not let git skip a custom hook silently."""

    chain = HookChain()
    first = chain.env({"update": "/bin/true"})["GIT_CONFIG_VALUE_0"]
    shutil.rmtree(first)
    again = chain.env({"update": "/bin/true"})["GIT_CONFIG_VALUE_0"]
    assert again != first and sorted(os.listdir(again)) == sorted(HOOK_NAMES)
    assert all(os.access(os.path.join(again, name), os.X_OK) for name in HOOK_NAMES)
    assert os.stat(again).st_mode & 0o777 == 0o700
    assert chain.env({}) == {}
    # Each policy has its own directory: two apps in one process share none.
    assert HookChain().directory() != again


def test_cli_takes_either_an_access_file_or_an_api(tmp_path, capsys):
    from gittornado.server.cli import main

    acl = tmp_path / "acl.ini"
    acl.write_text("")
    assert (
        main(["--gitbase", str(tmp_path), "--accessfile", str(acl), "--auth-api", "http://127.0.0.1:1/"]) == 2
    )
    assert "either --accessfile or --auth-api" in capsys.readouterr().err
