"""The answer's state, byte for byte: where a late error may go, and in which framing."""

import pytest

from gittornado.protocol import pktline
from gittornado.protocol.answer import AnswerState, expect_from_request
from gittornado.protocol.pktline import DELIM, FLUSH, encode, sideband
from gittornado.protocol.services import SERVICES

V2_FETCH = (
    encode(b"acknowledgments\n")
    + encode(b"NAK\n")
    + DELIM
    + encode(b"packfile\n")
    + sideband(2, b"Enumerating objects: 3\n")
    + sideband(1, b"PACK" + b"\0" * 200)
    + FLUSH
)


def _fed(data: bytes, step: int) -> AnswerState:
    state = AnswerState()
    for i in range(0, len(data), step):
        state.feed(data[i : i + step])
    return state


@pytest.mark.parametrize("step", [1, 2, 5, 64, 10_000])
def test_v2_fetch_switches_to_sideband_at_the_packfile_section(step):
    state = _fed(V2_FETCH, step)
    assert state.sideband and state.remaining == 0 and state.seen == len(V2_FETCH)
    assert state.late_error("boom") == sideband(3, b"boom\n")


def test_plain_pkt_lines_get_an_err_line():
    state = _fed(encode(b"# service=git-upload-pack\n") + FLUSH + encode(b"abc refs/heads/main\n"), 3)
    assert not state.sideband
    assert state.late_error("boom") == pktline.error_line("boom")


def test_a_packet_cut_short_is_padded_before_the_error():
    state = AnswerState()
    state.feed(V2_FETCH[:-60])  # inside the PACK side-band packet
    assert state.sideband and state.remaining == 56
    out = state.late_error("boom")
    assert out == b"\0" * 56 + sideband(3, b"boom\n")
    # what the client then parses: the rest of the cut packet, then band 3
    packets = pktline.Parser().feed(V2_FETCH[:-60] + out)
    assert bytes(packets[-1]) == b"\x03boom\n"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_cut_header_is_completed_to_a_valid_length(cut):
    stream = encode(b"hello\n") + b"fff0"[:cut]
    state = AnswerState()
    state.feed(stream)
    packets = pktline.Parser().feed(stream + state.late_error("boom"))
    assert bytes(packets[-1]) == b"ERR boom\n"


def test_v0_fetch_with_side_band_switches_after_the_final_nak():
    state = AnswerState()
    expect_from_request(
        state, SERVICES["git-upload-pack"], 0, b"want " + b"a" * 40 + b" side-band-64k ofs-delta\n"
    )
    state.feed(encode(b"ACK " + b"a" * 40 + b" common\n"))
    assert not state.sideband
    state.feed(encode(b"NAK\n"))
    assert state.sideband  # the pack follows, multiplexed, even before its first packet


def test_push_report_with_side_band_is_multiplexed_from_the_start():
    state = AnswerState()
    expect_from_request(
        state,
        SERVICES["git-receive-pack"],
        0,
        b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/x\0report-status side-band-64k\n",
    )
    assert state.sideband
    plain = AnswerState()
    expect_from_request(
        plain, SERVICES["git-receive-pack"], 0, b"0" * 40 + b" " + b"1" * 40 + b" x\0report-status\n"
    )
    assert not plain.sideband


def test_wants_asks_for_headers_and_small_payloads_only():
    state = AnswerState()
    assert state.wants == 4
    state.feed(b"0009")
    assert state.wants == 5  # a small payload is looked at whole
    state.feed(b"done\n")
    state.feed(b"fff0")
    assert state.wants == 1  # of a large one, only the band byte
    state.feed(b"\x01")
    assert state.wants == 0 and state.remaining == 0xFFF0 - 5
    state.skipped(100)
    assert state.remaining == 0xFFF0 - 105


def test_bytes_that_went_by_unseen_allow_no_in_band_error():
    state = _fed(V2_FETCH, 7)
    state.skipped_unseen(1000)
    assert state.lost and state.late_error("boom") == b""


def test_not_pkt_lines_at_all():
    state = AnswerState()
    state.feed(b"HTTP/1.1 oops")
    assert state.broken and state.late_error("boom") == b""
