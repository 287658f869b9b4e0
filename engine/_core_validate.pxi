# Section of engine/_core.pyx (compiled into it by `include`): the checks a snapshot's arrays and metadata
# pass before a CoreSnapshot binds them (`_validate`, and `validate_snapshot` for the compiler), so that the
# decisions may follow every index without bounds checks.

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


def validate_snapshot(dict arrays not None, dict meta not None):
    """Checks arrays and metadata as a CoreSnapshot does (ValueError naming what is wrong), without binding
    them or building the lists' derived indexes.

    For a compile process that serializes a snapshot it does not decide on
    (engine.snapshot.build): what passes here, a CoreSnapshot accepts, and
    every worker's `loads` checks it again.  Derived indexes are refused, as
    `loads` refuses them: they are made on load.
    """
    _validate(arrays, meta)
    for name in ("blacklist", "offhours_blacklist"):
        for derived in (f"{name}_table", f"{name}_filter"):
            if derived in arrays:
                raise ValueError(f"snapshot array {derived} is derived on load, not given")
        buf = _array(arrays, name, np.uint8, -1)
        try:
            _roaring_containers(buf)
        except ValueError as exc:
            raise ValueError(f"snapshot array {name}: {exc}") from None
