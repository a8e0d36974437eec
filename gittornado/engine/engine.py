"""``Engine``: built once per app, it owns every git run of that app, on every transport.

What used to be decided per transport is decided here, from the service
table's facts and the app's settings: the process slot (every run, HTTP, ws,
SSH alike, and the one-off queries), the input cap, git's extra ``-c``
options (the pack cache's hook; ``receive.maxInputSize`` where git reads the
peer itself), the advertisement cache (a hit runs no git and still writes an
audit line), the registry of running runs and who is told when one ends
(metrics, cache invalidation, a graceful shutdown). Nothing here is
process-wide: two apps in one process share nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ServiceUnavailable
from ..protocol import pktline
from ..protocol.services import Service
from .advertcache import AdvertCache, is_ls_refs, request_key
from .gitargs import GIT_OPTIONS
from .pipes import OUT_OF_RESOURCES
from .query import git_query
from .run import GitRun
from .slots import GitProcessLimit

if TYPE_CHECKING:
    from ..access.gate import Session

__all__ = ["Engine"]

app_log = logging.getLogger("gittornado.application")


class Engine:
    """The git runs of one app.

    :arg git: the git executable.
    :arg upload_pack_limit: cap on a read session's whole input (413 beyond).
    :arg receive_pack_limit: cap on a push's input (None: unbounded); where git
        reads the peer itself (SSH) receive-pack enforces it (``receive.maxInputSize``).
    :arg input_idle: seconds git may wait for input that does not come (None: never).
    :arg output_idle: seconds a peer may take none of git's output (None: never).
    :arg direct_output: let the kernel splice answers into plain sockets.
    :arg slots: a ``GitProcessLimit`` (None: no cap on git processes).
    :arg pack_cache: a ``PackCache`` for upload-pack runs (None: off).
    :arg advert_cache: an ``AdvertCache`` (None: off).
    """

    def __init__(
        self,
        *,
        git: str = "git",
        upload_pack_limit: int | None = 64 * 1024 * 1024,
        receive_pack_limit: int | None = None,
        input_idle: float | None = 600.0,
        output_idle: float | None = 600.0,
        direct_output: bool = True,
        slots: GitProcessLimit | None = None,
        pack_cache: Any = None,
        advert_cache: AdvertCache | None = None,
    ) -> None:
        for name, value in (
            ("upload_pack_limit", upload_pack_limit),
            ("receive_pack_limit", receive_pack_limit),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")
        for name, value in (("input_idle", input_idle), ("output_idle", output_idle)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None")
        self.git = git
        self.upload_pack_limit = upload_pack_limit
        self.receive_pack_limit = receive_pack_limit
        self.input_idle = input_idle or None
        self.output_idle = output_idle or None
        self.direct_output = direct_output
        self.slots = slots
        self.pack_cache = pack_cache
        self.advert_cache = advert_cache
        #: The runs not done yet (a graceful shutdown waits for them; metrics count them).
        self.runs: set[GitRun] = set()
        self._observers: list[Callable[[GitRun], None]] = []
        if advert_cache is not None:
            self.add_observer(advert_cache.run_ended)

    # -- runs ----------------------------------------------------------------------------
    async def start(
        self,
        session: Session,
        service: Service,
        *,
        transport: str,
        remote_addr: str,
        git_protocol: str | None = None,
        stateless: bool = True,
        advertise: bool = False,
        input_fd: int | None = None,
        on_abort: Callable[[str], None] | None = None,
    ) -> GitRun:
        """A run of ``service`` for a decided ``session``; git started unless it need not be.

        A stateless fetch request is spooled (git starts on it whole, when the
        answer is asked for); an advertisement may come from the cache. Raises
        ``ServiceUnavailable`` (503) when no process slot frees in time or git
        cannot start (out of descriptors or processes): nothing was sent yet.
        """
        wired = input_fd is not None
        run = GitRun(
            self,
            session,
            service,
            transport=transport,
            remote_addr=remote_addr,
            git_protocol=git_protocol,
            stateless=stateless and service.stateless_rpc,
            advertise=advertise,
            spool=stateless and not advertise and not wired and service.spooled,
            input_fd=input_fd,
            input_limit=None if wired else self.input_limit(service),
            options=self.git_options(service, wired=wired),
            on_abort=on_abort,
        )
        await run._begin()
        return run

    def input_limit(self, service: Service) -> int | None:
        return self.receive_pack_limit if service.input_cap == "push" else self.upload_pack_limit

    def git_options(self, service: Service, *, wired: bool = False) -> tuple[str, ...]:
        """``-c`` settings for a run of ``service`` beyond ``GIT_OPTIONS``."""
        options = list(GIT_OPTIONS)
        if self.pack_cache is not None and service.pack_cache:
            options += self.pack_cache.git_options()
        if wired and service.input_cap == "push" and self.receive_pack_limit is not None:
            # git reads the peer's fd itself: receive-pack caps the pack it takes.
            options.append(f"receive.maxInputSize={self.receive_pack_limit}")
        return tuple(options)

    async def take_slot(self, run: GitRun) -> None:
        if self.slots is not None and not run._slot:
            await self.slots.acquire()
            run._slot = True

    def run_ended(self, run: GitRun) -> None:
        """Called by each run once it is done (after its audit line)."""
        self.runs.discard(run)
        if run._slot:
            run._slot = False
            self.slots.release()
        for observer in list(self._observers):
            try:
                observer(run)
            except Exception:
                app_log.exception("run observer %r failed", observer)

    def add_observer(self, observer: Callable[[GitRun], None]) -> None:
        """Have ``observer(run)`` called as each run ends (errors are logged, not raised)."""
        if observer not in self._observers:
            self._observers.append(observer)

    def running(self) -> list[GitRun]:
        return list(self.runs)

    # -- the advertisement cache ---------------------------------------------------------
    def advert_cacheable(self, run: GitRun) -> bool:
        return self.advert_cache is not None and run.service.advert_cacheable and run.protocol == 2

    def advert_lookup(self, run: GitRun, body: bytes | None) -> bool:
        """Answer ``run`` from the cache (True), or give it a ticket to store git's answer."""
        cache = self.advert_cache
        if cache is None or not run.service.advert_cacheable or (body is not None and not is_ls_refs(body)):
            return False
        env = run.session.env
        key = request_key(run.service.name, run.git_protocol, body, env, self.git, run.options)
        answer, run.ticket = cache.lookup(run.repo_path, key, git=self.git, env=env)
        if answer is None:
            return False
        run.cached = answer
        run.op.bytes_out = len(answer)
        return True

    def advert_store(self, run: GitRun, kept: list[bytes]) -> None:
        """Keep git's answer if it is whole, successful and not too big."""
        cache = self.advert_cache
        if cache is None or run.ticket is None or len(kept) < 2:
            return
        if run.exit_status != 0 or run.abort_reason or run.trailer() != b"":
            return
        if sum(len(part) for part in kept) > cache.max_entry:
            return
        # Complete from git's side even when the client hung up right after the
        # last flush (dulwich does, without reading the final chunk).
        if pktline.complete_with_flush(b"".join(kept[1:])):
            cache.store(run.ticket, b"".join(kept))

    # -- one-off git ---------------------------------------------------------------------
    async def query(self, args: list[str], cwd: str, *, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """``git ARGS`` in ``cwd`` (the dumb listing, health), in a process slot."""
        if self.slots is not None:
            await self.slots.acquire()
        try:
            return await git_query([self.git, *args], cwd, max_bytes=max_bytes)
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            raise ServiceUnavailable("the server is out of resources to run git; try again later") from None
        finally:
            if self.slots is not None:
                self.slots.release()
