"""The server's own URLs under ``/-/``: a health check and Prometheus metrics.

``/-/`` can never name a repository (``-`` is not a repository the routes let
through: everything under it is answered here, 404 when unknown), so a load
balancer or Prometheus can poll a fixed URL whatever repositories exist.

* ``/-/health``: 200 when git can be spawned and the repository root read,
  503 otherwise. Spawning git on every probe would cost a fork per second per
  balancer, so the verdict is cached for a few seconds and computed off the
  event loop.
* ``/-/metrics``: the Prometheus text format (``prometheus-client``): HTTP
  requests by status, git runs by service, transport and result (the engine's
  own audit verdict), bytes in and out, run durations, running git processes.
  With several worker processes, ``PROMETHEUS_MULTIPROC_DIR`` (set by the CLI)
  makes every worker's numbers add up in whichever worker answers. The caches
  report too: the pack cache's entries and bytes on disk (shared by every
  worker), and the advertisement cache's hits, misses and size (those of the
  worker that answers the scrape: each worker has its own).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import tornado.web

from ..engine.query import GitQueryError, git_query_sync

__all__ = ["ops_routes", "Metrics", "HealthHandler", "MetricsHandler"]

#: Seconds a health verdict is reused.
HEALTH_CACHE = 5.0


class Metrics:
    """One app's collectors, in a registry of its own (two apps in a process share none).

    Observes the app's engine (every run's end, cache hits included) and reads
    its running runs and caches at scrape time. With several worker processes,
    prometheus-client itself reads ``PROMETHEUS_MULTIPROC_DIR`` (set by the CLI
    before any worker exists) and every worker's numbers add up.
    """

    def __init__(self, engine: Any) -> None:
        import prometheus_client as prom

        self.prom = prom
        self.engine = engine
        self.registry = registry = prom.CollectorRegistry()
        multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = prom.Counter(
            "gittornado_http_requests", "HTTP requests answered", ["method", "status"], registry=registry
        )
        self.runs = prom.Counter(
            "gittornado_git_runs", "git runs ended", ["service", "transport", "result"], registry=registry
        )
        self.bytes_in = prom.Counter(
            "gittornado_git_received_bytes",
            "bytes fed to git (pushes, fetch requests)",
            ["service"],
            registry=registry,
        )
        self.bytes_out = prom.Counter(
            "gittornado_git_sent_bytes",
            "bytes git answered (packs, advertisements)",
            ["service"],
            registry=registry,
        )
        self.duration = prom.Histogram(
            "gittornado_git_run_duration_seconds",
            "git run duration",
            ["service"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        kwargs = {"multiprocess_mode": "livesum"} if multi else {}
        self.running = prom.Gauge(
            "gittornado_git_processes_running",
            "git runs in progress in this process",
            registry=registry,
            **kwargs,
        )
        if not multi:
            self.running.set_function(lambda: len(engine.runs))
        self.multi = multi
        self.caches = _CacheCollector(engine.advert_cache, engine.pack_cache)
        if not multi:
            registry.register(self.caches)
        engine.add_observer(self.run_ended)

    def run_ended(self, run: Any) -> None:
        service = run.op.service
        self.runs.labels(service, run.op.transport, run.result).inc()
        self.bytes_in.labels(service).inc(run.op.bytes_in)
        self.bytes_out.labels(service).inc(run.op.bytes_out)
        self.duration.labels(service).observe(time.monotonic() - run.op.started)
        if self.multi:
            self.running.set(len(self.engine.runs))

    def count_request(self, handler: tornado.web.RequestHandler) -> None:
        """Count an answered request by status (called from the app's log function)."""
        self.requests.labels(handler.request.method or "-", str(handler.get_status())).inc()
        if self.multi:
            self.running.set(len(self.engine.runs))

    def render(self) -> tuple[bytes, str]:
        prom = self.prom
        if self.multi:
            from prometheus_client import multiprocess

            self.running.set(len(self.engine.runs))
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.caches)
            return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST


class _CacheCollector:
    """The caches' own figures, read at scrape time (they keep their own counters)."""

    def __init__(self, advert: Any, pack: Any) -> None:
        self.advert = advert
        self.pack = pack

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.advert is not None:
            stats = self.advert.stats()
            for name in ("hits", "misses", "stores", "evictions", "invalidations"):
                yield CounterMetricFamily(
                    f"gittornado_advert_cache_{name}",
                    f"advertisement cache {name} (this worker)",
                    value=stats[name],
                )
            yield GaugeMetricFamily(
                "gittornado_advert_cache_entries", "advertisements held (this worker)", value=stats["entries"]
            )
            yield GaugeMetricFamily(
                "gittornado_advert_cache_bytes",
                "bytes the advertisement cache holds (this worker)",
                value=stats["bytes"],
            )
        if self.pack is not None:
            try:
                entries, size = self.pack.usage()
            except OSError:
                return
            yield GaugeMetricFamily(
                "gittornado_pack_cache_entries", "complete packs in the pack cache", value=entries
            )
            yield GaugeMetricFamily(
                "gittornado_pack_cache_bytes", "bytes of the pack cache on disk", value=size
            )


class _Health:
    """The cached verdict for one root and one git."""

    def __init__(self, gitbase: str, git: str) -> None:
        self.gitbase, self.git = gitbase, git
        self.checked = -HEALTH_CACHE
        self.problem: str | None = None
        self._lock = asyncio.Lock()

    def _check(self) -> str | None:
        try:
            os.listdir(self.gitbase)
        except OSError as exc:
            return f"cannot read the repository root: {exc.strerror}"
        try:
            git_query_sync([self.git, "--version"], self.gitbase, timeout=10)
        except (OSError, GitQueryError) as exc:
            return f"cannot run git: {exc}"
        return None

    async def problem_now(self) -> str | None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            if loop.time() - self.checked >= HEALTH_CACHE:
                self.problem = await loop.run_in_executor(None, self._check)
                self.checked = loop.time()
            return self.problem


class HealthHandler(tornado.web.RequestHandler):
    """``GET /-/health``: 200 ``ok``, or 503 with the reason (for load balancers)."""

    def initialize(self, health: _Health) -> None:
        self.health = health

    async def get(self) -> None:
        problem = await self.health.problem_now()
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if problem is not None:
            self.set_status(503)
            self.finish(problem + "\n")
        else:
            self.finish("ok\n")

    head = get


class MetricsHandler(tornado.web.RequestHandler):
    """``GET /-/metrics``: Prometheus text format."""

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        body, content_type = self.metrics.render()
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class _Reserved(tornado.web.RequestHandler):
    """Anything else under ``/-/``: never a repository."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


def ops_routes(prefix: str, *, gitbase: str, metrics: Metrics) -> list:
    """Routes for ``prefix/-/...``; they go before the git routes. ``prefix`` is validated."""
    import re

    p = re.escape(prefix)
    return [
        tornado.web.url(p + r"/-/health\Z", HealthHandler, {"health": _Health(gitbase, metrics.engine.git)}),
        tornado.web.url(p + r"/-/metrics\Z", MetricsHandler, {"metrics": metrics}),
        tornado.web.url(p + r"/-/.*", _Reserved),
    ]
