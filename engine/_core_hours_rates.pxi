# Section of engine/_core.pyx (compiled into it by `include`): whether a schedule is off at an instant
# (the zone's UTC offset by bucket, holidays as local days, weekly minutes as bits) and the longest-prefix
# walk of a line's rate trie.

cdef bint off_hours(const Snap* s, int32_t sched, int64_t at) noexcept nogil:
    cdef int32_t z, lo, hi, mid, h_lo, h_hi
    cdef int64_t local, day, sec, minute_of_week
    cdef int32_t d
    if sched < 0:
        return False
    z = s.sched_zone[sched]
    # the segment in force when at's bucket starts, then at most the few
    # transitions inside the bucket (offsets change at most every few weeks)
    lo = s.zone_bucket[z * ZONE_BUCKETS + ((at - MIN_INSTANT) >> ZONE_BUCKET_BITS)]
    hi = s.zone_base[z + 1]
    while lo + 1 < hi and s.zone_starts[lo + 1] <= at:
        lo += 1
    local = at + s.zone_offsets[lo]
    day = local // 86400
    sec = local - day * 86400
    d = <int32_t>day
    h_lo = s.sched_hol_base[sched]
    h_hi = s.sched_hol_base[sched + 1] - 1
    while h_lo <= h_hi:
        mid = (h_lo + h_hi) >> 1
        if s.hol_days[mid] < d:
            h_lo = mid + 1
        elif s.hol_days[mid] > d:
            h_hi = mid - 1
        else:
            return True
    # 1970-01-01 was a Thursday: Monday is weekday 0
    minute_of_week = ((day + 3) % 7) * 1440 + sec // 60
    return not ((s.sched_week[sched * WEEK_WORDS + (minute_of_week >> 6)] >> (minute_of_week & 63)) & 1)


cdef inline int32_t match_rate(const Snap* s, int32_t line, uint64_t dest) noexcept nogil:
    cdef char digits[24]
    cdef int32_t n = digits_of(dest, digits), i, node, best = -1
    node = s.line_root[line]
    for i in range(n):
        node = s.trie_child[node * 10 + (digits[i] - c'0')]
        if node < 0:
            break
        if s.trie_rate[node] >= 0:
            best = s.trie_rate[node]
    return best
