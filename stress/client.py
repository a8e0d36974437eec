"""Clients that misbehave on purpose: raw HTTP over sockets, bursts of them, and git run hermetically.

Nothing here retries or waits unboundedly: every socket has a timeout, every
burst a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Answer",
    "basic",
    "request",
    "http_request",
    "raw",
    "burst",
    "git",
    "rev",
    "hermetic_env",
    "build_root",
    "pkt",
    "gzip_bomb",
    "FIXTURE",
    "temp_dir",
]

FIXTURE = """\
blob
mark :1
data 6
hello

commit refs/heads/main
mark :10
author Alice <alice@example.com> 1700000000 +0000
committer Alice <alice@example.com> 1700000000 +0000
data 6
first
M 100644 :1 hello.txt

blob
mark :2
data 12
hello again

commit refs/heads/main
mark :11
author Bob <bob@example.com> 1700000100 +0000
committer Bob <bob@example.com> 1700000100 +0000
data 7
second
from :10
M 100644 :2 hello.txt

"""


@dataclass
class Answer:
    status: int  #: 0: the connection ended before a status line
    headers: dict[str, str]
    body: bytes
    seconds: float


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def pkt(data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return b"%04x" % (len(data) + 4) + data


def gzip_bomb(inflated: int, unit: bytes = b"0") -> bytes:
    """A gzip body of a few KB that inflates to ``inflated`` bytes of ``unit``."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = unit * (1 << 20)
    out = []
    left = inflated
    while left > 0:
        piece = block[: min(left, len(block))]
        out.append(z.compress(piece))
        left -= len(piece)
    out.append(z.flush())
    return b"".join(out)


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, {}, data
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, headers, body


def _complete(data: bytes) -> bool:
    """True once ``data`` holds a whole response (by Content-Length or the last chunk)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            try:
                return len(body) >= int(line.split(b":", 1)[1])
            except ValueError:
                return False
    return False


def raw(
    port: int, data: bytes, *, timeout: float = 10.0, source: str | None = None, half_close: bool = False
) -> Answer:
    """Send ``data`` on a new connection and read one response (or until the server closes).

    ``half_close`` shuts our sending side after the request, as some clients
    do. A reset counts as the end of what the server said.
    """
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        deadline = started + timeout
        while time.monotonic() < deadline and not _complete(got):
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
    status, headers, body = _parse(got)
    return Answer(status, headers, body, time.monotonic() - started)


def request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
    source: str | None = None,
) -> Answer:
    """One request on its own connection (``Connection: close``); the whole answer read."""
    return raw(port, http_request(method, path, headers, body), timeout=timeout, source=source)


async def _one(port: int, data: bytes, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return -1, time.monotonic() - started
    try:
        writer.write(data)
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        status = int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        status = 0
    finally:
        writer.close()
    return status, time.monotonic() - started


def burst(port: int, requests: list[bytes], *, timeout: float = 60.0) -> list[tuple[int, float]]:
    """Send every raw request at once, each on its own connection: [(status, seconds)].

    Status -1: could not connect; 0: no status line came back.
    """

    async def run() -> list[tuple[int, float]]:
        return await asyncio.gather(*(_one(port, r, timeout) for r in requests))

    return asyncio.run(run())


def http_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """The bytes of one HTTP/1.1 request that closes its connection."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- git ---------------------------------------------------------------------------------------


def hermetic_env(home: str | os.PathLike) -> dict[str, str]:
    """Environment for git with no user or system config and no prompts."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gitconfig"
    if not config.exists():
        config.write_text(
            "[user]\n\tname = Stress\n\temail = stress@example.com\n"
            "[init]\n\tdefaultBranch = main\n[protocol]\n\tallow = always\n"
        )
    return {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(config),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "LC_ALL": "C",
    }


def git(
    *args: str,
    cwd: str | os.PathLike | None = None,
    check: bool = True,
    timeout: float = 120,
    input: bytes | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        input=input,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return proc


def rev(repo: str | os.PathLike, ref: str) -> str:
    return git("rev-parse", ref, cwd=repo).stdout.decode().strip()


def build_root(root: str | os.PathLike, passwords: dict[str, str], *, rounds: int = 4) -> dict[str, Path]:
    """A gitbase under attack, its access file, and things outside it to steal.

    ``app`` (read by anyone, written by alice), ``private`` (alice only),
    ``public/lib``, ``kills`` (alice only: the target of interrupted pushes,
    which grow it); outside the root a ``secret.git``, reached from inside by
    a symlinked repository (``evil.git``) and by a repository whose
    ``objects``/``refs`` are symlinks to it (``borrow.git``).
    """
    from passlib.hash import bcrypt

    root = Path(root)
    base = root / "repos"
    seed = root / "seed.git"
    git("init", "--bare", "-q", str(seed))
    git("fast-import", "--quiet", cwd=seed, input=FIXTURE.encode())
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=seed)
    for name in ("app.git", "private.git", "public/lib.git", "kills.git"):
        shutil.copytree(seed, base / name)
    secret = root / "outside" / "secret.git"
    shutil.copytree(seed, secret)
    git("update-ref", "refs/heads/secret-branch-0badc0de", "main", cwd=secret)
    (base / "evil.git").symlink_to(secret)
    borrow = base / "borrow.git"
    borrow.mkdir()
    (borrow / "HEAD").write_text("ref: refs/heads/main\n")
    (borrow / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
    (borrow / "objects").symlink_to(secret / "objects")
    (borrow / "refs").symlink_to(secret / "refs")
    if (secret / "packed-refs").exists():
        (borrow / "packed-refs").symlink_to(secret / "packed-refs")
    fast = bcrypt.using(rounds=rounds)
    users = "".join(f"{u} = {fast.hash(p)}\n" for u, p in passwords.items())
    access = root / "access.ini"
    access.write_text(
        f"[users]\n{users}[access]\nalice = **=rw\nbob = app=r\n* = app=r, public/*=r, evil=r, borrow=r\n"
    )
    return {"base": base, "access": access, "secret": secret, "seed": seed}


def temp_dir(prefix: str = "gittornado-stress-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
