"""The live access file: the ``Authenticator`` and ``Authorizer`` behind ``--accessfile``.

``AccessFile`` re-reads the file when it changes, keeps the last good policy
when an edit does not parse, and verifies passwords off the event loop in
constant time. The file's format (``parse_access_file``, the rules, the hash
formats) is ``accessrules``; its names are importable from here as well.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from typing import overload

from .accessrules import _NAME as _NAME  # re-exported: gittornado-passwd checks user names with it
from .accessrules import (
    PASSWORD_CONTEXT,
    AccessFileError,
    Policy,
    Rule,
    hash_password,
    hash_weakness,
    parse_access_file,
)
from .rights import AccessRequest, BadCredentials, Credentials, Grant

__all__ = [
    "Policy",
    "Rule",
    "AccessFileError",
    "parse_access_file",
    "AccessFile",
    "PASSWORD_CONTEXT",
    "hash_password",
    "hash_weakness",
]

app_log = logging.getLogger("gittornado.application")


class AccessFile:
    """A live access file: the ``Authenticator`` and ``Authorizer`` behind ``--accessfile``.

    Re-reads the file at most once per ``check_interval`` seconds when its
    stat changes (or, for two seconds after a write, when its content does:
    a same-size edit within one timestamp tick leaves the stat unchanged).
    Successful logins are remembered for ``cache_ttl`` seconds, keyed by a
    keyed hash of the pair, because git sends the same credentials on every
    request of one clone and bcrypt is deliberately slow.
    """

    #: How long after a write the stat alone is not trusted to show a change.
    RACY_SECONDS = 2.0

    def __init__(
        self,
        path: str,
        *,
        check_interval: float = 1.0,
        cache_ttl: float = 60.0,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.path = path
        self.check_interval = check_interval
        self.cache_ttl = cache_ttl
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="gittornado-passwords"
        )
        self._lock = threading.Lock()
        self._stat: tuple | None = None
        self._digest: bytes | None = None
        self._racy = False
        self._current = False
        self._next_check = 0.0
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, float] = {}
        self.policy = Policy()
        self._dummy_hash: str | None = None
        if not self.reload(force=True):
            raise AccessFileError(0, f"cannot use access file {path}")

    # -- loading -------------------------------------------------------------------
    def _read_stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed; True when the policy in force is the file's.

        A file that cannot be read or does not parse is refused whole: one
        ERROR line naming the line, and the last good policy stays in force.
        """
        with self._lock:
            stat = self._read_stat()
            if not force and stat == self._stat and not self._racy:
                return self._current
            self._stat = stat
            self._racy = stat is not None and time.time_ns() - stat[0] < self.RACY_SECONDS * 1e9
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                if self._digest is not None or force:
                    app_log.error("access file %s not loaded (keeping the previous one): %s", self.path, exc)
                self._digest, self._current = None, False
                return False
            digest = hashlib.sha256(data).digest()
            if digest == self._digest and not force:
                return self._current  # touched, or a racy re-check: nothing new
            self._digest = digest
            try:
                policy = parse_access_file(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                app_log.error(
                    "access file %s refused (keeping the previous one): not UTF-8 (%s)", self.path, exc
                )
                self._current = False
                return False
            except AccessFileError as exc:
                app_log.error("access file %s refused (keeping the previous one): %s", self.path, exc)
                self._current = False
                return False
            self.policy = policy
            self._current = True
            self._verified.clear()
            # Unknown users are checked against a stored hash of the most common
            # kind and cost, so timing does not tell who exists.
            self._dummy_hash = policy.typical_hash()
            for user in policy.weak_users():
                app_log.warning(
                    "access file %s: user %r has a weak password hash (%s); "
                    "replace it with: gittornado-passwd %s %s",
                    self.path,
                    user,
                    hash_weakness(policy.users[user]),
                    self.path,
                    user,
                )
            app_log.info(
                "access file %s loaded: %d users, %d groups, %d rules",
                self.path,
                len(policy.users),
                len(policy.groups),
                len(policy.rules),
            )
            return True

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_interval
            self.reload()

    # -- passwords -----------------------------------------------------------------
    def _dummy(self) -> str:
        dummy = self._dummy_hash
        if dummy is None:  # no users at all: any default-cost hash will do
            dummy = self._dummy_hash = PASSWORD_CONTEXT.hash(secrets.token_hex(16))
        return dummy

    def verify_password(self, username: str, password: str) -> bool:
        """Constant-time check; costs one hash verification whether or not the user exists.

        Blocking (bcrypt is slow on purpose): ``check_password`` runs it in a thread.
        """
        stored = self.policy.users.get(username)
        candidate = stored if stored is not None else self._dummy()
        try:
            ok = PASSWORD_CONTEXT.verify(password, candidate)
        except (ValueError, TypeError):  # e.g. over 72 bytes for bcrypt
            ok = False
        return ok and stored is not None

    def _cache_token(self, username: str, password: str) -> bytes:
        user = username.encode("utf-8", "surrogatepass")
        return hmac.new(
            self._cache_key,
            len(user).to_bytes(4, "big") + user + password.encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        ).digest()

    async def check_password(self, username: str, password: str) -> bool:
        """True when the pair is right; verified in a thread, successes cached for ``cache_ttl``."""
        self.maybe_reload()
        token = self._cache_token(username, password)
        now = time.monotonic()
        expiry = self._verified.get(token)
        if expiry is not None and expiry > now and username in self.policy.users:
            return True
        policy = self.policy
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, self.verify_password, username, password)
        if ok and policy is self.policy:  # not across a reload that may have changed it
            if len(self._verified) > 10_000:
                self._verified = {t: e for t, e in self._verified.items() if e > now}
            self._verified[token] = now + self.cache_ttl
        return ok

    # -- the access protocols (gittornado.rights) -------------------------------------
    @overload
    async def authenticate(self, credentials: Credentials) -> str: ...
    @overload
    async def authenticate(self, credentials: str, password: str) -> bool: ...

    async def authenticate(self, credentials: Credentials | str, password: str | None = None) -> str | bool:
        """``Authenticator``: the user name, or ``BadCredentials``.

        The 0.2 form ``authenticate(username, password) -> bool`` still works
        (it is ``check_password``) for code written against it.
        """
        if not isinstance(credentials, Credentials):
            if password is None:
                raise TypeError("authenticate() takes Credentials (or a user name and a password)")
            return await self.check_password(credentials, password)
        if not await self.check_password(credentials.username, credentials.password):
            raise BadCredentials(credentials.username)
        return credentials.username

    async def authorize(self, request: AccessRequest) -> Grant:
        """``Authorizer``: the most permissive rule for ``request.user`` (None: anonymous)."""
        self.maybe_reload()
        read, write, rule = self.policy.rights(request.user, request.repo)
        return Grant(user=request.user, read=read, write=write, rule=rule.describe() if rule else None)

    async def check(self, request: AccessRequest) -> Grant:
        """Both steps at once (the 0.2 access protocol), for code that calls it directly."""
        if request.user is None and request.credentials is not None:
            request = dataclasses.replace(request, user=await self.authenticate(request.credentials))
        return await self.authorize(request)
