"""The Gitorious-style authorization API (``--auth-api URL``): one more access policy.

An HTTP service the operator runs decides, instead of an access file, who may
read or push a public repository path, where that repository really is, and
which custom hooks a push runs (SPEC "Gitorious-style authorization API";
gitorious-proto's ``api/internal.go`` is the origin). ``AuthAPI`` is an
``Authenticator`` and an ``Authorizer`` (``gittornado.rights``), so the gate
decides 401/403/404 from its answers exactly as for the access file:

* ``POST URL/authenticate`` with a form body ``username=...&password=...``:
  200 means valid (a JSON ``{"username": ...}`` answer may name the canonical
  login). The password is never put in a URL, where access logs keep it.
* ``GET URL/repo-config?username=U&repo_path=P`` (no ``username`` for
  anonymous; ``P`` is the canonical public name, without ``.git``): 200 with
  JSON ``{"real_path": ..., "write": ..., "custom_*_path": ...}`` grants read.

It fails closed. Any status but 200 denies; an API that cannot be reached, is
slower than ``timeout``, answers 5xx or answers 200 with something that is not
the protocol is refused with ``AuthAPIUnavailable`` (503 over HTTP, one line
over SSH) and a logged reason, never with a guess. Positive answers are
cached for ``cache_ttl`` seconds, so one clone's several requests cost one call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from ..errors import GitAccessError
from .hooks import HookChain
from .rights import AccessRequest, BadCredentials, Credentials, Grant

__all__ = ["AuthAPI", "AuthAPIUnavailable"]

app_log = logging.getLogger("gittornado.application")

#: repo-config keys naming custom hooks -> the hook each one follows.
_CUSTOM_KEYS = {
    "custom_pre_receive_path": "pre-receive",
    "custom_update_path": "update",
    "custom_post_receive_path": "post-receive",
}
#: More than any real answer needs; a larger one is garbled.
_MAX_ANSWER = 64 * 1024
_MAX_CACHE = 10_000


class AuthAPIUnavailable(GitAccessError):
    """The API could not give a usable answer: refuse, and say it is the server's fault."""

    status = 503
    default_message = "the authorization service is unavailable; try again later"
    retry_after = 5


class _Garbled(ValueError):
    """A 200 answer that is not the protocol."""


@dataclass(frozen=True)
class _RepoConfig:
    real_path: str
    write: bool
    custom: dict[str, str]


