"""Where git's answer to a client stands, so an error after the status can still be told.

Pure: bytes in, state out. Once a transport has sent a status (or, over SSH and
WebSocket, once git has said anything) the only way to tell the user why git
stopped is in-band: an ``ERR`` pkt-line while the answer is plain pkt-lines,
or a side-band channel 3 packet once it is multiplexed (``gitprotocol-pack``,
``gitprotocol-v2``); git's demultiplexer reads ``ERR`` there as "bad band".
Either must start on a packet boundary, so the state tracks boundaries too, and
a packet cut short by a dying git is padded out first.

The state is fed the bytes the transport sees, or told how many it moved
without looking (``skipped``: the kernel copied them, see ``gittornado.engine.output``).
It asks to see only what it needs (``wants``): each header, whole small
payloads (``NAK``, ``packfile``), the first byte of large ones (the band).
"""

from __future__ import annotations

from . import pktline
from .services import Service

__all__ = ["AnswerState", "expect_from_request"]

#: Payloads up to this size are looked at whole; of larger ones only the first byte.
_SMALL = 96
_HEX = b"0123456789abcdefABCDEF"


class AnswerState:
    """Tracks one answer: packet boundaries and whether it has switched to side-band."""

    __slots__ = (
        "sideband",
        "_after_negotiation",
        "_hdr",
        "remaining",
        "_head",
        "_want",
        "broken",
        "seen",
        "lost",
    )

    def __init__(self, *, sideband: bool = False, sideband_after_negotiation: bool = False) -> None:
        #: True once git's answer is multiplexed (the late error goes out on band 3).
        self.sideband = sideband
        self._after_negotiation = sideband_after_negotiation
        self._hdr = bytearray()
        #: Payload bytes of the current packet not yet passed (0: at a boundary).
        self.remaining = 0
        self._head = bytearray()
        self._want = 0
        #: The answer stopped being pkt-lines: nothing can be added in-band.
        self.broken = False
        #: Bytes passed so far, fed or skipped.
        self.seen = 0
        #: Bytes went by unseen past packet boundaries: where one starts is unknown.
        self.lost = False

    def expect_sideband(self, *, now: bool = False, after_negotiation: bool = False) -> None:
        """What the client's request said: ``side-band(-64k)`` from the start (push
        report) or once negotiation ends (v0/v1 fetch)."""
        self.sideband = self.sideband or now
        self._after_negotiation = self._after_negotiation or after_negotiation

    @property
    def wants(self) -> int:
        """How many of the next bytes the state must see before any may be skipped."""
        if self.broken:
            return 0
        if self.remaining == 0:
            return 4 - len(self._hdr)
        return self._want

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            self.seen += len(data)
            return
        view = memoryview(data)
        while view:
            if self.remaining == 0:
                take = 4 - len(self._hdr)
                self._hdr += view[:take]
                self.seen += min(take, len(view))
                view = view[take:]
                if len(self._hdr) == 4:
                    self._header(bytes(self._hdr))
                    self._hdr.clear()
                    if self.broken:
                        self.seen += len(view)
                        return
                continue
            take = min(self.remaining, len(view))
            if self._want:
                look = min(take, self._want)
                self._head += view[:look]
                self._want -= look
                if self._want == 0:
                    self._classify(complete=self.remaining == take)
            self.remaining -= take
            self.seen += take
            view = view[take:]

    def skipped(self, n: int) -> None:
        """``n`` payload bytes went by unseen (only allowed while ``wants`` is 0)."""
        if n > self.remaining and not self.broken:
            raise ValueError("skipped past the end of the current packet")
        if not self.broken:
            self.remaining -= n
        self.seen += n

    def skipped_unseen(self, n: int) -> None:
        """``n`` bytes went by without anyone reading headers (a spliced pack)."""
        if n:
            self.lost = True
            self.seen += n

    def _header(self, header: bytes) -> None:
        if not all(c in _HEX for c in header):
            self.broken = True
            return
        n = int(header, 16)
        if n < 4:
            if n == 3:
                self.broken = True
            return
        if n > pktline.MAX_PKT_LEN:
            self.broken = True
            return
        self.remaining = n - 4
        self._head.clear()
        self._want = self.remaining if self.remaining <= _SMALL else min(1, self.remaining)

    def _classify(self, complete: bool) -> None:
        head = bytes(self._head)
        if head[:1] in (b"\x01", b"\x02", b"\x03"):
            self.sideband = True
        elif complete and head == b"packfile\n":
            self.sideband = True  # gitprotocol-v2: the packfile section is always multiplexed
        elif (
            complete
            and self._after_negotiation
            and (head == b"NAK\n" or (head.startswith(b"ACK ") and len(head.split()) == 2))
        ):
            self.sideband = True  # the final NAK/ACK: the pack follows, multiplexed

    def late_error(self, message: str) -> bytes:
        """Bytes that end the answer with ``message`` shown by git as a remote error.

        Empty when the answer is not pkt-lines or its boundaries were lost
        (nothing in-band can help: the transport must cut the answer short).
        """
        if self.broken or self.lost:
            return b""
        pad = b""
        if self._hdr:
            # Half a length header: complete it to any valid length, then fill the packet.
            for digit in (b"4", b"0"):
                header = bytes(self._hdr) + digit * (4 - len(self._hdr))
                n = int(header, 16)
                if 4 <= n <= pktline.MAX_PKT_LEN:
                    pad = header[len(self._hdr) :] + b"\0" * (n - 4)
                    break
        elif self.remaining:
            pad = b"\0" * self.remaining
        if self.sideband:
            return pad + pktline.sideband(3, message.encode("utf-8", "replace") + b"\n")
        return pad + pktline.error_line(message)


def expect_from_request(
    state: AnswerState, service: Service, protocol: int, first_line: bytes | None
) -> None:
    """Refine ``state`` from the client's first request line (its capabilities).

    v2 needs nothing: its ``packfile`` section header is seen in the answer.
    """
    if protocol >= 2 or not first_line:
        return
    caps = pktline.capabilities(first_line)
    sideband = bool(caps & {"side-band", "side-band-64k"})
    if not sideband:
        return
    where = service.sideband
    if where == "start":
        state.expect_sideband(now=True)
    elif where == "after-negotiation":
        state.expect_sideband(after_negotiation=True)
