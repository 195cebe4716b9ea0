"""MLLP framing: any split of a byte stream into reads gives the same messages; bounded size."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from app.hl7v2.mllp import END, START, Frame, FrameDecoder, Oversized, frame

_BODY = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(START, b"").replace(END, b"") or b"x")


def _decode(chunks: list[bytes], max_bytes: int = 1_048_576) -> list[Frame | Oversized]:
    decoder = FrameDecoder(max_bytes)
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(bodies=st.lists(_BODY, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_any_split_of_a_stream_into_reads_gives_the_same_messages(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(b) for b in bodies)
    assert _decode(_split(stream, cuts)) == [Frame(b) for b in bodies]


@settings(max_examples=100, deadline=None)
@given(bodies=st.lists(_BODY, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_frames_without_the_trailing_cr_and_noise_between_frames_are_tolerated(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"\r\n".join(START + b + END for b in bodies)  # FS without CR, newlines between frames
    assert _decode(_split(stream, cuts)) == [Frame(b) for b in bodies]


def test_many_messages_in_one_read() -> None:
    assert _decode([frame(b"MSH|a") + frame(b"MSH|b") + frame(b"MSH|c")]) == [
        Frame(b"MSH|a"),
        Frame(b"MSH|b"),
        Frame(b"MSH|c"),
    ]


def test_a_message_above_the_bound_is_reported_with_its_head_and_memory_stays_bounded() -> None:
    decoder = FrameDecoder(max_message_bytes=2048)
    events = decoder.feed(START + b"MSH|" + b"x" * 3000)
    for _ in range(100):
        events += decoder.feed(b"y" * 10_000)
    assert len(decoder._buffer) <= 4096
    events += decoder.feed(END + CR_ + frame(b"MSH|next"))
    assert isinstance(events[0], Oversized)
    assert events[0].size == 4 + 3000 + 1_000_000
    assert events[0].head.startswith(b"MSH|")
    assert events[1:] == [Frame(b"MSH|next")]


def test_a_cut_frame_is_mid_frame_and_a_restart_keeps_the_newest_message() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(START + b"MSH|cut") == []
    assert decoder.mid_frame
    assert decoder.feed(START + b"MSH|whole" + END + b"\r") == [Frame(b"MSH|whole")]
    assert not decoder.mid_frame


CR_ = b"\r"
