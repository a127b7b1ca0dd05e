"""The byte path's incremental RFC 6455 reader and frame headers, against websockets' own
serialiser: every length class, masked and not, every way a stream can be cut into reads,
control frames between fragments, and each violation stopping with the offending bytes."""

from __future__ import annotations

import os
import random

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import CLIENT, SERVER, Protocol
from websockets.server import ServerProtocol

from hatchway.bytepath.frames import (
    CONTROL,
    DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TEXT,
    VIOLATION,
    FrameReader,
    apply_mask,
    close_reason,
    frame_header,
)
from hatchway.bytepath.splice import parser_idle

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 300_000]


def wire(frame: Frame, masked: bool) -> bytes:
    """``frame`` as websockets would send it (a client masks, a server does not)."""
    return frame.serialize(mask=masked)


def feed_in(reader: FrameReader, data: bytes, cuts: list[int]) -> list[tuple]:
    events = []
    last = 0
    for cut in sorted(cuts) + [len(data)]:
        events += [tuple(bytes(x) if isinstance(x, memoryview) else x for x in e) for e in reader.feed(data[last:cut])]
        last = cut
    return events


def stream_bytes(events: list[tuple]) -> bytes:
    return b"".join(e[1] for e in events if e[0] == DATA)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("length", LENGTHS)
def test_one_binary_frame_of_each_length_class(masked: bool, length: int) -> None:
    payload = os.urandom(length)
    reader = FrameReader(masked)
    events = feed_in(reader, wire(Frame(Opcode.BINARY, payload), masked), [])
    assert stream_bytes(events) == payload
    assert reader.at_boundary()


@pytest.mark.parametrize("masked", [True, False])
def test_any_cutting_of_a_stream_gives_the_same_bytes_and_events(masked: bool) -> None:
    rng = random.Random(6455)
    frames = [
        Frame(Opcode.BINARY, os.urandom(70_000)),
        Frame(Opcode.PING, b"are you there"),
        Frame(Opcode.BINARY, os.urandom(3), fin=False),
        Frame(Opcode.PONG, b""),
        Frame(Opcode.CONT, os.urandom(200), fin=False),
        Frame(Opcode.CONT, os.urandom(126)),
        Frame(Opcode.TEXT, "héllo ".encode(), fin=False),
        Frame(Opcode.CONT, "wörld".encode()),
        Frame(Opcode.BINARY, b""),
        Frame(Opcode.BINARY, os.urandom(1000)),
        Frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye"),
    ]
    wires = [wire(f, masked) for f in frames]
    data = b"".join(wires)
    whole = feed_in(FrameReader(masked), data, [])
    expected_stream = b"".join(bytes(frames[i].data) for i in (0, 2, 4, 5, 8, 9))  # binary, not text
    assert stream_bytes(whole) == expected_stream
    controls = [(e[1], e[2]) for e in whole if e[0] == CONTROL]
    assert controls == [(OP_PING, b"are you there"), (OP_PONG, b""), (OP_CLOSE, frames[-1].data)]
    text = [e for e in whole if e[0] == TEXT]
    assert b"".join(e[1] for e in text).decode() == "héllo wörld" and [e[2] for e in text] == [False, True]
    # Each control frame's raw bytes are exactly what was sent, so its owner can parse them.
    raws = [e[3] for e in whole if e[0] == CONTROL]
    assert raws == [wires[1], wires[3], wires[-1]]
    for trial in range(200):
        cuts = [rng.randrange(len(data)) for _ in range(rng.choice([1, 2, 5, 40]))]
        if trial < 20:  # byte by byte through the headers' region of the first frames
            cuts = list(range(40)) + cuts
        reader = FrameReader(masked)
        events = feed_in(reader, data, cuts)
        assert stream_bytes(events) == expected_stream
        assert [(e[1], e[2], e[3]) for e in events if e[0] == CONTROL] == [(c[0], c[1], r) for c, r in zip(controls, raws)]
        assert b"".join(e[1] for e in events if e[0] == TEXT).decode() == "héllo wörld"
        assert [e for e in events if e[0] == TEXT][-1][2] is True
        assert reader.at_boundary()


