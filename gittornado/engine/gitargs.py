"""git's argv and environment for a run: pure functions of the run's facts.

Every git the server starts (a service run, a one-off query) gets its
environment from ``git_env``/``scrubbed_env``, so a variable of whoever started
the server (``GIT_DIR``, ``GIT_NAMESPACE``) can never point git elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..protocol.services import Service

__all__ = ["GIT_OPTIONS", "git_argv", "git_env", "scrubbed_env"]

#: Features on by default without touching the repository's own config:
#: partial clone (filter, plus reachable-object wants for the lazy blob fetches
#: of a partial clone over v0/v1) and push options reaching hooks.
GIT_OPTIONS = (
    "uploadpack.allowFilter=true",
    "uploadpack.allowReachableSHA1InWant=true",
    "receive.advertisePushOptions=true",
)

#: Environment a server's git must not inherit from whoever started the server:
#: they would point git at another repository or change what it writes.
_SCRUBBED_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PROTOCOL",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_QUARANTINE_PATH",
)


def git_argv(
    service: Service,
    repo_path: str,
    *,
    stateless: bool = True,
    advertise: bool = False,
    git: str = "git",
    options: tuple[str, ...] = GIT_OPTIONS,
) -> list[str]:
    """The argv that serves ``service`` on ``repo_path``.

    ``stateless`` is HTTP's ``--stateless-rpc`` (``gitprotocol-http``);
    ``advertise`` adds ``--advertise-refs`` for the ``info/refs`` answer.
    A service without ``stateless_rpc`` (``upload-archive``) takes neither.
    """
    argv = [git]
    for opt in options:
        argv += ["-c", opt]
    argv.append(service.subcommand)
    if service.stateless_rpc:
        if stateless:
            argv.append("--stateless-rpc")
        if advertise:
            argv.append("--advertise-refs")
    argv.append(repo_path)
    return argv


def git_env(
    base: Mapping[str, str],
    *,
    user: str | None,
    repo: str,
    transport: str,
    remote_addr: str,
    git_protocol: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment git and its hooks see (SPEC "Hooks see").

    Like ``git http-backend``, the pusher becomes the committer identity of
    reflog entries unless the server's environment already set one.
    """
    env = scrubbed_env(base)
    name = user or ""
    env.update(
        REMOTE_USER=name,
        GITTORNADO_USER=name,
        GITTORNADO_REPO=repo,
        GITTORNADO_TRANSPORT=transport,
        REMOTE_ADDR=remote_addr or "",
    )
    env.setdefault("GIT_COMMITTER_NAME", name or "anonymous")
    env.setdefault("GIT_COMMITTER_EMAIL", f"{name or 'anonymous'}@{transport}.{remote_addr or 'unknown'}")
    if git_protocol:
        env["GIT_PROTOCOL"] = git_protocol
    if extra:
        env.update(extra)
    return env


def scrubbed_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` without the variables that would point git at another repository."""
    env = {k: v for k, v in base.items() if k not in _SCRUBBED_ENV}
    if extra:
        env.update(extra)
    return env