def _parse_repo_config(body: bytes) -> _RepoConfig:
    """A repo-config answer, checked (pure); ``_Garbled`` names what is wrong."""
    if len(body) > _MAX_ANSWER:
        raise _Garbled("answer too large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _Garbled("not JSON") from None
    if not isinstance(data, dict):
        raise _Garbled("not a JSON object")
    real = data.get("real_path")
    # Relative to the root; the lookup then refuses ``..`` and symlinks out.
    if not isinstance(real, str) or not real or real.startswith("/") or not real.isprintable():
        raise _Garbled("real_path must be a path relative to the repository root")
    write = data.get("write", False)
    if not isinstance(write, bool):
        raise _Garbled("write must be true or false")
    custom = {}
    for key, hook in _CUSTOM_KEYS.items():
        path = data.get(key)
        if path is None or path == "":
            continue
        if not isinstance(path, str) or not path.startswith("/") or not path.isprintable():
            raise _Garbled(f"{key} must be an absolute path")
        custom[hook] = path
    return _RepoConfig(real, write, custom)


def _login_name(response: HTTPResponse, typed: str) -> str:
    """The login a successful authenticate names (``{"username": ...}``), else what was typed."""
    if "json" not in response.headers.get("Content-Type", "") or len(response.body) > _MAX_ANSWER:
        return typed
    try:
        data = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return typed
    name = data.get("username") if isinstance(data, dict) else None
    if isinstance(name, str) and name and name.isprintable() and len(name) <= 256:
        return name
    return typed


class AuthAPI:
    """``Authenticator`` and ``Authorizer`` asking a Gitorious-style HTTP API.

    :arg url: the API's base URL (``http://localhost:3000/api/internal``).
    :arg timeout: seconds for each call (connect and answer) before failing closed.
    :arg cache_ttl: seconds a positive answer is reused (0: never).
    :arg clock: for tests.

    Uses Tornado's ``AsyncHTTPClient``, so the server's event loop never blocks.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"the authorization API must be an http(s) URL without a query, not {url!r}")
        if timeout <= 0 or cache_ttl < 0:
            raise ValueError("timeout must be positive and cache_ttl >= 0")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._logins: dict[bytes, tuple[float, str]] = {}
        self._configs: dict[tuple[str, str], tuple[float, _RepoConfig]] = {}
        #: The custom hooks' wrappers, built now (at start), not on a request.
        self.hooks = HookChain()

    def __repr__(self) -> str:
        return f"AuthAPI({self.url!r})"

    # -- the wire ------------------------------------------------------------------
    async def _call(self, what: str, path: str, **kwargs) -> HTTPResponse:
        """One API call; ``AuthAPIUnavailable`` when there is no HTTP answer or a 5xx one."""
        try:
            response = await AsyncHTTPClient().fetch(
                self.url + path,
                raise_error=False,
                follow_redirects=False,
                connect_timeout=self.timeout,
                request_timeout=self.timeout,
                **kwargs,
            )
        except Exception as exc:  # refused, reset, DNS, timeout, TLS: all the same to the client
            app_log.warning("authorization API %s failed (refusing): %s", what, exc)
            raise AuthAPIUnavailable() from None
        if response.code >= 500 or response.code == 599:
            app_log.warning("authorization API %s answered %d (refusing)", what, response.code)
            raise AuthAPIUnavailable()
        return response

    def _cached(self, cache: dict, key):
        hit = cache.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del cache[key]
            return None
        return hit[1]

    def _remember(self, cache: dict, key, value) -> None:
        if not self.cache_ttl:
            return
        now = self._clock()
        if len(cache) >= _MAX_CACHE:
            for k in [k for k, (expiry, _) in cache.items() if expiry <= now]:
                del cache[k]
            if len(cache) >= _MAX_CACHE:
                cache.clear()
        cache[key] = (now + self.cache_ttl, value)

    # -- the access protocols (gittornado.rights) ------------------------------------
    async def authenticate(self, credentials: Credentials) -> str:
        """``Authenticator``: the login the API vouches for, or ``BadCredentials``."""
        user = credentials.username.encode("utf-8", "surrogatepass")
        token = hmac.new(
            self._key,
            len(user).to_bytes(4, "big") + user + credentials.password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()
        login = self._cached(self._logins, token)
        if login is not None:
            return login
        body = urllib.parse.urlencode({"username": credentials.username, "password": credentials.password})
        response = await self._call(
            "authenticate",
            "/authenticate",
            method="POST",
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        if response.code != 200:
            raise BadCredentials(credentials.username)
        login = _login_name(response, credentials.username)
        self._remember(self._logins, token, login)
        return login

    async def authorize(self, request: AccessRequest) -> Grant:
        """``Authorizer``: read on a 200 answer, write if it says so, the real path and custom hooks."""
        user = request.user
        key = (user or "", request.repo)
        config = self._cached(self._configs, key)
        if config is None:
            query = {"username": user} if user is not None else {}
            query["repo_path"] = request.repo
            what = f"repo-config for {request.repo!r} as {user or 'anonymous'}"
            response = await self._call(
                what, "/repo-config?" + urllib.parse.urlencode(query), headers={"Accept": "application/json"}
            )
            if response.code != 200:
                return Grant(user=user)
            try:
                config = _parse_repo_config(response.body)
            except _Garbled as exc:
                app_log.warning("authorization API %s: unusable answer (refusing): %s", what, exc)
                raise AuthAPIUnavailable() from None
            self._remember(self._configs, key, config)
        try:
            # Built on every use, not cached: it checks the wrapper directory is still there.
            env = self.hooks.env(config.custom)
        except OSError as exc:
            app_log.error("custom hooks for %s cannot run (refusing): %s", request.repo, exc)
            raise AuthAPIUnavailable("custom hooks cannot run on the server") from None
        return Grant(
            user=user,
            read=True,
            write=config.write,
            real_name=config.real_path,
            env=env,
            rule=f"auth-api {self.url}",
        )
