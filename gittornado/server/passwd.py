"""The access file's offline tools: ``gittornado-passwd`` and ``gittornado check-access``.

Both work on the file, not on a running server (which picks up edits by
itself): ``gittornado-passwd`` edits a user's hash so nobody has to paste one
by hand (or leave plaintext, which the server refuses), and ``check-access``
explains a verdict by the rule that grants it. They read the file exactly as
the server does: lines through the parser's own ``strip_comment``, the result
through ``parse_access_file`` (an edit that would not load is not written).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import tempfile

from ..access.accessrules import strip_comment

__all__ = ["update_users_section", "passwd_main", "check_access_main"]

PROG = "gittornado-passwd"


def update_users_section(text: str, user: str, hashed: str | None) -> str:
    """The access file ``text`` with ``user``'s line set to ``hashed`` (None: removed).

    Pure. Every other line, comment, blank and line ending is kept byte for
    byte; on the user's own line only the hash changes (indentation, ``:`` or
    ``=`` and an inline comment stay). A new user goes after the last entry of
    the first ``[users]`` section; a missing ``[users]`` section is added
    before the first section (or at the end of a file without one).
    Raises ``KeyError`` when deleting a user that is not there.
    """
    lines = text.splitlines(keepends=True)
    first_eol = re.search(r"\r\n|\n|\r", text)
    eol = first_eol.group(0) if first_eol else "\n"
    section = None
    first_header = None
    users_start = None
    users_last = None  # index of the last entry (or the header) of the first [users]
    in_first_users = False
    for i, line in enumerate(lines):
        body = strip_comment(line)
        if not body:
            continue
        if body.startswith("[") and body.endswith("]"):
            section = body[1:-1].strip().lower()
            if first_header is None:
                first_header = i
            in_first_users = section == "users" and users_start is None
            if in_first_users:
                users_start = users_last = i
            continue
        if in_first_users:
            users_last = i
        if section != "users":
            continue
        m = re.match(r"([^=:]+?)\s*[=:]", body)
        if not m or m.group(1).strip() != user:
            continue
        if hashed is None:
            del lines[i]
        else:
            lines[i] = _with_hash(line, hashed)
        return "".join(lines)
    if hashed is None:
        raise KeyError(user)
    return _add_user(lines, f"{user} = {hashed}{eol}", eol, first_header, users_start, users_last)


def _with_hash(line: str, hashed: str) -> str:
    """``line`` (a user's entry) with its value replaced, everything around it kept."""
    raw = line.rstrip("\r\n")
    ending = line[len(raw) :]
    m = re.match(r"\s*[^=:]+?\s*[=:]\s*", raw)
    assert m is not None  # the caller matched the key already
    prefix = m.group(0)
    comment = re.search(r"\s+[;#].*\Z", raw[len(prefix) :])
    return prefix + hashed + (comment.group(0) if comment else "") + ending


def _add_user(
    lines: list[str],
    entry: str,
    eol: str,
    first_header: int | None,
    users_start: int | None,
    users_last: int | None,
) -> str:
    """``lines`` with ``entry`` after the first ``[users]``' last entry, or in a new section."""
    if users_start is None:
        block = [f"[users]{eol}", entry]
        if first_header is not None:
            return "".join(lines[:first_header] + block + [eol] + lines[first_header:])
        at = len(lines)
    else:
        assert users_last is not None
        block = [entry]
        at = users_last + 1
    if at == len(lines) and lines:
        if not lines[-1].endswith(("\n", "\r")):
            lines[-1] += eol  # appending: the last line needs its end first
        if users_start is None and lines[-1].strip():
            block.insert(0, eol)
    lines[at:at] = block
    return "".join(lines)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def _ask_password(args: argparse.Namespace) -> str | None:
    """The new password from stdin or the prompt (asked twice); None when the two differ."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass(f"Password for {args.user}: ")
    if getpass.getpass("Again: ") != password:
        return None
    return password


def _replace_file(target: str, text: str, existing: os.stat_result | None) -> None:
    """Write ``text`` to ``target`` by rename, with the old file's mode (and owner, when allowed)."""
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=".gittornado-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            if existing is not None:
                os.fchmod(fh.fileno(), existing.st_mode & 0o7777)
                try:
                    os.fchown(fh.fileno(), existing.st_uid, existing.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as with any editor
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a crash only once the directory is synced
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def passwd_main(argv: list[str] | None = None) -> int:
    """``gittornado-passwd FILE USER``: set (or ``--delete``) a user's hash, atomically.

    The password comes from a prompt (asked twice) or ``--password-stdin``
    (one line). Only a hash is ever written. The new file must parse, and it
    replaces the old one by rename, keeping its mode (and owner, when allowed).
    """
    p = argparse.ArgumentParser(
        prog=PROG, description="Set or delete a user's password hash in an access file."
    )
    p.add_argument("accessfile")
    p.add_argument("user")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    p.add_argument(
        "--scheme", choices=["bcrypt", "argon2"], default="bcrypt", help="hash scheme (default bcrypt)"
    )
    p.add_argument("--delete", action="store_true", help="remove the user")
    args = p.parse_args(argv)
    from ..access.accessrules import _NAME, AccessFileError, hash_password, parse_access_file

    if not _NAME.match(args.user):
        print(f"{PROG}: invalid user name {args.user!r}", file=sys.stderr)
        return 2
    # Write through a symlink to the real file, not over the link.
    target = os.path.realpath(args.accessfile)
    try:
        with open(target, encoding="utf-8", newline="") as fh:
            text = fh.read()
        existing = os.stat(target)
    except FileNotFoundError:
        text, existing = "", None
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"cannot read {args.accessfile}: {exc}")
    hashed = None
    if not args.delete:
        password = _ask_password(args)
        if password is None:
            return _fail("the passwords differ; nothing changed")
        if not password:
            return _fail("empty password refused")
        try:
            hashed = hash_password(password, args.scheme)
        except ValueError as exc:
            return _fail(f"{exc}; nothing changed")
    try:
        new_text = update_users_section(text, args.user, hashed)
    except KeyError:
        return _fail(f"no user {args.user!r} in {args.accessfile}")
    try:
        parse_access_file(new_text)
    except AccessFileError as exc:
        return _fail(f"{args.accessfile} would not load ({exc}); nothing changed")
    _replace_file(target, new_text, existing)
    action = "deleted" if args.delete else "set"
    print(f"{action} {args.user} in {args.accessfile}")
    return 0


def check_access_main(argv: list[str]) -> int:
    """``gittornado check-access FILE USER REPO``: the verdict and the rule granting it.

    Exit status 0 when USER may read REPO, 3 when not, 1 for a file that does
    not load (its error names the line) or an invalid repository name.
    """
    prog = "gittornado check-access"
    p = argparse.ArgumentParser(
        prog=prog, description="Explain what USER may do on REPO under an access file."
    )
    p.add_argument("accessfile")
    p.add_argument("user", help="user name, or - for anonymous")
    p.add_argument("repo")
    args = p.parse_args(argv)
    from ..access.accessrules import AccessFileError, hash_weakness, parse_access_file
    from ..access.repos import normalize_name

    try:
        with open(args.accessfile, encoding="utf-8") as fh:
            policy = parse_access_file(fh.read())
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{prog}: cannot read {args.accessfile}: {exc}", file=sys.stderr)
        return 1
    except AccessFileError as exc:
        print(f"{prog}: {args.accessfile} does not load: {exc}", file=sys.stderr)
        return 1
    repo = normalize_name(args.repo)
    if repo is None:
        print(f"{prog}: {args.repo!r} is not a valid repository name", file=sys.stderr)
        return 1
    user = None if args.user == "-" else args.user
    read, write, best = policy.rights(user, repo)
    who = user or "anonymous"
    verdict = "read and write" if write else "read only" if read else "no access"
    print(f"{who} on {repo}: {verdict}")
    if best is not None and (read or write):
        print(f"  granted by {best.describe()}")
    for rule in policy.matching_rules(user, repo):
        if rule is not best or not (read or write):
            print(f"  also matches {rule.describe()}")
    if best is None or not (read or write):
        print("  no rule grants access")
    if user is not None:
        if user not in policy.users:
            print(f"note: {user!r} has no password in [users], so cannot log in over HTTP")
        elif (weakness := hash_weakness(policy.users[user])) is not None:
            print(
                f"note: {user!r} has a weak password hash ({weakness}); "
                f"replace it with: gittornado-passwd {args.accessfile} {user}"
            )
    return 0 if read else 3
