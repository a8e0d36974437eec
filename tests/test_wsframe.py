"""The RFC 6455 frame header codec, byte for byte against the RFC's own examples (5.7)."""

from __future__ import annotations

import struct

import pytest

from gittornado.protocol import wsframe
from gittornado.protocol.wsframe import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Header

KEY = bytes.fromhex("37fa213d")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def mask(key: bytes, data: bytes) -> bytes:
    """RFC 6455 5.3, plainly: octet i XOR key octet i mod 4."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


# (frame as the RFC writes it, its header, payload, fin, opcode, key)
RFC_EXAMPLES = [
    pytest.param(h("810548656c6c6f"), 2, b"Hello", True, TEXT, None, id="unmasked-text"),
    pytest.param(h("818537fa213d7f9f4d5158"), 6, b"Hello", True, TEXT, KEY, id="masked-text"),
    pytest.param(h("010348656c"), 2, b"Hel", False, TEXT, None, id="fragment-1"),
    pytest.param(h("80026c6f"), 2, b"lo", True, CONTINUATION, None, id="fragment-2"),
    pytest.param(h("890548656c6c6f"), 2, b"Hello", True, PING, None, id="unmasked-ping"),
    pytest.param(h("8a8537fa213d7f9f4d5158"), 6, b"Hello", True, PONG, KEY, id="masked-pong"),
    pytest.param(h("827e0100") + bytes(256), 4, bytes(256), True, BINARY, None, id="binary-256"),
    pytest.param(
        h("827f0000000000010000") + bytes(65536), 10, bytes(65536), True, BINARY, None, id="binary-64k"
    ),
]


def test_unmasked_hello():
    assert wsframe.frame_header(5, opcode=TEXT) + b"Hello" == h("810548656c6c6f")


def test_masked_hello():
    header = wsframe.frame_header(5, opcode=TEXT, mask=KEY)
    assert header == h("818537fa213d")
    assert header + mask(KEY, b"Hello") == h("818537fa213d7f9f4d5158")


def test_ping_and_its_masked_pong():
    assert wsframe.frame_header(5, opcode=PING) + b"Hello" == h("890548656c6c6f")
    assert wsframe.frame_header(5, opcode=PONG, mask=KEY) + mask(KEY, b"Hello") == h("8a8537fa213d7f9f4d5158")


def test_length_forms():
    """7 bits up to 125, then 126 and 16 bits up to 65535, then 127 and 64 bits."""
    assert wsframe.frame_header(0) == h("8200")
    assert wsframe.frame_header(125) == h("827d")
    assert wsframe.frame_header(126) == h("827e007e")
    assert wsframe.frame_header(256) == h("827e0100")  # RFC 5.7: 256 bytes, one frame
    assert wsframe.frame_header(65535) == h("827effff")
    assert wsframe.frame_header(65536) == h("827f0000000000010000")  # RFC 5.7: 64 KiB
    assert wsframe.frame_header(2**63 - 1) == h("827f7fffffffffffffff")
    assert wsframe.frame_header(126, mask=KEY) == h("82fe007e") + KEY
    assert wsframe.frame_header(65536, opcode=CONTINUATION, mask=KEY) == h("80ff0000000000010000") + KEY


def test_default_is_a_final_binary_frame():
    """What the server's splice pump writes before each piece of git's output."""
    for n in (0, 1, 125, 126, 65535, 65536, 300 * 1024):
        if n < 126:
            expected = struct.pack("!BB", 0x82, n)
        elif n < 65536:
            expected = struct.pack("!BBH", 0x82, 126, n)
        else:
            expected = struct.pack("!BBQ", 0x82, 127, n)
        assert wsframe.frame_header(n) == expected, n


@pytest.mark.parametrize(
    "n, kwargs",
    [(-1, {}), (2**63, {}), (5, {"mask": b"abc"}), (5, {"mask": b"abcde"}), (5, {"opcode": 16})],
)
def test_frame_header_refuses(n, kwargs):
    with pytest.raises(ValueError):
        wsframe.frame_header(n, **kwargs)


@pytest.mark.parametrize("frame, size, payload, fin, opcode, key", RFC_EXAMPLES)
def test_parse_whole(frame, size, payload, fin, opcode, key):
    header = wsframe.parse_header(frame)
    assert header == Header(fin, 0, opcode, len(payload), key, size)
    assert wsframe.header_size(frame[:2]) == size
    body = frame[header.size :]
    assert (mask(key, body) if key else body) == payload


@pytest.mark.parametrize("frame, size, payload, fin, opcode, key", RFC_EXAMPLES)
def test_parse_one_byte_at_a_time(frame, size, payload, fin, opcode, key):
    """None until the last byte of the header came; from then on the same header,
    whatever of the payload follows."""
    buf = bytearray()
    seen = None
    for i, byte in enumerate(frame):
        buf.append(byte)
        header = wsframe.parse_header(bytes(buf))
        if i + 1 < size:
            assert header is None, i
        else:
            assert header == Header(fin, 0, opcode, len(payload), key, size), i
            seen = header
        if i > size + 8:
            break
    assert seen is not None


def test_parse_takes_any_buffer():
    frame = h("818537fa213d7f9f4d5158")
    expected = Header(True, 0, TEXT, 5, KEY, 6)
    assert wsframe.parse_header(bytearray(frame)) == expected
    assert wsframe.parse_header(memoryview(frame)) == expected


def test_parse_judges_nothing():
    """Reserved bits, a length not in its shortest form, an unknown opcode: decoded as
    they are (refusing them is the reader's call)."""
    assert wsframe.parse_header(bytes([0xC2, 0])) == Header(True, 4, BINARY, 0, None, 2)
    assert wsframe.parse_header(bytes([0xF3, 0])) == Header(True, 7, 3, 0, None, 2)
    assert wsframe.parse_header(h("027f0000000000000014")) == Header(False, 0, BINARY, 20, None, 10)
    assert wsframe.parse_header(h("827e0005")) == Header(True, 0, BINARY, 5, None, 4)


def test_parse_too_short():
    assert wsframe.parse_header(b"") is None
    assert wsframe.parse_header(b"\x82") is None
    with pytest.raises(ValueError):
        wsframe.header_size(b"\x82")


def test_header_size_from_two_bytes():
    assert [wsframe.header_size(bytes([0x82, b1])) for b1 in (0, 125, 126, 127)] == [2, 2, 4, 10]
    assert [wsframe.header_size(bytes([0x82, 0x80 | b1])) for b1 in (0, 125, 126, 127)] == [6, 6, 8, 14]


def test_close_payload():
    assert wsframe.close_payload(1000) == h("03e8")
    assert wsframe.close_payload(4500, "bye") == h("1194") + b"bye"
    # A control frame holds 125 bytes: the code and 123 of the reason.
    assert wsframe.close_payload(1000, "x" * 200) == h("03e8") + b"x" * 123
    assert wsframe.frame_header(len(wsframe.close_payload(1000, "x" * 200)), opcode=CLOSE) == h("887d")


def test_parse_close():
    assert wsframe.parse_close(h("03e8") + b"bye") == (1000, "bye")
    assert wsframe.parse_close(h("03e8")) == (1000, "")
    assert wsframe.parse_close(b"") == (None, None)
    assert wsframe.parse_close(b"\x03") == (None, None)
    assert wsframe.parse_close(h("03e8") + b"\xff") == (1000, "\ufffd")


def test_the_clients_masked_frame():
    """The ws:// client's frame (its header from here, its payload through Tornado's mask)
    is the RFC's masked "Hello" for the RFC's key."""
    from gittornado.client.plainclient import _frame

    assert _frame(TEXT, b"Hello", KEY) == h("818537fa213d7f9f4d5158")
    assert _frame(CLOSE, b"", KEY) == h("8880") + KEY
    big = bytes(range(256)) * 300
    assert _frame(BINARY, big, KEY) == wsframe.frame_header(len(big), mask=KEY) + mask(KEY, big)


def test_pure():
    """The module loads neither Tornado nor anything of the helper or the server."""
    import subprocess
    import sys

    code = (
        "import sys; import gittornado.protocol.wsframe; "
        "print(sorted(m for m in sys.modules if m.startswith(('tornado', 'gittornado', 'asyncio'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['gittornado', 'gittornado.protocol', 'gittornado.protocol.wsframe']"
