"""A real OpenSSH server for the SSH tests: ``gittornado-shell`` as each key's forced command.

One ``sshd -D -e`` per test session on a free 127.0.0.1 port, with a generated
host key, ``StrictModes no`` and ``UsePAM no`` so it runs from a temporary
directory as whoever runs the tests. ``AuthorizedKeysFile`` is read on every
connection, so each test writes its own forced commands (its own gitbase and
access file) with ``authorize`` and no restart is needed. Client keys are made
on demand and kept for the session; a key *is* a user over SSH.

Tests skip (with the reason) only when OpenSSH's server or client is missing.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

#: sshd re-executes itself, so it must be started by absolute path.
_SSHD_PATHS = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin:/sbin"


def shell_argv() -> list[str]:
    """The installed ``gittornado-shell`` console script (absolute: sshd's PATH is minimal)."""
    script = Path(sys.executable).parent / "gittornado-shell"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gittornado.server.shell"]


class Sshd:
    """The running server: ``authorize`` keys, then point git at it with ``env``/``url``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.sshd = shutil.which("sshd", path=_SSHD_PATHS)
        self.ssh = shutil.which("ssh")
        self.keygen = shutil.which("ssh-keygen")
        if not (self.sshd and self.ssh and self.keygen):
            pytest.skip("OpenSSH server or client not found (Debian: apt-get install openssh-server)")
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text("")
        self._keys: dict[str, Path] = {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._start()

    # -- the server ------------------------------------------------------------------
    def _keygen(self, path: Path) -> None:
        subprocess.run(
            [self.keygen, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
            check=True,
            capture_output=True,
        )

    def _start(self) -> None:
        host_key = self.root / "host_key"
        self._keygen(host_key)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        self.log = self.root / "sshd.log"
        for _attempt in range(5):  # the free port may be taken before sshd binds it
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            config = self.root / "sshd_config"
            config.write_text(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                f"PidFile {self.root / 'sshd.pid'}\nAuthorizedKeysFile {self.authorized_keys}\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                f"AllowUsers {self.user}\nPermitRootLogin forced-commands-only\n"
                "AcceptEnv GIT_PROTOCOL\nUseDNS no\nLogLevel VERBOSE\nMaxStartups 100:30:200\n"
            )
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [self.sshd, "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if wait_for(self._ready, timeout=10, message="sshd to listen") == "up":
                return
        pytest.fail(f"sshd did not start:\n{self.log.read_text()}")

    def _ready(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return "exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return "up" if sock.recv(8).startswith(b"SSH-") else None
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    # -- keys and forced commands ------------------------------------------------------
    def key(self, name: str) -> Path:
        """The private key file called ``name`` (made on first use)."""
        if name not in self._keys:
            path = self.root / f"key-{name}"
            self._keygen(path)
            self._keys[name] = path
        return self._keys[name]

    def authorize(self, commands: dict[str, list[str]], wrappers: dict[str, list[str]] | None = None) -> None:
        """Replace authorized_keys: key name -> ``gittornado-shell`` arguments for that key
        (``wrappers``: key name -> a command the shell runs under, e.g. ``prlimit ...``)."""
        lines = []
        for name, args in commands.items():
            pub = Path(f"{self.key(name)}.pub").read_text().strip()
            command = (
                shlex.join([*(wrappers or {}).get(name, []), *shell_argv(), *args])
                .replace("\\", "\\\\")
                .replace('"', '\\"')
            )
            lines.append(f'command="{command}",restrict {pub}\n')
        self.authorized_keys.write_text("".join(lines))

    # -- clients ---------------------------------------------------------------------
    def ssh_argv(self, key: str, *options: str) -> list[str]:
        """ssh with this key, hermetic (no user or system config), quiet and non-interactive."""
        return [
            self.ssh,
            "-F",
            "/dev/null",
            "-i",
            str(self.key(key)),
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            # The default post-quantum key exchange costs ~70 ms a connection here.
            "-o",
            "KexAlgorithms=curve25519-sha256",
            *options,
        ]

    def env(self, key: str, *options: str) -> dict[str, str]:
        """What git needs in its environment to connect with ``key``."""
        return {"GIT_SSH_COMMAND": shlex.join(self.ssh_argv(key, *options))}

    def url(self, repo: str, *, form: str = "ssh") -> str:
        """``ssh://user@127.0.0.1:PORT/repo``, or the scp-like ``user@127.0.0.1:repo``."""
        if form == "scp":
            return f"{self.user}@127.0.0.1:{repo}"  # the port comes from GIT_SSH_COMMAND
        return f"ssh://{self.user}@127.0.0.1:{self.port}/{repo}"

    def run(
        self,
        key: str,
        command: str | None,
        input: bytes = b"",
        timeout: float = 30,
        options: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess:
        """``ssh host COMMAND`` (no command: an interactive login) with this key."""
        argv = self.ssh_argv(key, *options) + [f"{self.user}@127.0.0.1"]
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory, hermetic_git):
    """The session's sshd (see the module docstring); skips where OpenSSH is missing."""
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
