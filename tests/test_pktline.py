"""pkt-line codec, byte for byte; the parser fed whole, byte at a time, and with trailing data."""

import pytest

from gittornado.protocol import pktline
from gittornado.protocol.pktline import DELIM, FLUSH, RESPONSE_END, Parser, PktLineError


def test_encode_exact_bytes():
    assert pktline.encode(b"a\n") == b"0006a\n"
    assert pktline.encode(b"") == b"0004"
    assert pktline.encode(b"# service=git-upload-pack\n") == b"001e# service=git-upload-pack\n"


def test_encode_refuses_oversized_payload():
    pktline.encode(b"x" * 65516)
    with pytest.raises(PktLineError):
        pktline.encode(b"x" * 65517)


def test_error_and_sideband_lines():
    assert pktline.error_line("no such repo") == b"0015ERR no such repo\n"
    assert pktline.sideband(2, b"hi\n") == b"0008\x02hi\n"
    with pytest.raises(ValueError):
        pktline.sideband(4, b"x")


STREAM = b"0006a\n" + FLUSH + b"0009done\n" + DELIM + b"0004" + RESPONSE_END
EXPECTED = [b"a\n", FLUSH, b"done\n", DELIM, b"", RESPONSE_END]


def _kinds(packets):
    return [
        ("special", p)
        if p in (FLUSH, DELIM, RESPONSE_END) and not isinstance(p, pktline.Data)
        else ("data", bytes(p))
        for p in packets
    ]


def test_parser_whole_stream_keeps_flush_delim_and_response_end_apart():
    got = Parser().feed(STREAM)
    assert _kinds(got) == _kinds(EXPECTED)
    assert got[1] is FLUSH and got[3] is DELIM and got[5] is RESPONSE_END
    # an empty data packet is data, not a flush
    assert isinstance(got[4], pktline.Data) and got[4] != FLUSH


def test_parser_byte_at_a_time():
    parser = Parser()
    got = []
    for i in range(len(STREAM)):
        got += parser.feed(STREAM[i : i + 1])
    assert _kinds(got) == _kinds(EXPECTED)
    assert parser.pending == 0


def test_parser_holds_partial_packet():
    parser = Parser()
    assert parser.feed(b"000ahel") == []
    assert parser.pending == 7
    assert parser.feed(b"lo\n") == [b"hello\n"]


def test_parser_until_flush_ignores_trailing_pack_data():
    parser = Parser(until_flush=True)
    got = parser.feed(b"0006a\n0000PACK\x00\x00\x00\x02garbage")
    assert _kinds(got) == [("data", b"a\n"), ("special", FLUSH)]
    assert parser.done and parser.pending == 0
    assert parser.feed(b"more garbage") == []


@pytest.mark.parametrize("bad", [b"zzzz", b"0003", b"+0a0", b" 0a0", b"0_10", b"fff5", b"ffff", b"-001"])
def test_parser_rejects_malformed_lengths(bad):
    with pytest.raises(PktLineError):
        Parser().feed(bad + b"x" * 8)


def test_parser_accepts_maximum_length():
    payload = b"y" * 65516
    assert Parser().feed(b"fff0" + payload) == [payload]


# -- Scanner: the request-body validator ----------------------------------------------------

WANT = pktline.encode(b"want " + b"a" * 40 + b" multi_ack side-band-64k ofs-delta\n")


@pytest.mark.parametrize("step", [1, 3, 4, 5, 7, 1000])
def test_scanner_counts_the_same_however_the_body_is_cut(step):
    body = WANT + pktline.encode(b"have " + b"b" * 40 + b"\n") * 3 + FLUSH + STREAM
    scanner = pktline.Scanner()
    for i in range(0, len(body), step):
        scanner.feed(body[i : i + step])
    assert scanner.packets == 5 + len(EXPECTED)
    assert scanner.pending == 0
    assert scanner.first == WANT[4:]


def test_scanner_pending_marks_a_truncated_body():
    scanner = pktline.Scanner()
    scanner.feed(WANT + b"0032have ")
    assert scanner.pending > 0
    scanner = pktline.Scanner()
    scanner.feed(b"00")
    assert scanner.pending == 2


def test_scanner_skips_runs_of_special_packets_without_a_step_each():
    scanner = pktline.Scanner()
    scanner.feed(FLUSH * 1000 + DELIM + RESPONSE_END + FLUSH)
    assert scanner.packets == 1003 and scanner.pending == 0
    scanner = pktline.Scanner()
    scanner.feed(FLUSH * 3 + b"00")  # a run cut inside the next header
    scanner.feed(b"06a\n")
    assert scanner.packets == 4 and scanner.pending == 0 and scanner.first == b"a\n"


@pytest.mark.parametrize("bad", [b"000300", b"zzzz", b"fff1" + b"x" * 8, b"0002" + b"+0a0"])
def test_scanner_refuses_what_git_refuses(bad):
    with pytest.raises(PktLineError):
        pktline.Scanner().feed(bad)


def test_scanner_until_flush_ignores_the_pack_after_the_commands():
    commands = pktline.encode(b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\0report-status\n")
    scanner = pktline.Scanner(until_flush=True)
    scanner.feed(commands + FLUSH + b"PACK\x00\x00\x00\x02not pkt-lines at all")
    assert scanner.done and scanner.pending == 0
    assert pktline.capabilities(scanner.first) == {"report-status"}


def test_capabilities_of_want_and_command_lines():
    assert pktline.capabilities(WANT[4:]) == {"multi_ack", "side-band-64k", "ofs-delta"}
    assert pktline.capabilities(b"want " + b"a" * 40 + b"\n") == frozenset()
    assert pktline.capabilities(None) == frozenset()
    assert pktline.capabilities(b"command=ls-refs\n") == frozenset()


def test_complete_with_flush_byte_for_byte():
    from gittornado.protocol.pktline import complete_with_flush

    assert complete_with_flush(b"0008abcd0000")
    assert complete_with_flush(b"0000")
    assert not complete_with_flush(b"")
    assert not complete_with_flush(b"0008abcd")  # no flush at the end
    assert not complete_with_flush(b"0008abcd000")  # cut inside the flush
    assert not complete_with_flush(b"0009abcd")  # cut inside a packet
    assert not complete_with_flush(b"00000001")  # a delimiter after the flush
    assert not complete_with_flush(b"zzzz0000")  # not pkt-lines
