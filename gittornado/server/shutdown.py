"""Graceful shutdown and the quarantine directories a crash leaves behind.

A push lands in ``objects/tmp_objdir-incoming-*`` (git's quarantine) until its
refs are updated; receive-pack removes it itself when it ends, even on a failed
push, as long as it can read its input to the end and write its report. So a
shutdown that kills git outright leaves tens or hundreds of MiB behind per
push, and a pusher who sees a reset. Instead the server stops accepting, lets
running requests and git runs finish for a grace period, then stops what is
left the engine's way (git's input closed first: it cleans up), and only then
closes connections. What a crash or ``kill -9`` still leaves behind is removed
at the next start, once no push could still own it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from typing import Any

__all__ = ["drain", "remove_stale_quarantines"]

log = logging.getLogger("gittornado.general")

_QUARANTINE_PREFIX = "tmp_objdir-incoming-"


def _busy_requests(server: Any) -> int:
    """HTTP requests between their headers and the end of their answer (``GitHTTPServer``)."""
    busy = getattr(server, "busy_requests", None)
    return busy() if busy is not None else 0


def _runs(server: Any, engine: Any) -> list:
    """The running runs of the app ``server`` serves (or of ``engine``)."""
    engine = (
        engine if engine is not None else getattr(getattr(server, "request_callback", None), "engine", None)
    )
    return engine.running() if engine is not None else []


async def drain(server: Any, grace: float, hurry: asyncio.Event | None = None, engine: Any = None) -> None:
    """Stop accepting, wait up to ``grace`` seconds for running work, stop the rest.

    Running work is every git run of the app's engine (smart HTTP, WebSocket,
    any transport; ``engine`` defaults to the served app's) and every HTTP
    request in progress. ``hurry`` set (a second
    signal) ends the wait at once. A push whose input is complete is let
    finish (killing it between its pack check and its ref updates helps
    nobody); every other run is aborted, which closes git's input first.
    """
    server.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    announced = False
    while _runs(server, engine) or _busy_requests(server):
        if loop.time() >= deadline or (hurry is not None and hurry.is_set()):
            break
        if not announced:
            log.info(
                "waiting up to %gs for %d git runs and %d requests to finish",
                grace,
                len(_runs(server, engine)),
                _busy_requests(server),
            )
            announced = True
        await asyncio.sleep(0.05)
    left = _runs(server, engine)
    if left:
        log.warning("grace period over: stopping %d git runs", len(left))
        for run in left:
            if not run.must_finish:
                run.abort("the server is shutting down")
        # The engine signals git after its own grace (SIGTERM, then SIGKILL): bounded.
        stop_by = loop.time() + 15
        while _runs(server, engine) and loop.time() < stop_by:
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=10)
    except asyncio.TimeoutError:
        pass


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def remove_stale_quarantines(gitbase: str, idle: float) -> list[str]:
    """Remove push quarantines under ``gitbase`` where nothing changed for ``idle`` seconds.

    A push whose data stops coming for the body idle timeout is dropped by the
    server (and git then removes its quarantine); so, with ``idle`` at least
    that timeout, a quarantine nothing wrote to for longer belongs to no
    running push, on this host or another one sharing the root. Returns the
    directories removed. Runs at start (before workers exist) and periodically.
    """
    removed: list[str] = []
    cutoff = time.time() - idle
    for root, dirs, _files in os.walk(gitbase):
        if "objects" in dirs and os.path.isfile(os.path.join(root, "HEAD")):
            objects = os.path.join(root, "objects")
            try:
                entries = os.listdir(objects)
            except OSError:
                entries = []
            for name in entries:
                path = os.path.join(objects, name)
                if not name.startswith(_QUARANTINE_PREFIX) or not os.path.isdir(path) or os.path.islink(path):
                    continue
                try:
                    if _newest_mtime(path) >= cutoff:
                        continue
                except OSError:
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                log.warning("removed a push quarantine left behind: %s", path)
            # A repository's own directories hold no repositories.
            dirs[:] = [d for d in dirs if d not in ("objects", "refs", "hooks", "logs", "info")]
    return removed
