"""Range planning for segmented downloads: pure functions, no I/O.

A large file is cut into contiguous byte ranges fetched over several connections into
one preallocated part file. Each :class:`Segment` remembers how many of its bytes are on
disk, so a failed segment resumes on its own, and a partial file resumes segment by
segment in a later run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

MiB = 1 << 20
#: No segment is planned smaller than this: below it a new connection costs more than
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


def segment_count(total: int, spare_connections: int, wanted: int | str) -> int:
    """How many segments a file of ``total`` bytes gets.

    ``wanted`` is the ``segments`` option: an int (1 turns splitting off) or ``"auto"``.
    Never more than the connections free for this host (``spare_connections`` besides
    the one already open), nor so many that a segment falls under :data:`MIN_SEGMENT`.
    """
    limit = MAX_SEGMENTS if wanted == "auto" else int(wanted)
    by_size = total // MIN_SEGMENT
    return max(1, min(limit, spare_connections + 1, by_size))


def plan(total: int, count: int) -> list[Segment]:
    """Cut ``total`` bytes into ``count`` contiguous segments covering every byte once.

    Boundaries fall on 64 KiB multiples (whole pages for the writes); the last segment
    takes what is left.
    """
    if total <= 0:
        return [Segment(0, 0)]
    count = max(1, min(count, -(-total // _ALIGN)))
    step = -(-total // count)
    step = -(-step // _ALIGN) * _ALIGN
    bounds = [min(total, i * step) for i in range(count)] + [total]
    return [Segment(a, b) for a, b in itertools.pairwise(bounds) if b > a]


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
