"""UTC-offset tables of IANA zones over the decision window, for the core.

The core does not call zoneinfo: it finds the offset in force at an instant by
binary search over the zone's transitions, precomputed here once per zone for
`codes.MIN_INSTANT .. codes.MAX_INSTANT` and shared by every schedule (and
every tenant) in that zone.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

import numpy as np

from .codes import MAX_INSTANT, MIN_INSTANT

# Daily sampling finds every change of offset that lasts at least a day; the
# exact second of each change is then found by bisection.  No zone in tzdata
# changes offset twice within one day in 2000-2100.
_STEP = 86_400


def _offset(zone: zoneinfo.ZoneInfo, t: int) -> int:
    off = dt.datetime.fromtimestamp(t, zone).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@functools.lru_cache(maxsize=1024)
def zone_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Segment starts (int64 UTC seconds, the first is MIN_INSTANT) and offsets (int32 seconds).

    Segment i holds for starts[i] <= t < starts[i + 1] (the last one up to
    MAX_INSTANT).  The arrays are read-only: they are shared between snapshots.
    """
    zone = zoneinfo.ZoneInfo(name)
    starts = [MIN_INSTANT]
    offsets = [_offset(zone, MIN_INSTANT)]
    prev_t, prev_off = MIN_INSTANT, offsets[0]
    for t in range(MIN_INSTANT + _STEP, MAX_INSTANT + _STEP, _STEP):
        t = min(t, MAX_INSTANT - 1)
        off = _offset(zone, t)
        if off != prev_off:
            lo, hi = prev_t, t  # offset(lo) == prev_off, offset(hi) != prev_off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == prev_off:
                    lo = mid
                else:
                    hi = mid
            starts.append(hi)
            offsets.append(off)
            prev_off = off
        prev_t = t
    s = np.array(starts, dtype=np.int64)
    o = np.array(offsets, dtype=np.int32)
    s.flags.writeable = False
    o.flags.writeable = False
    return s, o
