# The contract of the compiled core (engine/_core.pyx and its engine/_core_*.pxi sections): the codes it
# writes and the C layout of a compiled snapshot, of a decision and of a batch row.  The numpy dtypes that
# mirror the structs (COUNTRY_DTYPE, SLOT_DTYPE, CONTAINER_DTYPE, INBOUND_DTYPE, OUTBOUND_DTYPE) are checked
# against them when the module loads; the verdict and reason codes against engine.codes.  Nothing here is a
# function: the core exports its decisions to Python only (engine/_core.pyi), never as C symbols.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


# Verdicts and reasons: the indexes of engine.codes.VERDICTS and engine.codes.REASONS.
cdef enum Verdict:
    V_ERROR, V_ROUTE, V_FORWARD, V_VOICEMAIL, V_REJECT, V_ALLOW, V_DENY, V_INTERCEPT, V_NO_PICKUP

cdef enum Reason:
    R_OK, R_BLACKLISTED, R_OFF_HOURS_BLOCKED, R_OFF_HOURS, R_DOCUMENTS_PENDING, R_UNKNOWN_NUMBER,
    R_ANONYMOUS, R_ACCOUNT_UNAVAILABLE, R_INSUFFICIENT_FUNDS, R_NO_RATE, R_NO_CALLER_ID,
    R_INVALID_CALLER, R_INVALID_CALLED, R_INVALID_DESTINATION, R_INVALID_TIME, R_INVALID_USER,
    R_NOT_PICKUP_CODE, R_NO_RINGING_CALL, R_INVALID_BALANCE, R_DOCUMENTS_REJECTED

# How a line's trunk sends callers: the indexes of engine.codes.CALLER_FORMATS (Snap.line_format).
cdef enum CallerFormat:
    FMT_AUTO, FMT_E164, FMT_INTERNATIONAL, FMT_NATIONAL

# Bits of Snap.num_flags.
cdef enum NumberFlag:
    F_REQUIRES_DOCS = 1
    F_APPROVED = 2
    F_INBOUND_ONLY = 4
    F_REJECTED = 8          # its latest document set was rejected (and none is approved)

# Kinds of roaring container (Container.meta >> 28).
cdef enum ContainerKind:
    KIND_ARRAY = 0
    KIND_BITSET = 1
    KIND_RUN = 2

# Sizes of the layout.
cdef enum:
    WEEK_WORDS = 158          # 7 * 1440 minutes, one bit each, in 64-bit words: Snap.sched_week per schedule
    ZONE_BUCKET_BITS = 22     # zone offsets are indexed by 2^22 s (48.5 day) buckets: Snap.zone_bucket
    MAX_CALL_SECONDS = 86400  # the longest call an outbound decision allows (engine.codes.MAX_CALL_SECONDS)


cdef struct Container:
    uint64_t key              # high 48 bits of the values it holds; UINT64_MAX: empty slot
    uint32_t off              # byte offset of its data in the serialized buffer
    uint32_t meta             # kind << 28 | count (array: values, run: runs)


cdef struct Slot:
    uint64_t key
    int32_t index
    int32_t pad


cdef struct Roaring:
    # A roaring64 bitmap read in place from its portable serialization.  Two
    # indexes are derived on load: an open-addressing table of its containers
    # (one probe instead of a binary search over them) and a one-hash bit
    # filter over its values that turns most non-members away in one access.
    const uint8_t* buf
    const Container* table
    uint64_t table_mask
    const uint64_t* filter
    uint64_t filter_mask      # in bits
    int64_t n                 # containers


cdef struct Country:
    uint64_t cc               # country code as a number (1, 44, ...)
    int32_t cc_len
    int32_t ip_len
    int32_t np_len
    uint32_t lengths          # bit n set: n digits is a national length
    char ip[8]
    char np[8]


cdef struct Snap:
    # tenant
    int32_t active
    int32_t block_anonymous
    int32_t backup_line       # -1: no backup
    uint64_t backup_number
    int32_t default_callerid  # number index, -1: none
    int32_t pickup_len
    char pickup[16]
    # numbers (index i) and their open-addressing table E.164 -> index
    int32_t n_numbers
    const uint64_t* num_e164
    const int32_t* num_line
    const int32_t* num_country
    const uint8_t* num_flags  # 1 requires documents, 2 approved, 4 inbound only
    const int32_t* num_sched  # -1: no schedule
    const uint8_t* num_action # 0 reject, 1 voicemail, 2 forward
    const uint64_t* num_fwd
    const int32_t* num_group  # -1: no route_to
    const Slot* nt            # key 0: empty slot
    uint64_t nt_mask
    const Country* countries
    # schedules and zones
    const int32_t* sched_zone
    const uint64_t* sched_week  # 158 words per schedule: bit = minute of the week
    const int32_t* sched_hol_base
    const int32_t* hol_days     # local days since 1970-01-01, sorted per schedule
    const int32_t* zone_base    # zone z: segments zone_base[z] .. zone_base[z+1]
    const int32_t* zone_bucket  # ZONE_BUCKETS per zone: the segment in force when each bucket starts
    const int64_t* zone_starts
    const int32_t* zone_offsets
    # lines and rates: a digit trie per line
    const int32_t* line_root
    const uint8_t* line_format  # how each line's trunk sends callers: codes.CALLER_FORMATS index
    const int32_t* trie_child   # 10 per node, -1: none
    const int32_t* trie_rate    # -1: no rate ends here
    const int64_t* rate_pm      # per minute, micro-units
    const int32_t* rate_inc
    # users: table of FNV-1a hashes of the id -> index, ids kept to compare
    int32_t n_users
    const uint64_t* ut_keys
    const int32_t* ut_vals
    uint64_t ut_mask
    const uint8_t* user_blob
    const int32_t* user_off
    const int32_t* user_callerid
    const uint64_t* user_groups # group_words per user
    int32_t group_words
    # caller lists
    Roaring blacklist
    Roaring offhours_blacklist


cdef struct Out:
    uint8_t verdict
    uint8_t reason
    uint16_t sip
    int32_t line
    int32_t group
    int32_t callerid          # number index
    int32_t rate
    int32_t call              # index into the ringing calls
    uint64_t caller           # 0: none / withheld
    uint64_t caller_alt       # auto: the caller's second reading (its digits as E.164), 0: none
    uint8_t alt_listed        # 1: the second reading is the one a list holds (it decided)
    uint64_t called
    uint64_t target
    int64_t max_duration


cdef struct InRow:            # one row of an inbound batch result (INBOUND_DTYPE)
    uint64_t target
    int32_t line
    int32_t group
    uint16_t sip
    uint8_t verdict
    uint8_t reason


cdef struct OutRow:           # one row of an outbound batch result (OUTBOUND_DTYPE)
    int64_t max_duration
    int32_t line
    int32_t callerid
    int32_t rate
    uint16_t sip
    uint8_t verdict
    uint8_t reason
