"""Chunked request bodies read a buffer at a time, not three reads per chunk.

git sends every push larger than ``http.postBuffer`` (1 MiB) with
``Transfer-Encoding: chunked``, in chunks of whatever curl had at hand: about
23 KiB each. Tornado's own decoder awaits three stream reads per chunk (size
line, data, CRLF), which made the HTTP framing the largest part of the
gateway's CPU per pushed GiB. ``ChunkedDecoder`` is the same framing (RFC 9112
section 7.1) as a pure, incremental parser over whatever the socket delivered;
``FastBodyConnection`` is Tornado's ``HTTP1Connection`` with it, so a request
body costs one stream read and one ``data_received`` per buffer (up to the
server's ``chunk_size``) whatever its chunking.
"""

from __future__ import annotations

import asyncio
import logging

from tornado import httputil
from tornado.http1connection import HTTP1Connection

__all__ = ["ChunkedDecoder", "ChunkedError", "FastBodyConnection"]

log = logging.getLogger("gittornado.general")

#: Longest chunk-size line (with extensions and CRLF): Tornado's own limit.
_MAX_SIZE_LINE = 64
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIZE, _DATA, _DATA_END, _LAST_END, _DONE = range(5)
#: Seconds a chunked body's reader waits after a short read (see FastBodyConnection).
_GATHER = 0.002


class ChunkedError(httputil.HTTPInputError):
    """The body is not valid chunked encoding (answered 400 by Tornado)."""


class ChunkedDecoder:
    """Incremental chunked decoding: ``feed(data)`` -> (payload pieces, bytes used).

    Pieces are memoryviews of ``data``. ``used`` is ``len(data)`` unless the
    body ended inside ``data``: what follows belongs to the next request.
    Chunk extensions are ignored (as RFC 9112 allows); trailers are refused,
    as Tornado refuses them.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.total = 0
        self._state = _SIZE
        self._line = bytearray()
        self._left = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[list[memoryview], int]:
        view = memoryview(data)
        end = len(view)
        pos = 0
        pieces: list[memoryview] = []
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                pieces.append(view[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state, self._line = _DATA_END, bytearray()
            elif state == _SIZE:
                pos = self._size_line(view, pos, end)
            elif state in (_DATA_END, _LAST_END):
                need = 2 - len(self._line)
                self._line += view[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise ChunkedError("improperly terminated chunk")
                    self._state, self._line = (_SIZE if state == _DATA_END else _DONE), bytearray()
            else:  # _DONE
                break
        return pieces, pos

    def _size_line(self, view: memoryview, pos: int, end: int) -> int:
        room = _MAX_SIZE_LINE - len(self._line)
        window = bytes(view[pos : min(end, pos + room)])
        nl = window.find(b"\n")
        if nl < 0:
            if len(window) >= room:
                raise ChunkedError("chunk size line too long")
            self._line += window
            return pos + len(window)
        self._line += window[: nl + 1]
        line, self._line = bytes(self._line), bytearray()
        if not line.endswith(b"\r\n"):
            raise ChunkedError("chunk size line must end with CRLF")
        digits = line[:-2].split(b";", 1)[0]
        if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
            raise ChunkedError("invalid chunk size")
        size = int(digits, 16)
        self.total += size
        if self.total > self.max_size:
            raise ChunkedError("chunked body too large")
        self._state, self._left = (_DATA, size) if size else (_LAST_END, 0)
        return pos + nl + 1


class FastBodyConnection(HTTP1Connection):
    """``HTTP1Connection`` reading chunked request bodies with ``ChunkedDecoder``.

    ``GitHTTPServer`` gives its connections this class; nothing else differs.
    A body whose last buffer also held the start of a pipelined next request
    ends the connection after the answer (the bytes cannot be handed back to
    the stream; git never pipelines, and clients retry what went unanswered).
    """

    async def _read_chunked_body(self, delegate: httputil.HTTPMessageDelegate) -> None:
        decoder = ChunkedDecoder(self._max_body_size)
        size = max(self.params.chunk_size or 0, 64 * 1024)
        while not decoder.done:
            data = await self.stream.read_bytes(size, partial=True)
            pieces, used = decoder.feed(data)
            if used < len(data):
                log.debug("%d bytes after a chunked body: closing after the answer", len(data) - used)
                self._disconnect_on_finish = True
            if pieces and not self._write_finished:
                body = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)
                ret = delegate.data_received(body)
                if ret is not None:
                    await ret
            # A read served from the buffer (or inline from the socket) awaits
            # nothing: without a pause a fast client would hold the loop. A short
            # read means the client is slower than git: waiting a moment lets the
            # socket gather a full buffer, so the same push takes fewer turns.
            await asyncio.sleep(_GATHER if len(data) < size // 4 and not decoder.done else 0)
