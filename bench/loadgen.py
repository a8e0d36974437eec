"""A small HTTP/1.1 load generator: N keep-alive connections, closed loop, one URL.

``python -m bench.loadgen http://127.0.0.1:PORT/repo.git/info/refs?service=git-upload-pack
--connections 8 --seconds 3`` (a POST with ``--post-file`` and ``-H`` headers) prints one
JSON object: requests, errors, requests per second, latency percentiles (ms), the bytes
received and the client's own CPU seconds (its ``getrusage``), so a run can tell whether
the client was the bottleneck.

Each connection sends a request, reads the whole answer (``Content-Length`` or chunked),
checks the status and (with ``--expect``) how the body starts, and sends the next one; a
``Connection: close`` answer makes it reconnect. asyncio protocols and a byte-level parser
keep its cost to some tens of microseconds per request. Only for servers on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import urllib.parse

_PREFIX_KEEP = 64  #: bytes of each body kept for the --expect check


class _Conn(asyncio.Protocol):
    def __init__(self, gen: _Load, done: asyncio.Future) -> None:
        self.gen, self.done = gen, done
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting = False  #: a request is out and its answer not complete
        self._reset()

    def _reset(self) -> None:
        self.mode = ""  # "" headers, "len", "chunked", "eof"
        self.remaining = 0
        self.status = 0
        self.close_after = False
        self.prefix = bytearray()
        self.body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if not self.gen.more():
            assert self.transport is not None
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.waiting = True
        assert self.transport is not None
        self.transport.write(self.gen.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.mode == "eof":
            self._complete()
        elif self.waiting:
            self.gen.errors += 1
            self.gen.error_kinds["connection lost mid-answer"] = 1 + self.gen.error_kinds.get(
                "connection lost mid-answer", 0
            )
        if not self.done.done():
            self.done.set_result(None)

    def _body(self, data: bytes | bytearray) -> None:
        self.body_bytes += len(data)
        if len(self.prefix) < _PREFIX_KEEP:
            self.prefix += data[: _PREFIX_KEEP - len(self.prefix)]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if not self.mode:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.status = int(head[9:12])
                self.close_after = b"\r\nconnection: close" in head
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    self.mode = "len"
                    self.remaining = int(head[i + 17 : head.find(b"\r\n", i + 2) % (len(head) + 1)].strip())
                elif b"\r\ntransfer-encoding: chunked" in head:
                    self.mode = "chunked"
                    self.remaining = -1  # next: a size line
                else:
                    self.mode = "eof"  # the body ends with the connection
            if self.mode == "len":
                take = min(self.remaining, len(buf))
                if take:
                    self._body(buf[:take])
                    del buf[:take]
                    self.remaining -= take
                if self.remaining:
                    return
                self._complete()
            elif self.mode == "chunked":
                if self.remaining < 0:
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        return
                    size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                    del buf[: eol + 2]
                    if size == 0:
                        self.remaining = -2  # the empty line (no trailers expected)
                    else:
                        self.remaining = size + 2
                if self.remaining == -2:
                    if len(buf) < 2:
                        return
                    del buf[:2]
                    self._complete()
                    continue
                take = min(self.remaining, len(buf))
                chunk_data = min(take, self.remaining - 2)  # leave the chunk's CRLF out
                if chunk_data > 0:
                    self._body(buf[:chunk_data])
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self.remaining = -1
            elif self.mode == "eof":
                if buf:
                    self._body(buf)
                    buf.clear()
                return

    def _complete(self) -> None:
        self.waiting = False
        gen = self.gen
        latency = time.perf_counter() - self.sent
        ok = self.status == 200 and (not gen.expect or bytes(self.prefix).startswith(gen.expect))
        if ok:
            gen.latencies.append(latency)
            gen.bytes += self.body_bytes
        else:
            gen.errors += 1
            kind = f"status {self.status}" if self.status != 200 else "unexpected body"
            gen.error_kinds[kind] = gen.error_kinds.get(kind, 0) + 1
        close = self.close_after or self.mode == "eof"
        self._reset()
        if close:
            gen.reconnects += 1
            assert self.transport is not None
            self.transport.close()  # connection_lost ends this one; the worker opens another
        else:
            self._send()


class _Load:
    def __init__(
        self, url: str, seconds: float, count: int, expect: bytes, headers: list[str], body: bytes = b""
    ) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        method = "POST" if body else "GET"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}", "User-Agent: git/bench-loadgen"]
        lines.append("Accept: */*")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.request = ("\r\n".join(lines + headers) + "\r\n\r\n").encode() + body
        self.seconds, self.count, self.expect = seconds, count, expect
        self.started = 0
        self.deadline = 0.0
        self.latencies: list[float] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.reconnects = 0
        self.bytes = 0

    def more(self) -> bool:
        if self.count:
            if self.started >= self.count:
                return False
        elif time.perf_counter() >= self.deadline:
            return False
        self.started += 1
        return True

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while self.more_possible():
            done: asyncio.Future = loop.create_future()
            try:
                await loop.create_connection(lambda fut=done: _Conn(self, fut), self.host, self.port)
            except OSError as exc:
                self.errors += 1
                self.error_kinds[f"connect: {exc}"] = self.error_kinds.get(f"connect: {exc}", 0) + 1
                await asyncio.sleep(0.01)
                continue
            await done

    def more_possible(self) -> bool:
        if self.count:
            return self.started < self.count
        return time.perf_counter() < self.deadline


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    i = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[i]


async def _run(gen: _Load, connections: int) -> float:
    t0 = time.perf_counter()
    gen.deadline = t0 + gen.seconds
    await asyncio.gather(*(gen.worker() for _ in range(connections)))
    return time.perf_counter() - t0


def load(
    url: str,
    connections: int = 8,
    seconds: float = 3.0,
    count: int = 0,
    expect: bytes = b"",
    headers: list[str] | None = None,
    warmup: float = 0.0,
    latencies: bool = False,
    body: bytes = b"",
) -> dict:
    """Run the load in this process; the result dict (``count``: that many requests instead).

    ``body``: POST it (``Content-Length``) instead of a GET.
    """
    if warmup:
        asyncio.run(_run(_Load(url, warmup, 0, expect, headers or [], body), connections))
    gen = _Load(url, seconds, count, expect, headers or [], body)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    wall = asyncio.run(_run(gen, connections))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    lat = sorted(gen.latencies)
    n = len(lat)
    return {
        "url": url,
        "connections": connections,
        "seconds": round(wall, 3),
        "requests": n,
        "errors": gen.errors,
        "error_kinds": gen.error_kinds,
        "reconnects": gen.reconnects,
        "rps": round(n / wall, 1) if wall else 0.0,
        "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "p90_ms": round(percentile(lat, 0.90) * 1000, 3),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "max_ms": round(lat[-1] * 1000, 3) if lat else None,
        "mean_ms": round(sum(lat) / n * 1000, 3) if n else None,
        "body_bytes_per_request": round(gen.bytes / n) if n else 0,
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share": round(cpu / wall, 3) if wall else None,  # of one core
        **({"latencies_ms": [round(x * 1000, 3) for x in lat]} if latencies else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="http://127.0.0.1:PORT/... (this machine only)")
    p.add_argument("--connections", "-c", type=int, default=8, help="keep-alive connections (default 8)")
    p.add_argument("--seconds", "-d", type=float, default=3.0, help="how long (default 3)")
    p.add_argument("--count", "-n", type=int, default=0, help="this many requests instead of --seconds")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of untimed load first")
    p.add_argument("--expect", default="", help="each 200 body must start with this text")
    p.add_argument("--header", "-H", action="append", default=[], help="extra request header")
    p.add_argument("--latencies", action="store_true", help="also print every latency (ms, sorted)")
    p.add_argument("--post-file", help="POST this file's bytes as the body (instead of a GET)")
    a = p.parse_args(argv)
    host = urllib.parse.urlsplit(a.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        p.error("only servers on this machine (127.0.0.0/8, localhost, ::1)")
    if a.count < 0 or a.seconds <= 0 or a.connections < 1 or a.count > 10_000_000:
        p.error("connections must be >= 1, seconds > 0, count 0..10,000,000")
    a.seconds = min(a.seconds, 600.0)
    body = b""
    if a.post_file:
        with open(a.post_file, "rb") as fh:
            body = fh.read()
    res = load(
        a.url, a.connections, a.seconds, a.count, a.expect.encode(), a.header, a.warmup, a.latencies, body
    )
    json.dump(res, sys.stdout)
    print()
    return 1 if res["errors"] or not res["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
