# Section of engine/_core.pyx (compiled into it by `include`): CoreSnapshot, one tenant's compiled settings:
# its own copy of the arrays and metadata, the Snap struct bound to them once checked, the roaring indexes
# derived (or checked) on load, and the Python API: single decisions, batches over columns, list lookups.

cdef inline const void* ptr(dict arrays, str name) except NULL:
    # arrays checked by _validate
    a = arrays[name]
    if cnp.PyArray_SIZE(a) == 0:
        # a valid, never-dereferenced pointer for empty tables
        return <const void*>&_EMPTY[0]
    return cnp.PyArray_DATA(a)


cdef uint64_t _EMPTY[1]


cdef inline object _read_only(object x):
    # a writable array as a read-only view (what the core reads is never written through the snapshot)
    cdef cnp.ndarray arr
    if cnp.PyArray_Check(x) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>x):
        arr = (<cnp.ndarray>x).view()
        arr.flags.writeable = False
        return arr
    return x


cdef class CoreSnapshot:
    """One tenant's compiled settings.  Immutable: a new version is a new object.

    Built by `engine.snapshot` from arrays and metadata; see there for how.
    It keeps its own dicts of both (never writing into those it was given),
    the arrays as read-only views, and binds them once they pass every check.
    """

    cdef Snap s
    cdef readonly dict arrays   # its own: the arrays given (read-only) and the roaring indexes derived on load
    cdef readonly dict meta     # its own copy of the metadata
    cdef readonly long long version
    cdef readonly str tenant
    cdef tuple _lines           # meta lines, groups and members as the decisions name them
    cdef tuple _groups
    cdef tuple _members
    cdef tuple _decimals        # meta rates as Decimal
    cdef dict _pinned           # the arrays bound, kept alive whatever is later done to `arrays`
    cdef readonly bint faulted  # its file was truncated or rewritten in place under it (_core_guard.pxi)
    cdef Py_buffer _file        # the file its arrays are mapped from (`_seal`), held; buf NULL: none
    cdef unsigned char _prefix[FILE_PREFIX]   # the file's first bytes as checked when it was mapped

    def __init__(self, dict arrays not None, dict meta not None, CoreSnapshot derived_from=None):
        """Checks the arrays and metadata (ValueError naming what is wrong), then binds them.

        `derived_from`: the snapshot this one is made from (engine.snapshot.with_documents); a list's
        bitmap and indexes passed on from it, the very same arrays, are not checked again.
        """
        if self.s.nt != NULL:
            raise TypeError("a CoreSnapshot is immutable: make a new one")
        cdef dict own = {name: _read_only(x) for name, x in arrays.items()}
        cdef dict own_meta = dict(meta)
        _bind(self, own, own_meta, derived_from)
        self.arrays = own
        self.meta = own_meta
        self.version = own_meta["version"]
        self.tenant = own_meta["tenant"]
        self._lines = tuple(own_meta["lines"])
        self._groups = tuple(own_meta["groups"])
        self._members = tuple(tuple(m) for m in own_meta["members"])
        self._decimals = tuple(Decimal(x) for x in own_meta["rates"])

    def __dealloc__(self):
        if self._file.buf != NULL:
            PyBuffer_Release(&self._file)

    def _seal(self, mapped, bytes prefix not None):
        """Tie the snapshot to the file its arrays are mapped from (`mapped`: the mmap) and to its first FILE_PREFIX
        bytes as read before it was checked (`prefix`: the magic, the lengths and the sha256 of everything else):
        every decision then compares the file's with them first, so that a file rewritten in place under the
        mapping (a copy made over it with cp) is never decided from through the checks its old bytes passed
        (engine/_core_guard.pxi)."""
        if self._file.buf != NULL:
            raise TypeError("a CoreSnapshot is sealed once")
        if len(prefix) != FILE_PREFIX:
            raise ValueError(f"a file's prefix is {FILE_PREFIX} bytes, not {len(prefix)}")
        guard_mapped_reads()   # (whoever maps it: LocalFast, open_snapshot; again if a handler replaced ours)
        PyObject_GetBuffer(mapped, &self._file, PyBUF_SIMPLE)
        cdef Py_ssize_t n = self._file.len
        if n < FILE_PREFIX:
            PyBuffer_Release(&self._file)
            self._file.buf = NULL
            raise ValueError(f"a file of {n} bytes, fewer than {FILE_PREFIX}")
        memcpy(self._prefix, <const char*>prefix, FILE_PREFIX)

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
        if not inbound_guarded(self, pc, nc, pd, nd, instant(at), &d.o):
            raise OSError(f"tenant {self.tenant!r:.70}'s snapshot cannot be read: its file was truncated or rewritten "
                          "in place, or the disk failed (SIGBUS); read the file again")
        return d

    def outbound(self, str user not None, str destination not None, at, balance_micro):
        """Outbound decision; the balance is an int of micro-units of the currency (1e-6), never a float.

        `balance_micro` None: the route and rate whatever the credit (ALLOW up to the call's cap wherever a
        rate exists): what a call that starts ringing is priced by.
        """
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        cdef bint any_balance = balance_micro is None
        if any_balance:
            balance_micro = 0
        elif type(balance_micro) is not int:  # a float would be truncated: money is never binary floating point
            raise TypeError(f"balance_micro must be an int of micro-units, not {type(balance_micro).__name__}")
        cdef Py_ssize_t nu, nd
        cdef const char* pu = utf8(user, &nu)
        cdef const char* pd = utf8(destination, &nd)
        cdef CoreDecision d = CoreDecision.__new__(CoreDecision)
        d.snap = self
        decide_outbound(&self.s, pu, nu, pd, nd, instant(at), balance_micro, any_balance, &d.o)
        return d

    def line_rate(self, str line not None, str number not None):
        """(per-minute rate in micro-units, increment in seconds) of the longest prefix of `number`'s digits on
        `line`, or None (unknown line, a number that is not E.164, no matching rate): how a forwarded leg is
        priced.  The same trie walk as the Outbound decision's."""
        if self.s.nt == NULL:
            raise ValueError("this CoreSnapshot was never loaded")
        if line not in self._lines:
            return None
        cdef Py_ssize_t n
        cdef const char* p = utf8(number, &n)
        cdef uint64_t num = 0
        if n < 2 or p[0] != c'+' or not read_international(p, n, &num):
            return None
        cdef int32_t rate = match_rate(&self.s, <int32_t>self._lines.index(line), num)
        if rate < 0:
            return None
        return (self.s.rate_pm[rate], self.s.rate_inc[rate])

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
                                pd + i * wd, _strnlen(pd + i * wd, wd), pt[i], pb[i], False, &o)
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


