# Section of engine/_core.pyx (compiled into it by `include`): small byte loads, the two hashes the
# compiler mirrors in Python (mix64 for E.164 values, FNV-1a for user ids: engine/snapshot.py), and the
# lookups in the open-addressing tables of numbers and users.

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
