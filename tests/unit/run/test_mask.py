"""The output filter of `crate run --mask` (crate_cli.run.mask.Masker).

The filter is checked against a plain reference (find every occurrence, merge
the ones that overlap, replace each merged span by `***`) over random streams
cut into random chunks, and for what it holds back: only a tail that could
still become a secret, released by the next chunk or by `flush()`.
"""

from __future__ import annotations

import random

import pytest

from crate_cli.run.mask import MASK, MIN_LENGTH, Masker


def reference(data: bytes, values: list[bytes]) -> bytes:
    """Every occurrence of a value of MIN_LENGTH bytes or more, overlapping
    ones merged into one span, each span replaced by the mask."""
    spans = []
    for value in {v for v in values if len(v) >= MIN_LENGTH}:
        at = data.find(value)
        while at != -1:
            spans.append((at, at + len(value)))
            at = data.find(value, at + 1)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    out, at = [], 0
    for start, end in merged:
        out += [data[at:start], MASK]
        at = end
    out.append(data[at:])
    return b"".join(out)


def settled(data: bytes, values: list[bytes]) -> int:
    """How much of `data` a filter can already pass on, whatever comes next:
    up to the first place where the rest could still begin a value (a proper
    prefix of one), moved back to the start of a match that runs across it
    (a later value could overlap and merge with that match)."""
    longer = [v for v in values if len(v) >= MIN_LENGTH]
    cut = next(
        (
            at
            for at in range(len(data))
            if any(len(v) > len(data) - at and v.startswith(data[at:]) for v in longer)
        ),
        len(data),
    )
    moved = True
    while moved:
        moved = False
        for value in longer:
            at = data.find(value)
            while at != -1:
                if at < cut < at + len(value):
                    cut, moved = at, True
                at = data.find(value, at + 1)
    return cut


def filtered(masker: Masker, chunks: list[bytes]) -> bytes:
    return b"".join(masker.feed(chunk) for chunk in chunks) + masker.flush()


def chunked(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[at : at + size])
        at += size
    return chunks


# -- against the reference ----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_match_the_reference(seed: int) -> None:
    """Small alphabets make values that overlap, nest and repeat; every chunk
    boundary is tried somewhere."""
    rng = random.Random(seed)
    for _ in range(2500):
        alphabet = rng.choice([b"ab", b"abc", b"abcx", b"ab\n\xff"])
        values = [
            bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
            for _ in range(rng.randint(1, 6))
        ]
        data = bytes(rng.choice(alphabet + b" ") for _ in range(rng.randint(0, 150)))
        chunks = chunked(data, rng, rng.choice([1, 3, 10, 200]))
        out = filtered(Masker(values), chunks)
        assert out == reference(data, values), (values, chunks)


@pytest.mark.parametrize("seed", range(2))
def test_each_chunk_passes_on_exactly_what_is_settled(seed: int) -> None:
    """After every feed the output so far is the masked settled part of the
    input: nothing is released that a later byte could still change, and
    nothing is held back that no later byte can change."""
    rng = random.Random(100 + seed)
    for _ in range(1500):
        alphabet = rng.choice([b"ab", b"abc", b"abcd"])
        values = [
            bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            for _ in range(rng.randint(1, 4))
        ]
        data = bytes(rng.choice(alphabet + b"-") for _ in range(rng.randint(0, 60)))
        masker = Masker(values)
        out, seen = b"", b""
        for chunk in chunked(data, rng, 8):
            out += masker.feed(chunk)
            seen += chunk
            assert out == reference(seen[: settled(seen, values)], values), (values, seen)
        assert out + masker.flush() == reference(data, values)


