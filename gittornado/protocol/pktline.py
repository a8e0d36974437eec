"""pkt-line framing, the one codec every transport shares (``gitprotocol-common``).

Pure: bytes in, bytes or packets out, no I/O. ``Parser`` is push-style so a
transport can feed it whatever the socket gave it; flush ``0000``, delim
``0001`` and response-end ``0002`` stay distinct because protocol v2 gives each
a different meaning (``gitprotocol-v2``).
"""

from __future__ import annotations

__all__ = [
    "FLUSH",
    "DELIM",
    "RESPONSE_END",
    "MAX_PKT_LEN",
    "PktLineError",
    "encode",
    "error_line",
    "sideband",
    "Parser",
    "Scanner",
    "capabilities",
]

FLUSH = b"0000"
DELIM = b"0001"
RESPONSE_END = b"0002"
_SPECIAL = {0: FLUSH, 1: DELIM, 2: RESPONSE_END}

#: git's LARGE_PACKET_MAX: the 4-byte header plus 65516 bytes of payload.
MAX_PKT_LEN = 65520


class PktLineError(ValueError):
    """The bytes are not a valid pkt-line stream."""


def encode(payload: bytes) -> bytes:
    """Frame ``payload`` as one data pkt-line."""
    n = len(payload) + 4
    if n > MAX_PKT_LEN:
        raise PktLineError(f"payload of {len(payload)} bytes does not fit one pkt-line")
    return b"%04x" % n + payload


def error_line(message: str) -> bytes:
    """An ``ERR`` pkt-line: git prints it as ``remote error: <message>`` and stops."""
    return encode(b"ERR " + message.encode("utf-8", "replace") + b"\n")


def sideband(channel: int, payload: bytes) -> bytes:
    """One side-band packet: 1 data, 2 progress (``remote: ...``), 3 fatal error."""
    if channel not in (1, 2, 3):
        raise ValueError("side-band channel must be 1, 2 or 3")
    return encode(bytes((channel,)) + payload)


def _parse_length(header: bytes) -> int:
    # git's packet_length() takes exactly four hex digits; int() alone would accept
    # "+0a0", " 0a0" or "0_10", which would desynchronise us from git.
    if len(header) != 4 or not all(c in b"0123456789abcdefABCDEF" for c in header):
        raise PktLineError(f"invalid pkt-line length {header!r}")
    n = int(header, 16)
    if n == 3 or n > MAX_PKT_LEN:
        raise PktLineError(f"invalid pkt-line length {header!r}")
    return n


def complete_with_flush(data: bytes) -> bool:
    """True when ``data`` is whole pkt-lines whose last one is a flush (pure).

    How an advertisement or an ``ls-refs`` answer ends: bytes cut short, or
    anything else at the end, are not a complete answer.
    """
    parser = Parser()
    try:
        packets = parser.feed(data)
    except PktLineError:
        return False
    return bool(packets) and packets[-1] is FLUSH and not parser.pending


class Parser:
    """Push parser: ``feed(data)`` returns the packets completed by ``data``.

    A packet is either ``FLUSH``, ``DELIM``, ``RESPONSE_END`` (the identical
    bytes objects, compare with ``is`` or ``==``) or a ``Data`` payload.
    Raises ``PktLineError`` on the first malformed header; after that the parser
    is unusable, as the stream cannot be resynchronised.

    With ``until_flush`` the parser stops at the first flush and ignores what
    follows (``done`` turns true): a push is pkt-line commands, a flush, then
    raw pack data that is not pkt-lines.
    """

    __slots__ = ("_buf", "_until_flush", "done")

    def __init__(self, until_flush: bool = False) -> None:
        self._buf = bytearray()
        self._until_flush = until_flush
        self.done = False

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        if self.done:
            return []
        self._buf += data
        out: list = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            n = _parse_length(bytes(buf[pos : pos + 4]))
            if n < 4:
                out.append(_SPECIAL[n])
                pos += 4
                if n == 0 and self._until_flush:
                    self.done = True
                    buf.clear()
                    return out
                continue
            if len(buf) - pos < n:
                break
            out.append(Data(buf[pos + 4 : pos + n]))
            pos += n
        del buf[:pos]
        return out


class Data(bytes):
    """A data packet's payload (a ``bytes`` subclass, so flush/delim never compare equal)."""

    __slots__ = ()


class Scanner:
    """Validating push scanner for request bodies: like ``Parser`` but keeps nothing.

    A request body is checked whole before or while git reads it, and may be
    attacker-sized (64 MiB of ``0000`` is 16 M flush packets), so ``feed``
    builds no list, skips runs of special packets at C speed, and remembers
    only the first data packet (its capabilities decide the answer's
    framing, see ``answer.AnswerState``). ``packets`` counts what was seen.
    """

    __slots__ = ("_buf", "_until_flush", "_skip", "done", "first", "packets")

    def __init__(self, until_flush: bool = False) -> None:
        self._buf = bytearray()
        self._until_flush = until_flush
        self._skip = 0
        self.done = False
        self.first: bytes | None = None
        self.packets = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished packet: non-zero at the end of a body means truncation."""
        return len(self._buf) + self._skip

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        buf = self._buf
        buf += view
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            if buf[pos] == 0x30 and not self._until_flush:
                # A run of "0000"/"0001"/"0002": count it without a Python step per packet.
                run = _special_run(buf, pos, end)
                if run:
                    self.packets += run
                    pos += 4 * run
                    continue
            n = _parse_length(bytes(buf[pos : pos + 4]))
            if n < 4:
                self.packets += 1
                pos += 4
                if n == 0 and self._until_flush:
                    self.done = True
                    buf.clear()
                    return
                continue
            if self.first is None:
                if end - pos < n:
                    break
                self.first = bytes(buf[pos + 4 : pos + n])
                self.packets += 1
                pos += n
                continue
            self.packets += 1
            if end - pos < n:
                # Only the length matters for the rest: skip the payload as it comes.
                self._skip = n - (end - pos)
                pos = end
                break
            pos += n
        del buf[:pos]


def _special_run(buf: bytearray, pos: int, end: int) -> int:
    """How many whole ``0000``/``0001``/``0002`` packets start at ``pos``."""
    zeros = len(buf) - pos - len(bytes(buf[pos:end]).lstrip(b"0"))
    count = zeros // 4
    # "0000" x count, then maybe "000" + "1"/"2" (a delim or response-end) once.
    if zeros % 4 == 3 and pos + zeros < end and buf[pos + zeros] in (0x31, 0x32):
        count += 1
    return count


def capabilities(first: bytes | None) -> frozenset[str]:
    """The capability list of a request's first line (after its NUL or, for wants, its oid).

    ``want <oid> cap cap...`` (v0/v1 fetch) or ``<old> <new> <ref>\0cap cap...`` (push).
    """
    if not first:
        return frozenset()
    line = first.rstrip(b"\n")
    if b"\0" in line:
        caps = line.split(b"\0", 1)[1]
    elif line.startswith(b"want "):
        caps = b" ".join(line.split(b" ")[2:])
    else:
        return frozenset()
    return frozenset(c.decode("ascii", "replace") for c in caps.split() if c)
