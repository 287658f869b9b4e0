# The compiled decision core.
#
# A CoreSnapshot is one tenant's settings compiled into flat arrays (built by
# engine.snapshot, kept alive in `arrays`) and a C struct of pointers into
# them.  Decisions are `nogil` C functions over that struct: no Python object
# is touched between reading the input bytes and writing the Out struct.
# The semantics are those of docs/decisions.md, which engine/reference.py
# implements in plain Python; tests hold the two to each other.

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memchr, memcpy, memset


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_popcountll(unsigned long long) nogil

cdef extern from *:
    """
    #ifndef CALLGATE_DEBUG
    #define CALLGATE_DEBUG 0
    #endif
    """
    const int CALLGATE_DEBUG

import numpy as np

cimport numpy as cnp

from datetime import date as _date
from decimal import Decimal

from . import codes
from .decision import Decision

cnp.import_array()

# Verdict and reason codes, mirrored from engine.codes (checked at import).
cdef enum:
    V_ERROR, V_ROUTE, V_FORWARD, V_VOICEMAIL, V_REJECT, V_ALLOW, V_DENY, V_INTERCEPT, V_NO_PICKUP

cdef enum:
    R_OK, R_BLACKLISTED, R_OFF_HOURS_BLOCKED, R_OFF_HOURS, R_DOCUMENTS_PENDING, R_UNKNOWN_NUMBER,
    R_ANONYMOUS, R_ACCOUNT_UNAVAILABLE, R_INSUFFICIENT_FUNDS, R_NO_RATE, R_NO_CALLER_ID,
    R_INVALID_CALLER, R_INVALID_CALLED, R_INVALID_DESTINATION, R_INVALID_TIME, R_INVALID_USER,
    R_NOT_PICKUP_CODE, R_NO_RINGING_CALL, R_INVALID_BALANCE

cdef enum:
    FMT_AUTO, FMT_E164, FMT_INTERNATIONAL, FMT_NATIONAL   # codes.CALLER_FORMATS

cdef enum:
    F_REQUIRES_DOCS = 1
    F_APPROVED = 2
    KIND_ARRAY = 0
    KIND_BITSET = 1
    KIND_RUN = 2
    WEEK_WORDS = 158          # 7 * 1440 minutes, one bit each, in 64-bit words
    ZONE_BUCKET_BITS = 22     # zone offsets are indexed by 2^22 s (48.5 day) buckets
    MAX_CALL_SECONDS = 86400

cdef int64_t MIN_INSTANT = codes.MIN_INSTANT
cdef int64_t ZONE_BUCKETS = ((codes.MAX_INSTANT - codes.MIN_INSTANT) >> ZONE_BUCKET_BITS) + 1
cdef int64_t MAX_INSTANT = codes.MAX_INSTANT
cdef int64_t MAX_BALANCE_MICRO = 1000000000000000  # 1e9 currency units
cdef uint64_t EMPTY_KEY = 0xFFFFFFFFFFFFFFFFULL     # no key: values are < 2^64 >> 16
assert MAX_CALL_SECONDS == codes.MAX_CALL_SECONDS

_VERDICTS = codes.VERDICTS
_REASONS = codes.REASON_NAMES
_SIP = tuple(sip for _, sip in codes.REASONS)
assert _VERDICTS.index("NO_PICKUP") == V_NO_PICKUP
assert _REASONS.index("INVALID_BALANCE") == R_INVALID_BALANCE
assert _REASONS.index("NO_RINGING_CALL") == R_NO_RINGING_CALL

cdef uint16_t SIP[32]
for _i, _s in enumerate(_SIP):
    SIP[_i] = _s


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

