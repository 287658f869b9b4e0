# Section of engine/_core.pyx (compiled into it by `include`): CoreDecision, the Out struct of one decision
# as Python reads it (names looked up on access, `to_decision` for the shared Decision), and the small
# conversions of the Python API (UTF-8 of a str, an instant from an int, E.164 text of a value).

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


cdef tuple proxy_fields(const Out* o, CoreSnapshot snap):
    # what a proxy carries out of an inbound decision, in one tuple (CoreDecision.proxy_fields)
    return (_VERDICTS[o.verdict], o.sip, _REASONS[o.reason],
            snap._groups[o.group] if o.group >= 0 else "",
            snap._members[o.group] if o.group >= 0 else (),
            "" if o.target == 0 else "+%d" % o.target,
            snap._lines[o.line] if o.line >= 0 else "")


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
        return self.snap._lines[self.o.line] if self.o.line >= 0 else None

    @property
    def group(self):
        return self.snap._groups[self.o.group] if self.o.group >= 0 else None

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
    def rate_micro(self):
        """The per-minute rate in micro-units (the exact integer behind `rate_per_minute`), or None."""
        return self.snap.s.rate_pm[self.o.rate] if self.o.rate >= 0 else None

    @property
    def increment_s(self):
        return self.snap.s.rate_inc[self.o.rate] if self.o.rate >= 0 else None

    @property
    def max_duration_s(self):
        return self.o.max_duration if self.o.verdict == V_ALLOW else None

    def proxy_fields(self):
        """(verdict, sip_status, reason, group, members, target, line): what a proxy carries out of an inbound
        decision, read in one call ("" for a field the decision has not, as the RPC's message has it: a worker's
        seven lookups of the attributes cost ~15 us with its cold caches)."""
        return proxy_fields(&self.o, self.snap)

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
