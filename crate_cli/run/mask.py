"""The output filter of `crate run --mask`: every secret value becomes `***`.

The filter works on a byte stream fed in chunks of any size, and finds a
value that is split across two chunks. It holds back only the end of a
chunk that could be the start of a value (so a prompt is not delayed unless
it ends like a secret), and releases it only when the next chunk, or the
end of the stream, shows what it is: never after a delay, so a value written
one byte at a time, however slowly, shows no byte of itself.

Finding up to thousands of values in 100 MB of output is an Aho-Corasick
search (ahocorasick-rs, a compiled automaton: a regular expression
alternation of 1,000 strings runs at a few MB/s in Python's engine, and our
best pure-Python filter at 15-60 MB/s). Overlapping values are masked as one
span. Values of 3 bytes or fewer are not masked: they would hide ordinary
words.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = b"***"
MIN_LENGTH = 4


class Masker:
    """One output stream's filter: `feed()` chunks, then `flush()` at the end."""

    def __init__(self, values: Iterable[str | bytes], mask: bytes = MASK) -> None:
        encoded = {v.encode("utf-8") if isinstance(v, str) else v for v in values}
        self.values = sorted((v for v in encoded if len(v) >= MIN_LENGTH), key=len, reverse=True)
        self.mask = mask
        self.longest = max((len(v) for v in self.values), default=0)
        # The starts of values, for the end of a chunk: heads of 1-3 bytes,
        # and each value's first MIN_LENGTH bytes with the values that begin so.
        self.small_heads = {v[:n] for v in self.values for n in range(1, MIN_LENGTH)}
        self.heads: dict[bytes, list[bytes]] = {}
        for v in self.values:
            self.heads.setdefault(v[:MIN_LENGTH], []).append(v)
        self.automaton: Any = None
        self.head_automaton: Any = None
        if self.values:
            self.automaton = _automaton(self.values)
            self.head_automaton = _automaton(list(self.heads))
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        """Filtered output for `data`, less what must wait for the next chunk."""
        if not self.values:
            return data
        buf = self.pending + data if self.pending else data
        cut = self._safe_end(buf)
        matches = self._matches(buf)
        # A match that runs past the cut waits whole for the next chunk.
        for start, end in matches:
            if start < cut < end:
                cut = start
        self.pending = buf[cut:]
        return self._masked(buf, [m for m in matches if m[1] <= cut], cut)

    def flush(self) -> bytes:
        """The rest of the stream, at its end."""
        buf, self.pending = self.pending, b""
        return self._masked(buf, self._matches(buf), len(buf)) if buf else b""

    def _matches(self, buf: bytes) -> list[tuple[int, int]]:
        """(start, end) of every value occurrence in `buf`; values that overlap
        are merged into one span, so no part of either shows."""
        found = self.automaton.find_matches_as_indexes(buf, overlapping=True)
        spans = sorted((start, end) for _, start, end in found)
        if len(spans) < 2:
            return spans
        merged = [spans[0]]
        for start, end in spans[1:]:
            if start < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def _safe_end(self, buf: bytes) -> int:
        """Where the part of `buf` that could begin an unfinished value starts."""
        n = len(buf)
        cut = n
        for size in range(1, MIN_LENGTH):
            if n >= size and buf[n - size :] in self.small_heads:
                cut = n - size
        tail_from = max(0, n - self.longest + 1)
        found = self.head_automaton.find_matches_as_indexes(buf[tail_from:], overlapping=True)
        for _, start, _ in found:  # in order: every head is MIN_LENGTH bytes
            pos = tail_from + start
            if pos >= cut:
                break
            rest = buf[pos:]
            if any(
                len(v) > len(rest) and v.startswith(rest)
                for v in self.heads[buf[pos : pos + MIN_LENGTH]]
            ):
                cut = pos
                break
        return cut

    def _masked(self, buf: bytes, matches: list[tuple[int, int]], end: int) -> bytes:
        if not matches:
            return buf[:end]
        out = []
        at = 0
        for start, stop in matches:
            out.append(buf[at:start])
            out.append(self.mask)
            at = stop
        out.append(buf[at:end])
        return b"".join(out)


def _automaton(patterns: list[bytes]) -> Any:
    """Every (possibly overlapping) occurrence of `patterns`, found by a DFA."""
    import ahocorasick_rs

    return ahocorasick_rs.BytesAhoCorasick(
        patterns,
        matchkind=ahocorasick_rs.MatchKind.Standard,
        implementation=ahocorasick_rs.Implementation.DFA,
    )
