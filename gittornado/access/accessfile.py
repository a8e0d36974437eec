"""The INI access file: users and their password hashes, groups, per-repository rights.

``parse_access_file`` is pure (text -> ``Policy`` or ``AccessFileError`` naming
the line). ``AccessFile`` is the live object the gate consults: it re-reads the
file when it changes, keeps the last good policy when an edit does not parse,
and verifies passwords off the event loop in constant time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import overload

from passlib.context import CryptContext

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

#: Accepted so old htpasswd/LDAP/GitTornado files keep working, but one fast
#: digest (or MD5) per guess: each user with one is warned about at load.
_DEPRECATED = (
    "apr_md5_crypt",
    "md5_crypt",
    "ldap_salted_sha512",
    "ldap_salted_sha256",
    "ldap_salted_sha1",
    "ldap_sha1",
    "hex_sha1",
)

#: Every hash format an access file may hold. The first is what
#: ``gittornado-passwd`` writes; the deprecated ones verify but are flagged.
PASSWORD_CONTEXT = CryptContext(
    schemes=[
        "bcrypt",
        "argon2",
        "sha512_crypt",
        "sha256_crypt",
        "apr_md5_crypt",
        "md5_crypt",
        "ldap_salted_sha512",
        "ldap_salted_sha256",
        "ldap_salted_sha1",
        "ldap_sha1",
        "hex_sha1",
    ],
    default="bcrypt",
    deprecated=list(_DEPRECATED),
    bcrypt__rounds=12,
)

_LEGACY_SHA1 = re.compile(r"[0-9a-fA-F]{40}\Z")
_PERMS = {
    "r": (True, False),
    "rw": (True, True),
    "w": (True, True),
    "none": (False, False),
    "-": (False, False),
}
_NAME = re.compile(r"[^\s=:,;#\[\]@*][^\s=:,;#\[\]]*\Z")
_PATTERN = re.compile(r"[^\s=,;#]+\Z")


#: Below these costs a hash of a current scheme still counts as weak (after
#: OWASP's minimums): bcrypt cost 10, sha2-crypt 5000 rounds, argon2 memory
#: (KiB) times passes of 19456 x 2.
_MIN_BCRYPT_ROUNDS = 10
_MIN_SHA_CRYPT_ROUNDS = 5000
_MIN_ARGON2_WORK = 19456 * 2


def hash_password(password: str, scheme: str = "bcrypt") -> str:
    """A new hash for ``password`` (what ``gittornado-passwd`` writes).

    bcrypt only looks at the first 72 bytes; rather than silently ignore the
    rest, a longer password is refused with ``ValueError`` (use argon2).
    """
    if scheme == "bcrypt" and len(password.encode("utf-8")) > 72:
        raise ValueError("bcrypt cannot hash a password longer than 72 bytes; use --scheme argon2")
    return PASSWORD_CONTEXT.handler(scheme).hash(password)


def hash_weakness(hashed: str) -> str | None:
    """Why ``hashed`` should be replaced (a legacy scheme or a low cost), or None."""
    scheme = PASSWORD_CONTEXT.identify(hashed, required=False)
    if scheme is None:
        return "unrecognised hash"
    if scheme in _DEPRECATED:
        return f"legacy scheme {scheme}"
    try:
        parsed = PASSWORD_CONTEXT.handler(scheme).from_string(hashed)
    except (ValueError, TypeError):
        return "malformed hash"
    rounds = getattr(parsed, "rounds", None)
    if scheme == "bcrypt" and rounds is not None and rounds < _MIN_BCRYPT_ROUNDS:
        return f"bcrypt cost {rounds} (want at least {_MIN_BCRYPT_ROUNDS})"
    if scheme in ("sha512_crypt", "sha256_crypt") and rounds is not None and rounds < _MIN_SHA_CRYPT_ROUNDS:
        return f"{scheme} with {rounds} rounds (want at least {_MIN_SHA_CRYPT_ROUNDS})"
    if scheme == "argon2":
        work = (getattr(parsed, "memory_cost", 0) or 0) * (rounds or 0)
        if work < _MIN_ARGON2_WORK:
            return "argon2 with a low memory/time cost"
    return None


def _cost_class(hashed: str) -> tuple:
    """Hashes in one class take about as long to verify (same scheme and parameters)."""
    scheme = PASSWORD_CONTEXT.identify(hashed, required=False)
    try:
        parsed = PASSWORD_CONTEXT.handler(scheme).from_string(hashed)
    except (ValueError, TypeError, KeyError):
        return (scheme,)
    return (
        scheme,
        getattr(parsed, "rounds", None),
        getattr(parsed, "memory_cost", None),
        getattr(parsed, "parallelism", None),
    )


class AccessFileError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Rule:
    subject: str  #: user name, ``@group`` or ``*``
    pattern: str  #: repository glob, no ``.git``
    read: bool
    write: bool
    line: int
    regex: re.Pattern = field(compare=False, repr=False)

    def describe(self) -> str:
        perm = "rw" if self.write else "r" if self.read else "none"
        return f"line {self.line}: {self.subject} = {self.pattern}={perm}"


def _glob_regex(pattern: str) -> re.Pattern:
    """``*`` within one path segment, ``**`` across segments."""
    out = []
    for part in re.split(r"(\*\*|\*)", pattern):
        out.append(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part))
    return re.compile("".join(out) + r"\Z")


@dataclass
class Policy:
    users: dict[str, str] = field(default_factory=dict)  #: name -> hash
    user_lines: dict[str, int] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)  #: group -> members
    rules: list[Rule] = field(default_factory=list)

    def subjects(self, user: str | None) -> set[str]:
        found = {"*"}
        if user is not None:
            found.add(user)
            found.update("@" + g for g, members in self.groups.items() if user in members)
        return found

    def matching_rules(self, user: str | None, repo: str) -> list[Rule]:
        subjects = self.subjects(user)
        return [r for r in self.rules if r.subject in subjects and r.regex.match(repo)]

    def rights(self, user: str | None, repo: str) -> tuple[bool, bool, Rule | None]:
        """(read, write, the rule that grants the most); the most permissive rule wins."""
        best: Rule | None = None
        for rule in self.matching_rules(user, repo):
            if best is None or (rule.read, rule.write) > (best.read, best.write):
                best = rule
        if best is None:
            return False, False, None
        return best.read, best.write, best

    def weak_users(self) -> list[str]:
        """Users whose hash is a legacy scheme or too cheap (see ``hash_weakness``)."""
        return sorted(u for u, h in self.users.items() if hash_weakness(h) is not None)

    def typical_hash(self) -> str | None:
        """A stored hash of the most common cost class, to verify unknown users against."""
        if not self.users:
            return None
        counts: dict[tuple, int] = {}
        for h in self.users.values():
            key = _cost_class(h)
            counts[key] = counts.get(key, 0) + 1
        best = max(counts.values())
        return next(h for h in self.users.values() if counts[_cost_class(h)] == best)


def _strip_comment(line: str) -> str:
    stripped = line.strip()
    if stripped.startswith((";", "#")):
        return ""
    # Inline comments need whitespace before them: hashes never contain it.
    return re.split(r"\s[;#]", stripped, maxsplit=1)[0].strip()


def _split_key(text: str, lineno: int) -> tuple[str, str]:
    m = re.match(r"([^=:]+?)\s*[=:]\s*(.*)\Z", text)
    if not m:
        raise AccessFileError(lineno, f"expected 'key = value', got {text!r}")
    return m.group(1).strip(), m.group(2).strip()


def _expand_groups(entries: list[tuple[str, list[str], int]]) -> dict[str, set[str]]:
    """Group -> its users, with ``@other`` members (nested groups, cycles allowed) expanded."""
    nested: dict[str, set[str]] = {}
    users: dict[str, set[str]] = {}
    for name, members, _ in entries:
        users.setdefault(name, set()).update(m for m in members if not m.startswith("@"))
        nested.setdefault(name, set()).update(m[1:] for m in members if m.startswith("@"))
    for name, members, lineno in entries:
        for member in members:
            if member.startswith("@") and member[1:] not in users:
                raise AccessFileError(lineno, f"unknown group {member!r} in group {name!r}")
    changed = True
    while changed:  # a fixed point: at most one pass per nesting level
        changed = False
        for name, inner in nested.items():
            before = len(users[name])
            for other in inner:
                users[name] |= users[other]
            changed = changed or len(users[name]) != before
    return users


def parse_access_file(text: str) -> Policy:
    """Parse the INI access file (SPEC "Access file"); raise ``AccessFileError`` naming the line."""
    policy = Policy()
    section = None
    pending_groups: list[tuple[str, list[str], int]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise AccessFileError(lineno, f"malformed section header {line!r}")
            section = line[1:-1].strip().lower()
            if section not in ("users", "groups", "access"):
                raise AccessFileError(lineno, f"unknown section [{section}]")
            continue
        if section is None:
            raise AccessFileError(lineno, "entry outside any section")
        key, value = _split_key(line, lineno)
        if section == "users":
            if not _NAME.match(key):
                raise AccessFileError(lineno, f"invalid user name {key!r}")
            if key in policy.users:
                raise AccessFileError(lineno, f"user {key!r} defined twice")
            if not _LEGACY_SHA1.match(value) and PASSWORD_CONTEXT.identify(value, required=False) is None:
                raise AccessFileError(
                    lineno, f"the password of {key!r} is not a recognised hash (use gittornado-passwd)"
                )
            policy.users[key] = value.lower() if _LEGACY_SHA1.match(value) else value
            policy.user_lines[key] = lineno
        elif section == "groups":
            if not _NAME.match(key):
                raise AccessFileError(lineno, f"invalid group name {key!r}")
            members = [m.strip() for m in value.split(",") if m.strip()]
            for member in members:
                if not _NAME.match(member.removeprefix("@")):
                    raise AccessFileError(lineno, f"invalid member {member!r} of group {key!r}")
            pending_groups.append((key, members, lineno))
        else:
            if not (key == "*" or _NAME.match(key.removeprefix("@"))):
                raise AccessFileError(lineno, f"invalid subject {key!r}")
            for entry in value.split(","):
                entry = entry.strip()
                if not entry:
                    continue
                pattern, sep, perm = entry.rpartition("=")
                pattern = pattern.strip().strip("/")
                perm = perm.strip().lower()
                if not sep or not pattern or perm not in _PERMS or not _PATTERN.match(pattern):
                    raise AccessFileError(lineno, f"malformed rule {entry!r} (want repo=r or repo=rw)")
                if pattern.endswith(".git"):
                    pattern = pattern[:-4].rstrip("/")
                    if not pattern:
                        raise AccessFileError(lineno, f"malformed rule {entry!r} (no repository)")
                read, write = _PERMS[perm]
                policy.rules.append(Rule(key, pattern, read, write, lineno, _glob_regex(pattern)))
    policy.groups = _expand_groups(pending_groups)
    for rule in policy.rules:
        if rule.subject.startswith("@") and rule.subject[1:] not in policy.groups:
            raise AccessFileError(rule.line, f"unknown group {rule.subject!r}")
    return policy


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