def test_a_mask_keeps_its_phase_across_reads() -> None:
    payload = os.urandom(1001)
    data = wire(Frame(Opcode.BINARY, payload), True)
    for cut in range(len(data) - 1001, len(data)):  # every offset into the payload
        assert stream_bytes(feed_in(FrameReader(True), data, [cut, cut + 1, cut + 3])) == payload


def test_payload_of_an_unmasked_frame_is_a_view_not_a_copy() -> None:
    data = wire(Frame(Opcode.BINARY, b"x" * 5000), False)
    (kind, piece), = FrameReader(False).feed(data)
    assert kind == DATA and isinstance(piece, memoryview) and piece.obj is data


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536, 1 << 20])
def test_frame_header_is_read_back_by_websockets(masked: bool, length: int) -> None:
    payload = os.urandom(length)
    mask = os.urandom(4) if masked else b""
    data = frame_header(OP_BINARY, length, mask) + (apply_mask(payload, mask) if masked else payload)
    # a server reads a client's (masked) frames and a client a server's
    conn = Protocol(SERVER if masked else CLIENT, max_size=None)
    conn.receive_data(data)
    (frame,) = conn.events_received()
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


VIOLATIONS = [
    ("rsv", lambda m: bytes([0xC2, (0x80 if m else 0) | 1]) + (b"\0" * 4 if m else b"") + b"x", "reserved bits"),
    ("mask", lambda m: bytes([0x82, (0 if m else 0x80) | 1]) + (b"" if m else b"\0" * 4) + b"x",
     "without a mask|masked frame"),
    ("opcode", lambda m: bytes([0x83, (0x80 if m else 0)]) + (b"\0" * 4 if m else b""), "unknown opcode 3"),
    ("control opcode", lambda m: bytes([0x8B, (0x80 if m else 0)]) + (b"\0" * 4 if m else b""), "unknown opcode 11"),
    ("fragmented ping", lambda m: bytes([0x09, (0x80 if m else 0)]) + (b"\0" * 4 if m else b""), "fragmented or oversized"),
    ("long ping", lambda m: bytes([0x89, (0x80 if m else 0) | 126, 0, 126]) + (b"\0" * 4 if m else b"") + b"p" * 126,
     "fragmented or oversized"),
    ("lone continuation", lambda m: bytes([0x80, (0x80 if m else 0)]) + (b"\0" * 4 if m else b""), "continuation frame without"),
    ("huge", lambda m: bytes([0x82, (0x80 if m else 0) | 127]) + b"\x80" + b"\0" * 7 + (b"\0" * 4 if m else b""),
     "most significant bit"),
]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("name,bad,reason", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_violation_stops_the_reader_with_the_bytes_from_the_bad_frame_on(masked, name, bad, reason) -> None:  # type: ignore[no-untyped-def]
    import re

    good = wire(Frame(Opcode.BINARY, b"before"), masked)
    tail = bad(masked) + b"anything after"
    reader = FrameReader(masked)
    events = feed_in(reader, good + tail, [len(good) + 1])  # the bad header split between reads
    assert stream_bytes(events) == b"before"
    kind, why, rest, code = events[-1]
    assert kind == VIOLATION and re.search(reason, why) and rest == tail and code == 1002
    assert reader.stopped
    with pytest.raises(RuntimeError):
        reader.feed(b"\x82\x00")


def test_a_new_message_inside_a_fragmented_one_is_a_violation() -> None:
    first = wire(Frame(Opcode.BINARY, b"a", fin=False), False)
    second = wire(Frame(Opcode.TEXT, b"b"), False)
    events = FrameReader(False).feed(first + second)
    assert events[-1][0] == VIOLATION and "inside a fragmented" in events[-1][1] and events[-1][2] == second


def test_boundary_is_only_between_whole_messages() -> None:
    reader = FrameReader(False)
    data = wire(Frame(Opcode.BINARY, b"abcdef"), False)
    reader.feed(data[:1])
    assert not reader.at_boundary()
    reader.feed(data[1:4])
    assert not reader.at_boundary()
    reader.feed(data[4:] + wire(Frame(Opcode.BINARY, b"x", fin=False), False))
    assert not reader.at_boundary()
    reader.feed(wire(Frame(Opcode.CONT, b"y"), False))
    assert reader.at_boundary()


def test_websockets_parser_idle_only_at_a_frame_boundary() -> None:
    conn = ServerProtocol()
    assert not parser_idle(conn)  # still in its handshake
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (request,) = conn.events_received()
    conn.send_response(conn.accept(request))
    assert parser_idle(conn)
    frame = wire(Frame(Opcode.BINARY, b"0123456789"), True)
    for cut in (1, 2, 6, 10):  # in the header, after the mask (buffer empty), in the payload
        conn.receive_data(frame[:cut])
        assert not parser_idle(conn), cut
        conn.receive_data(frame[cut:])
        assert parser_idle(conn)
    conn.receive_data(frame[:6])  # header and mask consumed, nothing buffered: still mid-frame
    assert not conn.reader.buffer and not parser_idle(conn)
    conn.receive_data(frame[6:])
    conn.receive_data(wire(Frame(Opcode.BINARY, b"part", fin=False), True))
    assert not parser_idle(conn)  # a fragmented message in progress
    conn.receive_data(wire(Frame(Opcode.CONT, b"end"), True))
    assert parser_idle(conn)
    conn.send_close(1000)
    assert not parser_idle(conn)  # closing: no data may be sent any more


@pytest.mark.parametrize("masked", [True, False])
def test_a_data_frame_over_the_owners_limit_is_a_violation_saying_1009(masked: bool) -> None:
    ok, big = wire(Frame(Opcode.BINARY, b"x" * 1000), masked), wire(Frame(Opcode.BINARY, b"y" * 1001), masked)
    events = FrameReader(masked, max_size=1000).feed(ok + big)
    assert stream_bytes([tuple(bytes(x) if isinstance(x, memoryview) else x for x in e) for e in events]) == b"x" * 1000
    assert events[-1] == (VIOLATION, "a frame of 1001 bytes (at most 1000)", big, 1009)
    ping = wire(Frame(Opcode.PING, b"p" * 125), masked)  # control frames have their own limit
    assert FrameReader(masked, max_size=10).feed(ping)[0][0] == CONTROL


@pytest.mark.parametrize("masked", [True, False])
def test_skipping_to_the_next_frame_hands_back_exactly_what_follows(masked: bool) -> None:
    first, second = wire(Frame(Opcode.BINARY, os.urandom(5000)), masked), wire(Frame(Opcode.PING, b"x"), masked)
    data = first + second
    header = 4 + (4 if masked else 0)  # 5000 bytes: a 16-bit length
    edges = {len(first) + d for d in (-1, 0, 1, 2)} | {len(data) - 1, len(data)}
    for cut in sorted(set(range(20)) | set(range(0, len(data), 37)) | edges):  # in a header, a payload, between
        for more in (1, 1000, len(data)):  # and what arrives after, in pieces of any size
            reader = FrameReader(masked)
            reader.feed(data[:cut])
            handed = reader.skip_frame()
            rest = data[cut:]
            while handed is None:
                handed, rest = reader.skip_frame(rest[:more]), rest[more:]
            handed += rest
            # The owner's parser gets whole frames: a started frame's payload is dropped, bytes
            # held of a header not yet parsed are handed back with what follows them.
            expected = data if cut < header else second if cut < len(data) else b""
            assert handed == expected, (cut, more)
            assert reader.skip_frame(b"later") == b""  # stopped: nothing more to skip


@pytest.mark.parametrize(("text", "reason"), [
    ("", ""),
    ("x" * 123, "x" * 123),  # the most a close frame carries: kept whole
    ("x" * 124, "x" * 120 + "…"),
    ("é" * 61, "é" * 61),  # 122 bytes
    ("é" * 62, "é" * 60 + "…"),
    ("x" + "€" * 41, "x" + "€" * 39 + "…"),  # cut inside a character: the whole character goes
])
def test_a_close_reason_fits_the_close_frame_and_shows_it_was_cut(text: str, reason: str) -> None:
    assert close_reason(text) == reason
    server = Protocol(SERVER)
    server.send_close(4410, reason)  # websockets refuses a control frame over 125 bytes
    client = Protocol(CLIENT)
    client.receive_data(b"".join(server.data_to_send()))
    assert client.close_rcvd is not None and (client.close_rcvd.code, client.close_rcvd.reason) == (4410, reason)