def test_long_random_values_in_random_text() -> None:
    """Realistic secrets (up to 200 bytes, some sharing a prefix) in a longer
    stream, some cut across chunks of all sizes."""
    rng = random.Random(42)
    letters = bytes(range(33, 127))
    for _ in range(60):
        base = bytes(rng.choice(letters) for _ in range(8))
        values = [
            (base if rng.random() < 0.3 else b"")
            + bytes(rng.choice(letters) for _ in range(rng.randint(4, 200)))
            for _ in range(rng.randint(1, 40))
        ]
        parts = []
        for _ in range(rng.randint(1, 80)):
            parts.append(bytes(rng.choice(letters + b"\n ") for _ in range(rng.randint(0, 300))))
            parts.append(rng.choice(values)[: rng.choice([None, None, -1, 5])])
        data = b"".join(parts)
        chunks = chunked(data, rng, rng.choice([1, 7, 64, 4096]))
        assert filtered(Masker(values), chunks) == reference(data, values)


def test_many_values_and_a_large_stream() -> None:
    rng = random.Random(7)
    values = [rng.randbytes(32).hex() for _ in range(2000)]
    filler = rng.randbytes(1 << 20)
    pieces, expected = [], []
    for i in range(0, len(filler), 4096):
        value = values[i % len(values)].encode()
        pieces += [filler[i : i + 4096], value]
        expected.append(filler[i : i + 4096])
    data = b"".join(pieces)
    out = filtered(Masker(values), chunked(data, rng, 65536))
    assert out == reference(data, [v.encode() for v in values])
    assert out.count(MASK) >= len(filler) // 4096


# -- what is held back ---------------------------------------------------------------


def test_a_value_split_across_chunks_is_masked() -> None:
    masker = Masker(["hunter2-secret"])
    assert masker.feed(b"password is hunter") == b"password is "
    assert masker.feed(b"2-sec") == b""
    assert masker.feed(b"ret, ok\n") == b"***, ok\n"
    assert masker.flush() == b""


def test_a_value_split_into_single_bytes_is_masked() -> None:
    masker = Masker(["s3cr3t"])
    assert filtered(masker, [bytes([b]) for b in b"[s3cr3t]"]) == b"[***]"


def test_a_partial_prefix_is_held_until_the_next_chunk() -> None:
    masker = Masker(["secret-value"])
    assert masker.feed(b"the sec") == b"the "
    # It was not the secret after all: released with the next chunk.
    assert masker.feed(b"ond line\n") == b"second line\n"
    assert masker.flush() == b""


@pytest.mark.parametrize("tail", [b"s", b"se", b"sec", b"secr", b"secret-valu"])
def test_every_length_of_prefix_is_held(tail: bytes) -> None:
    masker = Masker(["secret-value"])
    assert masker.feed(b"x " + tail) == b"x "
    assert masker.flush() == tail


def test_a_prompt_is_passed_on_at_once() -> None:
    masker = Masker(["correct horse battery staple", "sk_live_0123456789"])
    assert masker.feed(b"Password: ") == b"Password: "
    assert masker.feed(b"Continue? [y/N] ") == b"Continue? [y/N] "
    assert masker.flush() == b""


def test_a_complete_value_at_the_end_of_a_chunk_is_passed_on_masked() -> None:
    masker = Masker(["sk_live_0123456789"])
    assert masker.feed(b"key=sk_live_0123456789") == b"key=***"
    assert masker.flush() == b""


def test_a_match_that_a_longer_value_could_extend_is_held() -> None:
    # `abcd` is complete, but `cdef` may follow and overlap it: one span.
    masker = Masker(["abcd", "cdef"])
    assert masker.feed(b"x abcd") == b"x "
    assert masker.feed(b"ef y") == b"*** y"
    masker = Masker(["abcd", "cdef"])
    assert masker.feed(b"x abcd") == b"x "
    assert masker.feed(b"!") == b"***!"


def test_flush_releases_what_was_held() -> None:
    masker = Masker(["topsecret"])
    assert masker.feed(b"ends with top") == b"ends with "
    assert masker.flush() == b"top"
    assert masker.flush() == b""


def test_flush_masks_a_value_completed_by_the_last_chunk() -> None:
    masker = Masker(["abcd", "cdef"])
    assert masker.feed(b"abcd") == b""
    assert masker.flush() == b"***"


