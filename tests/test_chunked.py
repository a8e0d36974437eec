"""The chunked request-body decoder, byte for byte, and through a real server."""

from __future__ import annotations

import socket

import pytest
from conftest import rev

from gittornado.transports.chunked import ChunkedDecoder, ChunkedError


def encode(pieces: list[bytes], ext: bytes = b"") -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces if p)
    return out + b"0\r\n\r\n"


def decode_all(data: bytes, splits: list[int], max_size: int = 1 << 30) -> tuple[bytes, int]:
    """Feed ``data`` cut at ``splits``: (payload, bytes used overall)."""
    dec = ChunkedDecoder(max_size)
    out = bytearray()
    used = 0
    bounds = [0, *sorted(splits), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        pieces, n = dec.feed(data[a:b])
        out += b"".join(pieces)
        used += n
        if dec.done:
            break
    return bytes(out), used


BODY = [b"0123456789" * 7, b"x", b"\r\n0\r\n\r\n" * 3, bytes(range(256)) * 5]


def test_whole_body_in_one_buffer() -> None:
    data = encode(BODY)
    payload, used = decode_all(data, [])
    assert payload == b"".join(BODY)
    assert used == len(data)


def test_every_split_point_gives_the_same_payload() -> None:
    data = encode(BODY)
    for cut in range(len(data) + 1):
        payload, used = decode_all(data, [cut])
        assert payload == b"".join(BODY), cut
        assert used == len(data)


def test_byte_at_a_time() -> None:
    data = encode(BODY, ext=b";name=value")
    dec = ChunkedDecoder(1 << 20)
    out = bytearray()
    for i in range(len(data)):
        pieces, n = dec.feed(data[i : i + 1])
        assert n == 1
        out += b"".join(pieces)
    assert dec.done
    assert bytes(out) == b"".join(BODY)


def test_bytes_after_the_body_are_left_unused() -> None:
    data = encode([b"hello"])
    pieces, used = ChunkedDecoder(100).feed(data + b"POST /next HTTP/1.1\r\n")
    assert b"".join(pieces) == b"hello"
    assert used == len(data)


def test_upper_case_hex_and_extensions() -> None:
    payload, _ = decode_all(b"A;x=1\r\n0123456789\r\n0\r\n\r\n", [])
    assert payload == b"0123456789"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"zz\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
        (b"-1\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
        (b" 2\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
        (b"\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
        (b"2\nab\r\n0\r\n\r\n", "CRLF"),
        (b"2\r\nabXY0\r\n\r\n", "improperly terminated"),
        (b"0\r\nTrailer: x\r\n\r\n", "improperly terminated"),
        (b"1" * 70 + b"\r\n", "too long"),
        (b"11111111111111111\r\n", "invalid chunk size"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ChunkedError, match=message):
        decode_all(data, [])
    with pytest.raises(ChunkedError, match=message):
        decode_all(data, list(range(1, len(data))))


def test_size_limit_counts_declared_sizes() -> None:
    with pytest.raises(ChunkedError, match="too large"):
        ChunkedDecoder(10).feed(b"b\r\n")
    payload, _ = decode_all(encode([b"a" * 10]), [], max_size=10)
    assert payload == b"a" * 10


def _post_chunked(port: int, path: str, chunks: list[bytes], extra: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + body + extra)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    return bytes(out)


def test_real_server_reads_tiny_chunks_and_answers(serve, gitbase, monkeypatch) -> None:
    """A v0 fetch request in 1-byte chunks reaches git intact (answered with a pack)."""
    fed: list[int] = []
    feed = ChunkedDecoder.feed

    def counting_feed(self, data):
        fed.append(len(data))
        return feed(self, data)

    monkeypatch.setattr(ChunkedDecoder, "feed", counting_feed)
    server = serve()
    want = rev(gitbase / "app.git", "main")
    request = b"0032want %s\n00000009done\n" % want.encode()
    response = _post_chunked(server.port, "/app.git/git-upload-pack", [bytes([b]) for b in request])
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b"PACK" in response
    assert fed, "the server's own chunked reader was not used"
