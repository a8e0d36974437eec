"""The INI access file's format: users and their password hashes, groups, per-repository rights.

``parse_access_file`` is pure (text -> ``Policy``, or ``AccessFileError``
naming the line); ``strip_comment`` is its reading of one line, for tools that
edit the file and must see it as the parser does. The password hashes a file
may hold are defined here too (``PASSWORD_CONTEXT``, ``hash_password``,
``hash_weakness``). The live file the server consults is ``accessfile.AccessFile``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from passlib.context import CryptContext

__all__ = [
    "Policy",
    "Rule",
    "AccessFileError",
    "parse_access_file",
    "strip_comment",
    "PASSWORD_CONTEXT",
    "hash_password",
    "hash_weakness",
]

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
    schemes=["bcrypt", "argon2", "sha512_crypt", "sha256_crypt", *_DEPRECATED],
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


def strip_comment(line: str) -> str:
    """What the parser reads of one line: stripped, without its comment ('' for blanks and comments).

    A comment starts with ``;`` or ``#`` at the start of the line or after
    whitespace (inline): hashes never contain whitespace.
    """
    stripped = line.strip()
    if stripped.startswith((";", "#")):
        return ""
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
        line = strip_comment(raw)
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
