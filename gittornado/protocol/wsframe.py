"""The RFC 6455 frame header (section 5.2), built and parsed: bytes in, bytes out.

No I/O and no Tornado here: the remote helper imports this module on every
git command that goes over ``ws://`` (where Tornado's client is not loaded),
and the server's splice pump writes the header of each frame it lets the
kernel fill. Payload masking (5.3) is not done here: a client masks with
Tornado's C ``websocket_mask``, which this module must not import.

A header is two bytes (FIN, three reserved bits, the opcode; the MASK bit and
a 7-bit length), then the length in 16 bits (7-bit value 126) or 64 bits
(127), then the 4-byte masking key when MASK is set::

    frame_header(5, opcode=TEXT)                    -> 81 05
    frame_header(5, opcode=TEXT, mask=b"\\x37\\xfa\\x21\\x3d") -> 81 85 37 fa 21 3d

The parser decodes what it is given and judges nothing (reserved bits, a
masked frame from a server, an unknown opcode, a length not in its shortest
form): which of those to refuse, and with which close code, is the reader's call.
"""

from __future__ import annotations

import struct

__all__ = [
    "CONTINUATION",
    "TEXT",
    "BINARY",
    "CLOSE",
    "PING",
    "PONG",
    "Header",
    "frame_header",
    "header_size",
    "parse_header",
    "close_payload",
    "parse_close",
]

#: Opcodes (RFC 6455 5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: The first byte's FIN bit and its three reserved bits; the second byte's MASK bit.
FIN, RSV, MASK = 0x80, 0x70, 0x80
#: Most payload bytes of a control frame (5.5), and of a close frame's reason (after the code).
MAX_CONTROL = 125
MAX_CLOSE_REASON = MAX_CONTROL - 2
#: One past the largest length a header can carry: the 64-bit form's top bit must be 0.
_LIMIT = 1 << 63
#: Bytes of the extended length, by the 7-bit length that announces it.
_EXTENDED = {126: 2, 127: 8}


class Header:
    """A parsed frame header; ``size`` is how many bytes it took (the payload follows).

    A plain class with slots, not a ``NamedTuple``: defining one of those costs
    every helper start a third of a millisecond.
    """

    __slots__ = ("fin", "rsv", "opcode", "length", "mask", "size")

    def __init__(self, fin: bool, rsv: int, opcode: int, length: int, mask: bytes | None, size: int) -> None:
        self.fin = fin
        self.rsv = rsv  #: the reserved bits, shifted down (0-7)
        self.opcode = opcode
        self.length = length
        self.mask = mask  #: the masking key, None for an unmasked frame
        self.size = size

    def _fields(self) -> tuple:
        return (self.fin, self.rsv, self.opcode, self.length, self.mask, self.size)

    def __eq__(self, other: object) -> bool:
        return self._fields() == other._fields() if isinstance(other, Header) else NotImplemented

    def __repr__(self) -> str:
        names = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._fields(), strict=True))
        return f"Header({names})"


def frame_header(n: int, *, opcode: int = BINARY, mask: bytes | None = None) -> bytes:
    """The header of a final frame of ``n`` payload bytes; with ``mask`` (4 bytes) the
    MASK bit is set and the key follows the length (the caller masks the payload)."""
    if not 0 <= n < _LIMIT:
        raise ValueError(f"frame length out of range: {n}")
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"opcode out of range: {opcode}")
    if mask is not None and len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    b0 = FIN | opcode
    m = MASK if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, m | 126, n)
    else:
        header = struct.pack("!BBQ", b0, m | 127, n)
    return header + mask if mask is not None else header


def header_size(data: bytes) -> int:
    """The size of the header that starts with ``data``'s first two bytes (2 to 14):
    how much to read before ``parse_header`` can answer."""
    if len(data) < 2:
        raise ValueError("the header's size is in its second byte")
    b1 = data[1]
    size = 2 + _EXTENDED.get(b1 & 0x7F, 0)
    return size + 4 if b1 & MASK else size


def parse_header(data: bytes) -> Header | None:
    """The header at the start of ``data`` (which may go on into the payload), or None
    while ``data`` holds less than the whole header."""
    if len(data) < 2 or len(data) < (size := header_size(data)):
        return None
    b0, b1 = data[0], data[1]
    n, at = b1 & 0x7F, 2
    if n == 126:
        n, at = struct.unpack_from("!H", data, 2)[0], 4
    elif n == 127:
        n, at = struct.unpack_from("!Q", data, 2)[0], 10
    mask = bytes(data[at : at + 4]) if b1 & MASK else None
    return Header(bool(b0 & FIN), (b0 & RSV) >> 4, b0 & 0x0F, n, mask, size)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then as much of ``reason`` (UTF-8) as fits a
    control frame (5.5.1)."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:MAX_CLOSE_REASON]


def parse_close(payload: bytes) -> tuple[int | None, str | None]:
    """A close frame's (code, reason); (None, None) for one without a code."""
    if len(payload) < 2:
        return None, None
    return struct.unpack_from("!H", payload)[0], bytes(payload[2:]).decode("utf-8", "replace")
