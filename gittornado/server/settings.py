"""``Settings``: everything the application needs to know, checked once, before anything starts.

Options used to be checked where they were used: the CLI refused some
combinations, ``make_app`` others, and a bad value could first show up inside
each forked worker. A frozen ``Settings`` is built once (from a command line,
``Settings.from_args``, or by a program embedding the server) and is then
known to be consistent, so the code that wires the server together only
reads it and the workers can share it safely.

The fields are ``make_app``'s keywords where ``make_app`` has one (same name,
same default, same meaning), so ``Settings()`` is ``make_app()``'s
configuration. ``make_app`` takes live objects for three things that are built
from settings plus process state: ``throttle`` (from ``login_*`` and, for
several workers, a shared store under ``state_dir``), ``pack_cache`` (from
``pack_cache_dir``/``pack_cache_size``, or a temporary directory) and
``advert_cache`` (from ``advert_cache_size``). How to listen (port, address,
processes, TLS, proxy headers, connection limits) is not here: that belongs
to the server process, not to the application.

Validation is pure: it checks values and combinations, not the file system
(whether ``gitbase`` exists is the caller's check, at the time it starts).
Messages name the command-line option where there is one, since that is what
most people typed; the field is the option's name with ``_`` for ``-`` unless
the message gives it in parentheses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import urllib.parse
from typing import Any

__all__ = ["Settings"]

MiB = 1024 * 1024

# Field -> its command-line option, where the names differ by more than "_" -> "-".
_OPTION_OF = {"upload_pack_limit": "--max-upload-pack-request", "receive_pack_limit": "--max-push-size"}
# Fields no command line sets: only a program building Settings can give them.
_PROGRAM_ONLY = {"access", "lookup", "fallback", "index", "ops", "direct_output", "login_window"}
# Fields whose "none" is None here and 0 on the command line.
_ZERO_IS_NONE = ("body_idle_timeout", "send_timeout", "max_git_processes")


def _label(name: str) -> str:
    if name in _PROGRAM_ONLY:
        return name
    option = _OPTION_OF.get(name)
    if option is not None:
        return f"{option} ({name})"
    return "--" + name.replace("_", "-")


def _arg_name(name: str) -> str:
    """The argparse destination a field is read from (``--max-push-size`` -> ``max_push_size``)."""
    return _OPTION_OF.get(name, "--" + name)[2:].replace("-", "_")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The application's configuration; raises ``ValueError`` naming what is wrong.

    ``None`` means "no limit" for the timeouts and caps that may have none
    (``0`` on the command line); sizes are bytes, ``0`` turning a cache off.
    ``prefix`` is stored normalised (no trailing ``/``).
    """

    gitbase: str = "."
    # Who may do what: at most one of accessfile, access (an object), auth_api.
    accessfile: str | None = None
    access: Any = None
    auth_api: str | None = None
    auth_api_timeout: float = 5.0
    # Which repositories: the default lookup under gitbase, or a custom one.
    lookup: Any = None
    allow_external_links: bool = False
    # What else is served, and where.
    realm: str = "gittornado"
    prefix: str = ""
    fallback: Any = None
    index: bool = True
    web: bool = False
    ssh_url: str | None = None
    ops: bool = True
    # The login throttle: login_failures wrong passwords from one address within
    # login_window seconds block it for login_block seconds (login_failures 0: off).
    login_failures: int = 10
    login_window: float = 60.0
    login_block: float = 60.0
    # Running git.
    git: str = "git"
    upload_pack_limit: int | None = 64 * MiB
    receive_pack_limit: int | None = None
    direct_output: bool = True
    body_idle_timeout: float | None = 600.0
    send_timeout: float | None = 600.0
    max_git_processes: int | None = None
    git_queue: int = 100
    git_queue_timeout: float = 30.0
    # Caches and state shared between worker processes.
    pack_cache_dir: str | None = None
    pack_cache_size: int = 0
    advert_cache_size: int = 64 * MiB
    state_dir: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", _normal_prefix(self.prefix))
        for check in (self._check_policy, self._check_served, self._check_numbers):
            message = check()
            if message:
                raise ValueError(message)

    def _check_policy(self) -> str | None:
        if not isinstance(self.gitbase, str | os.PathLike) or not os.fspath(self.gitbase):
            return f"--gitbase must name a directory, not {self.gitbase!r}"
        if self.accessfile and self.access is not None:
            return "give either accessfile or access, not both"
        if self.auth_api and self.accessfile:
            return "give either --accessfile or --auth-api, not both"
        if self.auth_api and self.access is not None:
            return "give either auth_api or access, not both"
        if self.auth_api:
            parts = urllib.parse.urlsplit(self.auth_api)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                return f"--auth-api must be an http(s) URL without a query, not {self.auth_api!r}"
        if self.allow_external_links and self.lookup is not None:
            # lookup is a program's: so is the message's wording (the keywords).
            return "allow_external_links is for the default lookup; give either it or lookup, not both"
        return None

    def _check_served(self) -> str | None:
        if not self.realm or re.search(r'["\\\x00-\x1f\x7f]', self.realm):
            return f"--realm must be non-empty text without quotes or control characters, not {self.realm!r}"
        if self.web and self.fallback is not None:
            return "give either web or fallback, not both"
        if not self.git:
            return "--git must name the git executable"
        return None

    def _check_numbers(self) -> str | None:
        at_least = {
            "auth_api_timeout": (self.auth_api_timeout, 0, False),
            "login_failures": (self.login_failures, 0, True),
            "login_window": (self.login_window, 0, False),
            "login_block": (self.login_block, 0, True),
            "git_queue": (self.git_queue, 0, True),
            "git_queue_timeout": (self.git_queue_timeout, 0, True),
            "pack_cache_size": (self.pack_cache_size, 0, True),
            "advert_cache_size": (self.advert_cache_size, 0, True),
        }
        for name, (value, bound, inclusive) in at_least.items():
            if value < bound or (value == bound and not inclusive):
                relation = ">= 0" if inclusive else "positive"
                return f"{_label(name)} must be {relation}, not {value!r}"
        for name in ("upload_pack_limit", "receive_pack_limit", *_ZERO_IS_NONE):
            value = getattr(self, name)
            if value is not None and value <= 0:
                hint = " (0 on the command line)" if name in _ZERO_IS_NONE else ""
                return f"{_label(name)} must be positive, or None{hint} for no limit; not {value!r}"
        return None

    # -- what the wiring derives from the settings -----------------------------------------

    @property
    def throttled(self) -> bool:
        """Whether wrong passwords are counted (``make_app``'s ``throttle``)."""
        return self.login_failures > 0

    @property
    def pack_cache_path(self) -> str | None:
        """The pack cache's directory when one is chosen: ``pack_cache_dir``, else under ``state_dir``.

        None with a non-zero ``pack_cache_size`` leaves the choice to the
        command: the server makes a temporary directory, the SSH shell has no
        cache. Also None when the cache is off.
        """
        if not self.pack_cache_size:
            return None
        if self.pack_cache_dir:
            return self.pack_cache_dir
        if self.state_dir:
            return os.path.join(self.state_dir, "pack-cache")
        return None

    # -- from a command line ---------------------------------------------------------------

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Settings:
        """The settings an ``argparse`` namespace gives (the server's or ``gittornado-shell``'s).

        Reads each field from its option's destination when the parser has
        it (``options.add_*_options`` and the server's own), so a command
        with fewer options gets the defaults for the rest; ``0`` becomes
        None for ``--body-idle-timeout``, ``--send-timeout`` and
        ``--max-git-processes``, and ``--no-throttle``/``--no-pack-cache``
        turn those off. ``overrides`` (field names) win over the namespace.
        Raises ``ValueError`` as the constructor does.
        """
        given = vars(args)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            dest = _arg_name(field.name)
            if field.name not in _PROGRAM_ONLY and dest in given:
                values[field.name] = given[dest]
        for name in _ZERO_IS_NONE:
            if values.get(name) == 0:
                values[name] = None
        if given.get("no_throttle"):
            values["login_failures"] = 0
        if given.get("no_pack_cache"):
            values["pack_cache_size"] = 0
        values.update(overrides)
        return cls(**values)


def _normal_prefix(prefix: str | None) -> str:
    """``/git/`` -> ``/git``; raises ``ValueError`` for anything but a plain absolute path."""
    prefix = prefix or ""
    if prefix and (not prefix.startswith("/") or "//" in prefix or re.search(r"[?#%\s]", prefix)):
        raise ValueError(f"--prefix must be a plain absolute path like /git, not {prefix!r}")
    return prefix.rstrip("/")
