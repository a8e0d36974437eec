"""Paths, logging and the hermetic environment every git (client and server) runs in."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
#: The checkout this bench lives in (its gittornado is the default server code).
ROOT_DIR = os.path.dirname(BENCH_DIR)

MiB = 1024 * 1024

GIT_IDENTITY = ["-c", "user.name=gittornado bench", "-c", "user.email=bench@example.invalid"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_workdir() -> str:
    """Where the cached repository, run directories and results go: outside the checkout.

    ``$GITTORNADO_BENCH_WORKDIR`` if set, else ``$TMPDIR/gittornado-bench`` (``/tmp/...``).
    """
    return os.environ.get("GITTORNADO_BENCH_WORKDIR") or os.path.join(
        tempfile.gettempdir(), "gittornado-bench"
    )


def short_path(path: str) -> str:
    """``path`` relative to the checkout when it is inside it, else absolute."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT_DIR) if path.startswith(ROOT_DIR + os.sep) else path


class Env:
    """A throwaway ``HOME``, ``GIT_CONFIG_NOSYSTEM=1``, no prompts, no proxies, C locale."""

    def __init__(self, home: str) -> None:
        os.makedirs(home, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GIT_")
            and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
        }
        env.update(
            HOME=home,
            XDG_CONFIG_HOME=os.path.join(home, ".config"),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="/bin/false",
            SSH_ASKPASS="/bin/false",
            LC_ALL="C",
            LANG="C",
            TZ="UTC",
        )
        self.home = home
        self.env = env

    def git(
        self,
        *args: str,
        cwd: str | None = None,
        check: bool = True,
        capture: bool = True,
        input: bytes | None = None,
        timeout: float | None = 3600,
    ) -> subprocess.CompletedProcess:
        argv = ["git", *GIT_IDENTITY, *args]
        res = subprocess.run(
            argv,
            cwd=cwd,
            env=self.env,
            input=input,
            timeout=timeout,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if check and res.returncode != 0:
            err = res.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"git {' '.join(args)} failed ({res.returncode}): {err[-2000:]}")
        return res

    def out(self, *args: str, cwd: str | None = None) -> str:
        return self.git(*args, cwd=cwd).stdout.decode().strip()
