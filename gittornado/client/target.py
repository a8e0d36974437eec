"""What the remote helper knows before it connects: the URL, git's settings, credentials.

* ``Target``: the repository URL git handed the helper, split (``ws``/``wss``,
  host, path, and any user and password in it);
* ``Settings``: what git's configuration and environment say for the same
  server's http(s) URL (``protocol.version``, ``http.*``, ``GIT_SSL_*``): a
  helper gets none of it from git, so it asks ``git config`` itself;
* ``_Credentials``: the URL's user and password, else ``git credential`` after
  a 401, asked for as ``http``/``https`` of the same host (they are that
  server's HTTP Basic credentials, and keychain helpers store only http(s)).

Also ``HelperError`` and the ``GITTORNADO_WS_DEBUG`` trace, which every part of
the helper uses. Only the standard library's light modules are imported: the
helper starts once per git command, before git may say anything.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit


class HelperError(Exception):
    """A failure to report to the user as ``fatal: <message>``."""


def _debug_enabled() -> bool:
    return os.environ.get("GITTORNADO_WS_DEBUG", "") not in ("", "0", "false")


def _debug(message: str) -> None:
    if _debug_enabled():
        sys.stderr.write(f"git-remote-ws: {message}\n")
        sys.stderr.flush()


# -- the URL ---------------------------------------------------------------------------
class Target(collections.namedtuple("Target", "scheme netloc path username password", defaults=(None, None))):
    """The repository URL, split: where to connect and with which credentials.

    ``scheme`` is ``ws`` or ``wss``; ``netloc`` host[:port] without userinfo;
    ``path`` the repository's, ``/`` first, no trailing ``/``. (A named tuple,
    not a dataclass: ``dataclasses`` costs every helper start 5 ms of imports.)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Target({self.scheme!r}, {self.netloc!r}, {self.path!r}, username={self.username!r})"

    @classmethod
    def parse(cls, url: str, default_scheme: str) -> Target:
        """``ws://user:pw@host:port/repo`` (``http(s)://`` maps to ``ws(s)://``;
        ``ws::host/repo`` reaches us as ``host/repo``)."""
        if "://" not in url:
            url = f"{default_scheme}://{url}"
        parts = urlsplit(url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        if scheme not in ("ws", "wss"):
            raise HelperError(f"unsupported URL scheme {parts.scheme!r} (ws:// or wss://)")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise HelperError(f"invalid URL: {exc}") from None
        if not host:
            raise HelperError("invalid URL: no host")
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{port}" if port else host
        path = parts.path.rstrip("/") or "/"
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(scheme, netloc, path, user, password)

    @property
    def display(self) -> str:
        """The URL as the user may see it: never a password."""
        return f"{self.scheme}://{self.netloc}{self.path}"

    @property
    def http_scheme(self) -> str:
        return "https" if self.scheme == "wss" else "http"

    @property
    def http_url(self) -> str:
        """The same server's http(s) URL, for git's ``http.<url>.*`` settings."""
        return f"{self.http_scheme}://{self.netloc}{self.path}"

    def service_url(self, service: str) -> str:
        return f"{self.scheme}://{self.netloc}{self.path.rstrip('/')}/{service}"


# -- what git's configuration says -------------------------------------------------------
def _git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a git command for its output; git's own messages go to the user's stderr."""
    try:
        return subprocess.run(["git", *args], input=stdin, stdout=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise HelperError(f"cannot run git: {exc}") from None


def _git_outputs(*commands: Sequence[str]) -> list[str]:
    """The output of git queries run side by side (each costs a process start, paid
    before git hears from us)."""
    procs = []
    try:
        for args in commands:
            procs.append(subprocess.Popen(["git", *args], stdout=subprocess.PIPE, text=True))
    except OSError as exc:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise HelperError(f"cannot run git: {exc}") from None
    return [proc.communicate()[0] for proc in procs]


def _config_pairs(output: str) -> list[tuple[str, str]]:
    """``git config -z`` output -> (lower-cased key, value) pairs, in order."""
    pairs = []
    for item in output.split("\0"):
        if item:
            key, _, value = item.partition("\n")
            pairs.append((key.lower(), value))
    return pairs


def _git_bool(value: str) -> bool:
    return value.strip().lower() not in ("false", "no", "off", "0", "")


def _url_applies(pattern: str, url: str) -> bool:
    """Whether ``http.<pattern>.*`` is meant for ``url`` (scheme, host and a path prefix)."""
    pattern = pattern.rstrip("/")
    return url == pattern or url.startswith(pattern + "/")


class Settings:
    """What the helper takes from git's configuration and environment."""

    def __init__(self) -> None:
        self.version = 0
        self.verify = True
        self.ca_file: str | None = None
        self.client_cert: str | None = None
        self.client_key: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.proxy: str | None = None

    @classmethod
    def load(cls, target: Target, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        urlmatch, regexp, git_version = _git_outputs(
            ("config", "-z", "--get-urlmatch", "http", target.http_url),
            ("config", "-z", "--get-regexp", r"^(protocol\.version|http\..*extraheader)$"),
            ("version",),
        )
        http = dict(_config_pairs(urlmatch))
        other = _config_pairs(regexp)
        settings = cls()
        version = [v for k, v in other if k == "protocol.version"]
        if version:
            settings.version = int(version[-1]) if version[-1].strip().isdigit() else 0
        else:
            settings.version = _default_protocol_version(git_version)
        headers: list[str] = []
        for key, value in other:
            if not key.endswith(".extraheader"):
                continue
            scope = key[len("http.") : -len(".extraheader")]
            if scope and not _url_applies(scope, target.http_url):
                continue
            if value:
                headers.append(value)
            else:
                headers.clear()  # git: an empty value resets the list
        for line in headers:
            name, sep, value = line.partition(":")
            if sep and name.strip():
                settings.headers.append((name.strip(), value.strip()))
        settings.verify = _git_bool(http.get("http.sslverify", "true")) and "GIT_SSL_NO_VERIFY" not in env
        settings.ca_file = env.get("GIT_SSL_CAINFO") or http.get("http.sslcainfo") or None
        settings.client_cert = env.get("GIT_SSL_CERT") or http.get("http.sslcert") or None
        settings.client_key = env.get("GIT_SSL_KEY") or http.get("http.sslkey") or None
        # Not used (see the module docstring); only named when a connection fails.
        scheme_vars = ("https_proxy", "HTTPS_PROXY") if target.scheme == "wss" else ("http_proxy",)
        proxy_vars = (*scheme_vars, "all_proxy", "ALL_PROXY")
        settings.proxy = http.get("http.proxy") or next((env[v] for v in proxy_vars if env.get(v)), None)
        return settings


def _default_protocol_version(git_version: str) -> int:
    """git's default for ``git version``'s output: v2 from 2.26 on (the helper runs the
    user's git)."""
    match = re.search(r"(\d+)\.(\d+)", git_version)
    if match and (int(match[1]), int(match[2])) >= (2, 26):
        return 2
    return 0


# -- credentials -------------------------------------------------------------------------
def _credential(action: str, fields: dict[str, str]) -> dict[str, str] | None:
    """``git credential <action>``; for ``fill`` the answer, None when git gave none."""
    text = "".join(f"{k}={v}\n" for k, v in fields.items()) + "\n"
    proc = _git("credential", action, stdin=text)
    if action != "fill":
        return None
    if proc.returncode != 0:
        return None
    answer = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            answer[key] = value
    if "username" not in answer or "password" not in answer:
        return None
    return answer


def _credential_query(target: Target) -> dict[str, str]:
    fields = {"protocol": target.http_scheme, "host": target.netloc, "path": target.path.lstrip("/")}
    if target.username:
        fields["username"] = target.username
    return fields


class _Credentials:
    """Who the helper says it is: the URL's user and password, else what ``git credential
    fill`` gives after a 401; ``approve``/``reject`` once the server said."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.auth = (
            (target.username, target.password) if target.username and target.password is not None else None
        )
        self.filled: dict[str, str] | None = None

    def retry(self, code: int) -> bool:
        """After a refusal: True to try again with credentials just filled."""
        if code == 401 and self.filled is None and (self.auth is None or self.target.password is None):
            self.filled = _credential("fill", _credential_query(self.target))
            if self.filled is not None:
                self.auth = (self.filled["username"], self.filled["password"])
                return True
        elif code == 401 and self.filled is not None:
            _credential("reject", self.filled)
        return False

    def accepted(self) -> None:
        if self.filled is not None:
            _credential("approve", self.filled)