cdef inline uint16_t load16(const uint8_t* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # murmur3 finaliser: spreads E.164 values over the table
    x ^= x >> 33
    x *= <uint64_t>0xff51afd7ed558ccd
    x ^= x >> 33
    x *= <uint64_t>0xc4ceb9fe1a85ec53
    x ^= x >> 33
    return x


cdef inline uint64_t fnv1a(const char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = <uint64_t>14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= <uint8_t>p[i]
        h *= <uint64_t>1099511628211ULL
    return h | 1  # 0 marks an empty slot


cdef inline int32_t number_index(const Snap* s, uint64_t e164) noexcept nogil:
    cdef uint64_t slot = mix64(e164) & s.nt_mask
    cdef uint64_t k
    while True:
        k = s.nt[slot].key
        if k == e164:
            return s.nt[slot].index
        if k == 0:
            return -1
        slot = (slot + 1) & s.nt_mask


cdef inline bint valid_user(const char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef char c
    if n < 1 or n > 64:
        return False
    for i in range(n):
        c = p[i]
        if (c'a' <= c <= c'z') or (c'A' <= c <= c'Z') or (c'0' <= c <= c'9'):
            continue
        if i > 0 and (c == c'_' or c == c'.' or c == c':' or c == c'@' or c == c'-'):
            continue
        return False
    return True


cdef inline int32_t user_index(const Snap* s, const char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = fnv1a(p, n)
    cdef uint64_t slot = h & s.ut_mask
    cdef uint64_t k
    cdef int32_t u, start, j
    while True:
        k = s.ut_keys[slot]
        if k == 0:
            return -1
        if k == h:
            u = s.ut_vals[slot]
            start = s.user_off[u]
            if s.user_off[u + 1] - start == n:
                j = 0
                while j < n and s.user_blob[start + j] == <uint8_t>p[j]:
                    j += 1
                if j == n:
                    return u
        slot = (slot + 1) & s.ut_mask


# ---------------------------------------------------------------------------
# Roaring bitmaps, read in place
# ---------------------------------------------------------------------------

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


cdef tuple _roaring_index(const uint8_t[::1] buf):
    """(container table, filter words, number of containers): see roaring_index."""
    keys, offs, metas = parse_roaring64(buf)
    cdef Py_ssize_t n = len(keys), i, bad = -1
    cdef uint64_t size = 16, slot, bits = 1024, values = 0, c
    while size < 2 * <uint64_t>n:
        size *= 2
    cdef const uint64_t[::1] k = keys
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


# ---------------------------------------------------------------------------
# Phone numbers
# ---------------------------------------------------------------------------

cdef inline char lower(char c) noexcept nogil:
    if c'A' <= c <= c'Z':
        return c + 32
    return c


cdef bint is_withheld(const char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t a = 0, b = n, i, k
    cdef const char* word
    while a < b and p[a] == c' ':
        a += 1
    while b > a and p[b - 1] == c' ':
        b -= 1
    if a == b:
        return True
    if p[a] == c'+' or (c'0' <= p[a] <= c'9'):
        return False  # the common case: a number, not a word
    for k in range(5):
        if k == 0:
            word = b"anonymous"
        elif k == 1:
            word = b"restricted"
        elif k == 2:
            word = b"private"
        elif k == 3:
            word = b"unavailable"
        else:
            word = b"unknown"
        i = 0
        while a + i < b and word[i] != 0 and lower(p[a + i]) == word[i]:
            i += 1
        if a + i == b and word[i] == 0:
            return True
    return False


cdef inline bint finish(uint64_t prefix, int32_t prefix_len, const char* p, Py_ssize_t n,
                        uint64_t* out) noexcept nogil:
    # E.164 digits = prefix (prefix_len digits) followed by p[0:n], which must
    # be ASCII digits; 8..15 digits in all, no leading 0
    cdef Py_ssize_t total = prefix_len + n, i
    cdef uint64_t v = prefix
    if total < 8 or total > 15:
        return False
    if prefix_len == 0 and p[0] == c'0':
        return False
    for i in range(n):
        if p[i] < c'0' or p[i] > c'9':
            return False
        v = v * 10 + <uint64_t>(p[i] - c'0')
    out[0] = v
    return True


cdef inline bint starts_with(const char* p, Py_ssize_t n, const char* pre, int32_t k) noexcept nogil:
    cdef int32_t i
    if k == 0 or n < k:
        return False
    for i in range(k):
        if p[i] != pre[i]:
            return False
    return True


cdef bint read_international(const char* p, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """`+digits` or bare digits: E.164."""
    if n > 0 and p[0] == c'+':
        p += 1
        n -= 1
    return finish(0, 0, p, n, out)


cdef int read_in_country(const char* p, Py_ssize_t n, const Country* c, uint64_t* out) noexcept nogil:
    """1: read (out set), 2: withheld, 0: invalid.  docs/decisions.md 'Reading phone numbers'."""
    if is_withheld(p, n):
        return 2
    if p[0] == c'+':
        return finish(0, 0, p + 1, n - 1, out)
    if n > 32:
        return 0
    if starts_with(p, n, c.ip, c.ip_len):
        return finish(0, 0, p + c.ip_len, n - c.ip_len, out)
    if starts_with(p, n, c.np, c.np_len):
        return finish(c.cc, c.cc_len, p + c.np_len, n - c.np_len, out)
    if n <= 31 and (c.lengths >> n) & 1:
        return finish(c.cc, c.cc_len, p, n, out)
    return finish(0, 0, p, n, out)


cdef inline int32_t digits_of(uint64_t v, char* buf) noexcept nogil:
    # writes the decimal digits of v (> 0) into buf, returns their count
    cdef char tmp[24]
    cdef int32_t n = 0, i
    while v > 0:
        tmp[n] = <char>(c'0' + v % 10)
        v //= 10
        n += 1
    for i in range(n):
        buf[i] = tmp[n - 1 - i]
    return n


# national lengths of every country calling code (bit n: n digits), by the code's value: E.164 digits whose
# code and length fit are a plausible number (a caller's second reading must be one)
cdef uint32_t CC_LENGTHS[1000]


def _fill_code_lengths():
    from .dialing import code_lengths

    memset(CC_LENGTHS, 0, sizeof(CC_LENGTHS))
    for code, lengths in code_lengths().items():
        if 0 < int(code) < 1000:
            CC_LENGTHS[int(code)] = sum(1 << n for n in lengths if n < 32)


_fill_code_lengths()


cdef bint plausible(uint64_t v) noexcept nogil:
    """engine.dialing.plausible_e164 of the digits of v."""
    cdef char digits[24]
    cdef int32_t n = digits_of(v, digits), k
    cdef uint32_t cc = 0
    for k in range(1, 4):
        if k >= n:
            return False
        cc = cc * 10 + <uint32_t>(digits[k - 1] - c'0')
        if (CC_LENGTHS[cc] >> (n - k)) & 1:
            return True
    return False


cdef int read_caller(const char* p, Py_ssize_t n, const Country* c, uint8_t fmt, uint64_t* out,
                     uint64_t* alt) noexcept nogil:
    """A caller by its line's format: 1 read (out; under auto `alt` the digits' second reading, else 0),
    2 withheld, 0 invalid.  docs/decisions.md 'Reading phone numbers'."""
    cdef uint64_t raw = 0
    cdef int read
    alt[0] = 0
    if is_withheld(p, n):
        return 2
    if p[0] == c'+':
        return finish(0, 0, p + 1, n - 1, out)
    if n > 32 or fmt == FMT_E164:
        return 0
    if fmt == FMT_INTERNATIONAL:
        return finish(0, 0, p, n, out)
    if fmt == FMT_NATIONAL:
        if starts_with(p, n, c.ip, c.ip_len):
            return finish(0, 0, p + c.ip_len, n - c.ip_len, out)
        if starts_with(p, n, c.np, c.np_len):
            return finish(c.cc, c.cc_len, p + c.np_len, n - c.np_len, out)
        return finish(c.cc, c.cc_len, p, n, out)
    read = read_in_country(p, n, c, out)
    # auto: digits read in the country may also be a whole E.164 number sent without its "+": when that is a
    # plausible number, the caller is checked against the lists in both readings (fail safe)
    if read == 1 and finish(0, 0, p, n, &raw) and raw != out[0] and plausible(raw):
        alt[0] = raw
    return read


def e164_array(numbers):
    """Validated E.164 strings as a uint64 array of their digits (compile helper)."""
    cdef Py_ssize_t n = len(numbers), i, k
    cdef const char* p
    cdef uint64_t v = 0
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        text = numbers[i]
        if type(text) is not str:
            raise ValueError(f"entry {i} is not a string")
        p = PyUnicode_AsUTF8AndSize(text, &k)
        if not read_international(p, k, &v) or p[0] != c'+':
            raise ValueError(f"entry {i} ({text!r}) is not an E.164 number")
        o[i] = v
    return out


# ---------------------------------------------------------------------------
# Off hours, rates
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------

cdef inline void clear(Out* o) noexcept nogil:
    memset(o, 0, sizeof(Out))
    o.line = -1
    o.group = -1
    o.callerid = -1
    o.rate = -1
    o.call = -1


cdef inline void refuse(Out* o, uint8_t verdict, uint8_t reason) noexcept nogil:
    o.verdict = verdict
    o.reason = reason
    o.sip = SIP[reason]


cdef void decide_inbound(const Snap* s, const char* caller, Py_ssize_t nc, const char* called,
                         Py_ssize_t nd, int64_t at, Out* o) noexcept nogil:
    cdef uint64_t called_num = 0, caller_num = 0, caller_alt = 0
    cdef int32_t idx
    cdef int read
    cdef bint withheld = False, off
    clear(o)
    if at < MIN_INSTANT or at >= MAX_INSTANT:
        refuse(o, V_ERROR, R_INVALID_TIME)
        return
    if not read_international(called, nd, &called_num):
        refuse(o, V_ERROR, R_INVALID_CALLED)
        return
    o.called = called_num
    idx = number_index(s, called_num)
    if idx >= 0:
        read = read_caller(caller, nc, &s.countries[s.num_country[idx]], s.line_format[s.num_line[idx]],
                           &caller_num, &caller_alt)
        if read == 0:
            refuse(o, V_ERROR, R_INVALID_CALLER)
            return
        withheld = read == 2
        if not withheld:
            o.caller = caller_num
            o.caller_alt = caller_alt
    if not s.active:
        if idx >= 0 and s.backup_line >= 0 and s.num_line[idx] == s.backup_line:
            o.verdict = V_FORWARD
            o.reason = R_ACCOUNT_UNAVAILABLE
            o.target = s.backup_number
            o.line = s.backup_line
        else:
            refuse(o, V_REJECT, R_ACCOUNT_UNAVAILABLE)
        return
    if idx < 0:
        refuse(o, V_REJECT, R_UNKNOWN_NUMBER)
        return
    if (s.num_flags[idx] & (F_REQUIRES_DOCS | F_APPROVED)) == F_REQUIRES_DOCS:
        refuse(o, V_REJECT, R_DOCUMENTS_PENDING)
        return
    if withheld:
        if s.block_anonymous:
            refuse(o, V_REJECT, R_ANONYMOUS)
            return
    elif roaring_contains(&s.blacklist, caller_num):
        refuse(o, V_REJECT, R_BLACKLISTED)
        return
    elif caller_alt and roaring_contains(&s.blacklist, caller_alt):
        o.alt_listed = 1
        refuse(o, V_REJECT, R_BLACKLISTED)
        return
    off = off_hours(s, s.num_sched[idx], at)
    if off:
        if not withheld and roaring_contains(&s.offhours_blacklist, caller_num):
            refuse(o, V_REJECT, R_OFF_HOURS_BLOCKED)
            return
        if not withheld and caller_alt and roaring_contains(&s.offhours_blacklist, caller_alt):
            o.alt_listed = 1
            refuse(o, V_REJECT, R_OFF_HOURS_BLOCKED)
            return
        if s.num_action[idx] == 1:
            o.verdict = V_VOICEMAIL
            o.reason = R_OFF_HOURS
        elif s.num_action[idx] == 2:
            o.verdict = V_FORWARD
            o.reason = R_OFF_HOURS
            o.target = s.num_fwd[idx]
            o.line = s.num_line[idx]
        else:
            refuse(o, V_REJECT, R_OFF_HOURS)
        return
    o.verdict = V_ROUTE
    o.reason = R_OK
    o.group = s.num_group[idx]


cdef void decide_outbound(const Snap* s, const char* user, Py_ssize_t nu, const char* dest,
                          Py_ssize_t nd, int64_t at, int64_t balance, Out* o) noexcept nogil:
    cdef int32_t u, cid, rate, read
    cdef uint64_t dest_num = 0
    cdef int64_t pm, inc, k, cap
    clear(o)
    if not valid_user(user, nu):
        refuse(o, V_ERROR, R_INVALID_USER)
        return
    if at < MIN_INSTANT or at >= MAX_INSTANT:
        refuse(o, V_ERROR, R_INVALID_TIME)
        return
    if balance > MAX_BALANCE_MICRO or balance < -MAX_BALANCE_MICRO:
        refuse(o, V_ERROR, R_INVALID_BALANCE)
        return
    u = user_index(s, user, nu)
    cid = s.user_callerid[u] if u >= 0 else -1
    if cid < 0:
        cid = s.default_callerid
    if cid < 0:
        refuse(o, V_DENY, R_NO_CALLER_ID)
        return
    read = read_in_country(dest, nd, &s.countries[s.num_country[cid]], &dest_num)
    if read != 1:
        refuse(o, V_ERROR, R_INVALID_DESTINATION)
        return
    if not s.active:
        refuse(o, V_DENY, R_ACCOUNT_UNAVAILABLE)
        return
    if (s.num_flags[cid] & (F_REQUIRES_DOCS | F_APPROVED)) == F_REQUIRES_DOCS:
        refuse(o, V_DENY, R_DOCUMENTS_PENDING)
        return
    rate = match_rate(s, s.num_line[cid], dest_num)
    if rate < 0:
        refuse(o, V_DENY, R_NO_RATE)
        return
    pm = s.rate_pm[rate]
    inc = s.rate_inc[rate]
    cap = MAX_CALL_SECONDS // inc
    if balance < 0 or (balance == 0 and pm > 0):
        k = 0  # even a free call costs more than a debt
    elif pm == 0:
        k = cap
    else:
        # whole increments whose exact cost pm * inc / 60 fits the balance
        k = (balance * 60) // (pm * inc)
        if k > cap:
            k = cap
    if k <= 0:
        refuse(o, V_DENY, R_INSUFFICIENT_FUNDS)
        return
    o.verdict = V_ALLOW
    o.reason = R_OK
    o.callerid = cid
    o.called = dest_num
    o.line = s.num_line[cid]
    o.rate = rate
    o.max_duration = k * inc


cdef void decide_pickup(const Snap* s, const char* user, Py_ssize_t nu, const char* dialed, Py_ssize_t nd,
                        Py_ssize_t n, const int32_t* ring_user, const int64_t* since, const uint8_t* answered,
                        Out* o) noexcept nogil:
    cdef int32_t me, other, w, best = -1, i
    cdef bint shared
    clear(o)
    if not valid_user(user, nu):
        refuse(o, V_ERROR, R_INVALID_USER)
        return
    if not s.active:
        refuse(o, V_NO_PICKUP, R_ACCOUNT_UNAVAILABLE)
        return
    if s.pickup_len == 0 or nd != s.pickup_len:
        refuse(o, V_NO_PICKUP, R_NOT_PICKUP_CODE)
        return
    for i in range(nd):
        if dialed[i] != s.pickup[i]:
            refuse(o, V_NO_PICKUP, R_NOT_PICKUP_CODE)
            return
    me = user_index(s, user, nu)
    if me >= 0:
        for i in range(n):
            other = ring_user[i]
            if answered[i] or other < 0 or other == me:
                continue
            shared = False
            for w in range(s.group_words):
                if s.user_groups[me * s.group_words + w] & s.user_groups[other * s.group_words + w]:
                    shared = True
                    break
            if shared and (best < 0 or since[i] < since[best]):
                best = i
    if best < 0:
        refuse(o, V_NO_PICKUP, R_NO_RINGING_CALL)
        return
    o.verdict = V_INTERCEPT
    o.reason = R_OK
    o.call = best


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------

cdef inline const char* utf8(str text, Py_ssize_t* n) except NULL:
    return PyUnicode_AsUTF8AndSize(text, n)


cdef inline int64_t instant(object at) except? -1:
    # any Python int; values beyond int64 are as invalid as any outside the window
    cdef int overflow = 0
    cdef long long v
    if type(at) is not int:
        if isinstance(at, bool) or not isinstance(at, int):
            raise TypeError(f"an instant is an int of UTC seconds, not {type(at).__name__}")
    v = PyLong_AsLongLongAndOverflow(at, &overflow)
    if overflow:
        return MIN_INSTANT - 1
    return v


cdef str e164(uint64_t v):
    return None if v == 0 else "+%d" % v


cdef class CoreDecision:
    """A decision as the core wrote it; names are looked up on access."""

    cdef Out o
    cdef CoreSnapshot snap
    cdef object _call_id

    @property
    def verdict(self):
        return _VERDICTS[self.o.verdict]

    @property
    def reason(self):
        return _REASONS[self.o.reason]

    @property
    def verdict_code(self):
        return self.o.verdict

    @property
    def reason_code(self):
        return self.o.reason

    @property
    def caller(self):
        """Inbound: the caller as E.164 (None if withheld or not read); of two readings, the listed one."""
        return e164(self.o.caller_alt if self.o.alt_listed else self.o.caller)

    @property
    def caller_readings(self):
        """Inbound: both readings of a caller whose digits read two ways (auto), else ()."""
        return (e164(self.o.caller), e164(self.o.caller_alt)) if self.o.caller_alt else ()

    @property
    def called(self):
        """Inbound: the called number; outbound ALLOW: the destination (E.164)."""
        return e164(self.o.called)

    @property
    def call_id(self):
        return self._call_id

    @property
    def shape(self):
        """(verdict, reason, line, group, target): everything an inbound reply carries but the echoes.

        Replies with the same shape from the same snapshot are the same
        message, so servers can build each one once.
        """
        return (self.o.verdict, self.o.reason, self.o.line, self.o.group, self.o.target)

    @property
    def sip_status(self):
        return self.o.sip

    @property
    def version(self):
        return self.snap.version

    @property
    def target(self):
        return e164(self.o.target)

    @property
    def line(self):
        return self.snap.meta["lines"][self.o.line] if self.o.line >= 0 else None

    @property
    def group(self):
        return self.snap.meta["groups"][self.o.group] if self.o.group >= 0 else None

    @property
    def members(self):
        return self.snap._members[self.o.group] if self.o.group >= 0 else ()

    @property
    def caller_id(self):
        return e164(self.snap.s.num_e164[self.o.callerid]) if self.o.callerid >= 0 else None

    @property
    def rate_per_minute(self):
        return self.snap._decimals[self.o.rate] if self.o.rate >= 0 else None

    @property
    def increment_s(self):
        return self.snap.s.rate_inc[self.o.rate] if self.o.rate >= 0 else None

    @property
    def max_duration_s(self):
        return self.o.max_duration if self.o.verdict == V_ALLOW else None

    def to_decision(self, kind):
        """The shared `Decision` for kind "inbound", "outbound" or "pickup"."""
        cdef bint allow = self.o.verdict == V_ALLOW
        chat = lead = None
        if kind != "pickup":
            chat = self.snap.meta["chat_mode"]
            lead = self.snap.meta["lead_trigger"]
        return Decision(
            verdict=self.verdict, reason=self.reason, sip_status=self.o.sip, version=self.snap.version,
            chat_mode=chat, lead_trigger=lead,
            caller=self.caller if kind == "inbound" else None,
            caller_readings=self.caller_readings if kind == "inbound" else (),
            called=e164(self.o.called) if kind == "inbound" else None,
            target=self.target, line=self.line, group=self.group, members=self.members,
            caller_id=self.caller_id if allow else None,
            destination=e164(self.o.called) if allow else None,
            rate_per_minute=self.rate_per_minute if allow else None,
            increment_s=self.increment_s if allow else None,
            max_duration_s=self.max_duration_s,
            call_id=self._call_id,
        )

    def __repr__(self):
        return f"<CoreDecision {self.verdict} {self.reason} v{self.snap.version}>"


# ---------------------------------------------------------------------------
# Snapshot validation
# ---------------------------------------------------------------------------
#
# A snapshot may come from bytes (engine.snapshot.loads), and the decisions
# above read its arrays without the GIL and without bounds checks.  So every
# index, offset and length that any decision (or a CoreDecision property)
# follows is checked once, here, before the struct is bound: arrays by exact
# dtype and length against each other, index arrays by range, offset arrays
# as monotonic bounds of the arrays they cut, hash tables as power-of-two
# sized with an empty slot (probes stop) and stored indexes in range, and the
# metadata lists Python code indexes with decision fields.  O(size), in tight
# nogil loops; a bad snapshot is a ValueError naming what is wrong.

cdef int64_t MAX_RATE_MICRO = 10000000000000  # 1e7 a minute: far above settings; rate * increment fits int64
cdef int64_t MAX_ZONE_OFFSET = 86400            # |UTC offset|, s: local times in the window stay positive
cdef int64_t MAX_E164 = 1000000000000000        # 15 digits
cdef Py_ssize_t MAX_ENTRIES = 0x7FFFFFFF        # indexes are int32
_TWO63 = int("9223372036854775808")


ctypedef fused _int_t:
    uint8_t
    int32_t
    int64_t


cdef void _minmax(const _int_t* p, Py_ssize_t n, int64_t* lo, int64_t* hi) noexcept nogil:
    cdef _int_t a = p[0], b = p[0], v
    cdef Py_ssize_t i
    for i in range(1, n):
        v = p[i]
        if v < a:
            a = v
        if v > b:
            b = v
    lo[0] = a
    hi[0] = b


cdef Py_ssize_t _first_outside(const _int_t* p, Py_ssize_t n, int64_t lo, int64_t hi) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] < lo or p[i] >= hi:
            return i
    return -1


cdef Py_ssize_t _first_unsorted(const _int_t* p, Py_ssize_t start, Py_ssize_t end, bint strict) noexcept nogil:
    # the first i in start+1 .. end-1 with p[i] below (strict: not above) p[i - 1], or -1
    cdef Py_ssize_t i
    for i in range(start + 1, end):
        if p[i] < p[i - 1] or (strict and p[i] == p[i - 1]):
            return i
    return -1


cdef cnp.ndarray _array(dict a, str name, object dtype, Py_ssize_t n):
    """arrays[name]: a 1-D, C-contiguous, aligned numpy array of exactly `dtype`, with n entries if n >= 0."""
    x = a.get(name)
    if x is None:
        raise ValueError(f"snapshot array {name} is missing")
    if not cnp.PyArray_Check(x):
        raise ValueError(f"snapshot array {name}: {type(x).__name__}, not a numpy array")
    cdef cnp.ndarray arr = <cnp.ndarray>x
    if arr.dtype != dtype:
        raise ValueError(f"snapshot array {name}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if cnp.PyArray_NDIM(arr) != 1:
        raise ValueError(f"snapshot array {name}: {cnp.PyArray_NDIM(arr)} dimensions, expected 1")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)):
        raise ValueError(f"snapshot array {name} is not contiguous and aligned")
    if cnp.PyArray_DIM(arr, 0) > MAX_ENTRIES:
        raise ValueError(f"snapshot array {name}: {cnp.PyArray_DIM(arr, 0)} entries, more than an int32 indexes")
    if n >= 0 and cnp.PyArray_DIM(arr, 0) != n:
        raise ValueError(f"snapshot array {name}: {cnp.PyArray_DIM(arr, 0)} entries, expected {n}")
    return arr


cdef inline Py_ssize_t _len(cnp.ndarray arr) noexcept nogil:
    return cnp.PyArray_DIM(arr, 0)


cdef _check_range(cnp.ndarray arr, str name, int64_t lo, int64_t hi, str what="index"):
    """Every entry of a checked uint8, int32 or int64 array lies in [lo, hi)."""
    cdef Py_ssize_t n = _len(arr), i = -1
    cdef int64_t mn = 0, mx = 0
    cdef const void* p = cnp.PyArray_DATA(arr)
    cdef int size = cnp.PyArray_ITEMSIZE(arr)
    if n == 0:
        return
    with nogil:
        if size == 1:
            _minmax(<const uint8_t*>p, n, &mn, &mx)
        elif size == 4:
            _minmax(<const int32_t*>p, n, &mn, &mx)
        else:
            _minmax(<const int64_t*>p, n, &mn, &mx)
        if mn < lo or mx >= hi:
            if size == 1:
                i = _first_outside(<const uint8_t*>p, n, lo, hi)
            elif size == 4:
                i = _first_outside(<const int32_t*>p, n, lo, hi)
            else:
                i = _first_outside(<const int64_t*>p, n, lo, hi)
    if i >= 0:
        raise ValueError(f"snapshot array {name}: {what} {arr[i]} out of range [{lo}, {hi}) (entry {i})")


cdef _check_bounds(cnp.ndarray arr, str name, Py_ssize_t end, bint strict):
    """A checked int32 array of n + 1 segment bounds over an `end`-long array: 0 first, `end` last, in order
    (strict: every segment non-empty)."""
    cdef const int32_t* p = <const int32_t*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t n = _len(arr), i
    if n < 1:
        raise ValueError(f"snapshot array {name}: no entries, expected at least 1")
    if p[0] != 0 or p[n - 1] != end:
        raise ValueError(f"snapshot array {name}: bounds run from {p[0]} to {p[n - 1]}, expected 0 to {end}")
    with nogil:
        i = _first_unsorted(p, 0, n, strict)
    if i >= 0:
        raise ValueError(f"snapshot array {name}: offset {p[i]} (entry {i}) out of order after {p[i - 1]}")


cdef _check_sorted_segments(cnp.ndarray values, str name, cnp.ndarray bounds, bint strict):
    """Each segment of a checked int32/int64 array cut by checked `bounds` is in order (strict: increases)."""
    cdef const int32_t* b = <const int32_t*>cnp.PyArray_DATA(bounds)
    cdef const void* p = cnp.PyArray_DATA(values)
    cdef Py_ssize_t k = 0, i = -1, segments = _len(bounds) - 1
    cdef bint wide = cnp.PyArray_ITEMSIZE(values) == 8
    with nogil:
        while k < segments:
            if wide:
                i = _first_unsorted(<const int64_t*>p, b[k], b[k + 1], strict)
            else:
                i = _first_unsorted(<const int32_t*>p, b[k], b[k + 1], strict)
            if i >= 0:
                break
            k += 1
    if i >= 0:
        raise ValueError(f"snapshot array {name}: entry {i} ({values[i]}) out of order after {values[i - 1]} "
                         f"(segment {k})")


cdef Py_ssize_t _number_table_error(const Slot* t, Py_ssize_t size, const uint64_t* e164, Py_ssize_t n,
                                    Py_ssize_t* used) noexcept nogil:
    # the first slot whose index is out of range or names a number with another key, or -1; used: full slots
    cdef Py_ssize_t i, count = 0
    cdef int32_t k
    for i in range(size):
        if t[i].key == 0:
            continue
        count += 1
        k = t[i].index
        if k < 0 or k >= n or e164[k] != t[i].key:
            used[0] = count
            return i
    used[0] = count
    return -1


cdef Py_ssize_t _user_table_error(const uint64_t* keys, const int32_t* vals, Py_ssize_t size,
                                  const int32_t* off, const uint8_t* blob, Py_ssize_t n,
                                  Py_ssize_t* used) noexcept nogil:
    # the first slot whose user index is out of range or whose key is not the hash of that user's id, or -1
    cdef Py_ssize_t i, count = 0
    cdef int32_t u
    for i in range(size):
        if keys[i] == 0:
            continue
        count += 1
        u = vals[i]
        if u < 0 or u >= n or fnv1a(<const char*>blob + off[u], off[u + 1] - off[u]) != keys[i]:
            used[0] = count
            return i
    used[0] = count
    return -1


cdef Py_ssize_t _country_error(const Country* c, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if (c[i].cc < 1 or c[i].cc > 999 or c[i].cc_len < 1 or c[i].cc_len > 3 or c[i].ip_len < 0
                or c[i].ip_len > 8 or c[i].np_len < 0 or c[i].np_len > 8):
            return i
    return -1


cdef Py_ssize_t _zone_bucket_error(const int32_t* base, Py_ssize_t zones, const int32_t* bucket) noexcept nogil:
    # the first bucket whose segment is not one of its zone's, or -1
    cdef Py_ssize_t z, k
    cdef int32_t v
    for z in range(zones):
        for k in range(ZONE_BUCKETS):
            v = bucket[z * ZONE_BUCKETS + k]
            if v < base[z] or v >= base[z + 1]:
                return z * ZONE_BUCKETS + k
    return -1


cdef Py_ssize_t _container_error(const Container* t, Py_ssize_t size, Py_ssize_t buflen,
                                 Py_ssize_t* used) noexcept nogil:
    # the first slot of a container table whose kind is unknown or whose data passes the buffer's end, or -1
    cdef Py_ssize_t i, count = 0
    cdef uint32_t kind, n
    cdef uint64_t need
    for i in range(size):
        if t[i].key == EMPTY_KEY:
            continue
        count += 1
        kind = t[i].meta >> 28
        n = t[i].meta & 0x0FFFFFFF
        if kind == KIND_ARRAY:
            need = 2 * <uint64_t>n
        elif kind == KIND_BITSET:
            need = 8192
        elif kind == KIND_RUN:
            need = 4 * <uint64_t>n
        else:
            used[0] = count
            return i
        if <uint64_t>t[i].off + need > <uint64_t>buflen or t[i].key >> 48:
            used[0] = count
            return i
    used[0] = count
    return -1


cdef object _meta(dict m, str key, object kind):
    if key not in m:
        raise ValueError(f"snapshot meta {key} is missing")
    v = m[key]
    if kind is int:
        if type(v) is not int and type(v) is not bool:
            raise ValueError(f"snapshot meta {key}: {type(v).__name__}, expected int")
    elif not isinstance(v, kind):
        raise ValueError(f"snapshot meta {key}: {type(v).__name__}, expected {kind.__name__}")
    return v


cdef object _meta_int(dict m, str key, object lo, object hi):
    v = _meta(m, key, int)
    if not lo <= v < hi:
        raise ValueError(f"snapshot meta {key}: {v} out of range [{lo}, {hi})")
    return v


cdef list _strs(object v, str key, Py_ssize_t n):
    if type(v) is not list:
        raise ValueError(f"snapshot meta {key}: {type(v).__name__}, expected list")
    cdef list items = <list>v
    if n >= 0 and len(items) != n:
        raise ValueError(f"snapshot meta {key}: {len(items)} entries, expected {n}")
    for i in range(len(items)):
        if type(items[i]) is not str:
            raise ValueError(f"snapshot meta {key}[{i}]: {type(items[i]).__name__}, expected str")
    return items


cdef list _meta_strs(dict m, str key, Py_ssize_t n):
    return _strs(_meta(m, key, list), key, n)


cdef _check_meta_extras(dict m):
    """What billing and the server read beside the decisions (present in every snapshot compiled since)."""
    for key in ("blacklist_size", "offhours_blacklist_size"):
        _meta_int(m, key, 0, _TWO63)
    _meta(m, "currency", str)
    if m["currency"] not in codes.CURRENCIES:
        raise ValueError(f"snapshot meta currency: {m['currency']!r} is not one of {codes.CURRENCIES}")
    for key in ("approved", "documents_required"):
        if key in m:
            _meta_strs(m, key, -1)
    if "rentals" in m:
        for i, rental in enumerate(_meta(m, "rentals", list)):
            _, fee, day = _strs(rental, f"rentals[{i}]", 3)
            if not (_amount(fee) and _iso_day(day)):
                raise ValueError(f"snapshot meta rentals[{i}]: {rental!r:.80} is not [number, fee, ISO date]")
    if "auto_topup" in m:
        auto = _meta(m, "auto_topup", dict)
        amount = auto.get("amount")
        if type(auto.get("enabled", False)) is not bool or not (amount is None or _amount(amount)):
            raise ValueError("snapshot meta auto_topup: expected {'enabled': bool, 'amount': a decimal or None}")


cdef bint _amount(object text):
    try:
        return type(text) is str and Decimal(text).is_finite() and Decimal(text) >= 0
    except ArithmeticError:
        return False


cdef bint _iso_day(str text):
    try:
        _date.fromisoformat(text)
    except ValueError:
        return False
    return True


cdef _validate(dict a, dict m):
    """Checks a snapshot's arrays and metadata against each other (see the comment above)."""
    cdef Py_ssize_t n, n_lines, n_countries, n_sched, n_zones, n_nodes, n_rates, n_users, n_groups, words
    cdef Py_ssize_t i, used = 0, size
    cdef cnp.ndarray nt, zone_base, user_off, ut_keys

    # -- tenant-wide metadata
    _meta(m, "tenant", str)
    _meta_int(m, "version", -_TWO63, _TWO63)
    _meta_int(m, "active", 0, 2)
    _meta_int(m, "block_anonymous", 0, 2)
    if _meta(m, "chat_mode", str) not in codes.CHAT_MODES:
        raise ValueError(f"snapshot meta chat_mode: {m['chat_mode']!r} is not one of {codes.CHAT_MODES}")
    if _meta(m, "lead_trigger", str) not in codes.LEAD_TRIGGERS:
        raise ValueError(f"snapshot meta lead_trigger: {m['lead_trigger']!r} is not one of {codes.LEAD_TRIGGERS}")
    if len(_meta(m, "pickup_code", str).encode()) > 15:
        raise ValueError("snapshot meta pickup_code: longer than 15 bytes")
    _check_meta_extras(m)

    # -- numbers
    num_e164 = _array(a, "num_e164", np.uint64, -1)
    n = _len(num_e164)
    if e164_array(_meta_strs(m, "numbers", n)).tobytes() != num_e164.tobytes():
        raise ValueError("snapshot array num_e164 does not hold the numbers of meta numbers")
    lines = _meta_strs(m, "lines", -1)
    n_lines = len(lines)
    groups = _meta_strs(m, "groups", -1)
    n_groups = len(groups)
    members = _meta(m, "members", list)
    if len(members) != n_groups:
        raise ValueError(f"snapshot meta members: {len(members)} entries, expected {n_groups} (one per group)")
    for i in range(n_groups):
        _strs(members[i], f"members[{i}]", -1)
    countries = _array(a, "countries", COUNTRY_DTYPE, -1)
    n_countries = _len(countries)
    sched_zone = _array(a, "sched_zone", np.int32, -1)
    n_sched = _len(sched_zone)
    _check_range(_array(a, "num_line", np.int32, n), "num_line", 0, n_lines)
    _check_range(_array(a, "num_country", np.int32, n), "num_country", 0, n_countries)
    _array(a, "num_flags", np.uint8, n)
    _check_range(_array(a, "num_sched", np.int32, n), "num_sched", -1, n_sched)
    _check_range(_array(a, "num_action", np.uint8, n), "num_action", 0, 3, "action")
    num_fwd = _array(a, "num_fwd", np.uint64, n)
    if n and num_fwd.max() >= MAX_E164:
        raise ValueError(f"snapshot array num_fwd: {num_fwd.max()} is not an E.164 number")
    _check_range(_array(a, "num_group", np.int32, n), "num_group", -1, n_groups)
    nt = _array(a, "nt", SLOT_DTYPE, -1)
    size = _len(nt)
    if size & (size - 1) or size <= n:
        raise ValueError(f"snapshot array nt: {size} slots for {n} numbers, expected a power of two above it")
    with nogil:
        i = _number_table_error(<const Slot*>cnp.PyArray_DATA(nt), size,
                                <const uint64_t*>cnp.PyArray_DATA(num_e164), n, &used)
    if i >= 0:
        raise ValueError(f"snapshot array nt: index {nt[i]['index']} in slot {i} is not the number "
                         f"{nt[i]['key']} (range [0, {n}))")
    if used != n:
        raise ValueError(f"snapshot array nt: {used} numbers in the table, expected {n}")
    with nogil:
        i = _country_error(<const Country*>cnp.PyArray_DATA(countries), n_countries)
    if i >= 0:
        raise ValueError(f"snapshot array countries: entry {i} has lengths out of range ({countries[i]})")

    # -- schedules and zones
    zone_base = _array(a, "zone_base", np.int32, -1)
    n_zones = _len(zone_base) - 1
    zone_starts = _array(a, "zone_starts", np.int64, -1)
    zone_offsets = _array(a, "zone_offsets", np.int32, _len(zone_starts))
    _check_bounds(zone_base, "zone_base", _len(zone_starts), True)
    zone_bucket = _array(a, "zone_bucket", np.int32, n_zones * ZONE_BUCKETS)
    with nogil:
        i = _zone_bucket_error(<const int32_t*>cnp.PyArray_DATA(zone_base), n_zones,
                               <const int32_t*>cnp.PyArray_DATA(zone_bucket))
    if i >= 0:
        raise ValueError(f"snapshot array zone_bucket: index {zone_bucket[i]} (entry {i}) out of range "
                         f"[{zone_base[i // ZONE_BUCKETS]}, {zone_base[i // ZONE_BUCKETS + 1]}) of its zone")
    _check_sorted_segments(zone_starts, "zone_starts", zone_base, True)
    _check_range(zone_offsets, "zone_offsets", -MAX_ZONE_OFFSET, MAX_ZONE_OFFSET + 1, "offset")
    _check_range(sched_zone, "sched_zone", 0, n_zones)
    _array(a, "sched_week", np.uint64, n_sched * WEEK_WORDS)
    sched_hol_base = _array(a, "sched_hol_base", np.int32, n_sched + 1)
    hol_days = _array(a, "hol_days", np.int32, -1)
    _check_bounds(sched_hol_base, "sched_hol_base", _len(hol_days), False)
    _check_sorted_segments(hol_days, "hol_days", sched_hol_base, False)

    # -- lines and rates
    trie_rate = _array(a, "trie_rate", np.int32, -1)
    n_nodes = _len(trie_rate)
    rate_pm = _array(a, "rate_pm", np.int64, -1)
    n_rates = _len(rate_pm)
    _check_range(_array(a, "line_root", np.int32, n_lines), "line_root", 0, n_nodes)
    _check_range(_array(a, "line_format", np.uint8, n_lines), "line_format", 0, 4, "format")
    _check_range(_array(a, "trie_child", np.int32, 10 * n_nodes), "trie_child", -1, n_nodes)
    _check_range(trie_rate, "trie_rate", -1, n_rates)
    _check_range(rate_pm, "rate_pm", 0, MAX_RATE_MICRO + 1, "rate")
    _check_range(_array(a, "rate_inc", np.int32, n_rates), "rate_inc", 1, MAX_CALL_SECONDS + 1, "increment")
    rates = _meta_strs(m, "rates", n_rates)
    micro = rate_pm.tolist()
    for i in range(n_rates):
        try:
            exact = Decimal(rates[i]) * 1000000 == micro[i]
        except ArithmeticError:
            exact = False
        if not exact:
            raise ValueError(f"snapshot meta rates[{i}]: {rates[i][:40]!r} is not rate_pm {micro[i]} micro-units")

    # -- users and queue groups
    user_off = _array(a, "user_off", np.int32, -1)
    n_users = _len(user_off) - 1
    user_blob = _array(a, "user_blob", np.uint8, -1)
    _check_bounds(user_off, "user_off", _len(user_blob), False)
    _meta_strs(m, "users", n_users)
    ut_keys = _array(a, "ut_keys", np.uint64, -1)
    size = _len(ut_keys)
    ut_vals = _array(a, "ut_vals", np.int32, size)
    if size & (size - 1) or size <= n_users:
        raise ValueError(f"snapshot array ut_keys: {size} slots for {n_users} users, expected a power of two above it")
    with nogil:
        i = _user_table_error(<const uint64_t*>cnp.PyArray_DATA(ut_keys), <const int32_t*>cnp.PyArray_DATA(ut_vals),
                              size, <const int32_t*>cnp.PyArray_DATA(user_off),
                              <const uint8_t*>cnp.PyArray_DATA(user_blob), n_users, &used)
    if i >= 0:
        raise ValueError(f"snapshot array ut_vals: index {ut_vals[i]} in slot {i} out of range [0, {n_users}) "
                         f"or not the user whose id hashes to its key")
    if used != n_users:
        raise ValueError(f"snapshot array ut_keys: {used} users in the table, expected {n_users}")
    _check_range(_array(a, "user_callerid", np.int32, n_users), "user_callerid", -1, n)
    words = _meta_int(m, "group_words", 1, 1 << 20)
    if words != max(1, (n_groups + 63) // 64):
        raise ValueError(f"snapshot meta group_words: {words} words for {n_groups} groups")
    _array(a, "user_groups", np.uint64, n_users * words)

    # -- tenant-wide indexes
    _meta_int(m, "backup_line", -1, n_lines)
    _meta_int(m, "backup_number", 0, MAX_E164)
    _meta_int(m, "default_callerid", -1, n)


cdef inline const void* ptr(dict arrays, str name) except NULL:
    # arrays checked by _validate
    a = arrays[name]
    if cnp.PyArray_SIZE(a) == 0:
        # a valid, never-dereferenced pointer for empty tables
        return <const void*>&_EMPTY[0]
    return cnp.PyArray_DATA(a)


cdef uint64_t _EMPTY[1]


cdef class CoreSnapshot:
    """One tenant's compiled settings.  Immutable: a new version is a new object.

    Built by `engine.snapshot` from arrays and metadata; see there for how.
    """

    def __init__(self, dict arrays not None, dict meta not None, CoreSnapshot derived_from=None):
        """Checks the arrays and metadata (ValueError naming what is wrong), then binds them.

        `derived_from`: the snapshot this one is made from (engine.snapshot.with_documents); a list's
        bitmap and indexes passed on from it, the very same arrays, are not checked again.
        """
        if self.s.nt != NULL:
            raise TypeError("a CoreSnapshot is immutable: make a new one")
        self.arrays = arrays
        self.meta = meta
        self._bind(derived_from)
        self.version = meta["version"]
        self.tenant = meta["tenant"]
        self._decimals = tuple(Decimal(x) for x in meta["rates"])
        self._members = tuple(tuple(m) for m in meta["members"])

    cdef void _bind(self, CoreSnapshot source) except *:
        cdef dict a = self.arrays
        cdef dict m = self.meta
        cdef Snap bound
        cdef Snap* s = &bound  # copied in whole once every check has passed
        memset(s, 0, sizeof(Snap))
        _validate(a, m)  # every index, offset and length the decisions follow; the roaring lists below
        s.active = m["active"]
        s.block_anonymous = m["block_anonymous"]
        s.backup_line = m["backup_line"]
        s.backup_number = m["backup_number"]
        s.default_callerid = m["default_callerid"]
        code = m["pickup_code"].encode()
        s.pickup_len = len(code)
        memcpy(s.pickup, <const char*>code, len(code))
        s.n_numbers = len(a["num_e164"])
        s.num_e164 = <const uint64_t*>ptr(a, "num_e164")
        s.num_line = <const int32_t*>ptr(a, "num_line")
        s.num_country = <const int32_t*>ptr(a, "num_country")
        s.num_flags = <const uint8_t*>ptr(a, "num_flags")
        s.num_sched = <const int32_t*>ptr(a, "num_sched")
        s.num_action = <const uint8_t*>ptr(a, "num_action")
        s.num_fwd = <const uint64_t*>ptr(a, "num_fwd")
        s.num_group = <const int32_t*>ptr(a, "num_group")
        s.nt = <const Slot*>ptr(a, "nt")
        s.nt_mask = len(a["nt"]) - 1
        s.countries = <const Country*>ptr(a, "countries")
        s.sched_zone = <const int32_t*>ptr(a, "sched_zone")
        s.sched_week = <const uint64_t*>ptr(a, "sched_week")
        s.sched_hol_base = <const int32_t*>ptr(a, "sched_hol_base")
        s.hol_days = <const int32_t*>ptr(a, "hol_days")
        s.zone_base = <const int32_t*>ptr(a, "zone_base")
        s.zone_bucket = <const int32_t*>ptr(a, "zone_bucket")
        s.zone_starts = <const int64_t*>ptr(a, "zone_starts")
        s.zone_offsets = <const int32_t*>ptr(a, "zone_offsets")
        s.line_root = <const int32_t*>ptr(a, "line_root")
        s.line_format = <const uint8_t*>ptr(a, "line_format")
        s.trie_child = <const int32_t*>ptr(a, "trie_child")
        s.trie_rate = <const int32_t*>ptr(a, "trie_rate")
        s.rate_pm = <const int64_t*>ptr(a, "rate_pm")
        s.rate_inc = <const int32_t*>ptr(a, "rate_inc")
        s.n_users = len(a["user_off"]) - 1
        s.ut_keys = <const uint64_t*>ptr(a, "ut_keys")
        s.ut_vals = <const int32_t*>ptr(a, "ut_vals")
        s.ut_mask = len(a["ut_keys"]) - 1
        s.user_blob = <const uint8_t*>ptr(a, "user_blob")
        s.user_off = <const int32_t*>ptr(a, "user_off")
        s.user_callerid = <const int32_t*>ptr(a, "user_callerid")
        s.user_groups = <const uint64_t*>ptr(a, "user_groups")
        s.group_words = m["group_words"]
        self._bind_roaring(&s.blacklist, &source.s.blacklist if source is not None else NULL, "blacklist", source)
        self._bind_roaring(&s.offhours_blacklist, &source.s.offhours_blacklist if source is not None else NULL,
                           "offhours_blacklist", source)
        self._pinned = dict(a)
        self.s = bound

    cdef void _bind_roaring(self, Roaring* r, const Roaring* was, str name, CoreSnapshot source) except *:
        # The container table and filter are derived from the bitmap on load (roaring_index checks the
        # bitmap whole); given, they are checked against the bitmap, unless they are the very arrays
        # `source` (a checked snapshot, `was` its list) bound.
        cdef dict a = self.arrays
        cdef str tname = f"{name}_table", fname = f"{name}_filter"
        cdef Py_ssize_t size, words, nbuf, i = -1, used = -1
        buf = _array(a, name, np.uint8, -1)
        if tname not in a:
            try:
                a[tname], a[fname], used = _roaring_index(buf)
            except ValueError as exc:
                raise ValueError(f"snapshot array {name}: {exc}") from None
        table = _array(a, tname, CONTAINER_DTYPE, -1)
        filt = _array(a, fname, np.uint64, -1)
        size, words, nbuf = _len(table), _len(filt), _len(buf)
        if size & (size - 1) or size == 0 or words & (words - 1) or words == 0:
            raise ValueError(f"snapshot array {tname} or {fname}: sizes {size} and {words} are not powers of two")
        if (used < 0 and source is not None and source.s.nt != NULL and a[name] is source._pinned.get(name)
                and table is source._pinned.get(tname) and filt is source._pinned.get(fname)):
            used = was.n
        if used < 0:  # a table not derived here: every container within the bitmap's bytes
            with nogil:
                i = _container_error(<const Container*>cnp.PyArray_DATA(table), size, nbuf, &used)
        if i >= 0:
            raise ValueError(f"snapshot array {tname}: container {table[i]} in slot {i} is not within {name} "
                             f"({_len(buf)} bytes)")
        if used >= size:
            raise ValueError(f"snapshot array {tname}: no empty slot")
        r.buf = <const uint8_t*>ptr(a, name)
        r.table = <const Container*>ptr(a, tname)
        r.table_mask = size - 1
        r.filter = <const uint64_t*>ptr(a, fname)
        r.filter_mask = <uint64_t>words * 64 - 1
        r.n = used

    # -- single decisions -------------------------------------------------

    def inbound(self, str caller not None, str called not None, at):
        """Inbound decision for one call; see docs/decisions.md."""
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef Py_ssize_t nc, nd
        cdef const char* pc = utf8(caller, &nc)
        cdef const char* pd = utf8(called, &nd)
        cdef CoreDecision d = CoreDecision.__new__(CoreDecision)
        d.snap = self
        decide_inbound(&self.s, pc, nc, pd, nd, instant(at), &d.o)
        return d

    def outbound(self, str user not None, str destination not None, at, long long balance_micro):
        """Outbound decision; the balance is in micro-units of the currency (1e-6)."""
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef Py_ssize_t nu, nd
        cdef const char* pu = utf8(user, &nu)
        cdef const char* pd = utf8(destination, &nd)
        cdef CoreDecision d = CoreDecision.__new__(CoreDecision)
        d.snap = self
        decide_outbound(&self.s, pu, nu, pd, nd, instant(at), balance_micro, &d.o)
        return d

    def pickup(self, str user not None, str dialed not None, ringing):
        """Pickup decision: which of `ringing` (RingingCall-like objects) the user may intercept."""
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef Py_ssize_t nu, nd, n = len(ringing), i
        cdef const char* pu = utf8(user, &nu)
        cdef const char* pd = utf8(dialed, &nd)
        cdef const char* pr
        cdef Py_ssize_t nr
        cdef cnp.ndarray[int32_t, ndim=1] users = np.empty(n, dtype=np.int32)
        cdef cnp.ndarray[int64_t, ndim=1] since = np.empty(n, dtype=np.int64)
        cdef cnp.ndarray[uint8_t, ndim=1] answered = np.empty(n, dtype=np.uint8)
        cdef CoreDecision d = CoreDecision.__new__(CoreDecision)
        for i in range(n):
            call = ringing[i]
            pr = utf8(call.user, &nr)
            users[i] = user_index(&self.s, pr, nr) if valid_user(pr, nr) else -1
            since[i] = call.since
            answered[i] = bool(call.answered)
        d.snap = self
        decide_pickup(&self.s, pu, nu, pd, nd, n, <const int32_t*>cnp.PyArray_DATA(users),
                      <const int64_t*>cnp.PyArray_DATA(since), <const uint8_t*>cnp.PyArray_DATA(answered), &d.o)
        if d.o.call >= 0:
            d._call_id = ringing[d.o.call].call_id
        return d

    # -- batches ----------------------------------------------------------

    def inbound_batch(self, cnp.ndarray callers not None, cnp.ndarray called not None, cnp.ndarray at not None):
        """Inbound decisions for columns of calls, without the GIL.

        `callers` and `called` are fixed-width bytes arrays (dtype "S<n>",
        NUL-padded UTF-8), `at` int64 UTC seconds.  Returns one structured
        array (INBOUND_DTYPE) with the fields verdict, reason, sip (codes of
        engine.codes), target (E.164 as uint64, 0: none), line and group
        (indexes into meta lines/groups, -1: none).
        """
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef Py_ssize_t n = _check_columns(callers, called, at)
        cdef Py_ssize_t wc = callers.dtype.itemsize, wd = called.dtype.itemsize, i
        cdef const char* pc = <const char*>cnp.PyArray_DATA(callers)
        cdef const char* pd = <const char*>cnp.PyArray_DATA(called)
        cdef const int64_t* pt = <const int64_t*>cnp.PyArray_DATA(at)
        rows = np.empty(n, dtype=INBOUND_DTYPE)
        cdef InRow* r = <InRow*>cnp.PyArray_DATA(rows)
        cdef Out o
        with nogil:
            for i in range(n):
                decide_inbound(&self.s, pc + i * wc, _strnlen(pc + i * wc, wc),
                               pd + i * wd, _strnlen(pd + i * wd, wd), pt[i], &o)
                r[i].target = o.target
                r[i].line = o.line
                r[i].group = o.group
                r[i].sip = o.sip
                r[i].verdict = o.verdict
                r[i].reason = o.reason
        return rows

    def outbound_batch(self, cnp.ndarray users not None, cnp.ndarray destinations not None,
                       cnp.ndarray at not None, cnp.ndarray balance_micro not None):
        """Outbound decisions for columns; balances int64 micro-units.

        Returns one structured array (OUTBOUND_DTYPE): verdict, reason, sip,
        line, callerid (number index, -1: none), rate (index, -1: none),
        max_duration (seconds).
        """
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef Py_ssize_t n = _check_columns(users, destinations, at)
        if balance_micro.dtype != np.int64 or not balance_micro.flags.c_contiguous or len(balance_micro) != n:
            raise ValueError("balance_micro must be a contiguous int64 column as long as the others")
        cdef Py_ssize_t wu = users.dtype.itemsize, wd = destinations.dtype.itemsize, i
        cdef const char* pu = <const char*>cnp.PyArray_DATA(users)
        cdef const char* pd = <const char*>cnp.PyArray_DATA(destinations)
        cdef const int64_t* pt = <const int64_t*>cnp.PyArray_DATA(at)
        cdef const int64_t* pb = <const int64_t*>cnp.PyArray_DATA(balance_micro)
        rows = np.empty(n, dtype=OUTBOUND_DTYPE)
        cdef OutRow* r = <OutRow*>cnp.PyArray_DATA(rows)
        cdef Out o
        with nogil:
            for i in range(n):
                decide_outbound(&self.s, pu + i * wu, _strnlen(pu + i * wu, wu),
                                pd + i * wd, _strnlen(pd + i * wd, wd), pt[i], pb[i], &o)
                r[i].max_duration = o.max_duration
                r[i].line = o.line
                r[i].callerid = o.callerid
                r[i].rate = o.rate
                r[i].sip = o.sip
                r[i].verdict = o.verdict
                r[i].reason = o.reason
        return rows

    # -- lists ------------------------------------------------------------

    def contains_batch(self, str which, cnp.ndarray values not None):
        """Membership of uint64 E.164 values in "blacklist" or "offhours_blacklist" (for tests and benchmarks)."""
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        if values.dtype != np.uint64 or not values.flags.c_contiguous:
            raise ValueError("values must be a contiguous uint64 array")
        cdef const Roaring* r = &self.s.blacklist if which == "blacklist" else &self.s.offhours_blacklist
        cdef Py_ssize_t n = len(values), i
        cdef const uint64_t* pv = <const uint64_t*>cnp.PyArray_DATA(values)
        res = np.empty(n, dtype=np.uint8)
        cdef uint8_t[::1] pr = res
        with nogil:
            for i in range(n):
                pr[i] = roaring_contains(r, pv[i])
        return res.view(np.bool_)


cdef inline Py_ssize_t _strnlen(const char* p, Py_ssize_t w) noexcept nogil:
    # length of a NUL-padded fixed-width cell
    cdef const void* end = memchr(p, 0, w)
    return w if end == NULL else <const char*>end - p


cdef Py_ssize_t _check_columns(cnp.ndarray a, cnp.ndarray b, cnp.ndarray at) except -1:
    if a.dtype.kind != "S" or b.dtype.kind != "S":
        raise ValueError("number and user columns must be fixed-width bytes arrays (dtype 'S<n>')")
    if at.dtype != np.int64:
        raise ValueError("the time column must be int64 UTC seconds")
    if a.ndim != 1 or b.ndim != 1 or at.ndim != 1:
        raise ValueError("columns must be one-dimensional")
    if not (a.flags.c_contiguous and b.flags.c_contiguous and at.flags.c_contiguous):
        raise ValueError("columns must be contiguous")
    if not (len(a) == len(b) == len(at)):
        raise ValueError(f"columns differ in length: {len(a)}, {len(b)}, {len(at)}")
    return len(a)


# numpy dtype with the layout of struct Country, for engine.snapshot
COUNTRY_DTYPE = np.dtype([
    ("cc", np.uint64), ("cc_len", np.int32), ("ip_len", np.int32), ("np_len", np.int32),
    ("lengths", np.uint32), ("ip", "S8"), ("np", "S8"),
], align=True)
assert COUNTRY_DTYPE.itemsize == sizeof(Country)
WEEK_WORDS_ = WEEK_WORDS
DEBUG_BUILD = bool(CALLGATE_DEBUG)  # the debug variant (setup.py, CALLGATE_DEBUG=1: checks on, -O0)
ZONE_BUCKETS_ = ZONE_BUCKETS
MIN_INSTANT_ = MIN_INSTANT
ZONE_BUCKET_BITS_ = ZONE_BUCKET_BITS
INBOUND_DTYPE = np.dtype([("target", np.uint64), ("line", np.int32), ("group", np.int32), ("sip", np.uint16),
                          ("verdict", np.uint8), ("reason", np.uint8)], align=True)
assert INBOUND_DTYPE.itemsize == sizeof(InRow)
OUTBOUND_DTYPE = np.dtype([("max_duration", np.int64), ("line", np.int32), ("callerid", np.int32),
                           ("rate", np.int32), ("sip", np.uint16), ("verdict", np.uint8), ("reason", np.uint8)],
                          align=True)
assert OUTBOUND_DTYPE.itemsize == sizeof(OutRow)
SLOT_DTYPE = np.dtype([("key", np.uint64), ("index", np.int32), ("pad", np.int32)])
assert SLOT_DTYPE.itemsize == sizeof(Slot)
CONTAINER_DTYPE = np.dtype([("key", np.uint64), ("off", np.uint32), ("meta", np.uint32)])
assert CONTAINER_DTYPE.itemsize == sizeof(Container)
