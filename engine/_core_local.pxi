# Section of engine/_core.pyx (compiled into it by `include`): a replica worker's inbound decision while the
# replica is in step, compiled (LocalFast), and the answer it gives (LocalAnswer).
#
# A SIP worker decides a call every few tens of milliseconds, between which the other processes of the host run
# on its cores, so every decision starts with cold caches: there the Python path of LocalDecisions.inbound took
# ~11 us and ~25 us inside Kamailio where the core's own call takes 2.5, most of it the interpreter (reading the
# status page through `struct` alone took 6.8 us).  Here the usual case is a handful of loads: the clock, the
# status page's four words, one dict lookup, the core.  Anything unusual is a miss, handed with the instant read
# here to the subclass's `_inbound_slow` (engine/replica_local.LocalDecisions: looking at files, the policy,
# the stale answers), which also puts the entries this path answers from.  The two give the same answers
# (tests/test_replica_fast.py holds them to each other).

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, fabs, isfinite
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec


cdef extern from *:
    """
    /* The status page's first four 8-byte words (engine/replica.py: magic, generation, heard, the server's
       clock offset), each read in one load: its writer stores each in one, and a read caught between two of
       its stores is made again by the caller.  volatile: the compiler must not merge the two reads. */
    typedef struct { uint64_t magic; uint64_t gen; double heard; double offset; } cg_status;
    static inline void cg_status_read(const unsigned char *p, cg_status *out) {
        const volatile uint64_t *w = (const volatile uint64_t *)p;
        uint64_t v[4];
        v[0] = w[0]; v[1] = w[1]; v[2] = w[2]; v[3] = w[3];
        memcpy(out, v, sizeof v);
    }
    """
    ctypedef struct cg_status:
        uint64_t magic
        uint64_t gen
        double heard
        double offset
    void cg_status_read(const unsigned char* p, cg_status* out) nogil


cdef Py_ssize_t STATUS_READ = 32      # the bytes cg_status_read reads


ctypedef struct _PageRead:
    const unsigned char* p
    cg_status* out


cdef void _page_read(void* arg) noexcept nogil:
    cdef _PageRead* r = <_PageRead*>arg
    cdef cg_status b
    cg_status_read(r.p, r.out)
    cg_status_read(r.p, &b)
    if memcmp(r.out, &b, 3 * 8) != 0:
        cg_status_read(r.p, r.out)
cdef double INSTANT_LIMIT = 9.0e18     # a double beyond this is no int64 instant: the slow path says so


