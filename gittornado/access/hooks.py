"""Custom hooks after the repository's own, without touching the repository on disk.

The authorization API may name a custom ``pre-receive``, ``update`` and
``post-receive`` hook for a push (SPEC "Gitorious-style authorization API");
each runs *after* the repository's own hook of the same name, with the same
arguments, environment and (for pre-/post-receive) the same ref lines on stdin.
Either refusing refuses the push (pre-receive, update).

How: git is told ``core.hooksPath=<a private directory of wrappers>`` through
``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_0``/``GIT_CONFIG_VALUE_0`` in the session's
environment (command-line-level config: the repository's own config cannot
override it). git then looks for *every* hook there and nowhere else, so the
directory holds a wrapper for each hook a push can run: the three chained ones,
and the others (``post-update``, ``reference-transaction``, ...) delegating to
the repository's own hook, so nothing it had stops running. ``push-to-checkout``
is deliberately absent: its mere presence replaces git's built-in
``updateInstead`` work-tree update, which a wrapper could only imitate.

The directory is written at run time (``tempfile.mkdtemp``: private, 0700)
rather than shipped as package data, whose executable bits wheels do not keep;
it is checked on every use and rebuilt if a temp cleaner removed it, because a
missing wrapper would make git skip a custom pre-receive hook silently.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import subprocess
import tempfile
import threading

__all__ = ["CUSTOM_HOOK_ENV", "HOOK_NAMES", "HookChain"]

#: Hook name -> the environment variable holding its custom hook's path.
CUSTOM_HOOK_ENV = {
    "pre-receive": "GITTORNADO_CUSTOM_PRE_RECEIVE",
    "update": "GITTORNADO_CUSTOM_UPDATE",
    "post-receive": "GITTORNADO_CUSTOM_POST_RECEIVE",
}

#: Every hook receive-pack (and the ``gc --auto`` it starts) may run, bar push-to-checkout.
HOOK_NAMES = (
    *CUSTOM_HOOK_ENV,
    "post-update",
    "reference-transaction",
    "proc-receive",
    "pre-auto-gc",
    "post-index-change",
)

# POSIX sh. Unsets the config that points git here first, so neither the
# repository's own hook directory lookup nor git commands inside the hooks see it.
_WRAPPER = r"""#!/bin/sh
# Written by gittornado (gittornado/access/hooks.py): git runs this instead of the
# repository's own hook (core.hooksPath). It runs the repository's own hook,
# then the custom hook the authorization API named for this push, if any.
if [ -n "${GITTORNADO_HOOKCHAIN_PROBE:-}" ]; then echo gittornado-hookchain; exit 0; fi
name=${0##*/}
unset GIT_CONFIG_COUNT GIT_CONFIG_KEY_0 GIT_CONFIG_VALUE_0
hooks=$(git rev-parse --git-path hooks 2>/dev/null) || hooks=hooks
own=$hooks/$name
case $name in
pre-receive) custom=${GITTORNADO_CUSTOM_PRE_RECEIVE:-} ;;
update) custom=${GITTORNADO_CUSTOM_UPDATE:-} ;;
post-receive) custom=${GITTORNADO_CUSTOM_POST_RECEIVE:-} ;;
*) custom= ;;
esac
if [ -z "$custom" ]; then
    if [ -f "$own" ] && [ -x "$own" ]; then exec "$own" "$@"; fi
    if [ "$name" = proc-receive ]; then echo "cannot find hook 'proc-receive'" >&2; exit 1; fi
    exit 0
fi
if [ ! -f "$custom" ] || [ ! -x "$custom" ]; then
    echo "gittornado: the custom $name hook cannot be run; refusing" >&2
    exit 1
fi
if [ "$name" = update ]; then
    if [ -f "$own" ] && [ -x "$own" ]; then "$own" "$@" || exit; fi
    exec "$custom" "$@"
fi
# pre-receive and post-receive read the pushed refs on stdin: both hooks get them.
input=$(cat; echo .)
input=${input%.}
status=0
if [ -f "$own" ] && [ -x "$own" ]; then
    printf '%s' "$input" 2>/dev/null | "$own" "$@" || status=$?
    if [ "$status" -ne 0 ] && [ "$name" = pre-receive ]; then exit "$status"; fi
fi
printf '%s' "$input" 2>/dev/null | "$custom" "$@" || status=$?
exit "$status"
"""


def _intact(path: str) -> bool:
    """The directory is ours, private, and holds every wrapper, unchanged in size and executable."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False
        size = len(_WRAPPER.encode())
        for name in HOOK_NAMES:
            hst = os.lstat(os.path.join(path, name))
            if not stat.S_ISREG(hst.st_mode) or hst.st_size != size or not hst.st_mode & stat.S_IXUSR:
                return False
    except OSError:
        return False
    return True


def _create() -> str:
    path = tempfile.mkdtemp(prefix="gittornado-hooks-")
    try:
        for name in HOOK_NAMES:
            fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(_WRAPPER)
        # A noexec temp directory would make git skip every hook without a word:
        # run one wrapper once, and refuse to go on if it cannot run.
        probe = subprocess.run(
            [os.path.join(path, "pre-receive")],
            capture_output=True,
            env={**os.environ, "GITTORNADO_HOOKCHAIN_PROBE": "1"},
            timeout=10,
        )
        if probe.stdout.strip() != b"gittornado-hookchain":
            raise OSError(f"hook wrappers in {path} do not run (exit {probe.returncode})")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _remove(path: str, pid: int) -> None:
    if os.getpid() == pid:  # not from a forked worker that inherited the registration
        shutil.rmtree(path, ignore_errors=True)


class HookChain:
    """The wrapper directory of one access policy, built when the policy is (at start).

    Built once, off any request: writing the wrappers and probing that one
    runs is blocking work. It is still checked on every use (nine ``lstat``
    calls) and rebuilt if a temp cleaner removed or altered it. A directory
    that cannot be built (a ``noexec`` temp directory) is not an error until
    a push needs custom hooks: that push is then refused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: str | None = None
        self._owner_pid: int | None = None
        try:
            self.directory()
        except OSError:
            pass  # tried again, and refused, by the push that needs it

    def directory(self) -> str:
        """The wrapper directory, (re)built when missing or altered.

        Raises ``OSError`` when wrappers cannot be written or run there: callers
        must then refuse the push, not run it without its custom hooks.
        """
        with self._lock:
            pid = os.getpid()
            if self._dir is None or self._owner_pid != pid or not _intact(self._dir):
                self._dir, self._owner_pid = _create(), pid
                atexit.register(_remove, self._dir, pid)
            return self._dir

    def env(self, custom: dict[str, str]) -> dict[str, str]:
        """Environment for git that runs ``custom`` (hook name -> absolute path) after the own hooks.

        Empty when there is no custom hook: git then runs the repository's hooks
        the ordinary way, untouched.
        """
        unknown = set(custom) - set(CUSTOM_HOOK_ENV)
        if unknown:
            raise ValueError(f"no custom hook can be chained for {sorted(unknown)}")
        if not custom:
            return {}
        env = {CUSTOM_HOOK_ENV[name]: path for name, path in custom.items()}
        env.update(
            GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="core.hooksPath", GIT_CONFIG_VALUE_0=self.directory()
        )
        return env
