# Section of engine/_core.pyx (compiled into it by `include`): roaring64 bitmaps (the blacklists) read in
# place from their portable serialization: membership, the walk that checks and indexes a serialized bitmap
# (parse_roaring64), and the indexes derived from it on load (container table and bit filter: roaring_index).

cdef inline bint container_contains(const uint8_t* data, uint32_t meta, uint16_t low) noexcept nogil:
    cdef uint32_t kind = meta >> 28, count = meta & 0x0FFFFFFF
    cdef int64_t lo = 0, hi = <int64_t>count - 1, mid
    cdef uint16_t v, start
    if kind == KIND_BITSET:
        return (data[low >> 3] >> (low & 7)) & 1
    if kind == KIND_ARRAY:
        while lo <= hi:
            mid = (lo + hi) >> 1
            v = load16(data + 2 * mid)
            if v < low:
                lo = mid + 1
            elif v > low:
                hi = mid - 1
            else:
                return True
        return False
    # runs: (start, length - 1) pairs sorted by start; find the last start <= low
    while lo <= hi:
        mid = (lo + hi) >> 1
        start = load16(data + 4 * mid)
        if start > low:
            hi = mid - 1
        else:
            lo = mid + 1
    if hi < 0:
        return False
    return <uint32_t>low - load16(data + 4 * hi) <= load16(data + 4 * hi + 2)


cdef inline bint roaring_contains(const Roaring* r, uint64_t x) noexcept nogil:
    cdef uint64_t h, key, slot
    cdef const Container* c
    if r.n == 0:
        return False
    h = mix64(x) & r.filter_mask
    if not ((r.filter[h >> 6] >> (h & 63)) & 1):
        return False
    key = x >> 16
    slot = mix64(key) & r.table_mask
    while True:
        c = &r.table[slot]
        if c.key == key:
            return container_contains(r.buf + c.off, c.meta, <uint16_t>(x & 0xFFFF))
        if c.key == EMPTY_KEY:
            return False
        slot = (slot + 1) & r.table_mask


cdef void _fill_filter(uint64_t* filt, uint64_t mask, uint64_t key, const uint8_t* data, uint32_t meta) noexcept nogil:
    # set the filter bit of every value in one container
    cdef uint32_t kind = meta >> 28, count = meta & 0x0FFFFFFF, i, w
    cdef uint64_t base = key << 16, h, word
    cdef uint32_t start, length, v
    if kind == KIND_ARRAY:
        for i in range(count):
            h = mix64(base | load16(data + 2 * i)) & mask
            filt[h >> 6] |= (<uint64_t>1) << (h & 63)
    elif kind == KIND_BITSET:
        for w in range(1024):
            memcpy(&word, data + 8 * w, 8)
            while word:
                v = w * 64 + <uint32_t>__builtin_ctzll(word)
                word &= word - 1
                h = mix64(base | v) & mask
                filt[h >> 6] |= (<uint64_t>1) << (h & 63)
    else:
        for i in range(count):
            start = load16(data + 4 * i)
            length = load16(data + 4 * i + 2)
            for v in range(start, start + length + 1):
                h = mix64(base | v) & mask
                filt[h >> 6] |= (<uint64_t>1) << (h & 63)


# Most values a list's bitmap may hold (settings allow 20 M): bounds the filter (8 bits a value) and the
# time to fill it, whatever a damaged or hostile snapshot claims (a run of 65,536 values takes 4 bytes).
cdef uint64_t MAX_LIST_VALUES = 1 << 26
cdef uint64_t BAD_CONTAINER = 0xFFFFFFFFFFFFFFFFULL


def roaring_index(const uint8_t[::1] buf not None):
    """Derived indexes of a serialized roaring64 bitmap: (container table, filter words).

    The table is a power-of-two open-addressing array of Container structs
    (load <= 0.5); the filter has at least 8 bits per value.  Raises
    ValueError on a malformed bitmap (see `parse_roaring64`; also run
    containers whose runs overlap or pass 65535, more than 2^26 values).
    """
    return _roaring_index(buf)[:2]