cdef class LocalAnswer:
    """A worker's local answer (LocalDecisions.inbound).  Immutable; equal when every field is.

    action "decide": `decision` is the core's answer; "reject": fail-closed, the replica is staler than the
    policy allows; "backup": forward the call to `backup_number` on `backup_line`."""

    cdef readonly str action
    cdef readonly CoreDecision decision
    cdef readonly object version          # the snapshot version the answer comes from
    cdef readonly str checksum
    cdef readonly double age_s            # seconds since the replica last heard from the server (inf: never)
    cdef readonly bint stale              # age_s > the policy's max_staleness_s
    cdef readonly str backup_number       # E.164 with "+", for action "backup"
    cdef readonly str backup_line

    def __init__(self, str action not None, CoreDecision decision, version, str checksum not None, double age_s,
                 bint stale, str backup_number not None="", str backup_line not None=""):
        self.action, self.decision, self.version, self.checksum = action, decision, version, checksum
        self.age_s, self.stale, self.backup_number, self.backup_line = age_s, stale, backup_number, backup_line

    def _fields(self):
        return (self.action, self.decision, self.version, self.checksum, self.age_s, self.stale,
                self.backup_number, self.backup_line)

    def __eq__(self, other):
        if type(other) is not LocalAnswer:
            return NotImplemented
        return self._fields() == (<LocalAnswer>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __repr__(self):
        return ("LocalAnswer(action=%r, decision=%r, version=%r, checksum=%r, age_s=%r, stale=%r, "
                "backup_number=%r, backup_line=%r)" % self._fields())


cdef class _Entry:
    # a tenant as LocalDecisions last found it in step: its snapshot, and until when that finding holds
    cdef CoreSnapshot snap
    cdef object version
    cdef str checksum
    cdef uint64_t gen          # the status page's generation it was found under
    cdef double checked        # [checked, until): the window in which its file is not looked at again
    cdef double until
    cdef double max_staleness  # the policy's, read under the same generation


cdef class LocalFast:
    """The in-step path of a replica worker's inbound decision; LocalDecisions is the class to use.

    `inbound` answers from the entries `_put_fast` made, while the mapped status page (`_map_page`) says
    the replica is in step: its magic, a heartbeat within `fresh_s` of now, the generation the entry was
    made under, now within the entry's window, and not staler than its policy.  Anything else (or `clock`
    given: a clock of the tests, read through Python) calls `self._inbound_slow(tenant, caller, called, at,
    now)`, which a subclass defines."""

    cdef Py_buffer _page
    cdef bint _mapped
    cdef dict _entries
    cdef object _clock           # None: CLOCK_REALTIME, as time.time reads it
    cdef uint64_t _magic
    cdef double _fresh_s
    cdef double _max_offset_s
    cdef readonly unsigned long long misses   # decisions handed to `_inbound_slow`
    # `tenant_of`'s index: number ("+" E.164) -> tenant ("": listed by two), when the subclass's `_scan` last
    # made it, under which generation of the status page, and whether it read every file (`_index_whole`)
    cdef public dict _owners
    cdef public double _scanned
    cdef public bint _index_whole
    cdef uint64_t _index_gen
    cdef double _index_s
    cdef public double _index_live_s
    cdef public bint _page_faulted   # a read of the status page faulted (`_read`): unmapped, to be looked for again

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._entries = {}
        self.misses = 0
        self._owners = {}
        self._scanned = -INFINITY
        self._index_gen = 0
        self._index_live_s = 0.0
        self._index_whole = False
        self._page_faulted = False

    def __init__(self, bytes magic not None, double fresh_s, double max_offset_s, clock=None, double index_s=1.0):
        if len(magic) != 8:
            raise ValueError("the status page's magic is 8 bytes")
        memcpy(&self._magic, <const char*>magic, 8)
        guard_mapped_reads()   # (the decisions read files mapped: one truncated in place must not kill the worker)
        self._fresh_s, self._max_offset_s, self._clock, self._index_s = fresh_s, max_offset_s, clock, index_s

    def _scan(self, double now):
        """Make `_owners` (and set `_scanned` to `now`): the subclass's (the files' headers)."""
        self._scanned = now

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._page)

    def _map_page(self, page):
        """Read the status page from `page` (a buffer of at least 32 bytes, kept referenced until the next
        call: an mmap cannot be closed while it is), or from none (None)."""
        if self._mapped:
            self._mapped = False
            PyBuffer_Release(&self._page)
        self._scanned = -INFINITY   # (another page's generations say nothing of the index: looked at again)
        if page is None:
            return
        guard_mapped_reads()   # (again if something replaced the handler since: the page is read under it)
        PyObject_GetBuffer(page, &self._page, PyBUF_SIMPLE)
        if self._page.len < STATUS_READ:
            PyBuffer_Release(&self._page)
            raise ValueError(f"a status page of {self._page.len} bytes, fewer than {STATUS_READ}")
        self._mapped = True

    def _put_fast(self, str tenant not None, CoreSnapshot snap not None, version, str checksum not None, gen,
                  double checked, double until, double max_staleness):
        """Answer `tenant` from `snap` while the page's generation is `gen` and now is in [checked, until)."""
        if not 0 <= gen < 2 ** 64:
            self._entries.pop(tenant, None)
            return
        cdef _Entry e = _Entry.__new__(_Entry)
        e.snap, e.version, e.checksum, e.gen = snap, version, checksum, gen
        e.checked, e.until, e.max_staleness = checked, until, max_staleness
        self._entries[tenant] = e

    def _drop_fast(self, tenant=None):
        """Forget `tenant`'s entry (None: every entry)."""
        if tenant is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant, None)

    cdef object _miss(self, tenant, caller, called, at, double now):
        self.misses += 1
        return self._inbound_slow(tenant, caller, called, at, now)

    cdef double _now(self) except? -1.0:
        cdef timespec ts
        if self._clock is None:
            clock_gettime(CLOCK_REALTIME, &ts)
            return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
        return self._clock()

    cdef bint _read(self, cg_status* a):
        """The mapped status page's words into `a` (read again when caught between two of its writer's stores),
        under the SIGBUS guard (engine/_core_guard.pxi): False without a page, or when it faulted (truncated in
        place, a disk's I/O error), which unmaps it and sets `_page_faulted` for the subclass to look for the
        page again."""
        if not self._mapped:
            return False
        cdef _PageRead r
        r.p, r.out = <const unsigned char*>self._page.buf, a
        if cg_bus_guard(_page_read, &r) != 0:
            self._mapped = False
            PyBuffer_Release(&self._page)
            self._page_faulted = True
            return False
        return True

    cdef bint _live(self, double now, cg_status* a):
        """Whether the mapped status page is the replica's and heard within `fresh_s` of `now`, read into `a`."""
        if not self._read(a):
            return False
        return (a.magic == self._magic and isfinite(a.heard) and a.heard > 0
                and -self._fresh_s <= now - a.heard <= self._fresh_s)

    def _page_words(self):
        """The mapped status page's first 32 bytes as a decision reads them (`_read`: guarded, read again when
        caught mid-write); None without a page, or when it faulted.  (Their meaning: engine/replica_status.py.)"""
        cdef cg_status a
        if not self._read(&a):
            return None
        return (<char*>&a)[:STATUS_READ]

    cdef _Entry _in_step(self, tenant, caller, called, at, double now, bint live, const cg_status* a, double* age,
                         int64_t* when):
        """The entry that answers `tenant` at `now` with the instant of the call (`when`) and the replica's age,
        or None: a miss (anything unusual, for `_inbound_slow`).  `live`, `a`: the status page as `_live` read it
        at `now`."""
        if not live or type(tenant) is not str or type(caller) is not str or type(called) is not str:
            return None
        age[0] = now - a.heard
        cdef PyObject* found = PyDict_GetItem(self._entries, tenant)
        if found == NULL:
            return None
        cdef _Entry e = <_Entry>found
        if (e.gen != a.gen or not (e.checked <= now < e.until) or age[0] > e.max_staleness
                or e.snap.s.nt == NULL):
            return None
        cdef double offset = a.offset
        if not at:   # now by the server's clock, truncated as int() does
            if not (isfinite(offset) and fabs(offset) <= self._max_offset_s):
                offset = 0.0
            if not fabs(now + offset) < INSTANT_LIMIT:
                return None
            when[0] = <int64_t>(now + offset)
        else:
            when[0] = instant(at)
        return e

    def inbound(self, tenant, caller, called, at=0):
        """The local answer to an inbound call at `at` (0: now by the server's clock), or None: ask the
        server (see LocalDecisions)."""
        cdef double now = self._now(), age
        cdef int64_t when
        cdef cg_status a
        cdef _Entry e = self._in_step(tenant, caller, called, at, now, self._live(now, &a), &a, &age, &when)
        if e is None:
            return self._miss(tenant, caller, called, at, now)
        cdef Py_ssize_t nc, nd
        cdef const char* pc = utf8(caller, &nc)
        cdef const char* pd = utf8(called, &nd)
        cdef CoreDecision d = CoreDecision.__new__(CoreDecision)
        d.snap = e.snap
        if not inbound_guarded(e.snap, pc, nc, pd, nd, when, &d.o):   # its file truncated: looked at again
            return self._miss(tenant, caller, called, at, now)
        cdef LocalAnswer answer = LocalAnswer.__new__(LocalAnswer)
        answer.action, answer.decision, answer.version, answer.checksum = "decide", d, e.version, e.checksum
        answer.age_s, answer.stale, answer.backup_number, answer.backup_line = age, False, "", ""
        return answer

    def tenant_of(self, number):
        """The tenant whose snapshot lists `number` (E.164, with or without "+"), or None: none does, or two do
        (a transfer half seen).  A routing hint from the files' headers (`_owners`), the directory looked at
        again (`_scan`, the subclass's) at most every `index_s`: when the live status page's generation moved (the
        replica changed the directory), when the last look could not read every file, or without a live page;
        else only every `_index_live_s` (a change made by hand).  The decision itself then opens that tenant's
        file with every check."""
        cdef double now = self._now()
        cdef cg_status a
        return self._owner(number, now, self._live(now, &a), &a)

    cdef object _owner(self, number, double now, bint live, const cg_status* a):
        """`tenant_of` at `now`, the status page as `_live` read it then (`live`, `a`)."""
        cdef double within = self._index_s
        cdef uint64_t gen = 0
        if live:   # a live page whose generation has not moved: the directory is as the index read it
            gen = a.gen
            if gen == self._index_gen and self._index_whole:
                within = max(self._index_live_s, self._index_s)
        if not self._scanned <= now < self._scanned + within:
            self._index_gen = gen   # (before the scan: a change during it moves it again)
            self._scan(now)
        if type(number) is not str:
            return None
        cdef PyObject* found = PyDict_GetItem(self._owners, number if number.startswith("+") else "+" + number)
        return <object>found or None if found != NULL else None

    def route(self, caller, called):
        """An inbound call from `caller` to `called` now, as a proxy worker carries it out: None when no
        tenant's snapshot lists `called` (`tenant_of`); else (tenant, fields): the decision's
        `CoreDecision.proxy_fields` when the in-step path answers it (the usual call), or None: the answer
        needs `inbound(tenant, caller, called)` (a file to look at, the replica stale, a policy).  One call
        where `tenant_of`, `inbound` and the answer's attributes were nine (~50 us of a SIP worker's INVITE
        with its cold caches); the same answers (tests/test_replica_fast.py)."""
        cdef double now = self._now(), age
        cdef cg_status a
        cdef bint live = self._live(now, &a)   # (one reading of the page for the tenant and the decision)
        tenant = self._owner(called, now, live, &a)
        if tenant is None:
            return None
        cdef int64_t when
        cdef _Entry e = self._in_step(tenant, caller, called, 0, now, live, &a, &age, &when)
        if e is None:
            return (tenant, None)
        cdef Py_ssize_t nc, nd
        cdef const char* pc = utf8(caller, &nc)
        cdef const char* pd = utf8(called, &nd)
        cdef Out o
        if not inbound_guarded(e.snap, pc, nc, pd, nd, when, &o):   # its file truncated: `inbound` looks again
            return (tenant, None)
        return (tenant, proxy_fields(&o, e.snap))
