"""The git services a client may ask for, and the pure checks on what it sends.

Dispatch is data: ``SERVICES`` maps a wire name to the right it needs and the
git subcommand that serves it; every transport reads the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest

__all__ = [
    "Service",
    "SERVICES",
    "service_for",
    "valid_git_protocol",
    "READ",
    "WRITE",
    "SshCommand",
    "parse_ssh_command",
]

READ = "read"
WRITE = "write"


@dataclass(frozen=True)
class Service:
    """A git service and the facts the engine reads about it (one place, not ``if`` chains)."""

    name: str  #: wire name, e.g. ``git-upload-pack``
    subcommand: str  #: ``git <subcommand>``
    right: str  #: READ or WRITE
    http: bool  #: offered over smart HTTP (upload-archive is not in git 2.39)
    #: Takes ``--stateless-rpc``/``--advertise-refs`` (``gitprotocol-http``).
    stateless_rpc: bool = True
    #: Over a stateless wire the request is small and answered only once whole:
    #: spooled, and git started on it (a push streams into git instead).
    spooled: bool = True
    #: Its packs come from the pack cache's ``packObjectsHook``.
    pack_cache: bool = False
    #: Its advertisement (and v2 ``ls-refs``) may come from the advertisement cache.
    #: Not receive-pack: its ``.have`` lines come from other repositories' refs and,
    #: with push certificates, it carries a nonce that changes with time.
    advert_cacheable: bool = False
    #: Which input cap applies: ``request`` (upload_pack_limit) or ``push``.
    input_cap: str = "request"
    #: Where its answer turns multiplexed when the client asks for side-band:
    #: ``after-negotiation`` (a v0/v1 fetch), ``start`` (a push's report), or ``never``.
    sideband: str = "never"

    @property
    def advertisement_type(self) -> str:
        return f"application/x-{self.name}-advertisement"

    @property
    def request_type(self) -> str:
        return f"application/x-{self.name}-request"

    @property
    def result_type(self) -> str:
        return f"application/x-{self.name}-result"


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            "git-upload-pack",
            "upload-pack",
            READ,
            http=True,
            pack_cache=True,
            advert_cacheable=True,
            sideband="after-negotiation",
        ),
        Service(
            "git-receive-pack",
            "receive-pack",
            WRITE,
            http=True,
            spooled=False,
            input_cap="push",
            sideband="start",
        ),
        Service("git-upload-archive", "upload-archive", READ, http=False, stateless_rpc=False),
    )
}


def service_for(name: str, *, transport: str = "http") -> Service | None:
    """The service called ``name`` if ``transport`` offers it, else None."""
    svc = SERVICES.get(name)
    if svc is None or (transport == "http" and not svc.http):
        return None
    return svc


# gitprotocol-v2 / gitprotocol-http: the header is a colon-separated list of
# "key" or "key=value" items. Git only ever sends version=N, but extensions are
# allowed; we accept the same safe alphabet Gitea does and refuse anything that
# could smuggle shell or environment syntax into GIT_PROTOCOL.
_GIT_PROTOCOL_ITEM = re.compile(r"[A-Za-z0-9._-]+(?:=[A-Za-z0-9._-]+)?\Z")


def valid_git_protocol(value: str) -> bool:
    """True when ``value`` is a well-formed ``Git-Protocol`` header value."""
    if not value or len(value) > 256:
        return False
    return all(_GIT_PROTOCOL_ITEM.match(item) for item in value.split(":"))


def protocol_version(value: str | None) -> int:
    """The protocol version a (valid) ``Git-Protocol`` value asks for; 0 if none."""
    version = 0
    for item in (value or "").split(":"):
        key, _, val = item.partition("=")
        if key == "version" and val.isdigit():
            version = max(version, int(val))
    return version


# -- SSH_ORIGINAL_COMMAND -------------------------------------------------------------------
#
# What git sends over SSH (``connect.c``: ``git_connect``) is ``<program> '<path>'``:
# the program ``git-upload-pack``, ``git-receive-pack`` or ``git-upload-archive``
# (or what ``remote.*.uploadpack``/``--receive-pack`` named, hence the space form
# ``git upload-pack`` some setups use), the path shell-quoted, ``/app.git`` for
# ``ssh://host/app.git``, ``app.git`` for ``host:app.git``, ``~/app.git`` for
# ``ssh://host/~/app.git``. Nothing here is ever given to a shell, but a command
# that could mean something else to one is refused rather than guessed at: the
# accepted language is small enough to read in one regular expression per part.

#: Longer than any repository path worth serving; refused before it is looked at.
_MAX_SSH_COMMAND = 1024
#: One path segment: word characters and ``.+@-``, so no shell or glob
#: metacharacter, quote, whitespace, ``~`` or ``\`` can reach a repository name.
_SSH_SEGMENT = re.compile(r"[\w.+@-]+\Z")


@dataclass(frozen=True)
class SshCommand:
    """A parsed ``SSH_ORIGINAL_COMMAND``: which service, on which public repository path."""

    service: Service
    path: str  #: relative to the root: no quotes, no leading ``/`` or ``~/`` (``team/app.git``)


def _unquote(word: str) -> str:
    """``'x'`` or ``"x"`` -> ``x``; a word without quotes as is; anything else refused."""
    if word[:1] in ("'", '"'):
        quote = word[0]
        if len(word) < 2 or word[-1] != quote:
            raise BadRequest("unbalanced quotes in the repository path")
        return word[1:-1]
    return word


def parse_ssh_command(command: str) -> SshCommand:
    """The git service and repository an SSH client asked for, or ``BadRequest`` (pure).

    Accepted: ``git-upload-pack``, ``git-receive-pack``, ``git-upload-archive``
    (dash form) or ``git upload-pack`` ... (space form), then exactly one path,
    in single or double quotes or none, with an optional leading ``/`` or ``~/``
    and an optional trailing ``/``. Refused: any other command, extra arguments
    (``--help``, ``--stateless-rpc``), a path starting with ``-`` (option
    injection), ``.``/``..``/empty segments, ``~user`` paths, and any character
    outside ``_SSH_SEGMENT`` (``;|&$`<>(){}*?!'"\\``, whitespace in a path,
    control characters). Messages never echo the command back: it could carry
    terminal escape sequences to the user's screen.
    """
    if len(command) > _MAX_SSH_COMMAND:
        raise BadRequest("command too long")
    if not command.isprintable():
        raise BadRequest("control characters in the command")
    words = [w for w in command.split(" ") if w]
    if len(words) >= 2 and words[0] == "git":
        words = [f"git-{words[1]}", *words[2:]]
    service = service_for(words[0], transport="ssh") if words else None
    if service is None:
        raise BadRequest("only git-upload-pack, git-receive-pack and git-upload-archive are offered")
    if len(words) != 2:
        raise BadRequest(f"{service.name} takes exactly one argument: the repository path")
    path = _unquote(words[1])
    if path.startswith("~/"):
        path = path[2:]
    elif path.startswith("/"):
        path = path[1:]
    if path.endswith("/"):
        path = path[:-1]
    segments = path.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or seg.startswith("-") or not _SSH_SEGMENT.match(seg):
            raise BadRequest("invalid repository path")
    return SshCommand(service, path)
