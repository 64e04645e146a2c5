"""Byte ranges of segmented downloads: pure functions, no I/O.

A large file starts as one range; each free connection takes the second half of the
range with the most left (:func:`steal`), so the file ends up cut into contiguous ranges
fetched over several connections into one preallocated part file. Each
:class:`Segment` remembers how many of its bytes are on disk, so a failed segment resumes
on its own, and a partial file resumes segment by segment in a later run.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
#: No range is split off smaller than this: below it a new connection costs more than
#: it brings.
MIN_SEGMENT = 8 * MiB
#: Most connections one file uses on its own.
MAX_SEGMENTS = 16
_ALIGN = 64 * 1024


@dataclass(slots=True)
class Segment:
    """Bytes ``start`` .. ``end`` (exclusive) of the file; ``done`` of them are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def position(self) -> int:
        """The next byte to fetch."""
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.position

    def as_list(self) -> list[int]:
        return [self.start, self.end, self.done]


def restore(raw: list[list[int]], total: int) -> list[Segment] | None:
    """Segments read back from a partial's sidecar, or None when they are not a valid
    cover of ``total`` bytes (then the partial is not trusted)."""
    try:
        segments = [Segment(int(a), int(b), int(d)) for a, b, d in raw]
    except (TypeError, ValueError):
        return None
    position = 0
    for s in segments:
        if s.start != position or s.end <= s.start or not 0 <= s.done <= s.size:
            return None
        position = s.end
    return segments if position == total and segments else None


def steal(segments: list[Segment], min_size: int = MIN_SEGMENT) -> Segment | None:
    """Split the segment with the most bytes left, for an idle connection.

    The victim keeps the first half of what it has left; the returned new segment takes
    the second half. None when nothing is worth splitting. The caller inserts the new
    segment into its list in order.
    """
    victim = max(segments, key=lambda s: s.remaining, default=None)
    if victim is None or victim.remaining < 2 * min_size:
        return None
    middle = victim.position + victim.remaining // 2
    middle = -(-middle // _ALIGN) * _ALIGN
    if middle >= victim.end:
        return None
    new = Segment(middle, victim.end)
    victim.end = middle
    return new
