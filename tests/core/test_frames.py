"""``FrameCheck``: the RFC 6455 rules aiohttp's reader leaves to us, fed bytes in any split."""

from __future__ import annotations

import pytest

from tidings.core.frames import FrameCheck, FrameViolation, close_code_ok


def frame(opcode: int, payload: bytes = b"", *, masked: bool = True, fin: bool = True) -> bytes:
    """One client frame; the mask is fixed so tests are reproducible."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = b"\x37\xfa\x21\x3d"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, code.to_bytes(2, "big") + reason)


def feed_split(data: bytes, size: int) -> FrameViolation | None:
    check = FrameCheck()
    for start in range(0, len(data), size):
        violation = check.receive_data(data[start : start + size])
        if violation is not None:
            return violation
    return None


VALID = (
    frame(0x1, b"hello")
    + frame(0x2, bytes(300))
    + frame(0x1, b"x" * 70000)
    + frame(0x1, b"frag", fin=False)
    + frame(0x0, b"ment")
    + frame(0x9, b"ping")
    + frame(0xA)
    + frame(0x8)
    + close(1000, b"bye")
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100, 65536, len(VALID)])
def test_frame_check_accepts_masked_frames_in_any_split(size: int) -> None:
    """Text, binary, 16- and 64-bit lengths, fragments, control frames and a close pass,
    however the stream is cut."""
    assert feed_split(VALID, size) is None


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_frame_check_refuses_an_unmasked_frame(size: int) -> None:
    """An unmasked frame after valid ones is a violation at its own offset."""
    data = frame(0x1, b"ok") + frame(0x1, b"bare", masked=False)
    violation = feed_split(data, size)
    assert violation is not None and violation.reason == "client frames must be masked"
    if size == 1000:
        assert violation.offset == len(frame(0x1, b"ok"))


def test_frame_check_refuses_an_unmasked_close_and_control_frame() -> None:
    for data in (frame(0x8, b"\x03\xe8", masked=False), frame(0x9, masked=False)):
        assert FrameCheck().receive_data(data) == FrameViolation(0, "client frames must be masked")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
@pytest.mark.parametrize("size", [1, 1000])
def test_frame_check_refuses_close_codes_that_must_not_be_sent(code: int, size: int) -> None:
    """Autobahn 7.9.x and 7.13.x: the server must fail the connection, not echo the close."""
    prefix = frame(0x1, b"first")
    violation = feed_split(prefix + close(code, b"why"), size)
    assert violation is not None and violation.reason == f"close code {code} is not allowed"
    if size == 1000:
        assert violation.offset == len(prefix)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_frame_check_accepts_close_codes_that_may_be_sent(code: int) -> None:
    assert FrameCheck().receive_data(close(code)) is None
    assert close_code_ok(code)


def test_frame_check_leaves_a_one_byte_close_payload_to_aiohttp() -> None:
    """A 1-byte close payload is malformed, and aiohttp refuses it itself."""
    assert FrameCheck().receive_data(frame(0x8, b"\x03")) is None


def test_frame_check_offset_is_zero_for_a_frame_begun_in_an_earlier_chunk() -> None:
    data = close(1006)
    check = FrameCheck()
    assert check.receive_data(data[:3]) is None
    assert check.receive_data(data[3:]) == FrameViolation(0, "close code 1006 is not allowed")


def test_frame_check_refuses_an_unmasked_frame_whose_header_is_whole_in_the_chunk() -> None:
    """The fast path (a whole header at hand) refuses an unmasked frame at its offset too."""
    first = frame(0x1, b"x" * 200)
    data = first + frame(0x2, bytes(300), masked=False)
    assert FrameCheck().receive_data(data) == FrameViolation(
        len(first), "client frames must be masked"
    )
