"""The pre-fork supervisor behind ``gittornado --processes N``.

``tornado.process.fork_processes`` leaves its workers running when the parent
is killed and restarts a crashing worker forever; a service manager needs one
process that stops everything on SIGTERM, passes SIGHUP on, and gives up
(exit 1) when workers keep dying at start. That process is this module's
``fork_workers``. It must run before any IOLoop exists (a forked loop is
unusable), so the server calls it after binding its sockets and before
building the application.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import sys
import time

__all__ = ["fork_workers", "RESTART_WINDOW"]

log = logging.getLogger("gittornado.general")

#: Seconds: more than N worker restarts within it and the supervisor gives up.
RESTART_WINDOW = 10.0


def _metrics_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the shared metrics (multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
        except Exception:  # metrics are optional; a supervisor must not die of them
            pass


class _Supervisor:
    """The parent's state: its children, whether it is stopping, recent restarts."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.children: set[int] = set()
        self.stopping = False
        self.restarts: collections.deque[float] = collections.deque()
        self.status_code = 0

    def spawn(self) -> bool:
        """Fork one worker: True in the worker, False in the supervisor."""
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # Until the worker's loop handles it, a SIGHUP must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            return True
        self.children.add(pid)
        return False

    def signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def on_stop(self, signum, frame) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def on_hup(self, signum, frame) -> None:
        if not self.stopping:
            self.signal_all(signal.SIGHUP)

    def should_replace(self, pid: int, status: int) -> bool:
        """After a worker died: whether to start another (False also when giving up)."""
        if self.stopping or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            return False
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
            self.restarts.popleft()
        if len(self.restarts) >= self.n:
            log.error(
                "worker %d died (status %d); %d workers died within %gs, giving up",
                pid,
                status,
                len(self.restarts) + 1,
                RESTART_WINDOW,
            )
            self.stopping = True
            self.status_code = 1
            self.signal_all(signal.SIGTERM)
            return False
        log.warning("worker %d died (status %d); starting another", pid, status)
        if self.restarts:  # a little later each time: a worker failing at start does not spin
            time.sleep(min(1.0, 0.1 * len(self.restarts)))
        self.restarts.append(now)
        return not self.stopping  # a signal may have come during the pause


def fork_workers(n: int, cleanup: list[str] | None = None) -> None:
    """Pre-fork ``n`` workers sharing the listening sockets; returns in each worker.

    The parent only supervises and never returns: it replaces a worker that
    dies abnormally (at most ``n`` times within ``RESTART_WINDOW`` seconds, a
    little later each time; beyond that a worker that crashes at start would
    only spin, so it stops the rest and exits 1), passes SIGHUP on to every
    worker (each then reloads its access file) and, on SIGTERM/SIGINT, stops
    every worker and exits 0. Directories in ``cleanup`` are removed when the
    supervisor exits.
    """
    sup = _Supervisor(n)
    signal.signal(signal.SIGTERM, sup.on_stop)
    signal.signal(signal.SIGINT, sup.on_stop)
    signal.signal(signal.SIGHUP, sup.on_hup)
    for _ in range(n):
        if sup.spawn():
            return
    log.info("started %d worker processes", n)
    while sup.children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        sup.children.discard(pid)
        _metrics_process_dead(pid)
        if sup.should_replace(pid, status) and sup.spawn():
            return
    for path in cleanup or ():
        shutil.rmtree(path, ignore_errors=True)
    sys.exit(sup.status_code)