cdef void _bind(CoreSnapshot snap, dict a, dict m, CoreSnapshot source) except *:
    """Checks `a` and `m` whole, derives the roaring indexes into `a` (the snapshot's own dict), then sets
    `snap.s` to the bound struct and pins the arrays."""
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
    _bind_roaring(&s.blacklist, &source.s.blacklist if source is not None else NULL, a, "blacklist", source)
    _bind_roaring(&s.offhours_blacklist, &source.s.offhours_blacklist if source is not None else NULL, a,
                  "offhours_blacklist", source)
    snap._pinned = dict(a)
    snap.s = bound


cdef void _bind_roaring(Roaring* r, const Roaring* was, dict a, str name, CoreSnapshot source) except *:
    # The container table and filter are derived from the bitmap on load (roaring_index checks the
    # bitmap whole) into `a`, the snapshot's own dict; given, they are checked against the bitmap, unless
    # they are the very arrays `source` (a checked snapshot, `was` its list) bound.
    cdef str tname = f"{name}_table", fname = f"{name}_filter"
    cdef Py_ssize_t size, words, nbuf, i = -1, used = -1
    buf = _array(a, name, np.uint8, -1)
    if tname not in a:
        try:
            derived_table, derived_filter, used = _roaring_index(buf)
        except ValueError as exc:
            raise ValueError(f"snapshot array {name}: {exc}") from None
        a[tname], a[fname] = _read_only(derived_table), _read_only(derived_filter)
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
