"""One way to run a one-off git (the dumb ref listing, the index's summaries, health).

Under the same environment scrub as every service run (``gitargs.scrubbed_env``),
so a ``GIT_DIR`` or ``GIT_NAMESPACE`` of whoever started the server never
changes what git answers. An async form for the loop, a blocking one for a
thread pool (the WSGI side).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from .gitargs import scrubbed_env
from .pipes import CHUNK_SIZE, read_some, reap, spawn

__all__ = ["GitQueryError", "git_query", "git_query_sync"]


class GitQueryError(RuntimeError):
    """git failed, said too much, or took too long."""


async def git_query(
    argv: list[str], cwd: str, *, env: Mapping[str, str] | None = None, max_bytes: int = 64 * 1024 * 1024
) -> bytes:
    """Run ``argv`` in ``cwd`` without blocking the loop; its stdout.

    Raises ``GitQueryError`` if git fails or writes more than ``max_bytes``;
    ``OSError`` if it cannot start.
    """
    proc = spawn(argv, env=scrubbed_env(os.environ, env), cwd=cwd, stdin=False, stderr=False)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await read_some(proc.stdout, CHUNK_SIZE):
            size += len(chunk)
            if size > max_bytes:
                proc.proc.kill()
                raise GitQueryError(f"{' '.join(argv[1:3])} wrote more than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        os.close(proc.stdout)
        status = await reap(proc.proc)
    if status != 0:
        raise GitQueryError(f"{' '.join(argv[1:3])} exited with status {status}")
    return b"".join(chunks)


def git_query_sync(
    argv: list[str], cwd: str, *, env: Mapping[str, str] | None = None, timeout: float | None = 30.0
) -> bytes:
    """The blocking form, for a thread pool; same scrub, same errors (and a timeout)."""
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=scrubbed_env(os.environ, env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitQueryError(f"{' '.join(argv[1:3])} took longer than {timeout}s") from None
    if proc.returncode != 0:
        said = proc.stderr.decode("utf-8", "replace").strip()[:200]
        raise GitQueryError(f"{' '.join(argv[1:3])} exited with status {proc.returncode}: {said}")
    return proc.stdout