cdef tuple _roaring_containers(const uint8_t[::1] buf):
    """(keys, offs, metas, values) of a serialized roaring64 bitmap: `parse_roaring64` and the exact number of
    values it holds; ValueError for a bitmap no list may be (run containers whose runs are out of order,
    overlap or pass 65535; more than MAX_LIST_VALUES values).  What `_roaring_index` checks, without the
    indexes."""
    keys, offs, metas = parse_roaring64(buf)
    cdef Py_ssize_t n = len(keys), i, bad = -1
    cdef uint64_t values = 0, c
    cdef const uint32_t[::1] o = offs
    cdef const uint32_t[::1] m = metas
    cdef const uint8_t* data = &buf[0]
    with nogil:
        for i in range(n):
            c = _count(data, o[i], m[i])
            if c == BAD_CONTAINER:
                bad = i
                break
            values += c
    if bad >= 0:
        raise ValueError(f"roaring run container {bad} has runs out of order, overlapping or past 65535")
    if values > MAX_LIST_VALUES:
        raise ValueError(f"roaring bitmap holds {values} values, more than the {MAX_LIST_VALUES} a list may")
    return keys, offs, metas, values


cdef tuple _roaring_index(const uint8_t[::1] buf):
    """(container table, filter words, number of containers): see roaring_index."""
    keys, offs, metas, counted = _roaring_containers(buf)
    cdef Py_ssize_t n = len(keys), i
    cdef uint64_t size = 16, slot, bits = 1024, values = counted
    while size < 2 * <uint64_t>n:
        size *= 2
    cdef const uint64_t[::1] k = keys
    cdef const uint32_t[::1] o = offs
    cdef const uint32_t[::1] m = metas
    cdef const uint8_t* data = &buf[0]
    table = np.zeros(size, dtype=CONTAINER_DTYPE)
    table["key"] = EMPTY_KEY
    cdef Container* t = <Container*>cnp.PyArray_DATA(table)
    while bits < 8 * values:
        bits *= 2
    filt = np.zeros(bits // 64, dtype=np.uint64)
    cdef uint64_t* f = <uint64_t*>cnp.PyArray_DATA(filt)
    with nogil:
        for i in range(n):
            slot = mix64(k[i]) & (size - 1)
            while t[slot].key != EMPTY_KEY:
                slot = (slot + 1) & (size - 1)
            t[slot].key = k[i]
            t[slot].off = o[i]
            t[slot].meta = m[i]
            _fill_filter(f, bits - 1, k[i], data + o[i], m[i])
    return table, filt, n


cdef uint64_t _count(const uint8_t* buf, uint32_t off, uint32_t meta) noexcept nogil:
    # the values in one container, exactly; BAD_CONTAINER: runs out of order, overlapping or past 65535
    cdef uint32_t kind = meta >> 28, count = meta & 0x0FFFFFFF, i
    cdef uint64_t total = 0, word
    cdef int64_t start, end, prev_end = -1
    if kind == KIND_ARRAY:
        # (not checked in order: that costs 7% of a load, and an array out of order only answers wrong, like
        # any other damaged value; runs are checked, as they bound the filter's size and the time to fill it)
        return count
    if kind == KIND_BITSET:
        for i in range(1024):
            memcpy(&word, buf + off + 8 * i, 8)
            total += <uint64_t>__builtin_popcountll(word)
        return total
    for i in range(count):
        start = load16(buf + off + 4 * i)
        end = start + load16(buf + off + 4 * i + 2)
        if start <= prev_end or end > 0xFFFF:
            return BAD_CONTAINER
        prev_end = end
        total += <uint64_t>(end - start + 1)
    return total


cdef int64_t _walk_roaring(const uint8_t* p, Py_ssize_t n, uint64_t* keys, uint32_t* offs,
                           uint32_t* metas) noexcept nogil:
    """Walk the containers of a serialized roaring64 bitmap; fill the arrays if given.

    Returns the number of containers, or -1 - (what is wrong) for a
    malformed buffer: it never reads past the end.
    """
    cdef Py_ssize_t pos = 8, i, hdr, size, cpos, base, offpos, runmap = 0, start, length
    cdef uint64_t nbuckets, b
    cdef uint32_t high, cookie, card, nruns, key16, kind, count
    cdef bint has_runs, has_offsets
    cdef int64_t total = 0
    if n < 8:
        return -2
    memcpy(&nbuckets, p, 8)
    for b in range(nbuckets):
        if pos + 8 > n:
            return -3
        high = load32(p + pos)
        pos += 4
        base = pos
        cookie = load32(p + pos)
        if (cookie & 0xFFFF) == 12347:
            has_runs = True
            size = (cookie >> 16) + 1
            pos += 4
            runmap = pos
            pos += (size + 7) // 8
        elif cookie == 12346:
            has_runs = False
            if pos + 8 > n:
                return -5
            size = load32(p + pos + 4)
            pos += 8
        else:
            return -4
        if size > 65536 or pos + 4 * size > n:
            return -5
        hdr = pos
        pos += 4 * size
        has_offsets = (not has_runs) or size >= 4
        offpos = pos
        if has_offsets:
            if pos + 4 * size > n:
                return -5
            pos += 4 * size
        cpos = pos
        for i in range(size):
            key16 = load16(p + hdr + 4 * i)
            card = <uint32_t>load16(p + hdr + 4 * i + 2) + 1
            if has_offsets:
                cpos = base + load32(p + offpos + 4 * i)
            if has_runs and (p[runmap + i // 8] >> (i % 8)) & 1:
                if cpos + 2 > n:
                    return -6
                nruns = load16(p + cpos)
                kind, count, start, length = KIND_RUN, nruns, cpos + 2, 4 * nruns
            elif card <= 4096:
                kind, count, start, length = KIND_ARRAY, card, cpos, 2 * card
            else:
                kind, count, start, length = KIND_BITSET, 0, cpos, 8192
            if start + length > n or <uint64_t>start > <uint64_t>0xFFFFFFFFU:
                return -6
            if keys != NULL:
                keys[total] = (<uint64_t>high << 16) | key16
                offs[total] = <uint32_t>start
                metas[total] = (kind << 28) | count
                if total > 0 and keys[total] <= keys[total - 1]:
                    return -7
            total += 1
            cpos = start + length
        pos = cpos
    return total


_ROARING_ERRORS = {-2: "roaring64 buffer too short", -3: "roaring64 bucket header truncated",
                   -4: "not a roaring bitmap (bad cookie)", -5: "roaring header truncated",
                   -6: "roaring container truncated", -7: "roaring containers out of order"}


def parse_roaring64(const uint8_t[::1] buf not None):
    """Index the containers of a serialized roaring64 bitmap (pyroaring BitMap64).

    Returns (keys uint64, offs uint32, meta uint32) arrays; the core then reads
    the containers in place from the same buffer.  Raises ValueError on a
    malformed buffer rather than reading past its end.  Runs without the GIL
    (two passes: count, then fill), so a server loading a big list keeps
    answering meanwhile.
    """
    cdef Py_ssize_t n = buf.shape[0]
    cdef const uint8_t* p = &buf[0] if n else NULL
    cdef int64_t total
    with nogil:
        total = _walk_roaring(p, n, NULL, NULL, NULL)
    if total < 0:
        raise ValueError(_ROARING_ERRORS.get(total, "malformed roaring bitmap"))
    keys = np.empty(total, dtype=np.uint64)
    offs = np.empty(total, dtype=np.uint32)
    metas = np.empty(total, dtype=np.uint32)
    cdef uint64_t* pk = <uint64_t*>cnp.PyArray_DATA(keys)
    cdef uint32_t* po = <uint32_t*>cnp.PyArray_DATA(offs)
    cdef uint32_t* pm = <uint32_t*>cnp.PyArray_DATA(metas)
    cdef int64_t again
    with nogil:
        again = _walk_roaring(p, n, pk, po, pm)
    if again < 0:
        raise ValueError(_ROARING_ERRORS.get(again, "malformed roaring bitmap"))
    return keys, offs, metas
