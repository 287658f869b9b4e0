# Section of engine/_core.pyx (compiled into it by `include`): reading phone numbers as the decisions do
# (docs/decisions.md 'Reading phone numbers'): withheld callers, E.164, numbers written in a country, a
# caller by its line's format with its second reading, and e164_array for the compiler.

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