# -- which values, which bytes ------------------------------------------------------------


def test_no_values_pass_everything_through() -> None:
    masker = Masker([])
    data = bytes(range(256)) * 4
    assert masker.feed(data) == data
    assert masker.feed(b"sec") == b"sec"
    assert masker.flush() == b""


@pytest.mark.parametrize("short", ["a", "ab", "abc", ""])
def test_values_of_three_bytes_or_fewer_are_not_masked(short: str) -> None:
    masker = Masker([short, "long-secret"])
    text = f"<{short}> <long-secret> <abc>".encode()
    assert filtered(masker, [text]) == f"<{short}> <***> <abc>".encode()


def test_only_short_values_is_like_no_values() -> None:
    masker = Masker(["abc", "xy"])
    assert masker.feed(b"abc xy a") == b"abc xy a"
    assert masker.flush() == b""


def test_four_bytes_are_masked() -> None:
    assert filtered(Masker(["abcd"]), [b"abc abcd abcde"]) == b"abc *** ***e"


def test_every_occurrence_is_masked() -> None:
    assert filtered(Masker(["token"]), [b"token,token tokentoken"]) == b"***,*** ******"


def test_overlapping_and_nested_values_make_one_span() -> None:
    assert filtered(Masker(["abcdef", "defghi"]), [b"-abcdefghi-"]) == b"-***-"
    assert filtered(Masker(["secret", "my-secret-key"]), [b"[my-secret-key]"]) == b"[***]"
    assert filtered(Masker(["aaaa"]), [b"aaaaaa"]) == b"***"
    # Adjacent, not overlapping: two spans.
    assert filtered(Masker(["abcd", "efgh"]), [b"abcdefgh"]) == b"******"


def test_non_utf8_bytes_pass_through() -> None:
    masker = Masker(["secret"])
    data = b"\xff\xfe\x00binary\x80secret\xc3(\n"
    assert filtered(masker, [data[:9], data[9:]]) == b"\xff\xfe\x00binary\x80***\xc3(\n"


def test_bytes_values_may_be_any_bytes() -> None:
    masker = Masker([b"\xff\x00\xfe\x01"])
    assert filtered(masker, [b"a\xff\x00", b"\xfe\x01b"]) == b"a***b"


def test_text_values_are_matched_as_utf8() -> None:
    masker = Masker(["pässwörd"])
    data = "user pässwörd ok".encode()
    assert filtered(masker, [data[:7], data[7:]]) == b"user *** ok"


def test_duplicate_values_are_one() -> None:
    assert filtered(Masker(["secret", "secret", b"secret"]), [b"a secret"]) == b"a ***"


def test_a_custom_mask() -> None:
    assert filtered(Masker(["secret"], mask=b"[hidden]"), [b"a secret"]) == b"a [hidden]"


def test_a_value_fed_one_byte_at_a_time_shows_no_byte_until_it_is_decided() -> None:
    """The filter has no way to give up on a held start: whatever the pauses
    between the bytes, none of the value's first bytes is passed on, and the
    held bytes come out only with the byte that decides them (or the end)."""
    value = b"sk_live_4f9a8c2e1b7d"
    masker = Masker([value.decode(), "other-secret"])
    shown = masker.feed(b"key: ")
    for byte in value[:-1]:
        shown += masker.feed(bytes([byte]))
        assert shown == b"key: "
    assert masker.feed(value[-1:]) + masker.feed(b"\n") == b"***\n"
    for follows, released in [(b"x", b"sx"), (b"k_x", b"sk_x")]:
        masker = Masker([value])
        assert masker.feed(b"s") == b""
        assert masker.feed(follows) == released
    masker = Masker([value])
    assert masker.feed(b"sk_live_4f9a8c2e1b7") == b""
    assert masker.flush() == b"sk_live_4f9a8c2e1b7"  # the end: it was not the value
    assert not hasattr(masker, "release_short"), "a held start must not be given up by time"
