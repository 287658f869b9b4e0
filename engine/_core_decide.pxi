# Section of engine/_core.pyx (compiled into it by `include`): the three decisions, as nogil C functions
# from the input bytes and a bound Snap to an Out struct (docs/decisions.md, step by step).  They are the
# module's own: nothing outside it calls them (the contract in _core.pxd declares no function).

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
        refuse(o, V_REJECT, R_DOCUMENTS_REJECTED if s.num_flags[idx] & F_REJECTED else R_DOCUMENTS_PENDING)
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
                          Py_ssize_t nd, int64_t at, int64_t balance, bint any_balance, Out* o) noexcept nogil:
    # any_balance: the route and rate whatever the credit (a call that starts ringing is priced by them; its
    # hold is what the credit allows): no funds check, the call's cap as the longest talk
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
    if not any_balance and (balance > MAX_BALANCE_MICRO or balance < -MAX_BALANCE_MICRO):
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
        refuse(o, V_DENY, R_DOCUMENTS_REJECTED if s.num_flags[cid] & F_REJECTED else R_DOCUMENTS_PENDING)
        return
    rate = match_rate(s, s.num_line[cid], dest_num)
    if rate < 0:
        refuse(o, V_DENY, R_NO_RATE)
        return
    pm = s.rate_pm[rate]
    inc = s.rate_inc[rate]
    cap = MAX_CALL_SECONDS // inc
    if any_balance:
        k = cap
    elif balance < 0 or (balance == 0 and pm > 0):
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
